"""HookedTransformer: one config-driven decoder-only transformer with a hook on every activation.

Example:
    >>> from lmscope import HookedTransformer
    >>> model = HookedTransformer.from_pretrained("smollm2-135m")
    >>> logits, cache = model.run_with_cache("The capital of France is")
    >>> cache["pattern", 3].shape          # [batch, head, q_pos, k_pos]
"""

from __future__ import annotations

import copy
import functools
import inspect
import os
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from jaxtyping import Bool, Float, Int, Integer
from torch import Tensor, nn

from lmscope.components.attention import AttentionMask, alibi_bias
from lmscope.components.block import TransformerBlock
from lmscope.components.embed import Embed, PosEmbed, Unembed
from lmscope.components.linear_attention import RecurrentMask
from lmscope.components.norm import LayerNorm, RMSNorm, make_norm
from lmscope.components.per_layer import PerLayerEmbed
from lmscope.components.rotary import Rotary
from lmscope.config import HookedTransformerConfig
from lmscope.devices import Placement, read_device_map
from lmscope.hooks import HookedRootModule, HookPoint
from lmscope.initialization import init_weights_
from lmscope.tokens import (  # noqa: F401 (importable from here, as before)
    check_attention_mask,
    check_attention_mask_values,
    check_padding_side,
    check_token_ids,
    input_to_tokens,
    real_positions,
    require_tokenizer,
    text_defaults,
    tokenize,
)
from lmscope.utils import lm_cross_entropy_loss

if TYPE_CHECKING:
    from pathlib import Path

    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from lmscope.cache import ActivationCache
    from lmscope.factored_matrix import FactoredMatrix
    from lmscope.kv_cache import KVCache

# Integer: uint8 token ids too (any integer dtype is read as ids)
ModelInput = str | Sequence[str] | Integer[Tensor, "batch pos"] | Integer[Tensor, " pos"]
ReturnType = Literal["logits", "loss", "both", None]
# 1 = real token, 0 = padding: integers, bools or nested lists of them
AttentionMaskInput = (
    Int[Tensor, "batch pos"] | Bool[Tensor, "batch pos"] | Sequence[Sequence[int]] | None
)

# Hook points that only fire while a config flag is on, and the setter that turns it on.
_FLAGGED_HOOKS = {
    "attn.hook_result": "set_use_attn_result",
    "hook_q_input": "set_use_split_qkv_input",
    "hook_k_input": "set_use_split_qkv_input",
    "hook_v_input": "set_use_split_qkv_input",
    "hook_attn_in": "set_use_attn_in",
    "hook_mlp_in": "set_use_hook_mlp_in",
}
_FLAG_OF_SETTER = {
    "set_use_attn_result": "use_attn_result",
    "set_use_split_qkv_input": "use_split_qkv_input",
    "set_use_attn_in": "use_attn_in",
    "set_use_hook_mlp_in": "use_hook_mlp_in",
}


@functools.cache
def _flag_setter(hook_name: str) -> str | None:
    """The `set_use_*` method a hook point needs in order to fire (None for most hooks); cached,
    since `run_with_cache` asks for every hook point on every call."""
    for suffix, setter in _FLAGGED_HOOKS.items():
        if hook_name.endswith(suffix):
            return setter
    return None


# TransformerLens 3.9's positional order of these methods' parameters after the first one or two,
# so calls written for it positionally mean the same here (generate's: `lmscope.generation`).
_FROM_PRETRAINED_ORDER = (
    "fold_ln", "center_writing_weights", "center_unembed", "refactor_factored_attn_matrices",
    "checkpoint_index", "checkpoint_value", "checkpoint_label", "hf_model", "device", "n_devices",
    "tokenizer", "move_to_device", "fold_value_biases", "default_prepend_bos",
    "default_padding_side", "dtype", "first_n_layers", "n_ctx",
)  # fmt: skip
_NO_PROCESSING_ORDER = (
    "fold_ln", "center_writing_weights", "center_unembed", "refactor_factored_attn_matrices",
    "fold_value_biases", "dtype", "default_prepend_bos", "default_padding_side",
)  # fmt: skip


def _positional(
    args: tuple[Any, ...], names: tuple[str, ...], method: str, kwargs: dict[str, Any]
) -> dict[str, Any]:
    """Name positional `args` by `names`, refusing too many and a value given twice."""
    if len(args) > len(names):
        raise TypeError(f"{method}() takes at most {len(names)} more positional arguments")
    named = dict(zip(names, args, strict=False))  # len(args) <= len(names)
    twice = sorted(set(named) & set(kwargs))
    if twice:
        raise TypeError(f"{method}() got multiple values for {twice[0]!r}")
    return named


def _prepends_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer puts BOS first on its own (the model's default for `prepend_bos`)."""
    ids = tokenizer("hello")["input_ids"]
    return tokenizer.bos_token_id is not None and len(ids) > 0 and ids[0] == tokenizer.bos_token_id


class HookedTransformer(HookedRootModule):
    """A decoder-only transformer whose every activation is a named HookPoint.

    Build a random model from a config (`HookedTransformer(cfg)`) or load a checkpoint with
    `HookedTransformer.from_pretrained(name_or_path)`.
    """

    def __init__(
        self,
        cfg: HookedTransformerConfig | dict[str, Any],
        tokenizer: PreTrainedTokenizerBase | None = None,
        move_to_device: bool = True,
        default_padding_side: Literal["left", "right"] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(cfg, dict):
            cfg = HookedTransformerConfig.from_dict(cfg)
        if default_padding_side is not None:
            check_padding_side(default_padding_side, "default_padding_side")
            cfg.default_padding_side = default_padding_side
        self.cfg = cfg
        self.embed = Embed(cfg)
        self.hook_embed = HookPoint()  # [batch, pos, d_model]
        if cfg.positional_embedding_type == "standard":
            self.pos_embed = PosEmbed(cfg)
            self.hook_pos_embed = HookPoint()  # [batch, pos, d_model]
        elif cfg.positional_embedding_type == "rotary":
            # (the global layers' head size, where it is their own: Gemma 4)
            self.rotary = Rotary(
                cfg.for_layer(cfg.layer_types.index("global"))
                if "global" in cfg.layer_types
                else cfg
            )
            if cfg.rotary_base_local is not None:  # local layers: their own base, no scaling
                self.rotary_local = Rotary(cfg, base=cfg.rotary_base_local, scaling=False)
        if cfg.post_embedding_ln:
            self.ln_embed = LayerNorm(cfg)
        if cfg.d_per_layer_input:  # Gemma 4's per-layer embeddings
            self.per_layer_embed = PerLayerEmbed(cfg)
        self.blocks = nn.ModuleList(TransformerBlock(cfg, layer) for layer in range(cfg.n_layers))
        norm = make_norm(cfg) if cfg.norm_placement != "post_residual" else None
        if norm is not None:
            self.ln_final = norm
        self.unembed = Unembed(cfg)
        self._placement: Placement | None = None
        if cfg.init_weights:
            self.init_weights()
        if cfg.device is not None and move_to_device:
            self.to(cfg.device)
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._tokenizer_loader: Callable[[], PreTrainedTokenizerBase] | None = None
        # the config.json this model was loaded from (set by from_pretrained; export reads it)
        self.hf_config: dict[str, Any] | None = None
        self.dataset: Any = None  # sample_datapoint's rows (load_sample_training_dataset)
        if tokenizer is not None:
            self.set_tokenizer(tokenizer)
        self.setup()

    # -- construction ----------------------------------------------------------------------------
    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> HookedTransformer:
        """After `.to(dtype)`, `.half()`, `.bfloat16()`, ..., `cfg.dtype` is the parameters'
        dtype again (KV caches and config-built tensors read it)."""
        super()._apply(fn, recurse)
        self.cfg.dtype = self.embed.W_E.dtype
        self._sync_placement()
        if self._placement is None and self.cfg.device is not None:
            self.cfg.device = str(self.embed.W_E.device)  # move_model_modules_to_device reads it
        return self

    def to(self, *args: Any, print_details: bool = True, **kwargs: Any) -> HookedTransformer:
        """`nn.Module.to` (device and/or dtype). `print_details`, TransformerLens's switch for
        printing the move, is accepted; lmscope prints nothing either way."""
        return super().to(*args, **kwargs)

    def mps(self) -> HookedTransformer:
        """Move the model to Apple's GPU (`self.to("mps")`), as TransformerLens's `mps()`."""
        return self.to("mps")

    def move_model_modules_to_device(self) -> HookedTransformer:
        """Move every part of the model to `cfg.device` (what `from_pretrained(device=...,
        move_to_device=False)` records and leaves undone). Returns the model.

        Example:
            >>> model = HookedTransformer.from_pretrained("gpt2", device="cuda", move_to_device=False)
            >>> model.move_model_modules_to_device()     # now on cuda
        """
        if self.cfg.device is None:
            return self
        return self.to(self.cfg.device)

    def _sync_placement(self) -> None:
        """Read where the parts of the model are, once per move (`.to`, `place`): the forward of
        a model on one device then never looks at devices."""
        self._placement = Placement.of(self)

    @property
    def device_map(self) -> dict[str, torch.device]:
        """Where each part is: "embed", "blocks.0" ... "blocks.{n_layers-1}", "ln_final",
        "unembed" (see `set_device_map`).

        Example:
            >>> model.device_map["blocks.0"]
            device(type='cpu')
        """
        return read_device_map(self)

    def set_device_map(
        self, device_map: str | dict[str, Any] | None = None, n_devices: int | None = None
    ) -> HookedTransformer:
        """Spread the model over several devices, as `from_pretrained(device_map=..., n_devices=...)`
        does: `"auto"` fills the GPUs in order and offloads the rest to the CPU, a dict names
        each part's device, `n_devices=N` splits the blocks evenly over cuda:0 ... cuda:N-1.
        `model.to(device)` gathers everything on one device again. Returns the model.

        Example:
            >>> model.set_device_map({"embed": "cuda:0", "blocks.0": "cuda:0",
            ...                       "blocks.1": "cuda:1", "unembed": "cuda:1"})
        """
        from lmscope.devices import DeviceRequest, place

        if device_map is None and n_devices is None:
            raise ValueError("pass device_map ('auto' or a dict) or n_devices")
        request = DeviceRequest.check(device_map, n_devices, None, self.cfg.dtype)
        if request is None:  # n_devices=1
            self.to(device_map or "cuda")
            return self
        request.check_layers(self.cfg.n_layers)
        place(self, request.plan(self))
        return self

    def init_weights(self) -> None:
        """Random weights as TransformerLens's `cfg.init_mode` draws them (default "gpt2":
        N(0, initializer_range²)), zero biases, unit norm weights (`lmscope.initialization`)."""
        if self.cfg.seed is not None:
            torch.manual_seed(self.cfg.seed)
        with torch.no_grad():
            init_weights_(self.named_weights(), self.cfg.init_mode, self.cfg.initializer_range)

    @classmethod
    def from_pretrained(
        cls, model_name: str | os.PathLike, *args: Any, **kwargs: Any
    ) -> HookedTransformer:
        """Load a checkpoint (alias, hub id, local directory or .gguf file) with weight processing.

        Defaults follow TransformerLens: fold_ln, center_writing_weights, center_unembed and
        fold_value_biases are on; `refactor_factored_attn_matrices=True` also puts each head's
        QK and OV circuits in SVD form (`lmscope.processing`). See `lmscope.loading.from_pretrained`
        for every other option.
        """
        from lmscope.loading import from_pretrained

        kwargs.update(_positional(args, _FROM_PRETRAINED_ORDER, "from_pretrained", kwargs))
        return from_pretrained(model_name, **kwargs)

    @classmethod
    def from_pretrained_no_processing(
        cls, model_name: str | os.PathLike, *args: Any, **kwargs: Any
    ) -> HookedTransformer:
        """Load a checkpoint with its weights exactly as stored (no folding or centring)."""
        from lmscope.loading import from_pretrained

        kwargs.update(
            _positional(args, _NO_PROCESSING_ORDER, "from_pretrained_no_processing", kwargs)
        )
        for step in ("fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases"):
            kwargs.setdefault(step, False)  # each step stays off unless asked for, as in TL
        return from_pretrained(model_name, **kwargs)

    def save_pretrained(
        self, path: str | os.PathLike, hf_config: dict[str, Any] | None = None
    ) -> Path:
        """Write the model, weights as they are now, as a Hugging Face checkpoint of its family
        (config.json, model.safetensors, tokenizer files) that `transformers` and
        `from_pretrained` load. What HF cannot express (weights processed out of its layout,
        config overrides) is refused before any file is written. See `lmscope.loading.export`.

        Example:
            >>> model.save_pretrained("edited")   # AutoModelForCausalLM.from_pretrained("edited")
        """
        from lmscope.loading.export import save_pretrained

        return save_pretrained(self, path, hf_config)

    def to_hf(self, hf_config: dict[str, Any] | None = None, **kwargs: Any) -> PreTrainedModel:
        """The model as a `transformers` model of its family with the same weights, built in
        memory; `kwargs` go to transformers' `from_pretrained` (e.g. attn_implementation).

        Example:
            >>> model.to_hf()(tokens).logits   # model(tokens), computed by transformers
        """
        from lmscope.loading.export import to_hf

        return to_hf(self, hf_config, **kwargs)

    def set_tokenizer(
        self,
        tokenizer: PreTrainedTokenizerBase,
        default_padding_side: Literal["left", "right"] | None = None,
        default_prepend_bos: bool | None = None,
    ) -> None:
        """Attach a Hugging Face tokenizer. Without a pad token, EOS (or BOS) pads; without a
        BOS token, EOS is prepended as BOS (as TransformerLens does)."""
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.bos_token
        if tokenizer.bos_token is None and tokenizer.eos_token is not None:
            tokenizer.bos_token = tokenizer.eos_token
        self._tokenizer, self._tokenizer_loader = tokenizer, None
        if default_prepend_bos is not None:
            self.cfg.default_prepend_bos = default_prepend_bos
        if default_padding_side is not None:
            check_padding_side(default_padding_side, "default_padding_side")
            self.cfg.default_padding_side = default_padding_side

    def set_tokenizer_loader(
        self,
        load: Callable[[], PreTrainedTokenizerBase],
        default_prepend_bos: bool | None = None,
    ) -> None:
        """Attach a tokenizer that `load()` builds on first use of `model.tokenizer`.

        Reading a tokenizer is the slowest part of loading a small model (~0.2 s for SmolLM2,
        seconds from a GGUF file), and scripts that pass token ids never need it. With
        `default_prepend_bos` given (`from_pretrained` passes its architecture's), it is set now
        and the tokenizer waits; without it, `cfg.default_prepend_bos` is what the tokenizer does,
        so the tokenizer loads now to tell.

        Example:
            >>> model.set_tokenizer_loader(lambda: AutoTokenizer.from_pretrained(path), True)
        """
        if default_prepend_bos is None:
            tokenizer = load()
            self.set_tokenizer(tokenizer, default_prepend_bos=_prepends_bos(tokenizer))
            return
        self._tokenizer, self._tokenizer_loader = None, load
        self.cfg.default_prepend_bos = default_prepend_bos

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase | None:
        """The Hugging Face tokenizer (None if the model has none); see `set_tokenizer_loader`."""
        if self._tokenizer is None and self._tokenizer_loader is not None:
            self.set_tokenizer(self._tokenizer_loader())
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, tokenizer: PreTrainedTokenizerBase | None) -> None:
        self._tokenizer, self._tokenizer_loader = tokenizer, None

    # -- hook flags --------------------------------------------------------------------------------
    def set_use_attn_result(self, use_attn_result: bool) -> None:
        """Compute `attn.hook_result` [batch, pos, head, d_model], each head's output (memory heavy)."""
        self.cfg.use_attn_result = use_attn_result

    def set_use_split_qkv_input(self, use_split_qkv_input: bool) -> None:
        """Give each head its own copy of the residual: `hook_q_input`, `hook_k_input`, `hook_v_input`."""
        self.cfg.use_split_qkv_input = use_split_qkv_input

    def set_use_attn_in(self, use_attn_in: bool) -> None:
        """Give each head its own copy of the residual at `hook_attn_in` (also with grouped-query
        attention, which TransformerLens refuses)."""
        self.cfg.use_attn_in = use_attn_in

    def set_use_hook_mlp_in(self, use_hook_mlp_in: bool) -> None:
        """Fire `hook_mlp_in`, the MLP's input before ln2."""
        if use_hook_mlp_in and self.cfg.attn_only:
            raise ValueError("this model is attention-only: it has no MLP, so no hook_mlp_in")
        self.cfg.use_hook_mlp_in = use_hook_mlp_in

    def set_ungroup_grouped_query_attention(self, ungroup_grouped_query_attention: bool) -> None:
        """Give keys and values one head per query head (`cfg.ungroup_grouped_query_attention`)
        in models with grouped-query attention, as TransformerLens does."""
        self.cfg.ungroup_grouped_query_attention = ungroup_grouped_query_attention

    def _disabled_reason(self, name: str) -> str | None:
        setter = _flag_setter(name)
        if setter is not None and not getattr(self.cfg, _FLAG_OF_SETTER[setter]):
            return f"hook {name!r} only fires after model.{setter}(True)"
        return None

    def _hook_gate_key(self) -> tuple[bool, ...]:
        """The config flags `_disabled_reason` reads."""
        return tuple(bool(getattr(self.cfg, flag)) for flag in _FLAG_OF_SETTER.values())

    def _make_cache(self, cache: dict[str, Tensor]) -> ActivationCache:
        from lmscope.cache import ActivationCache

        return ActivationCache(cache, self)

    # -- tokens --------------------------------------------------------------------------------------
    def _require_tokenizer(self) -> PreTrainedTokenizerBase:
        return require_tokenizer(self.tokenizer)

    def _tokenize(
        self,
        text: str | Sequence[str],
        prepend_bos: bool | None = None,
        padding_side: str | None = None,
    ) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"] | None]:
        """Token ids and attention mask (None when nothing was padded) for text."""
        tok = self._require_tokenizer()
        bos, side = text_defaults(self.cfg, prepend_bos, padding_side)
        return tokenize(tok, text, bos, side, self.W_E.device)

    def to_tokens(
        self,
        input: str | Sequence[str],
        prepend_bos: bool | None = None,
        padding_side: Literal["left", "right"] | None = None,
        move_to_device: bool = True,
        truncate: bool = False,
    ) -> Int[Tensor, "batch pos"]:
        """Text to token ids [batch, pos]; lists are padded on `padding_side`.

        BOS is prepended once when `prepend_bos` (default: what this model's HF tokenizer does),
        never twice: the tokenizer's own special tokens are turned off first.
        """
        tokens, _ = self._tokenize(input, prepend_bos, padding_side)
        if truncate:
            tokens = tokens[:, : self.cfg.n_ctx]
        return tokens if move_to_device else tokens.cpu()

    def to_string(self, tokens: Int[Tensor, "... pos"] | Sequence[int] | int) -> str | list[str]:
        """Token ids back to text (a list of strings for a batch)."""
        tok = self._require_tokenizer()
        if isinstance(tokens, Tensor):
            tokens = tokens.tolist()
        if isinstance(tokens, int):
            tokens = [tokens]
        if tokens and isinstance(tokens[0], list):
            return [tok.decode(seq, clean_up_tokenization_spaces=False) for seq in tokens]
        return tok.decode(tokens, clean_up_tokenization_spaces=False)

    def to_str_tokens(
        self,
        input: str | Int[Tensor, " pos"] | Int[Tensor, "1 pos"] | Sequence[int] | Sequence[str],
        prepend_bos: bool | None = None,
        padding_side: Literal["left", "right"] | None = None,
    ) -> list[str] | list[list[str]]:
        """Each token of `input` as its own string (a list of strings gives one list each)."""
        tok = self._require_tokenizer()
        if isinstance(input, (list, tuple)) and input and isinstance(input[0], str):
            return [self.to_str_tokens(text, prepend_bos, padding_side) for text in input]
        if isinstance(input, str):
            ids = self.to_tokens(input, prepend_bos, padding_side)[0].tolist()
        elif isinstance(input, Tensor):
            if input.ndim > 2 or (input.ndim == 2 and input.shape[0] != 1):
                raise ValueError(
                    f"to_str_tokens takes one sequence: tokens of shape [pos] or [1, pos], got "
                    f"{tuple(input.shape)}; call it per row for a batch"
                )
            ids = input.flatten().tolist()
        else:
            ids = list(input)
        return [tok.decode([i], clean_up_tokenization_spaces=False) for i in ids]

    def to_single_token(self, string: str) -> int:
        """The id of a string that is exactly one token (errors otherwise)."""
        ids = self.to_tokens(string, prepend_bos=False)[0]
        if ids.numel() != 1:
            pieces = self.to_str_tokens(ids)
            raise ValueError(f"{string!r} is {ids.numel()} tokens {pieces}, not one")
        return int(ids[0])

    def to_single_str_token(self, int_token: int) -> str:
        """The string of one token id.

        Example:
            >>> model.to_single_str_token(model.to_single_token(" Paris"))
            ' Paris'
        """
        if isinstance(int_token, bool) or not isinstance(int_token, int):
            raise TypeError(f"int_token must be an int, got {type(int_token).__name__}")
        return self.to_str_tokens([int_token])[0]

    def get_token_position(
        self,
        single_token: str | int,
        input: str | Int[Tensor, " pos"] | Int[Tensor, "1 pos"],
        mode: Literal["first", "last"] = "first",
        prepend_bos: bool | None = None,
        padding_side: Literal["left", "right"] | None = None,
    ) -> int:
        """Position of `single_token` in `input` (its first or last occurrence)."""
        if mode not in ("first", "last"):
            raise ValueError(f"mode must be 'first' or 'last', got {mode!r}")
        tokens = (
            self.to_tokens(input, prepend_bos, padding_side) if isinstance(input, str) else input
        )
        if tokens.ndim > 2 or (tokens.ndim == 2 and tokens.shape[0] != 1):
            raise ValueError(
                f"input must be one sequence, tokens of shape [pos] or [1, pos], got "
                f"{tuple(tokens.shape)}"
            )
        tokens = tokens.flatten()
        if isinstance(single_token, str):
            token_id = self.to_single_token(single_token)
        else:
            token_id = int(single_token)
        hits = (tokens == token_id).nonzero().flatten()
        if hits.numel() == 0:
            raise ValueError(f"token {single_token!r} does not occur in the input")
        return int(hits[0] if mode == "first" else hits[-1])

    # -- forward ---------------------------------------------------------------------------------------
    def _input_to_tokens(
        self,
        input: ModelInput,
        prepend_bos: bool | None,
        padding_side: str | None,
        attention_mask: AttentionMaskInput,
    ) -> tuple[Int[Tensor, "batch pos"], AttentionMaskInput]:
        """Token ids [batch, pos] and the attention mask (the caller's, else the padding's);
        see `lmscope.tokens.input_to_tokens`. A compiled run checked them before it was traced."""
        if torch.compiler.is_compiling():
            return input, attention_mask
        return input_to_tokens(
            input,
            self.cfg,
            lambda: self.tokenizer,
            self.W_E.device,
            prepend_bos,
            padding_side,
            attention_mask,
        )

    def _check_token_ids(self, input: Any) -> Int[Tensor, "batch pos"]:
        """Token ids as a [batch, pos] integer tensor on the model's device, after checking their
        shape, dtype and range (`lmscope.tokens.check_token_ids`). A compiled run checks them
        before it is traced (`_compile_inputs`: the range check reads the ids)."""
        if torch.compiler.is_compiling():
            return input
        return check_token_ids(input, self.cfg.d_vocab, self.W_E.device)

    def _compile_inputs(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """A compiled run's forward arguments (see `lmscope.compiled`): text tokenized and token
        ids checked eagerly, an attention mask without padding dropped. Raises NotCompilable
        for what a compiled graph cannot take (padding, a KV cache, a model over devices)."""
        from lmscope.compiled import NotCompilable

        bound = inspect.signature(self.forward).bind(*args, **kwargs)
        call = bound.arguments
        if self._placement is not None:
            raise NotCompilable("the model is spread over devices (device_map)")
        if call.get("past_kv_cache") is not None:
            raise NotCompilable("past_kv_cache: a KV cache grows, so its shapes change")
        mask = call.pop("attention_mask", None)
        if call.get("start_at_layer") is None:
            tokens, mask = self._input_to_tokens(
                call["input"], call.pop("prepend_bos", None), call.pop("padding_side", None), mask
            )
            call["input"] = tokens
        elif call.get("tokens") is not None:
            call["tokens"] = self._check_token_ids(call["tokens"])
        if mask is not None:
            batch, n_pos = call["input"].shape[:2]
            mask = check_attention_mask(mask, (batch, n_pos), self.W_E.device)
            if not bool(mask.all()):
                raise NotCompilable("padding (an attention mask with zeros)")
        return (), call

    def forward(
        self,
        input: ModelInput | Float[Tensor, "batch pos d_model"],
        return_type: ReturnType = "logits",
        loss_per_token: bool = False,
        prepend_bos: bool | None = None,
        padding_side: Literal["left", "right"] | None = None,
        start_at_layer: int | None = None,
        tokens: Int[Tensor, "batch pos"] | None = None,
        shortformer_pos_embed: Float[Tensor, "batch pos d_model"] | None = None,
        attention_mask: AttentionMaskInput = None,
        stop_at_layer: int | None = None,
        past_kv_cache: KVCache | None = None,
    ) -> Any:
        """Run the model.

        Args:
            input: text, list of texts (padded; padding is masked), token ids, or with
                `start_at_layer` the residual stream [batch, pos, d_model] entering that layer.
            return_type: "logits", "loss" (mean next-token loss), "both" (logits, loss) or None.
            attention_mask: 1 for real tokens, 0 for padding (ints or bools), of the tokens' shape
                [batch, pos]; positions count only real tokens, so left-padded rows give the same
                logits as unpadded ones.
            start_at_layer / stop_at_layer: run blocks [start, stop) only; with stop_at_layer the
                residual stream entering that layer is returned. `tokens` gives the token ids for
                the loss when starting from a residual.
            past_kv_cache: a `KVCache`: attend to the positions it holds and append these (see
                `lmscope.kv_cache.KVCache`); `attention_mask` then covers the new tokens only.
            shortformer_pos_embed: TransformerLens's positional input for shortformer models,
                which lmscope does not load; refused.

        Example:
            >>> loss = model("The cat sat on the mat", return_type="loss")
        """
        if shortformer_pos_embed is not None:
            raise ValueError(
                "shortformer_pos_embed is for TransformerLens's shortformer models, which "
                "lmscope does not load; start_at_layer takes the residual stream alone"
            )
        if start_at_layer is None:
            tokens, attention_mask = self._input_to_tokens(
                input, prepend_bos, padding_side, attention_mask
            )
            batch, n_pos = tokens.shape
        else:
            resid = input
            if (
                not isinstance(resid, Tensor)
                or resid.ndim != 3
                or resid.shape[-1] != self.cfg.d_model
            ):
                raise ValueError(
                    f"with start_at_layer, input is the residual stream [batch, pos, {self.cfg.d_model}]"
                )
            batch, n_pos = resid.shape[:2]
            if tokens is not None and tuple(tokens.shape) != (batch, n_pos):
                raise ValueError(
                    f"tokens has shape {tuple(tokens.shape)}, but the residual stream's "
                    f"[batch, pos] is {(batch, n_pos)}; pass the token ids of this residual"
                )
        device = self.W_E.device
        if attention_mask is not None:
            attention_mask = check_attention_mask(attention_mask, (batch, n_pos), device)
        # key_mask: which keys are real (None: all); with a KV cache, the cached ones too
        step = None
        if past_kv_cache is not None:
            step = past_kv_cache.step(batch, n_pos, attention_mask)
            start, total, key_mask, positions = step.start, step.end, step.key_mask, step.positions
        else:
            start, total = 0, n_pos
        if total > self.cfg.n_ctx:
            raise ValueError(
                f"input has {total} tokens but the model's context is n_ctx={self.cfg.n_ctx}; "
                "shorten it (model.to_tokens(text, truncate=True) cuts it to n_ctx)"
            )
        if step is None and attention_mask is not None:
            positions, key_mask = real_positions(attention_mask, n_pos)
        elif step is None:
            key_mask = None
            positions = torch.arange(n_pos, device=device).expand(batch, n_pos)

        if start_at_layer is None:
            resid = self._embed(tokens, positions)
        masks, rotaries = self._layer_inputs(key_mask, positions, n_pos, total, resid.dtype)

        placement = self._placement  # None on one device: nothing below moves
        layers = range(self.cfg.n_layers)[start_at_layer:stop_at_layer]
        if placement is not None:
            spread = placement.spread(masks, rotaries, layers)
        extra = self._gemma4_inputs(resid, tokens, start_at_layer)
        blocks = self.blocks  # indexed, not sliced: a ModuleList slice builds a new ModuleList
        for layer in layers:
            block = blocks[layer]
            entry = past_kv_cache.entries[layer] if past_kv_cache is not None else None
            if placement is not None:
                resid, dev = placement.enter(layer, resid, entry)
                masks, rotaries = spread[dev]
            kind = block.attn_type
            if extra is None:
                resid = block(resid, masks[kind], rotaries.get(kind), entry, start)
            else:
                shared_kv, per_layer = extra
                layer_input = None if per_layer is None else per_layer[:, :, layer]
                resid = block(
                    resid, masks[kind], rotaries.get(kind), entry, start, shared_kv, layer_input
                )
        if step is not None:
            past_kv_cache.commit(step)
        if stop_at_layer is not None:
            return resid
        if hasattr(self, "ln_final"):
            resid = self.ln_final(resid if placement is None else resid.to(placement.ln_final))
        logits = self.unembed(resid if placement is None else resid.to(placement.unembed))
        cap = self.cfg.output_logits_soft_cap
        if cap > 0:
            logits = cap * torch.tanh(logits / cap)
        if return_type == "logits":
            return logits
        if return_type is None:
            return None
        if tokens is None:
            raise ValueError("a loss needs token ids: pass tokens=... with start_at_layer")
        if placement is not None:  # the loss is computed on the unembedding's device
            tokens = tokens.to(logits.device)
            if attention_mask is not None:
                attention_mask = attention_mask.to(logits.device)
        loss = lm_cross_entropy_loss(logits, tokens, attention_mask, per_token=loss_per_token)
        if return_type == "loss":
            return loss
        if return_type == "both":
            return logits, loss
        raise ValueError(
            f"return_type must be 'logits', 'loss', 'both' or None, got {return_type!r}"
        )

    def _gemma4_inputs(
        self, resid: Tensor, tokens: Tensor | None, start_at_layer: int | None
    ) -> tuple[dict[int, tuple[Tensor, Tensor]], Tensor | None] | None:
        """Gemma 4's extra block inputs, None for other models: a dict in which layers leave
        their keys and values for the layers that reuse them, and the per-layer inputs
        [batch, pos, n_layers, d_per_layer_input] (`per_layer_embed`). They are computed from
        the token ids and their embedding (`hook_embed`'s value, or with `start_at_layer` the
        embedding of `tokens`)."""
        cfg = self.cfg
        if not (cfg.layer_scalars or cfg.d_per_layer_input or cfg.kv_source_layers):
            return None
        per_layer = None
        runs_blocks = start_at_layer is None or start_at_layer < cfg.n_layers
        if cfg.d_per_layer_input and runs_blocks:
            if start_at_layer is None:
                embed = resid
            elif tokens is None:
                raise ValueError(
                    "this model's blocks read per-layer embeddings of the token ids (Gemma 4): "
                    "with start_at_layer, pass tokens=... too"
                )
            else:
                embed = self.embed(tokens)
            per_layer = self.per_layer_embed(tokens, embed)
        return {}, per_layer

    def _embed(
        self, tokens: Int[Tensor, "batch pos"], positions: Int[Tensor, "batch pos"]
    ) -> Float[Tensor, "batch pos d_model"]:
        """The residual stream entering block 0: token (and learned position) embeddings."""
        resid = self.hook_embed(self.embed(tokens))
        if self.cfg.positional_embedding_type == "standard":
            resid = resid + self.hook_pos_embed(self.pos_embed(positions))
        if self.cfg.post_embedding_ln:
            resid = self.ln_embed(resid)
        return resid

    def input_to_embed(
        self,
        input: ModelInput,
        prepend_bos: bool | None = None,
        padding_side: Literal["left", "right"] | None = None,
        attention_mask: AttentionMaskInput = None,
        past_kv_cache: Any = None,
    ) -> tuple[
        Float[Tensor, "batch pos d_model"],
        Int[Tensor, "batch pos"],
        None,
        Int[Tensor, "batch pos"] | None,
    ]:
        """The residual stream entering block 0, as TransformerLens returns it: (residual,
        tokens, shortformer_pos_embed (always None: no shortformer models here), attention_mask
        (None when nothing is padded)). `model(residual, start_at_layer=0)` continues the run.

        Example:
            >>> resid, tokens, _, mask = model.input_to_embed("Hello world")
        """
        if past_kv_cache is not None:
            raise ValueError(
                "input_to_embed takes no past_kv_cache in lmscope: pass the cache to "
                "model(tokens, past_kv_cache=cache) (lmscope.kv_cache.KVCache)"
            )
        tokens, mask = self._input_to_tokens(input, prepend_bos, padding_side, attention_mask)
        batch, n_pos = tokens.shape
        if mask is not None:
            mask = check_attention_mask(mask, (batch, n_pos), tokens.device)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
        else:
            positions = torch.arange(n_pos, device=tokens.device).expand(batch, n_pos)
        return self._embed(tokens, positions), tokens, None, mask

    def generate(self, input: Any = "", max_new_tokens: int = 10, *args: Any, **kwargs: Any) -> Any:
        """Continue `input` by up to `max_new_tokens` tokens; see `lmscope.generation.generate`.

        Example:
            >>> model.generate("The capital of France is", max_new_tokens=3, do_sample=False)
        """
        from lmscope.generation import GENERATE_ORDER, generate

        kwargs.update(_positional(args, GENERATE_ORDER, "generate", kwargs))
        return generate(self, input, max_new_tokens, **kwargs)

    def generate_stream(
        self, input: Any = "", max_new_tokens: int = 10, *args: Any, **kwargs: Any
    ) -> Any:
        """Yield new tokens as they are generated; see `lmscope.generation.generate_stream`."""
        from lmscope.generation import GENERATE_ORDER, generate_stream

        order = ("max_tokens_per_yield", *GENERATE_ORDER)
        kwargs.update(_positional(args, order, "generate_stream", kwargs))
        return generate_stream(self, input, max_new_tokens, **kwargs)

    def _layer_inputs(
        self,
        key_mask: Tensor | None,
        positions: Tensor,
        n_pos: int,
        total: int,
        dtype: torch.dtype,
    ) -> tuple[dict[str, AttentionMask], dict[str, tuple[Tensor, Tensor]]]:
        """The attention mask and rotary tables (in the activations' `dtype`) of each attention
        type, built once per forward."""
        cfg = self.cfg
        device = positions.device
        bias = None
        if cfg.positional_embedding_type == "alibi":
            key_pos = (
                (key_mask.cumsum(-1) - 1).clamp(min=0)
                if key_mask is not None
                else torch.arange(total, device=device)[None]
            )
            bias = alibi_bias(cfg.n_heads, key_pos, n_pos)
        masks, rotaries = {}, {}
        for kind in set(cfg.layer_types):
            if kind == "linear":  # a recurrent layer reads only which new positions are real
                masks[kind] = RecurrentMask(None if key_mask is None else key_mask[:, -n_pos:])
                continue
            window = cfg.window_size if kind == "local" else None
            chunk = cfg.attention_chunk_size if kind == "chunked" else None
            masks[kind] = AttentionMask.build(
                key_mask, n_pos, total, device, window, bias, chunk=chunk
            )
            if cfg.positional_embedding_type == "rotary":
                local = kind == "local" and hasattr(self, "rotary_local")
                rotaries[kind] = (self.rotary_local if local else self.rotary)(positions, dtype)
        return masks, rotaries

    def loss_fn(
        self,
        logits: Float[Tensor, "batch pos d_vocab"],
        tokens: Int[Tensor, "batch pos"],
        attention_mask: Int[Tensor, "batch pos"] | None = None,
        per_token: bool = False,
    ) -> Tensor:
        """Next-token cross-entropy of `logits` on `tokens` (see utils.lm_cross_entropy_loss)."""
        return lm_cross_entropy_loss(logits, tokens, attention_mask, per_token)

    # -- weights (TransformerLens names and layouts) -----------------------------------------------
    def named_weights(self) -> dict[str, Tensor]:
        """Every weight under its TransformerLens name, as a view of the stored parameters.

        Writing into a view (`model.named_weights()["blocks.0.attn.W_Q"][3] = 0`) edits the model.
        """
        views: dict[str, Tensor] = {"embed.W_E": self.embed.W_E}
        if hasattr(self, "pos_embed"):
            views["pos_embed.W_pos"] = self.pos_embed.W_pos
        norms = {name: m for name, m in self.named_modules() if isinstance(m, (LayerNorm, RMSNorm))}
        for layer, block in enumerate(self.blocks):
            prefix = f"blocks.{layer}."
            # (keys and values per kv head, never ungrouped; latent attention has its own)
            name, mixer = block.mixer()
            views.update({f"{prefix}{name}.{k}": v for k, v in mixer.weights().items()})
            if not self.cfg.attn_only:
                views.update({f"{prefix}mlp.{k}": v for k, v in block.mlp.weights().items()})
        for name, norm in norms.items():
            for pname in ("w", "b"):
                param = getattr(norm, pname, None)
                if param is not None:
                    views[f"{name}.{pname}"] = param
        views["unembed.W_U"] = self.unembed.W_U
        views["unembed.b_U"] = self.unembed.b_U
        return views

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            # A property that raised AttributeError (W_pos on a rotary model, W_gate on a plain
            # MLP) lands here, and nn.Module would replace its message with a generic one.
            prop = getattr(type(self), name, None)
            if isinstance(prop, property) and prop.fget is not None:
                prop.fget(self)
            raise

    def _mlp_stack(self, name: str) -> Tensor:
        if self.cfg.attn_only:
            raise AttributeError(f"this model is attention-only, so it has no {name}")
        if self.cfg.num_experts:
            raise AttributeError(
                f"this model's MLPs are mixtures of experts, so there is no single {name}: use "
                f"model.blocks[layer].mlp.experts[e].{name} (and mlp.W_gate for the router)"
            )
        return self._stack(lambda b: getattr(b.mlp, name))

    def _attn_stack(self, get: Any) -> Tensor:
        if "linear" in self.cfg.layer_types:
            raise AttributeError(
                "this model mixes attention with linear-attention layers, so its attention "
                "weights do not stack over layers: use model.blocks[layer].attn (attention "
                "layers) or model.blocks[layer].linear_attn (cfg.layer_types says which)"
            )
        return self._stack(get)

    def _stack(self, get: Any) -> Tensor:
        """Each block's `get(block)` stacked over layers (on the first block's device)."""
        parts = [get(block) for block in self.blocks]
        if self._placement is not None:
            parts = [part.to(parts[0].device) for part in parts]
        shapes = sorted({tuple(part.shape) for part in parts})
        if len(shapes) > 1:  # Gemma 4: global layers' heads, double-wide MLPs
            raise AttributeError(
                f"this model's layers have weights of different shapes ({shapes}), so they do "
                "not stack over layers: read them per layer, model.blocks[layer]..."
            )
        return torch.stack(parts, dim=0)

    @property
    def W_E(self) -> Float[Tensor, "d_vocab d_model"]:
        return self.embed.W_E

    @property
    def W_pos(self) -> Float[Tensor, "n_ctx d_model"]:
        if not hasattr(self, "pos_embed"):
            raise AttributeError("this model has rotary positions, so no W_pos")
        return self.pos_embed.W_pos

    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab"]:
        return self.unembed.W_U

    @property
    def b_U(self) -> Float[Tensor, " d_vocab"]:
        return self.unembed.b_U

    @property
    def W_Q(self) -> Float[Tensor, "n_layers head d_model d_head"]:
        return self._attn_stack(lambda b: b.attn.W_Q)

    @property
    def W_K(self) -> Float[Tensor, "n_layers kv_head d_model d_head"]:
        return self._attn_stack(lambda b: b.attn.W_K)

    @property
    def W_V(self) -> Float[Tensor, "n_layers kv_head d_model d_head"]:
        return self._attn_stack(lambda b: b.attn.W_V)

    @property
    def W_O(self) -> Float[Tensor, "n_layers head d_head d_model"]:
        return self._attn_stack(lambda b: b.attn.W_O)

    @property
    def b_Q(self) -> Float[Tensor, "n_layers head d_head"]:
        return self._attn_stack(lambda b: b.attn.b_Q)

    @property
    def b_K(self) -> Float[Tensor, "n_layers kv_head d_head"]:
        return self._attn_stack(lambda b: b.attn.b_K)

    @property
    def b_V(self) -> Float[Tensor, "n_layers kv_head d_head"]:
        return self._attn_stack(lambda b: b.attn.b_V)

    @property
    def b_O(self) -> Float[Tensor, "n_layers d_model"]:
        return self._attn_stack(lambda b: b.attn.b_O)

    @property
    def W_in(self) -> Float[Tensor, "n_layers d_model d_mlp"]:
        return self._mlp_stack("W_in")

    @property
    def W_gate(self) -> Float[Tensor, "n_layers d_model d_mlp"]:
        if not self.cfg.gated_mlp:
            raise AttributeError("this model's MLP is not gated, so it has no W_gate")
        return self._mlp_stack("W_gate")

    @property
    def W_out(self) -> Float[Tensor, "n_layers d_mlp d_model"]:
        return self._mlp_stack("W_out")

    @property
    def b_in(self) -> Float[Tensor, "n_layers d_mlp"]:
        return self._mlp_stack("b_in")

    @property
    def b_out(self) -> Float[Tensor, "n_layers d_model"]:
        return self._mlp_stack("b_out")

    def _expand_heads(self, w: Tensor) -> Tensor:
        """Stacked kv-head weights [n_layers, kv_head, ...] per query head (as they are when
        ungrouped)."""
        if w.shape[1] == self.cfg.n_heads:
            return w
        return w.repeat_interleave(self.cfg.n_groups, dim=1)

    @property
    def QK(self) -> FactoredMatrix:
        """Each head's bilinear form W_Q W_K^T as a FactoredMatrix [n_layers, head, d_model,
        d_model] (never formed densely; keys expanded over query groups; `.AB` for the dense one)."""
        from lmscope.factored_matrix import FactoredMatrix

        return FactoredMatrix(self.W_Q, self._expand_heads(self.W_K).transpose(-1, -2))

    @property
    def OV(self) -> FactoredMatrix:
        """Each head's W_V W_O as a FactoredMatrix [n_layers, head, d_model, d_model] (values
        expanded over query groups; `.AB` for the dense one)."""
        from lmscope.factored_matrix import FactoredMatrix

        return FactoredMatrix(self._expand_heads(self.W_V), self.W_O)

    def all_composition_scores(
        self, mode: Literal["Q", "K", "V"]
    ) -> Float[Tensor, "n_layers head n_layers head"]:
        """Composition scores of every earlier head's OV into every later head's Q, K or V input:
        `|OV_1 M_2|_F / (|OV_1|_F |M_2|_F)` with M = QK (Q), QK^T (K) or OV (V). Entry
        [l1, h1, l2, h2] is zero unless l1 < l2.

        Example:
            >>> scores = model.all_composition_scores("K")   # K-composition, e.g. induction heads
        """
        from lmscope.factored_matrix import product_norms

        if mode not in ("Q", "K", "V"):
            raise ValueError(f"mode must be 'Q', 'K' or 'V', got {mode!r}")
        with torch.no_grad():
            ov = self.OV
            right = ov if mode == "V" else self.QK if mode == "Q" else self.QK.T
            left = ov.collapse_l()  # [l, h, m, d]: |U S Vh^T X| = |S Vh^T X|
            right = right.collapse_r()  # [l, h, d, m]
            l_norms = left.norm(dim=(-2, -1))
            r_norms = right.norm(dim=(-2, -1))
            n, heads = self.cfg.n_layers, self.cfg.n_heads
            scores = left.new_zeros(n, heads, n, heads)
            for layer in range(n - 1):  # one layer's heads against all later heads at a time
                comp = product_norms(left[layer], right[layer + 1 :])  # [h, later, h]
                comp = comp / l_norms[layer, :, None, None] / r_norms[layer + 1 :]
                scores[layer, :, layer + 1 :] = comp
        return scores

    def accumulated_bias(
        self, layer: int, mlp_input: bool = False, include_mlp_biases: bool = True
    ) -> Float[Tensor, " d_model"]:
        """Sum of the output biases written to the residual stream before `layer` (b_O, and b_out
        with `include_mlp_biases`); with `mlp_input`, also b_O of `layer` (sequential blocks).

        Example:
            >>> model.accumulated_bias(model.cfg.n_layers)     # every bias in the residual stream
        """
        n = self.cfg.n_layers
        if not 0 <= layer <= n:
            raise ValueError(f"layer must lie in [0, {n}], got {layer}")
        total = torch.zeros(self.cfg.d_model, dtype=self.cfg.dtype, device=self.W_E.device)
        for block in self.blocks[:layer]:
            total = total + block.mixer()[1].b_O.to(total.device)
            if include_mlp_biases and not self.cfg.attn_only:
                if hasattr(block.mlp, "experts"):  # routed experts' biases depend on the input
                    if any(bool(e.b_out.any()) for e in block.mlp.experts):
                        raise ValueError(
                            "MoE experts with output biases add an input-dependent bias"
                        )
                    continue
                total = total + block.mlp.b_out.to(total.device)
        if mlp_input:
            if layer == n:
                raise ValueError("mlp_input=True needs layer < n_layers")
            if not self.cfg.parallel_attn_mlp:
                total = total + self.blocks[layer].attn.b_O.to(total.device)
        return total

    def tokens_to_residual_directions(
        self, tokens: str | int | Int[Tensor, ""] | Int[Tensor, "..."]
    ) -> Float[Tensor, "... d_model"]:
        """The unembedding direction(s) `W_U[:, token]` of one token (string or id) or a tensor of
        ids (shape [..., d_model]).

        Example:
            >>> d = model.tokens_to_residual_directions(" Paris")     # [d_model]
        """
        if isinstance(tokens, str):
            return self.W_U[:, self.to_single_token(tokens)]
        if isinstance(tokens, int):
            return self.W_U[:, tokens]
        if isinstance(tokens, Tensor):
            if tokens.numel() == 1:
                return self.W_U[:, int(tokens.item())]
            return self.W_U[:, tokens.to(self.W_U.device)].movedim(0, -1)
        raise TypeError(f"tokens must be a string, an int or a tensor of ids, got {type(tokens)}")

    def all_head_labels(self) -> list[str]:
        """Labels "L{layer}H{head}" in layer-major order."""
        return [
            f"L{layer}H{head}"
            for layer in range(self.cfg.n_layers)
            for head in range(self.cfg.n_heads)
        ]

    @property
    def n_params_total(self) -> int:
        """Every parameter the model holds (embeddings, biases and norm weights included), where
        `cfg.n_params` counts the blocks' attention and MLP weights only."""
        return sum(p.numel() for p in self.parameters())

    @property
    def W_E_pos(self) -> Float[Tensor, "d_vocab_plus_n_ctx d_model"]:
        """W_E and W_pos stacked: a basis of the input space (learned positions only)."""
        return torch.cat([self.W_E, self.W_pos], dim=0)

    def load_sample_training_dataset(self, **kwargs: Any) -> Any:
        """Load a sample of the model's training distribution into `self.dataset`, as
        TransformerLens does, through `lmscope.utils.get_dataset` (which needs the dataset in the
        local Hugging Face cache when offline). Any sequence of {"text": ...} rows put in
        `model.dataset` by hand serves `sample_datapoint` as well."""
        name = _TRAINING_DATASETS.get(self.cfg.original_architecture)
        if name is None:
            raise ValueError(
                f"no sample training dataset is known for {self.cfg.original_architecture}; set "
                'model.dataset to a list of {"text": ...} rows (or a datasets.Dataset) instead'
            )
        from lmscope import utils

        get_dataset = getattr(utils, "get_dataset", None)
        if get_dataset is None:
            raise ValueError(
                'lmscope cannot download datasets; set model.dataset to a list of {"text": ...} '
                "rows (or a datasets.Dataset) instead"
            )
        self.dataset = get_dataset(name, **kwargs)
        return self.dataset

    def sample_datapoint(
        self,
        tokenize: bool = False,
        prepend_bos: bool | None = None,
        padding_side: Literal["left", "right"] | None = None,
    ) -> str | Int[Tensor, "1 pos"]:
        """A random row of `self.dataset` (loaded by `load_sample_training_dataset` when unset):
        its text, or with `tokenize` its tokens cut to n_ctx. Draws from numpy's global RNG,
        as TransformerLens does.

        Example:
            >>> model.dataset = [{"text": "The cat sat."}, {"text": "A dog ran."}]
            >>> model.sample_datapoint(tokenize=True).shape     # [1, pos]
        """
        if getattr(self, "dataset", None) is None:
            self.load_sample_training_dataset()
        if len(self.dataset) == 0:
            raise ValueError("model.dataset is empty; put some {'text': ...} rows in it")
        text = self.dataset[int(np.random.randint(0, len(self.dataset)))]["text"]
        if not tokenize:
            return text
        return self.to_tokens(text, prepend_bos, padding_side, truncate=True)

    # TransformerLens's weight processing methods, on lmscope.processing
    def load_and_process_state_dict(
        self,
        state_dict: dict[str, Tensor],
        fold_ln: bool = True,
        center_writing_weights: bool = True,
        center_unembed: bool = True,
        fold_value_biases: bool = True,
        refactor_factored_attn_matrices: bool = False,
    ) -> None:
        """Load a state dict (TransformerLens names, as `named_weights` lists them, or this
        model's own `state_dict` names) into the model, then apply the processing steps
        (`lmscope.processing.process_weights`). Norms already folded stay folded (fold_ln is
        then skipped with a warning, as TransformerLens skips it).

        Example:
            >>> model.load_and_process_state_dict(other.state_dict(), fold_ln=False)
        """
        self._load_state_dict_by_name(state_dict)
        self.process_weights_(
            fold_ln=fold_ln,
            center_writing_weights=center_writing_weights,
            center_unembed=center_unembed,
            refactor_factored_attn_matrices=refactor_factored_attn_matrices,
            fold_value_biases=fold_value_biases,
        )

    def process_weights_(
        self,
        fold_ln: bool = True,
        center_writing_weights: bool = True,
        center_unembed: bool = True,
        refactor_factored_attn_matrices: bool = False,
        fold_value_biases: bool = True,
    ) -> HookedTransformer:
        """Process the model's own weights in place (`lmscope.processing.process_weights`):
        what `from_pretrained` does, for a model trained or loaded without it. fold_ln on a
        model whose norms are already folded is skipped with a warning. Returns the model.

        Example:
            >>> model = HookedTransformer.from_pretrained_no_processing("gpt2")
            >>> model.process_weights_()
        """
        from lmscope.processing import process_weights

        if fold_ln and self.cfg.processing.get("fold_ln"):
            warnings.warn("this model's norms are already folded: fold_ln skipped", stacklevel=2)
            fold_ln = False
        return process_weights(
            self,
            fold_ln=fold_ln,
            center_writing_weights=center_writing_weights,
            center_unembed=center_unembed,
            fold_value_biases=fold_value_biases,
            refactor_factored_attn_matrices=refactor_factored_attn_matrices,
        )

    def fold_layer_norm(
        self, state_dict: dict[str, Tensor], fold_biases: bool = True, center_weights: bool = True
    ) -> dict[str, Tensor]:
        """`state_dict` (TransformerLens names) with the norms folded into their readers, as a
        new dict; the model is unchanged. Bias folding and centring follow the norm type
        (LayerNorm: both; RMSNorm: neither), so `fold_biases`/`center_weights` may only be
        False for RMSNorm models, where TransformerLens's callers pass False.

        Example:
            >>> folded = model.fold_layer_norm(model.state_dict())
        """
        if self.cfg.normalization_type == "LN" and not (fold_biases and center_weights):
            raise ValueError(
                "this model uses LayerNorm, whose exact fold needs fold_biases=True and "
                "center_weights=True (lmscope folds exactly); call fold_layer_norm(state_dict)"
            )
        return self._processed_state_dict(state_dict, "fold_layer_norm")

    def center_writing_weights(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """`state_dict` with the weights that write to the residual stream centred, as a new dict
        (unchanged where the model has no LayerNorm, as centring is exact only under one)."""
        return self._processed_state_dict(state_dict, "center_writing_weights")

    def center_unembed(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """`state_dict` with W_U and b_U centred over the vocabulary, as a new dict."""
        return self._processed_state_dict(state_dict, "center_unembed")

    def fold_value_biases(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """`state_dict` with b_V folded into b_O (b_V = 0), as a new dict."""
        return self._processed_state_dict(state_dict, "fold_value_biases")

    def refactor_factored_attn_matrices(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """`state_dict` with each head's QK and OV circuits in SVD form, as a new dict (see
        `lmscope.processing.refactor_factored_attn_matrices`)."""
        return self._processed_state_dict(state_dict, "refactor_factored_attn_matrices")

    def _processed_state_dict(self, state_dict: dict[str, Tensor], step: str) -> dict[str, Tensor]:
        """Run one `lmscope.processing` step on a copy of this model holding `state_dict`, and
        return the copy's weights under their TransformerLens names."""
        from lmscope import processing

        cfg = copy.deepcopy(self.cfg)
        cfg.init_weights, cfg.device = False, None
        with torch.device(self.W_E.device):
            clone = HookedTransformer(cfg)
        clone.load_state_dict(self.state_dict())
        clone._load_state_dict_by_name(state_dict)
        getattr(processing, step)(clone)
        return {name: view.detach().clone() for name, view in clone.named_weights().items()}

    @torch.no_grad()
    def _load_state_dict_by_name(self, state_dict: dict[str, Tensor]) -> None:
        """Write each tensor of `state_dict` into the weight it names: a `named_weights` name
        (TransformerLens's) or one of this model's `state_dict` names. TransformerLens's buffers
        (attention masks, rotary tables) are skipped; any other unknown name is an error."""
        views = self.named_weights()
        own = self.state_dict(keep_vars=True)
        unknown = [
            k for k in state_dict if k not in views and k not in own and not k.endswith(_TL_BUFFERS)
        ]
        if unknown:
            folded = [k for k in unknown if k.rsplit(".", 1)[-1] in ("w", "b") and ".ln" in k]
            hint = (
                " (norm weights: this model's norms are folded; load into a model with unfolded "
                "norms, e.g. from_pretrained_no_processing)"
                if folded
                else ""
            )
            raise KeyError(
                f"state_dict names weights this model does not have: {unknown[:5]}{hint}"
            )
        for key, value in state_dict.items():
            if key.endswith(_TL_BUFFERS) and key not in views and key not in own:
                continue
            target = views[key] if key in views else own[key]
            if tuple(value.shape) != tuple(target.shape):
                raise ValueError(
                    f"state_dict[{key!r}] has shape {tuple(value.shape)}, the model's is "
                    f"{tuple(target.shape)}"
                )
            target.copy_(value)


# The training distribution TransformerLens samples for each architecture.
_TRAINING_DATASETS = {
    "GPT2LMHeadModel": "openwebtext",
    "GPTNeoForCausalLM": "pile",
    "GPTNeoXForCausalLM": "pile",
    "GPTJForCausalLM": "pile",
    "OPTForCausalLM": "pile",
}

# Buffers of TransformerLens state dicts with nothing to load here.
_TL_BUFFERS = (".IGNORE", "attn.mask", "rotary_sin", "rotary_cos")
