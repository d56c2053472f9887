"""What the suite reads off the process and the machine: RSS and its peak (for loads in fresh
subprocesses), the bytes a cache holds, the machine's description and load average.

    >>> from benchmarks.probes import cache_bytes, machine_info
    >>> import torch
    >>> x = torch.zeros(4, 4)
    >>> cache_bytes({"a": x, "b": x[0]})  # one storage, counted once
    (64, 2)
    >>> machine_info("cpu")["device"]
    'cpu'
"""

from __future__ import annotations

import json
import os
import platform
import resource
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def anon_rss_bytes() -> int:
    """This process's anonymous resident memory (RssAnon: memory it wrote, not file pages)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise OSError("no RssAnon in /proc/self/status (Linux >= 4.5 needed)")


def reset_peak_rss() -> None:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_bytes() -> int:
    """Peak RSS of this process. VmHWM, not ru_maxrss: after fork + exec, ru_maxrss keeps the
    parent's peak (a worker holding three models), which would hide ours."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def warm_lazy_imports(path: str) -> None:
    """Import what transformers imports lazily on first use for this checkpoint (its config and
    model modules, the tokenizer class): every library pays it once, and it is not loading."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    _ = MODEL_FOR_CAUSAL_LM_MAPPING[type(AutoConfig.from_pretrained(path))]
    tok_config = Path(path) / "tokenizer_config.json"
    if tok_config.exists():
        tokenizer_class_from_name(json.loads(tok_config.read_text()).get("tokenizer_class") or "")


def iter_tensors(obj: Any) -> Iterator[Any]:
    """Every tensor inside nested dicts, lists, tuples, ActivationCaches and model outputs."""
    import torch

    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from iter_tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from iter_tensors(v)
    elif hasattr(obj, "cache_dict"):  # ActivationCache (lmscope and TransformerLens)
        yield from iter_tensors(obj.cache_dict)
    elif hasattr(obj, "to_tuple"):  # transformers ModelOutput
        yield from iter_tensors(obj.to_tuple())


def cache_bytes(cache: Any) -> tuple[int, int]:
    """(bytes held, number of tensors) of a cache: each underlying storage counted once."""
    seen: dict[int, int] = {}
    n = 0
    for t in iter_tensors(cache):
        n += 1
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values()), n


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str) -> dict[str, Any]:
    import torch
    import transformers

    info = {
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": device,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    return info


def detect_device() -> str:
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"
