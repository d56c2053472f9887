"""Architecture families: each maps a Hugging Face checkpoint onto lmscope's layout.

A family is data: `read_config(hf_config) -> dict` of HookedTransformerConfig fields, the HF
config keys it handles (`config_keys`; `Family.config_from_hf` refuses, through `check_config`,
any other key that changes the computation), and `weight_map(cfg, hf_config) -> {our storage
parameter name: source}`. lmscope stores weights in the checkpoints' own `nn.Linear` layout, so
a source is mostly a plain checkpoint tensor name (adopted without a copy); only real rewrites
are `(transform, name, ...)`, whose transform (`lmscope.loading.transforms`) also knows its
inverse, so `lmscope.loading.export` reads the same table backwards. The pieces every family
shares (embeddings with tied weights, norms, llama-style attention, fused q/k/v, MLPs) are
written once in `lmscope.loading.pieces`; a family file says only what is peculiar to it.
Adding a family is one file in this package that defines `FAMILY = Family(...)` (or
`FAMILIES = [...]`); it is discovered automatically (docs/loading.md shows one).
"""

from __future__ import annotations

import difflib
import functools
import importlib
import importlib.metadata
import importlib.util
import json
import pkgutil
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from lmscope.config import HookedTransformerConfig
from lmscope.loading.embedded import cache_dir, write_json_atomic
from lmscope.loading.pieces import TRANSPOSE, WeightMap
from lmscope.loading.pieces import Source as Source  # re-exported: families name it
from lmscope.loading.transforms import HeadsBias, HeadsIn, HeadsOut


@dataclass(frozen=True)
class Family:
    """One architecture family: which HF `architectures` it reads and how.

    `config_keys` are the HF config keys the family acts on (its `read_config` and `weight_map`
    read them, or refuse the values they do not implement); `ignored_keys` are keys of its HF
    config class that change nothing lmscope computes (training-only settings, say). Every other
    key of a config must hold its HF default (`check_config`). `unread` names the checkpoint
    tensors the family leaves unread on purpose, as transformers' `_keys_to_ignore_on_load_unexpected`
    does (a multi-token-prediction head): regular expressions matched at the start of a tensor
    name, each first formatted with the HF config (`{num_hidden_layers}`: the layer after the
    last, where DeepSeek-V3 keeps its MTP layer). Any other unread tensor is still refused.
    """

    name: str
    architectures: tuple[str, ...]
    read_config: Callable[[dict[str, Any]], dict[str, Any]]
    weight_map: Callable[[HookedTransformerConfig, dict[str, Any]], WeightMap]
    config_keys: frozenset[str] = frozenset()
    ignored_keys: frozenset[str] = frozenset()
    unread: tuple[str, ...] = ()

    def left_unread(self, names: list[str], hf: dict[str, Any]) -> frozenset[str]:
        """The tensors of `names` that `unread` leaves unread on purpose.

        Example:
            >>> from lmscope.loading.families import family_for
            >>> family = family_for({"architectures": ["Qwen3NextForCausalLM"]})
            >>> sorted(family.left_unread(["mtp.fc.weight", "lm_head.weight"], {}))
            ['mtp.fc.weight']
        """
        patterns = [re.compile(p.format(**hf)) for p in self.unread]
        return frozenset(n for n in names if any(p.match(n) for p in patterns))

    def config_from_hf(self, hf: dict[str, Any]) -> dict[str, Any]:
        """HookedTransformerConfig fields for an HF config, once `check_config` has found
        nothing in it that this family does not implement.

        Example:
            >>> from lmscope.loading.families import family_for
            >>> hf = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_embd": 64,
            ...       "n_layer": 2, "n_head": 4, "n_positions": 32, "vocab_size": 100}
            >>> family_for(hf).config_from_hf(hf)["d_model"]
            64
        """
        check_config(self, hf)
        return self.read_config(hf)


# TransformerLens layouts, for weight maps that name weight views (`named_weights`: `W_Q`, ...)
# rather than storage parameters; such entries are copied into the view, never adopted.
def heads_in(n_heads: int) -> HeadsIn:
    """[n_heads * d_head, d_model] -> [n_heads, d_model, d_head] (W_Q, W_K, W_V)."""
    return HeadsIn(n_heads)


def heads_out(n_heads: int) -> HeadsOut:
    """[d_model, n_heads * d_head] -> [n_heads, d_head, d_model] (W_O)."""
    return HeadsOut(n_heads)


def heads_bias(n_heads: int) -> HeadsBias:
    """[n_heads * d_head] -> [n_heads, d_head]."""
    return HeadsBias(n_heads)


transpose = TRANSPOSE  # a Conv1D [in, out] -> [out, in]; nn.Linear [out, in] -> a view [in, out]


# -- shared config readers ---------------------------------------------------------------------------
def size_fields(hf: dict[str, Any]) -> dict[str, Any]:
    """The sizes a decoder config states in transformers' common names (`hidden_size`,
    `num_attention_heads`, `head_dim` or hidden_size // heads, `num_key_value_heads` or the
    heads, `intermediate_size`, `vocab_size`), as HookedTransformerConfig fields.

    Example:
        >>> size_fields(dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        ...                  intermediate_size=96, vocab_size=100))["d_head"]
        16
    """
    n_heads = hf["num_attention_heads"]
    return dict(
        d_model=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"],
        n_heads=n_heads,
        d_head=hf.get("head_dim") or hf["hidden_size"] // n_heads,
        n_key_value_heads=hf.get("num_key_value_heads") or n_heads,
        d_mlp=hf["intermediate_size"],
        d_vocab=hf["vocab_size"],
    )


def rope_settings(hf: dict[str, Any]) -> dict[str, Any]:
    """rotary_base, rope_scaling and the rotary fraction from either transformers 5
    `rope_parameters` or the older top-level keys (rope_theta, rope_scaling, rotary_pct, ...).

    As transformers standardises them, the scalings that extend a pretraining context (llama3,
    yarn, longrope) get `original_max_position_embeddings` (from the parameters, else the
    top-level key, else `max_position_embeddings`), and those that read the model's context
    (dynamic, yarn, longrope) get `max_position_embeddings` too, so a model whose `n_ctx` is
    changed still computes the checkpoint's frequencies. `n_ctx` is the context lmscope allows:
    `max_position_embeddings`, times the factor for dynamic NTK (which exists to run past it).

    Example:
        >>> rope_settings({"rope_theta": 1e6, "max_position_embeddings": 4096,
        ...                "rope_scaling": {"type": "yarn", "factor": 4.0}})["rope_scaling"]
        {'type': 'yarn', 'factor': 4.0, 'rope_type': 'yarn', 'original_max_position_embeddings': 4096, 'max_position_embeddings': 4096}
    """
    params = dict(hf.get("rope_parameters") or {})
    legacy = hf.get("rope_scaling") or {}
    base = params.get("rope_theta", hf.get("rope_theta", hf.get("rotary_emb_base", 10000.0)))
    fraction = params.get(
        "partial_rotary_factor", hf.get("partial_rotary_factor", hf.get("rotary_pct", 1.0))
    )
    kind = params.get("rope_type") or legacy.get("rope_type") or legacy.get("type") or "default"
    scaling = {
        **legacy,
        **{k: v for k, v in params.items() if k not in ("rope_theta", "partial_rotary_factor")},
    }
    scaling["rope_type"] = kind
    context = hf.get("max_position_embeddings")
    if kind in ("llama3", "yarn", "longrope"):
        scaling.setdefault(
            "original_max_position_embeddings",
            hf.get("original_max_position_embeddings") or context,
        )
    if kind in ("dynamic", "yarn", "longrope") and context is not None:
        scaling["max_position_embeddings"] = context
    n_ctx = context
    if kind == "dynamic" and context is not None:  # dynamic NTK exists to run past the context
        n_ctx = int(context * scaling.get("factor", 1.0))
    return {
        "rotary_base": float(base),
        "rope_scaling": None if kind == "default" else scaling,
        "fraction": fraction,
        "n_ctx": n_ctx,
    }


@functools.cache
def _families() -> list[Family]:
    """Every module in this package that defines `FAMILY` (or `FAMILIES`), found at first use."""
    return [fam for info in pkgutil.iter_modules(__path__) for fam in _module_families(info.name)]


def supported_architectures() -> list[str]:
    """Every HF `architectures` entry lmscope can load."""
    return sorted(arch for fam in _families() for arch in fam.architectures)


def _module_families(name: str) -> list[Family]:
    """The families the module `name` of this package defines ([] when there is none)."""
    if not name.isidentifier() or importlib.util.find_spec(f"{__name__}.{name}") is None:
        return []
    module = importlib.import_module(f"{__name__}.{name}")
    return [f for f in getattr(module, "FAMILIES", [getattr(module, "FAMILY", None)]) if f]


def family_for(hf_config: dict[str, Any]) -> Family:
    """The family that reads a checkpoint with this config.json (clear error if none)."""
    archs = hf_config.get("architectures") or []
    # The module named after the model type first (most are: llama, gpt2, ...), so a load imports
    # one module, not all thirty (5 ms); an architecture belongs to one family only.
    for fam in _module_families(str(hf_config.get("model_type"))):
        if any(arch in fam.architectures for arch in archs):
            return fam
    for fam in _families():
        if any(arch in fam.architectures for arch in archs):
            return fam
    model_type = hf_config.get("model_type")
    for fam in _families():
        # model_type only decides when the config names no architecture: a named head that no
        # family reads (GPT2ForSequenceClassification, ...) must not load as a language model.
        if not archs and model_type is not None and model_type == fam.name:
            return fam
    supported = supported_architectures()
    close = [m for a in archs for m in difflib.get_close_matches(a, supported, n=3, cutoff=0.6)]
    hint = f" Closest supported: {', '.join(close)}." if close else ""
    raise ValueError(
        f"architecture {archs or model_type!r} is not supported by lmscope.{hint} "
        f"Supported architectures: {', '.join(supported)}"
    )


# Config keys that never change what a causal language model computes at inference: ids and
# bookkeeping, tokenizer and generation settings, training-only settings (initialisation,
# auxiliary losses, layer drop), heads lmscope does not load (classification, sequence summary),
# and tensor-parallel sharding of the same sums.
HARMLESS_CONFIG_KEYS = frozenset(
    {
        "_name_or_path",
        "architectures",
        "auto_map",
        "cache_implementation",
        "chunk_size_feed_forward",
        "dtype",
        "id2label",
        "init_std",
        "initializer_range",
        "is_decoder",
        "is_encoder_decoder",
        "label2id",
        "layerdrop",
        "model_type",
        "num_labels",
        "output_attentions",
        "output_hidden_states",
        "output_router_logits",
        "pretraining_tp",
        "problem_type",
        "return_dict",
        "router_aux_loss_coef",
        "router_jitter_noise",
        "router_z_loss_coef",
        "summary_activation",
        "summary_first_dropout",
        "summary_proj_to_labels",
        "summary_type",
        "summary_use_proj",
        "task_specific_params",
        "tokenizer_class",
        "torch_dtype",
        "transformers_version",
        "use_cache",
    }
)
_HARMLESS_SUFFIXES = (
    "_token_id",
    "_token_ids",
    "dropout",
    "_pdrop",
    "dropout_prob",
    "dropout_rate",
)

# Keys that change the computation in some HF family, with the values that change nothing.
# They are checked even when the installed transformers' config class for the checkpoint does not
# define them, so a config borrowed from a newer or another architecture fails loudly.
FOREIGN_CONFIG_KEYS: dict[str, tuple[Any, ...]] = {
    "attention_chunk_size": (None,),
    "attention_multiplier": (None, 1.0),
    "attn_logit_softcapping": (None,),
    "clip_qkv": (None,),
    "embedding_multiplier": (None, 1.0),
    "final_logit_softcapping": (None,),
    "logits_scaling": (None, 1.0),
    "qk_layernorm": (None, False),
    "residual_multiplier": (None, 1.0),
    "use_bidirectional_attention": (None, False),
    "use_qk_norm": (None, False),
}

# What the shared rotary reader (`rope_settings`) acts on; families with a partial rotary
# dimension also handle `PARTIAL_ROTARY_KEYS`.
ROPE_KEYS = frozenset(
    {
        "original_max_position_embeddings",
        "rope_parameters",
        "rope_scaling",
        "rope_theta",
        "rotary_emb_base",
    }
)
PARTIAL_ROTARY_KEYS = frozenset({"partial_rotary_factor", "rotary_pct"})
# Sizes that configs of the `hidden_size` school (Llama, NeoX, Gemma, Phi, OLMo, ...) name alike.
DECODER_KEYS = frozenset(
    {
        "hidden_size",
        "intermediate_size",
        "max_position_embeddings",
        "num_attention_heads",
        "num_hidden_layers",
        "tie_word_embeddings",
        "vocab_size",
    }
)


def _is_harmless(key: str) -> bool:
    return key in HARMLESS_CONFIG_KEYS or key.endswith(_HARMLESS_SUFFIXES)


@functools.cache
def hf_config_defaults(model_type: str) -> dict[str, Any] | None:
    """The installed transformers' default config for `model_type` as a JSON-like dict (None
    when transformers does not know the type). Config classes import much of transformers
    (seconds), so the result is kept per transformers version in lmscope's cache directory.

    Example:
        >>> hf_config_defaults("llama")["rms_norm_eps"]
        1e-06
    """
    version = importlib.metadata.version("transformers")
    file = cache_dir() / "hf-config-defaults" / version / f"{model_type}.json"
    try:
        return json.loads(file.read_text())
    except (OSError, ValueError):
        pass
    from transformers import AutoConfig

    try:
        config = AutoConfig.for_model(model_type)
    except (KeyError, ValueError):
        return None
    defaults = json.loads(config.to_json_string(use_diff=False))
    try:
        write_json_atomic(file, defaults)
    except OSError:
        pass  # an unwritable cache only costs the import next time
    return defaults


def _rope_fractions(hf: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """Every rotary fraction a config states: top level, in `rope_scaling`, in `rope_parameters`
    (also per layer type, as Gemma 3 nests it)."""
    for key in sorted(PARTIAL_ROTARY_KEYS):
        if key in hf:
            yield key, hf[key]
    for holder in ("rope_parameters", "rope_scaling"):
        params = hf.get(holder)
        if not isinstance(params, dict):
            continue
        for part in [params, *(v for v in params.values() if isinstance(v, dict))]:
            if "partial_rotary_factor" in part:
                yield f"{holder}.partial_rotary_factor", part["partial_rotary_factor"]


def _refusal(family: Family, key: str, value: Any, default: Any) -> ValueError:
    return ValueError(
        f"config attribute {key}={value!r} (transformers' default: {default!r}) changes what "
        f"the model computes, and lmscope's {family.name} adapter does not implement it, so it "
        "refuses the config rather than load a different model. If the value is a mistake, "
        "remove the key; otherwise this checkpoint needs that feature added to lmscope"
    )


def check_config(family: Family, hf: dict[str, Any]) -> None:
    """Refuse a quantized checkpoint (`quantization_config`: MXFP4, FP8, GPTQ ... weights), and
    refuse (ValueError naming key, value and default) a config key that `family` neither
    handles nor knows to be harmless and whose value differs from the HF config class's
    default, or from the neutral values of `FOREIGN_CONFIG_KEYS`; a rotary fraction other than
    1 with rope scaling, where the family has no partial rotary."""
    quant = hf.get("quantization_config")
    if quant:
        method = quant.get("quant_method", "?") if isinstance(quant, dict) else quant
        raise ValueError(
            f"config attribute quantization_config (quant_method {method!r}): the checkpoint's "
            "weights are quantized, and lmscope reads float weights only; load a float (bf16 / "
            "fp16 / fp32) conversion of the model instead"
        )
    handled = family.config_keys | family.ignored_keys
    model_type = hf.get("model_type") or family.name
    defaults = hf_config_defaults(model_type) if isinstance(model_type, str) else None
    for key, value in hf.items():
        if key in handled or _is_harmless(key):
            continue
        if defaults is not None and key in defaults:
            if value != defaults[key]:
                raise _refusal(family, key, value, defaults[key])
        elif key in FOREIGN_CONFIG_KEYS and value not in FOREIGN_CONFIG_KEYS[key]:
            raise _refusal(family, key, value, FOREIGN_CONFIG_KEYS[key][0])
    if not ROPE_KEYS <= handled:
        return
    # (a rope scaling type lmscope lacks is refused by HookedTransformerConfig, naming it)
    if rope_settings(hf)["rope_scaling"] is not None and not PARTIAL_ROTARY_KEYS <= handled:
        # The family's own (default) rotary ignores the fraction, as lmscope does; transformers'
        # rope-scaling functions apply it, to queries the model then rotates whole.
        for key, value in _rope_fractions(hf):
            if value not in (None, 1, 1.0):
                raise _refusal(family, key, value, 1.0)
