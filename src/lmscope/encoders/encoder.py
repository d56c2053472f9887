"""HookedEncoder: a BERT-family encoder (BERT, RoBERTa, DistilBERT, sentence-transformers) with a
hook on every activation, TransformerLens's names and methods.

Example:
    >>> from lmscope import HookedEncoder
    >>> model = HookedEncoder.from_pretrained("all-minilm-l6-v2")
    >>> emb = model.encode(["A man is eating food.", "A man eats something."])   # [2, 384]
    >>> hidden, cache = model.run_with_cache("Hello world", return_type="embeddings")
    >>> cache["blocks.0.attn.hook_pattern"].shape                 # [batch, head, q_pos, k_pos]
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from lmscope.components.attention import AttentionMask
from lmscope.components.embed import Unembed
from lmscope.components.norm import LayerNorm
from lmscope.encoders.base import EncoderModel, TextInput, is_text
from lmscope.encoders.bert import BertBlock, BertEmbed, BertMLMHead, BertNSPHead, BertPooler
from lmscope.encoders.config import POOLING_MODES, SentencePooling
from lmscope.hooks import HookPoint

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from lmscope.config import HookedTransformerConfig

EncoderReturnType = Literal["logits", "predictions", "embeddings", "pooled"] | None
_AUTO = "auto"


def pool_tokens(
    hidden: Float[Tensor, "batch pos d_model"],
    attention_mask: Int[Tensor, "batch pos"] | None,
    mode: str,
) -> Float[Tensor, "batch d_model"]:
    """One vector per sequence from its real tokens (mask 1): their mean ("mean"), the first
    token ("cls"), their elementwise max ("max"), or their sum / sqrt(count) ("mean_sqrt_len"),
    as sentence-transformers' Pooling computes them.

    Example:
        >>> pool_tokens(torch.ones(1, 3, 4), torch.tensor([[1, 1, 0]]), "mean").shape
        torch.Size([1, 4])
    """
    if mode not in POOLING_MODES:
        raise ValueError(f"pooling mode {mode!r} is not one of {POOLING_MODES}")
    if mode == "cls":
        return hidden[:, 0]
    mask = (
        torch.ones(hidden.shape[:2], device=hidden.device, dtype=hidden.dtype)
        if attention_mask is None
        else attention_mask.to(hidden.dtype)
    )[..., None]
    if mode == "max":
        return hidden.masked_fill(mask == 0, float("-inf")).amax(dim=1)
    total = (hidden * mask).sum(dim=1)
    count = mask.sum(dim=1).clamp(min=1e-9)
    return total / (count if mode == "mean" else count.sqrt())


class HookedEncoder(EncoderModel):
    """A BERT-style encoder whose every activation is a named HookPoint (TransformerLens's
    `HookedEncoder`): bidirectional attention with padding masks, token type embeddings, post-LN
    blocks, and the heads the checkpoint has (MLM head + unembedding, pooler, NSP head).

    Build a random model from a config (`HookedEncoder(cfg)`, TransformerLens's config dicts
    work) or load one with `HookedEncoder.from_pretrained(name_or_path)`.
    """

    def __init__(
        self,
        cfg: HookedTransformerConfig | dict[str, Any],
        tokenizer: PreTrainedTokenizerBase | None = None,
        move_to_device: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        cfg = self._init_common(cfg, tokenizer)
        if cfg.positional_embedding_type != "standard":
            raise ValueError(
                f"a HookedEncoder has learned positions; positional_embedding_type "
                f"{cfg.positional_embedding_type!r} is not one (T5: HookedEncoderDecoder)"
            )
        if cfg.normalization_type not in ("LN", "LNPre"):
            raise ValueError(
                "a HookedEncoder (BERT family) uses LayerNorm: normalization_type='LN'"
            )
        cfg.norm_placement = "post_residual"  # BERT is post-LN: analyses that sum outputs refuse
        self.embed = BertEmbed(cfg)
        self.hook_full_embed = HookPoint()  # [batch, pos, d_model], after the embedding's LN
        self.blocks = nn.ModuleList(BertBlock(cfg, layer) for layer in range(cfg.n_layers))
        if cfg.has_mlm_head:
            self.mlm_head = BertMLMHead(cfg)
            self.unembed = Unembed(cfg)
        if cfg.has_pooler or cfg.has_nsp_head:
            self.pooler = BertPooler(cfg)
        if cfg.has_nsp_head:
            self.nsp_head = BertNSPHead(cfg)
        self.sentence_pooling: SentencePooling | None = None
        self._finish_init(move_to_device)

    # -- tokens ------------------------------------------------------------------------------------
    def to_tokens(
        self,
        input: TextInput | Sequence[tuple[str, str]],
        move_to_device: bool = True,
        truncate: bool = True,
    ) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
        """Text to `(tokens, token_type_ids, attention_mask)`, each [batch, pos], as
        TransformerLens's HookedEncoder returns them: the tokenizer's special tokens ([CLS] ...
        [SEP]), right padding, truncation to n_ctx (`truncate`). A pair of texts, or a list of
        pairs, is encoded as sentence A and sentence B (token type 0 then 1).

        Example:
            >>> tokens, types, mask = model.to_tokens([("How old are you?", "I am six.")])
        """
        return self._tokenize(input, self.max_tokens if truncate else None, move_to_device)

    @property
    def max_tokens(self) -> int:
        """The longest input the positions allow (n_ctx; RoBERTa: n_ctx - padding_idx - 1)."""
        pad = self.cfg.position_padding_idx
        return self.cfg.n_ctx if pad is None else self.cfg.n_ctx - pad - 1

    def _tokenize(
        self,
        input: TextInput | Sequence[tuple[str, str]],
        max_length: int | None,
        move_to_device: bool = True,
    ) -> tuple[Tensor, Tensor, Tensor]:
        tok = self._require_tokenizer("text input")
        texts = [input] if isinstance(input, (str, tuple)) else list(input)
        if not texts:
            raise ValueError("input is an empty list of strings; pass at least one string")
        options: dict[str, Any] = dict(
            return_tensors="pt", padding=True, truncation=max_length is not None
        )
        if max_length is not None:
            options["max_length"] = max_length
        if all(isinstance(t, tuple) for t in texts):
            if any(len(t) != 2 for t in texts):
                raise ValueError("a sentence pair is a tuple of two strings (sentence A, B)")
            enc = tok([a for a, _ in texts], [b for _, b in texts], **options)
        elif any(isinstance(t, tuple) for t in texts):
            raise ValueError("pass either strings or (sentence A, sentence B) pairs, not both")
        else:
            enc = tok(texts, **options)
        tokens, mask = enc["input_ids"], enc["attention_mask"]
        types = enc.get("token_type_ids")
        if types is None:
            types = torch.zeros_like(tokens)
        if move_to_device:
            device = self.W_E.device
            tokens, types, mask = tokens.to(device), types.to(device), mask.to(device)
        return tokens, types, mask

    def to_string(self, tokens: Int[Tensor, "... pos"] | Sequence[int]) -> str | list[str]:
        """Token ids back to text (a list of strings for a batch)."""
        tok = self._require_tokenizer("to_string")
        ids = tokens.tolist() if isinstance(tokens, Tensor) else list(tokens)
        if ids and isinstance(ids[0], list):
            return [tok.decode(row) for row in ids]
        return tok.decode(ids)

    def to_str_tokens(self, input: str | Int[Tensor, " pos"] | Sequence[int]) -> list[str]:
        """Each token of one sequence as its own string ([CLS] and [SEP] included for text)."""
        tok = self._require_tokenizer("to_str_tokens")
        if isinstance(input, str):
            input = self.to_tokens(input)[0][0]
        ids = input.flatten().tolist() if isinstance(input, Tensor) else list(input)
        return tok.convert_ids_to_tokens(ids)

    # -- forward -----------------------------------------------------------------------------------
    def _positions(self, tokens: Int[Tensor, "batch pos"]) -> Int[Tensor, "batch pos"]:
        """BERT: 0, 1, 2, ...; RoBERTa: padding_idx + 1, + 2, ... over non-padding tokens, with
        padding at padding_idx (as transformers counts them)."""
        pad = self.cfg.position_padding_idx
        if pad is None:
            positions = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
        else:
            real = (tokens != pad).long()
            positions = real.cumsum(dim=1) * real + pad
        high = int(positions.max())
        if high >= self.cfg.n_ctx:
            raise ValueError(
                f"input has {tokens.shape[1]} tokens, so position {high}, but the model has "
                f"{self.cfg.n_ctx} positions (n_ctx); shorten it (to_tokens truncates)"
            )
        return positions

    def _token_types(self, types: Any, tokens: Int[Tensor, "batch pos"]) -> Tensor | None:
        """Token type ids checked against the model's segment vocabulary."""
        if types is None:
            return None
        types = torch.as_tensor(types, device=tokens.device)
        if types.ndim == 1:
            types = types[None]
        if tuple(types.shape) != tuple(tokens.shape) or types.dtype.is_floating_point:
            raise ValueError(
                f"token_type_ids must be integer ids of the tokens' shape {tuple(tokens.shape)}, "
                f"got {tuple(types.shape)} {types.dtype}"
            )
        n = self.cfg.n_token_types
        low, high = torch.stack([types.min(), types.max()]).tolist()
        if low < 0 or high >= max(n, 1):
            if n == 0:
                raise ValueError(
                    f"this model has no token type embeddings (type_vocab_size 0, as DistilBERT), "
                    f"but token_type_ids holds {high}: drop token_type_ids (or pass zeros)"
                )
            raise ValueError(
                f"token_type_ids holds ids from {low} to {high}, but this model's token type "
                f"vocabulary has {n} type(s) (type_vocab_size={n}"
                f"{': RoBERTa has no sentence B type' if n == 1 else ''}); pass ids in [0, {n})"
            )
        return types.long() if n else None

    def encoder_output(
        self,
        tokens: Int[Tensor, "batch pos"],
        token_type_ids: Int[Tensor, "batch pos"] | None = None,
        one_zero_attention_mask: Int[Tensor, "batch pos"] | None = None,
    ) -> Float[Tensor, "batch pos d_model"]:
        """The residual stream after the last block (TransformerLens's `encoder_output`).

        Example:
            >>> hidden = model.encoder_output(tokens, types, mask)   # [batch, pos, d_model]
        """
        return self(tokens, "embeddings", token_type_ids, one_zero_attention_mask)

    def forward(
        self,
        input: TextInput | Sequence[tuple[str, str]] | Int[Tensor, "batch pos"] | Tensor,
        return_type: EncoderReturnType | str = _AUTO,
        token_type_ids: Int[Tensor, "batch pos"] | None = None,
        one_zero_attention_mask: Int[Tensor, "batch pos"] | None = None,
        attention_mask: Int[Tensor, "batch pos"] | None = None,
        start_at_layer: int | None = None,
        stop_at_layer: int | None = None,
    ) -> Any:
        """Run the encoder.

        Args:
            input: text, a list of texts (right-padded, padding masked), (A, B) sentence pairs,
                token ids [batch, pos], or with `start_at_layer` the residual stream.
            return_type: "logits" (MLM logits [batch, pos, d_vocab]), "predictions" (the decoded
                top tokens at each [MASK]), "embeddings" (the last hidden states [batch, pos,
                d_model], transformers' last_hidden_state), "pooled" (the pooler's [batch,
                d_model]) or None. The default is "logits" for a model with an MLM head and
                "embeddings" for one without (BertModel, sentence-transformers).
            token_type_ids: segment ids [batch, pos] (default: the tokenizer's for text, else 0).
            one_zero_attention_mask / attention_mask: 1 for real tokens, 0 for padding (the
                TransformerLens and the transformers names; default: the tokenizer's for text).
                Every query attends to every real key: positions are not causal.
            start_at_layer / stop_at_layer: run blocks [start, stop) only; with stop_at_layer the
                residual stream entering that layer is returned.
        """
        mask = one_zero_attention_mask if one_zero_attention_mask is not None else attention_mask
        if return_type == _AUTO:
            return_type = "logits" if self.cfg.has_mlm_head else "embeddings"
        if return_type not in ("logits", "predictions", "embeddings", "pooled", None):
            raise ValueError(
                "return_type must be 'logits', 'predictions', 'embeddings', 'pooled' or None, "
                f"got {return_type!r}"
            )
        tokens = None
        if start_at_layer is None:
            if is_text(input):
                tokens, types, text_mask = self.to_tokens(input)
                token_type_ids = types if token_type_ids is None else token_type_ids
                mask = text_mask if mask is None else mask
            else:
                tokens = self._tokens(input)
            mask = self._mask(mask, tokens)
            types = self._token_types(token_type_ids, tokens)
            resid = self.embed(tokens, self._positions(tokens), types)
            resid = self.hook_full_embed(resid)
        else:
            resid = input
            if not isinstance(resid, Tensor) or resid.ndim != 3:
                raise ValueError(
                    f"with start_at_layer, input is the residual stream [batch, pos, "
                    f"{self.cfg.d_model}]"
                )
            mask = self._mask(mask, resid)
        attn_mask = AttentionMask.build(
            mask, resid.shape[1], resid.shape[1], resid.device, causal=False
        )
        for block in self.blocks[start_at_layer:stop_at_layer]:
            resid = block(resid, attn_mask)
        if stop_at_layer is not None or return_type == "embeddings":
            return resid
        if return_type is None:
            return None
        if return_type == "pooled":
            self._require_head("pooler", "return_type='pooled'")
            return self.pooler(resid)
        self._require_head("mlm_head", f"return_type={return_type!r}")
        logits = self.unembed(self.mlm_head(resid))
        if return_type == "logits":
            return logits
        return self._predictions(logits, tokens, is_text(input) and not isinstance(input, str))

    def _require_head(self, head: str, why: str) -> None:
        if not hasattr(self, head):
            names = {"mlm_head": "an MLM head", "pooler": "a pooler", "nsp_head": "an NSP head"}
            raise ValueError(
                f"{why} needs {names[head]}, and this model has none (a "
                f"{self.cfg.original_architecture or 'headless'} checkpoint); "
                "return_type='embeddings' gives the hidden states"
            )

    def _predictions(self, logits: Tensor, tokens: Tensor | None, several: bool) -> str | list[str]:
        """The top token at each [MASK], decoded (TransformerLens's 'predictions')."""
        tok = self._require_tokenizer("return_type='predictions'")
        if tokens is None or tok.mask_token_id is None:
            raise ValueError("return_type='predictions' needs token input with [MASK] tokens")
        at_mask = tokens == tok.mask_token_id
        if not bool(at_mask.any()):
            raise ValueError(f"the input has no {tok.mask_token} token to predict")
        best = logits[at_mask].argmax(dim=-1)
        words = [tok.decode([int(t)]).strip() for t in best]
        return words if several or len(words) > 1 else words[0]

    def encode(
        self,
        input: TextInput | Int[Tensor, "batch pos"],
        attention_mask: Int[Tensor, "batch pos"] | None = None,
        pooling: str | None = None,
        normalize: bool | None = None,
    ) -> Float[Tensor, "batch d_model"]:
        """Sentence embeddings: the last hidden states pooled over each sequence's real tokens,
        then L2-normalised, as the checkpoint's sentence-transformers config says (default for
        other checkpoints: mean pooling, no normalisation). Text is truncated to that config's
        `max_seq_length`.

        Example:
            >>> a, b = model.encode(["A man is eating food.", "A man eats something."])
            >>> float(a @ b)                        # cosine similarity (normalised vectors)
        """
        spec = self.sentence_pooling or SentencePooling()
        mode = pooling or spec.mode
        if is_text(input):
            limit = min(spec.max_seq_length or self.max_tokens, self.max_tokens)
            tokens, types, mask = self._tokenize(input, limit)
            hidden = self(tokens, "embeddings", types, mask)
        else:
            tokens, mask = self._tokens(input), attention_mask
            hidden = self(tokens, "embeddings", attention_mask=mask)
        pooled = pool_tokens(hidden, mask, mode)
        if spec.normalize if normalize is None else normalize:
            pooled = F.normalize(pooled, p=2, dim=-1)
        return pooled

    # -- weights (TransformerLens names) -----------------------------------------------------------
    def named_weights(self) -> dict[str, Tensor]:
        """Every weight under its TransformerLens name, as a view of the stored parameters.

        Example:
            >>> model.named_weights()["blocks.0.attn.W_Q"].shape     # [head, d_model, d_head]
        """
        views: dict[str, Tensor] = {
            "embed.embed.W_E": self.embed.embed.W_E,
            "embed.pos_embed.W_pos": self.embed.pos_embed.W_pos,
        }
        if hasattr(self.embed, "token_type_embed"):
            views["embed.token_type_embed.W_token_type"] = self.embed.token_type_embed.W_token_type
        for layer, block in enumerate(self.blocks):
            prefix = f"blocks.{layer}."
            views.update({f"{prefix}attn.{k}": v for k, v in block.attn.weights().items()})
            views.update({f"{prefix}mlp.{k}": v for k, v in block.mlp.weights().items()})
        for head in ("mlm_head", "pooler", "nsp_head"):
            if hasattr(self, head):
                views[f"{head}.W"] = getattr(self, head).W
                views[f"{head}.b"] = getattr(self, head).b
        if hasattr(self, "unembed"):
            views["unembed.W_U"] = self.unembed.W_U
            views["unembed.b_U"] = self.unembed.b_U
        for name, module in self.named_modules():
            if isinstance(module, LayerNorm) and module.w is not None:
                views[f"{name}.w"] = module.w
                views[f"{name}.b"] = module.b
        return views

    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab"]:
        self._require_head("mlm_head", "W_U")
        return self.unembed.W_U

    @property
    def b_U(self) -> Float[Tensor, " d_vocab"]:
        self._require_head("mlm_head", "b_U")
        return self.unembed.b_U

    @property
    def W_E(self) -> Float[Tensor, "d_vocab d_model"]:
        return self.embed.embed.W_E

    @property
    def W_pos(self) -> Float[Tensor, "n_ctx d_model"]:
        return self.embed.pos_embed.W_pos

    @property
    def W_token_type(self) -> Float[Tensor, "n_token_types d_model"]:
        if not hasattr(self.embed, "token_type_embed"):
            raise AttributeError("this model has no token type embeddings (DistilBERT)")
        return self.embed.token_type_embed.W_token_type

    @property
    def W_E_pos(self) -> Float[Tensor, "d_vocab_plus_n_ctx d_model"]:
        """W_E and W_pos stacked: an (overcomplete) basis of the input space."""
        return torch.cat([self.W_E, self.W_pos], dim=0)

    def _blocks_stack(self, owner: str, name: str) -> Tensor:
        return self._stack(self.blocks, lambda b: getattr(getattr(b, owner), name))

    W_Q = property(lambda self: self._blocks_stack("attn", "W_Q"))
    W_K = property(lambda self: self._blocks_stack("attn", "W_K"))
    W_V = property(lambda self: self._blocks_stack("attn", "W_V"))
    W_O = property(lambda self: self._blocks_stack("attn", "W_O"))
    b_Q = property(lambda self: self._blocks_stack("attn", "b_Q"))
    b_K = property(lambda self: self._blocks_stack("attn", "b_K"))
    b_V = property(lambda self: self._blocks_stack("attn", "b_V"))
    b_O = property(lambda self: self._blocks_stack("attn", "b_O"))
    W_in = property(lambda self: self._blocks_stack("mlp", "W_in"))
    W_out = property(lambda self: self._blocks_stack("mlp", "W_out"))
    b_in = property(lambda self: self._blocks_stack("mlp", "b_in"))
    b_out = property(lambda self: self._blocks_stack("mlp", "b_out"))

    def all_head_labels(self) -> list[str]:
        """Labels "L{layer}H{head}" in layer-major order."""
        heads = range(self.cfg.n_heads)
        return [f"L{layer}H{h}" for layer in range(self.cfg.n_layers) for h in heads]

    # -- loading and processing ------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, model_name: str | os.PathLike, **kwargs: Any) -> HookedEncoder:
        """Load a BERT-family checkpoint: an alias ("all-minilm-l6-v2"), a local directory or a
        hub id, of BertModel, BertForMaskedLM, BertForPreTraining, RoBERTa (Model / ForMaskedLM)
        or DistilBERT (Model / ForMaskedLM), sentence-transformers layouts included (their
        pooling config is read for `encode`). Weights load unprocessed, as in TransformerLens;
        `process_weights_()` applies what is valid for post-LN encoders. See
        `lmscope.loading.encoders.load_encoder` for the options.

        Example:
            >>> model = HookedEncoder.from_pretrained("all-minilm-l6-v2")
        """
        from lmscope.loading.encoders import load_encoder

        return load_encoder(cls, model_name, **kwargs)

    def process_weights_(
        self,
        fold_ln: bool = False,
        center_writing_weights: bool = True,
        center_unembed: bool = True,
        fold_value_biases: bool = True,
    ) -> HookedEncoder:
        """Process the weights in place where it keeps every output (see
        `lmscope.encoders.processing.process_encoder_weights`). Returns the model.

        Example:
            >>> model.process_weights_()
        """
        from lmscope.encoders.processing import process_encoder_weights

        process_encoder_weights(
            self,
            fold_ln=fold_ln,
            center_writing_weights=center_writing_weights,
            center_unembed=center_unembed,
            fold_value_biases=fold_value_biases,
        )
        return self
