"""EncoderConfig: HookedTransformerConfig plus what encoders (BERT) and encoder-decoders (T5) add.

TransformerLens describes its HookedEncoder and HookedEncoderDecoder with the decoder's
HookedTransformerConfig and a few extra fields (`attention_dir`, `relative_attention_*`,
`decoder_start_token_id`); those keep their names here, so a TransformerLens config dict builds
the same model. The other fields say which heads a checkpoint has and how its positions count.

Example:
    >>> cfg = EncoderConfig(d_model=64, n_layers=2, n_heads=4, d_vocab=100, n_ctx=32, act_fn="gelu")
    >>> cfg.attention_dir, cfg.n_token_types
    ('bidirectional', 2)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from lmscope.config import POSITIONAL_EMBEDDING_TYPES, HookedTransformerConfig

POOLING_MODES = ("mean", "cls", "max", "mean_sqrt_len")


@dataclass(frozen=True)
class SentencePooling:
    """How a sentence-transformers checkpoint turns token vectors into one sentence vector: its
    `1_Pooling/config.json` mode, whether `modules.json` ends in Normalize, and the
    `max_seq_length` it truncates to.

    Example:
        >>> SentencePooling("mean", normalize=True, max_seq_length=256)
    """

    mode: str = "mean"
    normalize: bool = False
    max_seq_length: int | None = None


@dataclass
class EncoderConfig(HookedTransformerConfig):
    """Shape and behaviour of a HookedEncoder or HookedEncoderDecoder.

    Encoder fields: `n_token_types` (segment vocabulary, `type_vocab_size`; 0 for DistilBERT,
    which has none), `position_padding_idx` (RoBERTa: real tokens take positions
    padding_idx + 1, + 2, ...; padding keeps padding_idx), which heads exist (`has_mlm_head`,
    `has_pooler`, `has_nsp_head`; TransformerLens builds all three) and the MLM head's
    activation `mlm_act_fn`. Encoder-decoder fields: T5's `relative_attention_num_buckets` and
    `relative_attention_max_distance`, `n_decoder_layers` (default `n_layers`),
    `decoder_start_token_id`, and `scale_decoder_outputs` (multiply the decoder's output by
    d_model**-0.5 before the unembedding; default `tie_word_embeddings`, as TransformerLens).
    """

    _positional_embedding_types: ClassVar[tuple[str, ...]] = (
        *POSITIONAL_EMBEDDING_TYPES,
        "relative_positional_bias",
    )

    act_fn: str | None = "gelu"
    attention_dir: str = "bidirectional"
    n_token_types: int = 2
    position_padding_idx: int | None = None
    has_mlm_head: bool = True
    has_pooler: bool = True
    has_nsp_head: bool = True
    mlm_act_fn: str = "gelu"
    relative_attention_num_buckets: int | None = None
    relative_attention_max_distance: int | None = None
    n_decoder_layers: int | None = None
    decoder_start_token_id: int | None = None
    scale_decoder_outputs: bool | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_decoder_layers is None:
            self.n_decoder_layers = self.n_layers
        if self.scale_decoder_outputs is None:
            self.scale_decoder_outputs = self.tie_word_embeddings
        if self.attention_dir != "bidirectional":
            raise ValueError(
                f"attention_dir={self.attention_dir!r}: an encoder's attention is bidirectional "
                "(a causal model is a HookedTransformer; T5's decoder is causal by itself)"
            )
        if self.n_token_types < 0:
            raise ValueError(f"n_token_types must be >= 0, got {self.n_token_types}")
        relative = self.positional_embedding_type == "relative_positional_bias"
        if relative and not (
            self.relative_attention_num_buckets and self.relative_attention_max_distance
        ):
            raise ValueError(
                "relative positions need relative_attention_num_buckets and "
                "relative_attention_max_distance (T5: 32 and 128)"
            )

    @classmethod
    def wrap(cls, cfg: HookedTransformerConfig | dict[str, Any]) -> EncoderConfig:
        """`cfg` as an EncoderConfig: a dict, or a HookedTransformerConfig's fields (a copy).

        Example:
            >>> EncoderConfig.wrap({"d_model": 8, "n_layers": 1, "n_heads": 2, "d_vocab": 10,
            ...                     "n_ctx": 4}).d_head
            4
        """
        if isinstance(cfg, EncoderConfig):
            return cfg
        if isinstance(cfg, HookedTransformerConfig):
            fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
            return cls.from_dict(fields)
        if isinstance(cfg, dict):
            return cls.from_dict(cfg)
        raise TypeError(
            f"cfg must be an EncoderConfig, a HookedTransformerConfig or a dict, got "
            f"{type(cfg).__name__}; to load a checkpoint use from_pretrained(name)"
        )
