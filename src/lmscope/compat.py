"""TransformerLens module paths under lmscope: what each alias module leaves out, and why.

The alias modules (`lmscope.hook_points`, `lmscope.utilities`, `lmscope.patching`, ...) only
re-export lmscope's own names. A TransformerLens name or module lmscope does not provide is listed
here with what to use instead; reaching it raises AttributeError / ImportError saying so, rather
than a bare "has no attribute".

Example:
    >>> import lmscope.hook_points as hp
    >>> hp.LensHandle
    AttributeError: lmscope.hook_points has no LensHandle: ...
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types
from collections.abc import Callable
from types import ModuleType
from typing import Any

_ENCODERS = (
    "lmscope has HookedEncoder (BERT family) and HookedEncoderDecoder (T5); audio encoders and "
    "the next-sentence wrapper are not in lmscope: use HookedEncoder(...)(tokens, "
    "return_type='pooled') and model.nsp_head"
)
_BRIDGE = (
    "TransformerLens's TransformerBridge is not part of its classic API; use HookedTransformer"
)
_TYPING = "a typing alias of TransformerLens's signatures; annotate with torch.Tensor"
_DEVICES = "use from_pretrained(device_map=..., n_devices=...) and lmscope.devices"
_LOADER = (
    "TransformerLens's loader internals; lmscope loads through HookedTransformer.from_pretrained"
)

ALIAS_MODULES = (
    "ActivationCache",
    "FactoredMatrix",
    "HookedEncoder",
    "HookedEncoderDecoder",
    "HookedRootModule",
    "HookedTransformer",
    "HookedTransformerConfig",
    "SVDInterpreter",
    "evals",
    "head_detector",
    "hook_points",
    "loading_from_pretrained",
    "past_key_value_caching",
    "patching",
    "supported_models",
    "utilities",
)

NOT_PROVIDED_MODULES: dict[str, str] = {
    "BertNextSentencePrediction": _ENCODERS,
    "HookedAudioEncoder": _ENCODERS,
    "benchmarks": "TransformerLens's own benchmarks; lmscope's are benchmarks/run.py in its repo",
    "components": "TransformerLens's layer classes; lmscope's layers are model.blocks[l].attn / .mlp "
    "/ .ln1, built from the config (lmscope.components.*)",
    "config.transformer_bridge_config": _BRIDGE,
    "config.transformer_lens_config": "base class of TransformerLens's two configs; use "
    "HookedTransformerConfig",
    "conversion_utils": _BRIDGE,
    "factories": "TransformerLens's builders of its layers and bridge adapters; lmscope builds "
    "layers from the config",
    "lit": "the LIT integration is not in lmscope",
    "model_bridge": _BRIDGE,
    "pretrained": "TransformerLens's per-architecture weight converters; lmscope's family adapters "
    "(lmscope.loading.families) load checkpoints",
    "tools": "TransformerLens 3's bridge-era analysis tools and model registry; lmscope.analysis "
    "holds patching, attribution, head detection and SVD",
    "weight_processing": "use model.process_weights_() or lmscope.processing",
    "utilities.addmm": "TransformerLens's matmul helpers; use torch.addmm / x @ W + b",
    "utilities.aliases": _BRIDGE,
    "utilities.architectures": _BRIDGE,
    "utilities.attention": "TransformerLens's attention internals; lmscope.components.attention",
    "utilities.bridge_components": _BRIDGE,
    "utilities.cache": "TransformerLens's KV-cache internals; lmscope.kv_cache.KVCache",
    "utilities.heterogeneous_config": _BRIDGE,
    "utilities.multi_gpu": _DEVICES,
    "utilities.quantization": "lmscope dequantises GGUF on load and refuses other quantisations",
    "utilities.tracr": "tracr models are not in lmscope",
    "utilities.typed_module_list": "use torch.nn.ModuleList",
}

NOT_PROVIDED: dict[str, dict[str, str]] = {
    "": {
        "TransformerBridgeConfig": _BRIDGE,
        "BertNextSentencePrediction": _ENCODERS,
        "HookedAudioEncoder": _ENCODERS,
    },
    "HookedEncoder": {"T": _TYPING},
    "HookedEncoderDecoder": {"T": _TYPING},
    "FactoredMatrix": {"TensorLike": _TYPING},
    "HookedTransformer": {
        "Loss": _TYPING,
        "LossPerToken": _TYPING,
        "Output": _TYPING,
        "SingleLoss": _TYPING,
        "T": _TYPING,
    },
    "SVDInterpreter": {"OUTPUT_EMBEDDING": _TYPING, "VECTOR_TYPES": _TYPING},
    "config": {
        "TransformerBridgeConfig": _BRIDGE,
        "TransformerLensConfig": "base class of TransformerLens's two configs; use "
        "HookedTransformerConfig",
    },
    "evals": {
        name: "TransformerLens's hub-dataset evals (Pile, OWT, wiki, code, MMLU) are not in "
        "lmscope; use lmscope.evals.evaluate_on_dataset on your own DataLoader"
        for name in (
            "DATASET_LOADERS",
            "DATASET_NAMES",
            "MMLU_ANSWER_LETTERS",
            "MMLU_SUBJECTS",
            "evaluate",
            "make_code_data_loader",
            "make_mmlu_data_loader",
            "make_owt_data_loader",
            "make_pile_data_loader",
            "make_wiki_data_loader",
            "mmlu_eval",
        )
    },
    "head_detector": {
        name: "TransformerLens's error-message constants and typing aliases; catch the ValueError"
        for name in (
            "CACHE_WITH_SEQ_LIST_ERR",
            "DET_PAT_NOT_SQUARE_ERR",
            "INVALID_HEAD_NAME_ERR",
            "SEQ_LEN_ERR",
            "LayerHeadTuple",
            "LayerToHead",
        )
    },
    "hook_points": {
        "DeviceType": _TYPING,
        "HookFunction": _TYPING,
        "NamesFilter": _TYPING,
        "HookIntrospectionMixin": "TransformerLens's mixin; its methods are on HookedRootModule",
        "LensHandle": "lmscope's hook handles are lmscope.hooks.HookHandle",
    },
    "patching": {"CorruptedActivation": _TYPING, "Logits": _TYPING, "PatchedActivation": _TYPING},
    "loading_from_pretrained": {
        name: _LOADER
        for name in (
            "Config",
            "NEED_REMOTE_CODE_MODELS",
            "NON_HF_HOSTED_MODEL_NAMES",
            "PYTHIA_CHECKPOINTS",
            "PYTHIA_V0_CHECKPOINTS",
            "STANFORD_CRFM_CHECKPOINTS",
            "convert_hf_model_config",
            "convert_neel_model_config",
            "fill_missing_keys",
            "get_basic_config",
            "get_checkpoint_labels",
            "get_num_params_of_pretrained",
            "get_pretrained_model_config",
            "get_pretrained_state_dict",
        )
    },
    "utilities": {
        "ModelWithCfg": _TYPING,
        "calculate_available_device_cuda_memory": _DEVICES,
        "count_unique_devices": _DEVICES,
        "determine_available_memory_for_available_devices": _DEVICES,
        "find_embedding_device": _DEVICES,
        "get_best_available_cuda_device": _DEVICES,
        "get_best_available_device": _DEVICES,
        "get_device_for_block_index": _DEVICES,
        "resolve_device_map": _DEVICES,
        "sort_devices_based_on_available_memory": _DEVICES,
        "move_to_and_update_config": "use model.to(device) (the config follows)",
        "warn_if_mps": "lmscope does not warn on MPS; it is tested on CPU and CUDA",
        "clear_huggingface_cache": "use `hf cache delete` (huggingface_hub's CLI)",
        "get_rotary_pct_from_config": _LOADER,
        "select_compatible_kwargs": _LOADER,
        "get_tokenizer_with_bos": "lmscope's to_tokens prepends BOS itself (prepend_bos=)",
        "logits_to_df": "use torch.topk(logits.log_softmax(-1), k) and model.to_str_tokens",
        "temporarily_swap_parameter": "use `with torch.no_grad(): p.copy_(...)` and restore",
        "TypedModuleList": "use torch.nn.ModuleList",
        "apply_softcap": "soft-capping is a config switch of the components (cfg.*_softcap)",
        "softcap_enabled": "soft-capping is a config switch of the components (cfg.*_softcap)",
    },
}
for _name in ("SOFTCAP_DISABLED", "SUPPORTED_ACTIVATIONS", "ActivationFunction", "XIELU"):
    NOT_PROVIDED["utilities"][_name] = "activations are chosen by cfg.act_fn"
for _name in ("gelu_pytorch_tanh", "relu2", "xielu"):
    NOT_PROVIDED["utilities"][_name] = "activations are chosen by cfg.act_fn; gelu_new/solu exist"
for _name in ("CACHE_DIR", "T", "logger"):
    NOT_PROVIDED["utilities"][_name] = "a TransformerLens module internal"
for _name in (
    "autoconfig_with_remote_post_init_compat",
    "autotokenizer_with_special_token_compat",
    "call_hf_with_retry",
    "enable_hf_numeric_tower",
    "enable_hf_retry",
    "get_hf_token",
    "make_post_init_kwarg_tolerant",
):
    NOT_PROVIDED["utilities"][_name] = "TransformerLens's workarounds for transformers; not needed"
NOT_PROVIDED["utils"] = NOT_PROVIDED["utilities"]


def missing(module: str, name: str) -> str | None:
    """Why `lmscope.<module>.<name>` (module as TransformerLens spells it) is not provided, or None."""
    table = NOT_PROVIDED.get(module.split(".")[0] if module.startswith("utilities") else module, {})
    submodule = f"{module}.{name}" if module else name
    if submodule in NOT_PROVIDED_MODULES:
        return NOT_PROVIDED_MODULES[submodule]
    return table.get(name)


def module_getattr(module: str, tl_path: str) -> Callable[[str], Any]:
    """A module `__getattr__` for `module` (TransformerLens path `tl_path`) that names the
    replacement of a TransformerLens name lmscope does not provide."""

    def __getattr__(name: str) -> Any:
        reason = missing(tl_path, name)
        if reason is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        raise AttributeError(f"{module} has no {name} (TransformerLens name): {reason}")

    return __getattr__


def alias_submodules(
    parent: ModuleType, paths: list[str], target: ModuleType | None = None
) -> None:
    """Make `import <parent>.<path>` give `target` (default: `parent` itself) for each path
    (TransformerLens splits into submodules what lmscope keeps in one module). `parent` gets an
    empty `__path__`, so other submodule imports reach the finder below and fail with a reason."""
    if not hasattr(parent, "__path__"):
        parent.__path__ = []
    for path in paths:
        sys.modules[f"{parent.__name__}.{path}"] = target or parent
        setattr(parent, path, target or parent)


class _NotProvidedFinder(importlib.abc.MetaPathFinder):
    """Last on sys.meta_path: an import of a TransformerLens module lmscope does not provide
    fails with the reason, instead of a bare ModuleNotFoundError."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if not fullname.startswith("lmscope."):
            return None
        tl_path = fullname.removeprefix("lmscope.")
        for prefix, reason in NOT_PROVIDED_MODULES.items():
            if tl_path == prefix or tl_path.startswith(prefix + "."):
                raise ModuleNotFoundError(
                    f"lmscope has no module {fullname} (TransformerLens's transformer_lens.{tl_path}): "
                    f"{reason}",
                    name=fullname,
                )
        return None


class _CallableModule(types.ModuleType):
    """A module that is also a function (`lmscope.train(model, cfg, data)` and the module
    `lmscope.train` with TransformerLens's names): calling it calls its `__call_target__`."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__dict__["__call_target__"](*args, **kwargs)


def make_module_callable(name: str, fn: Callable[..., Any]) -> None:
    """Make the module `name` callable as `fn` (Python allows a module's `__class__` to be
    assigned a ModuleType subclass).

    Example:
        >>> make_module_callable(__name__, train)   # at the end of lmscope/train.py
    """
    module = sys.modules[name]
    module.__dict__["__call_target__"] = fn
    module.__class__ = _CallableModule


def install_finder() -> None:
    """Append the finder once (real lmscope modules are found first)."""
    if not any(isinstance(f, _NotProvidedFinder) for f in sys.meta_path):
        sys.meta_path.append(_NotProvidedFinder())
