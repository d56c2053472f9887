"""Placing a model over several devices: a plan from `device_map` / `n_devices`, and the moves.

A plan maps each part of the model to a device: "embed" (token and positional embeddings,
rotary tables), "blocks.0" ... "blocks.{n_layers-1}", "ln_final" and "unembed". The forward
moves the residual stream (and the attention mask, rotary tables and KV-cache entries) to each
block's device as it enters the block, so every hook sees whole tensors on its block's device;
the logits come back on the unembed's device.

Example:
    >>> model = HookedTransformer.from_pretrained("llama-3.2-1b", n_devices=2)
    >>> model.device_map["blocks.15"]
    device(type='cuda', index=1)
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from lmscope.components.attention import AttentionMask
    from lmscope.kv_cache import KVCacheEntry, RecurrentState
    from lmscope.model import HookedTransformer

DeviceLike = str | int | torch.device
USABLE_FRACTION = 0.9  # "auto" fills an accelerator up to this share of its free memory

_HF_LAYER = re.compile(r"(?:^|\.)(?:layers|h|layer|blocks)\.(\d+)$")


def device_count(kind: str) -> int:
    """How many devices of type `kind` ("cuda", "mps", "xpu", ...) this machine has."""
    if kind == "cpu":
        return 1
    if kind == "mps":
        return int(torch.backends.mps.is_available())
    module = getattr(torch, kind, None)
    if module is None or not hasattr(module, "device_count"):
        return 0
    available = getattr(module, "is_available", lambda: True)
    return module.device_count() if available() else 0


def check_device(device: DeviceLike, where: str = "device") -> torch.device:
    """`device` as a torch.device with an index ("cuda" -> cuda:0, an int -> cuda:int), after
    checking that this machine has it; `where` names the setting in the error.

    Example:
        >>> check_device("cpu")
        device(type='cpu')
    """
    try:
        dev = torch.device(f"cuda:{device}" if isinstance(device, int) else device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"{where}: {device!r} is not a device; use 'cpu', 'cuda:0', an int (a CUDA index) "
            "or a torch.device"
        ) from None
    if dev.type == "meta":
        raise ValueError(
            f"{where}: 'meta' tensors hold no data, so a model cannot run there; pass a real "
            "device such as 'cpu' or 'cuda:0'"
        )
    if dev.type == "cpu":
        return torch.device("cpu")
    count, index = device_count(dev.type), dev.index or 0
    if index >= count:
        have = f"{count} {dev.type} device(s)" if count else f"no {dev.type} device"
        raise ValueError(
            f"{where}: {dev.type}:{index} is not on this machine, which has {have}; pick one of "
            f"{[f'{dev.type}:{i}' for i in range(count)] + ['cpu']}"
        )
    return torch.device(dev.type, index)


def unit_names(n_layers: int) -> list[str]:
    """The parts a plan places, in the order the residual stream passes them."""
    return ["embed", *(f"blocks.{i}" for i in range(n_layers)), "ln_final", "unembed"]


def split_blocks(n_layers: int, devices: Sequence[torch.device]) -> dict[str, torch.device]:
    """TransformerLens's `n_devices` policy: blocks split evenly, in order, over `devices`
    (ceil(n_layers / len(devices)) per device), the embedding on the first block's device and
    ln_final and the unembedding on the last block's.

    Example:
        >>> plan = split_blocks(4, [torch.device("cuda:0"), torch.device("cuda:1")])
        >>> plan["blocks.1"], plan["blocks.2"], plan["unembed"]
        (device(type='cuda', index=0), device(type='cuda', index=1), device(type='cuda', index=1))
    """
    per_device = math.ceil(n_layers / len(devices))
    plan = {f"blocks.{i}": devices[i // per_device] for i in range(n_layers)}
    last = plan[f"blocks.{n_layers - 1}"] if n_layers else devices[0]
    return {"embed": devices[0], **plan, "ln_final": last, "unembed": last}


def auto_plan(
    sizes: Mapping[str, int],
    free: Mapping[torch.device, int],
    usable: float = USABLE_FRACTION,
) -> dict[str, torch.device]:
    """The "auto" policy: parts in the order of `sizes` (bytes each) fill the devices of `free`
    (free bytes each) in order, up to `usable` of each device's free memory, never going back to
    an earlier device; what fits on none goes to the CPU.

    Example:
        >>> gib = 2**30
        >>> plan = auto_plan({"embed": gib, "blocks.0": gib, "blocks.1": gib, "ln_final": 0,
        ...                   "unembed": gib}, {torch.device("cuda:0"): 3 * gib})
        >>> plan["blocks.1"], plan["unembed"]
        (device(type='cuda', index=0), device(type='cpu'))
    """
    devices = list(free)
    plan: dict[str, torch.device] = {}
    current, left = 0, free[devices[0]] * usable if devices else 0.0
    for name, size in sizes.items():
        while current < len(devices) and size > left:
            current += 1
            left = free[devices[current]] * usable if current < len(devices) else 0.0
        if current == len(devices):
            plan[name] = torch.device("cpu")
            continue
        plan[name] = devices[current]
        left -= size
    return plan


def explicit_plan(device_map: Mapping[str, DeviceLike], n_layers: int) -> dict[str, torch.device]:
    """A user's dict checked: every part named exactly once (ln_final may be left out: it then
    goes with the unembedding), no unknown key, every device on this machine.

    Example:
        >>> explicit_plan({"embed": "cpu", "blocks.0": "cpu", "unembed": "cpu"}, 1)["ln_final"]
        device(type='cpu')
    """
    if not isinstance(device_map, Mapping):
        raise TypeError(
            f"device_map must be 'auto' or a dict from part names to devices, got "
            f"{type(device_map).__name__}"
        )
    names = unit_names(n_layers)
    unknown = [key for key in device_map if key not in names]
    if unknown:
        raise ValueError(f"device_map has keys this model does not have: {_explain(unknown)}")
    given = dict(device_map)
    if "ln_final" not in given and "unembed" in given:
        given["ln_final"] = given["unembed"]
    missing = [name for name in names if name not in given]
    if missing:
        shown = ", ".join(missing[:6]) + (
            f", ... ({len(missing)} in all)" if len(missing) > 6 else ""
        )
        raise ValueError(
            f"device_map does not place {shown}; it needs 'embed', 'blocks.0' ... "
            f"'blocks.{n_layers - 1}' and 'unembed' (and optionally 'ln_final')"
        )
    return {name: check_device(given[name], f"device_map[{name!r}]") for name in names}


def _explain(keys: list[Any]) -> str:
    """The unknown keys, with the lmscope name of any Hugging Face-style layer key."""
    parts = []
    for key in keys[:6]:
        match = _HF_LAYER.search(str(key))
        hint = f" (lmscope calls it 'blocks.{match.group(1)}')" if match else ""
        parts.append(f"{key!r}{hint}")
    return ", ".join(parts) + "; the keys are 'embed', 'blocks.N', 'ln_final' and 'unembed'"


@dataclass(frozen=True)
class DeviceRequest:
    """What `from_pretrained(device_map=..., n_devices=...)` asked for, checked before any work:
    the devices exist and run `dtype`. `plan(model)` then places a built model."""

    device_map: str | dict[str, torch.device] | None
    devices: tuple[torch.device, ...]

    @classmethod
    def check(
        cls,
        device_map: str | Mapping[str, DeviceLike] | None,
        n_devices: int | None,
        device: DeviceLike | None,
        dtype: torch.dtype,
    ) -> DeviceRequest | None:
        """Validate the arguments (None when they ask for one device, as plain `device` does)."""
        from lmscope.config import check_dtype_runs

        if device_map is not None and n_devices is not None:
            raise ValueError("pass device_map or n_devices, not both")
        if device_map is not None and device is not None:
            raise ValueError(
                "pass device_map or device, not both: device puts the whole model on one device"
            )
        if n_devices is not None:
            devices = _first_devices(n_devices, device)
            if len(devices) == 1:
                return None
            request = cls(None, devices)
        elif device_map is None:
            if device is not None:
                check_device(device)
            return None
        elif device_map == "auto":
            request = cls("auto", _accelerators())
        elif isinstance(device_map, str):
            raise ValueError(f"device_map must be 'auto' or a dict, got {device_map!r}")
        elif device_map is not None:
            if not isinstance(device_map, Mapping):
                explicit_plan(device_map, 0)  # raises the TypeError
            checked = {k: check_device(v, f"device_map[{k!r}]") for k, v in device_map.items()}
            request = cls(checked, tuple(dict.fromkeys(checked.values())))
        for dev in request.devices:
            check_dtype_runs(dtype, dev)
        return request

    def check_layers(self, n_layers: int) -> None:
        """Refuse a dict that does not cover this model's parts (once its config is known)."""
        if isinstance(self.device_map, dict):
            explicit_plan(self.device_map, n_layers)

    def plan(self, model: HookedTransformer) -> dict[str, torch.device]:
        """Where each part of `model` goes."""
        n_layers = model.cfg.n_layers
        if isinstance(self.device_map, dict):
            return explicit_plan(self.device_map, n_layers)
        if self.device_map == "auto":
            free = {dev: torch.cuda.mem_get_info(dev)[0] for dev in self.devices}
            return auto_plan(unit_sizes(model), free)
        return split_blocks(n_layers, self.devices)


def _first_devices(n_devices: int, device: DeviceLike | None) -> tuple[torch.device, ...]:
    """The `n_devices` devices of `device`'s type (default CUDA) from its index on."""
    if not isinstance(n_devices, int) or isinstance(n_devices, bool) or n_devices < 1:
        raise ValueError(f"n_devices must be an int >= 1, got {n_devices!r}")
    base = torch.device(f"cuda:{device}" if isinstance(device, int) else (device or "cuda"))
    if n_devices == 1:
        return (check_device(base, "device"),)
    count, start = device_count(base.type), base.index or 0
    if base.type == "cpu" or start + n_devices > count:
        have = count if base.type != "cpu" else 0
        raise ValueError(
            f"n_devices={n_devices} needs {n_devices} {'cuda' if base.type == 'cpu' else base.type} "
            f"devices from index {start}, but this machine has {have}; pass a smaller n_devices, "
            "or device_map='auto' to offload what does not fit to the CPU"
        )
    return tuple(torch.device(base.type, start + i) for i in range(n_devices))


def _accelerators() -> tuple[torch.device, ...]:
    """The CUDA devices "auto" fills, in index order (none on a CPU-only machine)."""
    return tuple(torch.device("cuda", i) for i in range(device_count("cuda")))


def model_units(model: HookedTransformer) -> dict[str, list[nn.Module]]:
    """The modules each plan key places (every module of the model belongs to one key)."""
    embed = [
        getattr(model, name)
        for name in ("embed", "hook_embed", "pos_embed", "hook_pos_embed", "rotary",
                     "rotary_local", "ln_embed")
        if hasattr(model, name)
    ]  # fmt: skip
    units = {"embed": embed}
    units.update({f"blocks.{i}": [block] for i, block in enumerate(model.blocks)})
    units["ln_final"] = [model.ln_final] if hasattr(model, "ln_final") else []
    units["unembed"] = [model.unembed]
    return units


def unit_sizes(model: HookedTransformer) -> dict[str, int]:
    """Bytes of parameters and buffers of each plan key, in the residual stream's order."""
    return {
        name: sum(
            t.numel() * t.element_size() for m in modules for t in [*m.parameters(), *m.buffers()]
        )
        for name, modules in model_units(model).items()
    }


def _device_of(modules: Iterable[nn.Module]) -> torch.device | None:
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            return tensor.device
    return None


def read_device_map(model: HookedTransformer) -> dict[str, torch.device]:
    """Where each part of `model` is now (a part with no tensors, such as a folded ln_final,
    reports the device of the part before it)."""
    placed: dict[str, torch.device] = {}
    last = None
    for name, modules in model_units(model).items():
        last = _device_of(modules) or last
        if last is not None:
            placed[name] = last
    if "embed" not in placed:
        return placed
    return {name: placed.get(name, placed["embed"]) for name in model_units(model)}


def place(model: HookedTransformer, plan: Mapping[str, torch.device]) -> None:
    """Move each part of `model` to its device in `plan` (a full plan, as `explicit_plan` gives)."""
    for name, modules in model_units(model).items():
        for module in modules:
            module.to(plan[name])
    model.cfg.device = str(plan["embed"])
    model._sync_placement()


@dataclass(frozen=True)
class Placement:
    """Where a model spread over several devices keeps each part, read once after each move, so
    the forward of a model on one device never looks at devices (it has no Placement)."""

    embed: torch.device
    blocks: tuple[torch.device, ...]
    ln_final: torch.device
    unembed: torch.device

    @classmethod
    def of(cls, model: HookedTransformer) -> Placement | None:
        """The model's placement, or None when every part is on one device."""
        where = read_device_map(model)
        if len(set(where.values())) <= 1:
            return None
        blocks = tuple(where[f"blocks.{i}"] for i in range(len(model.blocks)))
        return cls(where["embed"], blocks, where["ln_final"], where["unembed"])

    def spread(
        self,
        masks: dict[str, AttentionMask],
        rotaries: dict[str, tuple[Tensor, Tensor]],
        layers: range,
    ) -> dict[torch.device, tuple[dict[str, AttentionMask], dict[str, tuple[Tensor, Tensor]]]]:
        """The attention masks and rotary tables (built on the embedding's device) copied once to
        each device that runs one of `layers`."""
        out = {}
        for dev in dict.fromkeys(self.blocks[i] for i in layers):
            out[dev] = (
                {kind: _mask_to(mask, dev) for kind, mask in masks.items()},
                {kind: (cos.to(dev), sin.to(dev)) for kind, (cos, sin) in rotaries.items()},
            )
        return out

    def enter(
        self, layer: int, resid: Tensor, entry: KVCacheEntry | RecurrentState | None
    ) -> tuple[Tensor, torch.device]:
        """The residual stream on block `layer`'s device (and its KV-cache entry moved there,
        once, if the cache was made elsewhere), with that device."""
        dev = self.blocks[layer]
        if entry is not None:
            entry.to(dev)  # keys and values, or a linear-attention layer's recurrent state
        return resid.to(dev), dev


def _mask_to(mask: AttentionMask, device: torch.device) -> AttentionMask:
    """A copy of `mask` on `device` (its per-forward caches start empty there)."""
    return type(mask)(
        mask.mask.to(device) if mask.mask is not None else None,
        mask.is_causal,
        mask.bias.to(device) if mask.bias is not None else None,
    )
