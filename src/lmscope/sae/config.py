"""An SAE's config in SAELens's on-disk format (`cfg.json`, SAELens 6; older files too).

SAELens 6 writes {"architecture", "d_in", "d_sae", "dtype", "device", "apply_b_dec_to_input",
"normalize_activations", "reshape_activations", [top-k: "k", "rescale_acts_by_decoder_norm"],
"metadata": {"hook_name", "model_name", "hook_head_index", "prepend_bos", "context_size", ...}}.
Files from SAELens before 6.0 keep the metadata at the top level and name some keys differently
(`hook_point`, `activation_fn_str`); they are read as SAELens reads them.

Example:
    >>> cfg = SAEConfig(d_in=576, d_sae=4096, arch="topk", k=32,
    ...                 metadata=SAEMetadata(hook_name="blocks.15.hook_resid_post"))
    >>> cfg.architecture(), cfg.metadata.hook_name
    ('topk', 'blocks.15.hook_resid_post')
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

ARCHITECTURES = ("standard", "topk", "jumprelu", "gated")
NORMALIZATIONS = (
    "none",
    "expected_average_only_in",  # folded into the weights by SAELens when loading: no-op here
    "constant_norm_rescale",
    "layer_norm",
    "covariance_whitening",  # folded into the weights when saved: no-op at inference
)
RESHAPES = ("none", "hook_z")
# Keys SAELens keeps in `metadata` (its LLM_METADATA_KEYS): where and how the SAE was trained.
METADATA_KEYS = frozenset(
    {
        "model_name",
        "hook_name",
        "model_class_name",
        "hook_head_index",
        "model_from_pretrained_kwargs",
        "prepend_bos",
        "exclude_special_tokens",
        "neuronpedia_id",
        "context_size",
        "seqpos_slice",
        "dataset_path",
        "sae_lens_version",
        "sae_lens_training_version",
        "hook_name_out",
        "hook_head_index_out",
        "hf_hook_name",
        "hf_hook_name_out",
    }
)
# What this lmscope writes as the SAELens version of its files (the format it follows).
SAE_LENS_FORMAT_VERSION = "6.0.0"
_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16}
_DTYPES["bfloat16"] = torch.bfloat16


class SAEMetadata:
    """Where an SAE belongs and how it was trained: attributes as SAELens's (`hook_name`,
    `model_name`, ...); a missing one reads as None.

    Example:
        >>> SAEMetadata(hook_name="blocks.0.hook_resid_pre").model_name is None
        True
    """

    def __init__(self, **values: Any) -> None:
        self.__dict__.update(values)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return None

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def __contains__(self, key: str) -> bool:
        return key in self.__dict__

    def get(self, key: str, default: Any = None) -> Any:
        return self.__dict__.get(key, default)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SAEMetadata) and self.__dict__ == other.__dict__

    def __repr__(self) -> str:
        return f"SAEMetadata({self.__dict__})"


def dtype_of(name: str | torch.dtype) -> torch.dtype:
    """The torch dtype an SAE config's "dtype" names ("float32", "torch.bfloat16", ...)."""
    if isinstance(name, torch.dtype):
        return name
    found = _DTYPES.get(name.removeprefix("torch."))
    if found is None:
        raise ValueError(f"SAE dtype {name!r} is not one of {sorted(_DTYPES)}")
    return found


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass
class SAEConfig:
    """An SAE's shape and behaviour (SAELens's fields; `arch` is its "architecture").

    arch: "standard" (ReLU), "topk" (the k largest pre-activations, ReLU'd), "jumprelu" (zero
    below a per-feature threshold) or "gated" (a gate path and a magnitude path sharing W_enc).
    """

    d_in: int
    d_sae: int
    arch: str = "standard"
    dtype: str = "float32"
    device: str = "cpu"
    apply_b_dec_to_input: bool = True
    normalize_activations: str = "none"
    reshape_activations: str = "none"
    k: int | None = None  # topk
    rescale_acts_by_decoder_norm: bool = False  # topk: rank by pre-activation * |W_dec row|
    metadata: SAEMetadata = field(default_factory=SAEMetadata)

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ValueError(
                f"SAE architecture {self.arch!r} is not supported; lmscope loads {ARCHITECTURES}"
            )
        if self.normalize_activations not in NORMALIZATIONS:
            raise ValueError(
                f"normalize_activations {self.normalize_activations!r} is not one of {NORMALIZATIONS}"
            )
        if self.reshape_activations not in RESHAPES:
            raise ValueError(
                f"reshape_activations {self.reshape_activations!r} is not one of {RESHAPES}"
            )
        if self.arch == "topk":
            self.k = 100 if self.k is None else self.k  # SAELens's default
            if not 1 <= self.k <= self.d_sae:
                raise ValueError(f"a top-k SAE needs 1 <= k <= d_sae={self.d_sae}, got k={self.k}")
        if self.d_in < 1 or self.d_sae < 1:
            raise ValueError(f"d_in and d_sae must be >= 1, got {self.d_in} and {self.d_sae}")
        if isinstance(self.metadata, dict):
            self.metadata = SAEMetadata(**self.metadata)
        dtype_of(self.dtype)

    def architecture(self) -> str:
        """The architecture's name (a method, as SAELens's `cfg.architecture()`)."""
        return self.arch

    def to_dict(self) -> dict[str, Any]:
        """The cfg.json contents SAELens 6 writes for this architecture."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["architecture"] = d.pop("arch")
        if self.arch != "topk":
            d.pop("k"), d.pop("rescale_acts_by_decoder_norm")
        meta = self.metadata.to_dict()
        meta.setdefault("sae_lens_version", SAE_LENS_FORMAT_VERSION)
        meta.setdefault("sae_lens_training_version", SAE_LENS_FORMAT_VERSION)
        d["metadata"] = meta
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SAEConfig:
        """Read a cfg.json dict (SAELens 6, or older: converted as SAELens converts it)."""
        version = d.get("sae_lens_version") or (d.get("metadata") or {}).get("sae_lens_version")
        if not version or _major(version) < 6:
            d = _from_pre_6(d)
        names = {f.name for f in dataclasses.fields(cls)} - {"arch", "metadata"}
        missing = [k for k in ("d_in", "d_sae") if k not in d]
        if missing:
            raise ValueError(f"an SAE cfg.json needs {missing}")
        fields = {k: v for k, v in d.items() if k in names}
        return cls(
            arch=d.get("architecture", "standard"),
            metadata=SAEMetadata(**(d.get("metadata") or {})),
            **fields,
        )


def _major(version: str) -> int:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return 0


def _from_pre_6(d: dict[str, Any]) -> dict[str, Any]:
    """A cfg.json of SAELens < 6 in the 6.x layout (SAELens's `handle_pre_6_0_config`)."""
    renamed = {"hook_point": "hook_name", "hook_point_head_index": "hook_head_index"}
    renamed["activation_fn_str"] = "activation_fn"
    new = {renamed.get(k, k): v for k, v in d.items()}
    if new.get("finetuning_scaling_factor"):
        raise ValueError(
            "this SAE uses SAELens's finetuning_scaling_factor (before 6.0), which lmscope does "
            "not implement; load it with SAELens and save it again (SAE.save_model)"
        )
    arch = new.get("architecture", "standard")
    kwargs = new.get("activation_fn_kwargs") or {}
    if new.get("activation_fn") == "topk" and kwargs.get("k") is not None:
        arch, new["k"] = "topk", kwargs["k"]
    norm = new.get("normalize_activations")
    if isinstance(norm, bool) or norm is None:
        new["normalize_activations"] = "expected_average_only_in" if norm else "none"
    new.setdefault(
        "reshape_activations", "hook_z" if "hook_z" in (new.get("hook_name") or "") else "none"
    )
    new["architecture"] = arch
    new["metadata"] = {k: v for k, v in new.items() if k in METADATA_KEYS}
    return new
