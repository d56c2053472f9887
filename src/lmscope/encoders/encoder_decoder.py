"""HookedEncoderDecoder: T5 (1.0, 1.1, flan-T5) with a hook on every activation of the encoder, the
decoder's self-attention and its cross-attention, TransformerLens's names and methods, and
generation that runs the encoder once and caches the decoder's keys and values.

Example:
    >>> from lmscope import HookedEncoderDecoder
    >>> model = HookedEncoderDecoder.from_pretrained("path/to/t5")
    >>> model.generate("translate English to German: Hello", max_new_tokens=8, do_sample=False)
    >>> logits, cache = model.run_with_cache(tokens, decoder_input=decoder_tokens)
    >>> cache["decoder.0.cross_attn.hook_pattern"].shape    # [batch, head, dec_pos, enc_pos]
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from itertools import chain
from typing import TYPE_CHECKING, Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn
from tqdm.auto import tqdm

from lmscope.components.attention import AttentionMask
from lmscope.components.embed import Embed, Unembed
from lmscope.components.norm import make_norm
from lmscope.encoders.base import EncoderModel, TextInput, is_text
from lmscope.encoders.t5 import CrossAttentionCache, T5Block
from lmscope.hooks import HookPoint

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from lmscope.config import HookedTransformerConfig
    from lmscope.kv_cache import KVCache


class HookedEncoderDecoder(EncoderModel):
    """A T5 encoder-decoder whose every activation is a named HookPoint (TransformerLens's
    `HookedEncoderDecoder`). The encoder is bidirectional (padding masked), the decoder causal;
    each stack's first layer holds the relative position table whose bias every layer of the
    stack adds. Build one from a config, or load with `HookedEncoderDecoder.from_pretrained`.
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
        if cfg.positional_embedding_type != "relative_positional_bias":
            raise ValueError(
                "a HookedEncoderDecoder (T5) has relative positions: set "
                "positional_embedding_type='relative_positional_bias'"
            )
        if cfg.normalization_type not in ("RMS", "RMSPre"):
            raise ValueError("a HookedEncoderDecoder (T5) uses RMSNorm: normalization_type='RMS'")
        self.embed = Embed(cfg)
        self.hook_embed = HookPoint()  # [batch, pos, d_model], the encoder's input
        self.hook_decoder_embed = HookPoint()  # [batch, dec_pos, d_model], the decoder's input
        self.encoder = nn.ModuleList(T5Block(cfg, i, False) for i in range(cfg.n_layers))
        self.encoder_final_ln = make_norm(cfg)
        self.decoder = nn.ModuleList(T5Block(cfg, i, True) for i in range(cfg.n_decoder_layers))
        self.decoder_final_ln = make_norm(cfg)
        self.unembed = Unembed(cfg)
        self._finish_init(move_to_device)

    # -- tokens ------------------------------------------------------------------------------------
    def to_tokens(
        self, input: TextInput, move_to_device: bool = True, truncate: bool = True
    ) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
        """Text to `(tokens, attention_mask)` [batch, pos] with the tokenizer's special tokens
        (T5 ends each text with </s>), right padding, and truncation to n_ctx (`truncate`).

        Example:
            >>> tokens, mask = model.to_tokens(["Hello", "Hello world"])
        """
        tok = self._require_tokenizer("to_tokens")
        texts = [input] if isinstance(input, str) else list(input)
        if not texts:
            raise ValueError("input is an empty list of strings; pass at least one string")
        options: dict[str, Any] = dict(return_tensors="pt", padding=True, truncation=truncate)
        if truncate:
            options["max_length"] = self.cfg.n_ctx
        enc = tok(texts, **options)
        tokens, mask = enc["input_ids"], enc["attention_mask"]
        if move_to_device:
            tokens, mask = tokens.to(self.W_E.device), mask.to(self.W_E.device)
        return tokens, mask

    def to_string(self, tokens: Int[Tensor, "... pos"] | Sequence[int]) -> str | list[str]:
        """Token ids back to text, special tokens left out (a list of strings for a batch)."""
        tok = self._require_tokenizer("to_string")
        ids = tokens.tolist() if isinstance(tokens, Tensor) else list(tokens)
        if ids and isinstance(ids[0], list):
            return [tok.decode(row, skip_special_tokens=True) for row in ids]
        return tok.decode(ids, skip_special_tokens=True)

    # -- forward -----------------------------------------------------------------------------------
    def _start_tokens(self, batch: int) -> Int[Tensor, "batch 1"]:
        start = self.cfg.decoder_start_token_id
        if start is None:
            raise ValueError(
                "the config has no decoder_start_token_id; pass decoder_input (T5 starts from 0)"
            )
        return torch.full((batch, 1), start, dtype=torch.long, device=self.W_E.device)

    def _encoder_inputs(
        self, input: Any, mask: Any
    ) -> tuple[Int[Tensor, "batch pos"], Tensor | None]:
        if is_text(input):
            tokens, text_mask = self.to_tokens(input)
            mask = text_mask if mask is None else mask
        else:
            tokens = self._tokens(input)
        return tokens, self._mask(mask, tokens)

    def encoder_output(
        self,
        tokens: Int[Tensor, "batch pos"],
        one_zero_attention_mask: Int[Tensor, "batch pos"] | None = None,
    ) -> Float[Tensor, "batch pos d_model"]:
        """The encoder's output (after `encoder_final_ln`): what every decoder layer's
        cross-attention reads.

        Example:
            >>> enc = model.encoder_output(tokens, mask)     # [batch, pos, d_model]
        """
        tokens = self._tokens(tokens)
        mask = self._mask(one_zero_attention_mask, tokens)
        return self._encode(tokens, mask)

    def _encode(self, tokens: Int[Tensor, "batch pos"], mask: Tensor | None) -> Tensor:
        resid = self.hook_embed(self.embed(tokens))
        n = tokens.shape[1]
        bias = self.encoder[0].attn.compute_relative_attention_bias(n, n, resid.device)
        attn_mask = AttentionMask.build(mask, n, n, resid.device, bias=bias, causal=False)
        for block in self.encoder:
            resid = block(resid, attn_mask)
        return self.encoder_final_ln(resid)

    def _decode(
        self,
        decoder_input: Int[Tensor, "batch dec_pos"],
        encoder_resid: Float[Tensor, "batch pos d_model"],
        encoder_mask: Tensor | None,
        kv_cache: KVCache | None = None,
        cross_caches: Sequence[CrossAttentionCache] | None = None,
    ) -> Float[Tensor, "batch dec_pos d_vocab"]:
        """The decoder over `decoder_input` (with a KV cache: the new positions only)."""
        batch, n_new = decoder_input.shape
        step = kv_cache.step(batch, n_new) if kv_cache is not None else None
        start, total = (step.start, step.end) if step is not None else (0, n_new)
        resid = self.hook_decoder_embed(self.embed(decoder_input))
        device = resid.device
        bias = self.decoder[0].attn.compute_relative_attention_bias(n_new, total, device, start)
        self_mask = AttentionMask.build(None, n_new, total, device, bias=bias)
        enc_len = encoder_resid.shape[1]
        cross_mask = AttentionMask.build(encoder_mask, n_new, enc_len, device, causal=False)
        for layer, block in enumerate(self.decoder):
            resid = block(
                resid,
                self_mask,
                encoder_resid,
                cross_mask,
                kv_cache.entries[layer] if kv_cache is not None else None,
                start,
                cross_caches[layer] if cross_caches is not None else None,
            )
        if step is not None:
            kv_cache.commit(step)
        resid = self.decoder_final_ln(resid)
        if self.cfg.scale_decoder_outputs:
            resid = resid * self.cfg.d_model**-0.5
        return self.unembed(resid)

    def forward(
        self,
        input: TextInput | Int[Tensor, "batch pos"],
        decoder_input: Int[Tensor, "batch dec_pos"] | None = None,
        return_type: Literal["logits"] | None = "logits",
        one_zero_attention_mask: Int[Tensor, "batch pos"] | None = None,
        attention_mask: Int[Tensor, "batch pos"] | None = None,
    ) -> Float[Tensor, "batch dec_pos d_vocab"] | None:
        """Encode `input` and decode `decoder_input`: the logits [batch, dec_pos, d_vocab].

        Args:
            input: text, a list of texts (right-padded, padding masked), or token ids.
            decoder_input: the decoder's tokens [batch, dec_pos] (they start with
                `cfg.decoder_start_token_id`); default for text input: that start token alone.
            return_type: "logits" or None.
            one_zero_attention_mask / attention_mask: the encoder's padding mask (1 = real
                token; TransformerLens's and transformers' names). The decoder is causal.
        """
        if return_type not in ("logits", None):
            raise ValueError(f"return_type must be 'logits' or None, got {return_type!r}")
        mask = one_zero_attention_mask if one_zero_attention_mask is not None else attention_mask
        tokens, mask = self._encoder_inputs(input, mask)
        if decoder_input is None:
            if not is_text(input):
                raise ValueError(
                    "pass decoder_input (the decoder's tokens, starting with "
                    f"decoder_start_token_id={self.cfg.decoder_start_token_id}) with token input"
                )
            decoder_input = self._start_tokens(tokens.shape[0])
        decoder_input = self._tokens(decoder_input)
        if decoder_input.shape[0] != tokens.shape[0]:
            raise ValueError(
                f"decoder_input has {decoder_input.shape[0]} rows, the input {tokens.shape[0]}"
            )
        logits = self._decode(decoder_input, self._encode(tokens, mask), mask)
        return logits if return_type == "logits" else None

    @torch.inference_mode()
    def generate(
        self,
        input: TextInput | Int[Tensor, "batch pos"] = "",
        one_zero_attention_mask: Int[Tensor, "batch pos"] | None = None,
        max_new_tokens: int = 10,
        stop_at_eos: bool = True,
        eos_token_id: int | Sequence[int] | None = None,
        do_sample: bool = True,
        top_k: int | None = None,
        top_p: float | None = None,
        temperature: float = 1.0,
        freq_penalty: float = 0.0,
        return_type: Literal["input", "str", "tokens"] | None = "input",
        verbose: bool = True,
        use_past_kv_cache: bool = True,
        seed: int | None = None,
    ) -> Int[Tensor, "batch new_pos"] | str | list[str]:
        """Generate the decoder's output for `input` (TransformerLens's arguments).

        The encoder runs once; each step runs the decoder on the new token only, reading its
        keys and values from a `KVCache` and the cross-attention's from a cache of the encoder
        output (`use_past_kv_cache=False` re-runs the decoder over every token, for the same
        result). Finished rows (after an EOS) are padded with the EOS id. Hooks attached with
        `model.hooks(...)` apply at every step.

        Returns:
            The decoder's tokens [batch, 1 + new] (starting with the start token), or with
            `return_type="str"` (and "input" for text input) the decoded text (a list for a
            batch), special tokens left out.

        Example:
            >>> model.generate("summarize: The cat sat on the mat.", max_new_tokens=5, do_sample=False)
        """
        from lmscope.generation import eos_ids
        from lmscope.kv_cache import KVCache
        from lmscope.sampling import check_sampling, sample_logits

        if return_type not in ("input", "str", "tokens", None):
            raise ValueError(f"return_type must be 'input', 'str' or 'tokens', got {return_type!r}")
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        check_sampling(do_sample, top_k, top_p, temperature)
        stop = (
            eos_ids(eos_token_id, lambda: self.tokenizer, self.cfg.d_vocab) if stop_at_eos else []
        )
        tokens, mask = self._encoder_inputs(input, one_zero_attention_mask)
        batch = tokens.shape[0]
        out = self._start_tokens(batch)
        encoder_resid = self._encode(tokens, mask)
        kv = crosses = None
        if use_past_kv_cache:
            device, dtype = self.W_E.device, self.W_E.dtype
            layers = [device] * self.cfg.n_decoder_layers
            kv = KVCache(self.cfg, batch, max_new_tokens + 1, device, dtype, layers)
            crosses = [CrossAttentionCache() for _ in self.decoder]
        generator = (
            torch.Generator(device=out.device).manual_seed(seed) if seed is not None else None
        )
        finished = torch.zeros(batch, dtype=torch.bool, device=out.device)
        stop_ids = torch.tensor(stop, device=out.device)
        for _ in tqdm(range(max_new_tokens), disable=not verbose, desc="generating"):
            step_input = out[:, -1:] if kv is not None else out
            logits = self._decode(step_input, encoder_resid, mask, kv, crosses)[:, -1]
            new = sample_logits(
                logits, do_sample, top_k, top_p, temperature, freq_penalty, out, generator
            )
            if stop:
                new = new.masked_fill(finished, stop[0])
                finished |= torch.isin(new, stop_ids)
            out = torch.cat([out, new[:, None]], dim=1)
            if stop and bool(finished.all()):
                break
        out = out.clone()  # a normal tensor, outside inference mode's
        if return_type == "tokens" or (return_type == "input" and not is_text(input)):
            return out
        texts = self.to_string(out)
        return texts[0] if isinstance(input, str) and batch == 1 else texts

    # -- weights (TransformerLens names) -----------------------------------------------------------
    def named_weights(self) -> dict[str, Tensor]:
        """Every weight under its TransformerLens name, as a view of the stored parameters.

        Example:
            >>> model.named_weights()["decoder.0.cross_attn.W_K"].shape  # [head, d_model, d_head]
        """
        views: dict[str, Tensor] = {"embed.W_E": self.embed.W_E}
        for stack in ("encoder", "decoder"):
            for layer, block in enumerate(getattr(self, stack)):
                prefix = f"{stack}.{layer}."
                attns = ("attn", "cross_attn") if stack == "decoder" else ("attn",)
                for attn in attns:
                    weights = getattr(block, attn).weights()
                    views.update({f"{prefix}{attn}.{k}": v for k, v in weights.items()})
                if layer == 0:
                    views[f"{prefix}attn.rel_pos_bias.weight"] = block.attn.rel_pos_bias.weight
                views.update({f"{prefix}mlp.{k}": v for k, v in block.mlp.weights().items()})
                for ln in ("ln1", "ln2", "ln3"):
                    norm = getattr(block, ln, None)
                    if norm is not None and norm.w is not None:
                        views[f"{prefix}{ln}.w"] = norm.w
        for ln in ("encoder_final_ln", "decoder_final_ln"):
            if getattr(self, ln).w is not None:
                views[f"{ln}.w"] = getattr(self, ln).w
        views["unembed.W_U"] = self.unembed.W_U
        views["unembed.b_U"] = self.unembed.b_U
        return views

    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab"]:
        return self.unembed.W_U

    @property
    def b_U(self) -> Float[Tensor, " d_vocab"]:
        return self.unembed.b_U

    @property
    def W_E(self) -> Float[Tensor, "d_vocab d_model"]:
        return self.embed.W_E

    @property
    def W_pos(self) -> None:
        raise NotImplementedError(
            "T5 has no absolute positional embeddings; its positions are relative buckets "
            "(model.encoder[0].attn.rel_pos_bias)"
        )

    def _both_stack(self, owner: str, name: str) -> Tensor:
        """Encoder then decoder blocks' `owner.name` stacked (TransformerLens's order)."""
        blocks = list(chain(self.encoder, self.decoder))
        return self._stack(blocks, lambda b: getattr(getattr(b, owner), name))

    W_Q = property(lambda self: self._both_stack("attn", "W_Q"))
    W_K = property(lambda self: self._both_stack("attn", "W_K"))
    W_V = property(lambda self: self._both_stack("attn", "W_V"))
    W_O = property(lambda self: self._both_stack("attn", "W_O"))
    b_Q = property(lambda self: self._both_stack("attn", "b_Q"))
    b_K = property(lambda self: self._both_stack("attn", "b_K"))
    b_V = property(lambda self: self._both_stack("attn", "b_V"))
    b_O = property(lambda self: self._both_stack("attn", "b_O"))
    W_in = property(lambda self: self._both_stack("mlp", "W_in"))
    W_out = property(lambda self: self._both_stack("mlp", "W_out"))
    b_in = property(lambda self: self._both_stack("mlp", "b_in"))
    b_out = property(lambda self: self._both_stack("mlp", "b_out"))

    def all_head_labels(self) -> list[str]:
        """ "EL{l}H{h}" for the encoder's heads, then "DL{l}H{h}" for the decoder's."""
        heads = range(self.cfg.n_heads)
        enc = [f"EL{layer}H{h}" for layer in range(self.cfg.n_layers) for h in heads]
        return enc + [f"DL{layer}H{h}" for layer in range(self.cfg.n_decoder_layers) for h in heads]

    # -- loading and processing ------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, model_name: str | os.PathLike, **kwargs: Any) -> HookedEncoderDecoder:
        """Load a T5ForConditionalGeneration checkpoint (a local directory or a hub id; T5 1.0,
        1.1 and flan-T5 configs). Weights load unprocessed, as in TransformerLens;
        `process_weights_(fold_ln=True)` folds the RMSNorm weights into their readers. See
        `lmscope.loading.encoders.load_encoder` for the options.

        Example:
            >>> model = HookedEncoderDecoder.from_pretrained("path/to/flan-t5-small")
        """
        from lmscope.loading.encoders import load_encoder

        return load_encoder(cls, model_name, **kwargs)

    def process_weights_(self, fold_ln: bool = True, **kwargs: bool) -> HookedEncoderDecoder:
        """Fold each RMSNorm's weight into the layers that read it (see
        `lmscope.encoders.processing.process_encoder_decoder_weights`). Returns the model.

        Example:
            >>> model.process_weights_(fold_ln=True)
        """
        from lmscope.encoders.processing import process_encoder_decoder_weights

        process_encoder_decoder_weights(self, fold_ln=fold_ln, **kwargs)
        return self
