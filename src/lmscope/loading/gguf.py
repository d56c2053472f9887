"""Read a GGUF checkpoint and present it as a Hugging Face checkpoint.

:func:`read_gguf` memory-maps the file with :class:`gguf.GGUFReader` and returns a
:class:`GGUFCheckpoint` exposing

* ``hf_config``: a ``config.json``-style dict built from the GGUF metadata,
* ``tensor_names()`` / ``get(name)``: the weights under their Hugging Face names, dequantised
  to float32 one tensor at a time (nothing is dequantised up front),
* ``tokenizer_loader()``: builds the tokenizer from the GGUF metadata when called.

GGUF and HF names are related through the ``gguf`` package's own ``TensorNameMap``; the
per-architecture knowledge that the library does not carry (HF module names, config keys,
llama.cpp's conversion-time weight rewrites) lives in :data:`_ARCHITECTURES`, so another
architecture is one table entry.

The results agree exactly with ``transformers``' own GGUF loader
(``AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)``) for the supported architectures.
"""

from __future__ import annotations

import functools
import math
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gguf
import numpy as np
import torch

from lmscope.errors import CheckpointError, MissingTensorError
from lmscope.loading.checkpoint import copy_checked, load_tokenizer
from lmscope.loading.transforms import Offset, RotaryUnpermute, Transform

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["GGUFCheckpoint", "gguf_tokenizer", "read_gguf", "supported_architectures"]

_CORRUPT = "it is truncated or corrupt: download or convert it again"


# --------------------------------------------------------------------------- weight rewrites

# llama.cpp's conversion-time rewrites, undone as invertible transforms (so `inverse` gives the
# file's tensor back): HF-name suffix -> the transform, given the HF config.
_Rewrites = Mapping[str, Callable[[Mapping[str, Any]], Transform]]


def _unpermute(heads: str) -> Callable[[Mapping[str, Any]], Transform]:
    """llama.cpp's rotary permutation undone over the config's `heads` heads."""
    return lambda config: RotaryUnpermute(config[heads])


# llama.cpp permutes the rows of Q over `n_head` and of K over `n_head_kv` for its rope.
_LLAMA_REWRITES: _Rewrites = {
    "self_attn.q_proj.weight": _unpermute("num_attention_heads"),
    "self_attn.q_proj.bias": _unpermute("num_attention_heads"),
    "self_attn.k_proj.weight": _unpermute("num_key_value_heads"),
    "self_attn.k_proj.bias": _unpermute("num_key_value_heads"),
}
# llama.cpp stores Gemma's RMSNorm weights as `1 + w` (HF keeps `w` and adds the 1 in the norm);
# transformers subtracts 1 again from every `*norm.weight`, and so do we.
_GEMMA_REWRITES: _Rewrites = {"norm.weight": lambda cfg: Offset(-1.0)}


def _gemma3_config(cfg: dict[str, Any]) -> None:
    """What a Gemma 3 GGUF leaves out, filled in as transformers' Gemma3TextConfig defaults do.

    llama.cpp writes neither the layer pattern nor the local rotary base nor
    ``query_pre_attn_scalar``; transformers takes its config defaults for them (every sixth layer
    global, local rotary base 10 000, scalar 256), which are the values of the released 270M and
    1B checkpoints. Keys follow the hub's config.json (``rope_theta``, ``rope_local_base_freq``).
    """
    pattern = cfg["sliding_window_pattern"]
    cfg["layer_types"] = [
        "full_attention" if (i + 1) % pattern == 0 else "sliding_attention"
        for i in range(int(cfg["num_hidden_layers"]))
    ]


# --------------------------------------------------------------------------- architecture table

# GGUF key (after "<arch>.") -> HF config key, common to the llama-like decoders.
_COMMON_CONFIG_KEYS: dict[str, str] = {
    "context_length": "max_position_embeddings",
    "block_count": "num_hidden_layers",
    "feed_forward_length": "intermediate_size",
    "embedding_length": "hidden_size",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "attention.key_length": "head_dim",
    "rope.freq_base": "rope_theta",
    "vocab_size": "vocab_size",
}

# HF module names (no ".weight"/".bias") of a llama-style decoder.
_LLAMA_GLOBAL_MODULES = ("model.embed_tokens", "model.norm", "lm_head")
_LLAMA_BLOCK_MODULES = (
    "model.layers.{bid}.input_layernorm",
    "model.layers.{bid}.self_attn.q_proj",
    "model.layers.{bid}.self_attn.k_proj",
    "model.layers.{bid}.self_attn.v_proj",
    "model.layers.{bid}.self_attn.o_proj",
    "model.layers.{bid}.post_attention_layernorm",
    "model.layers.{bid}.mlp.gate_proj",
    "model.layers.{bid}.mlp.up_proj",
    "model.layers.{bid}.mlp.down_proj",
)


@dataclass(frozen=True)
class _ArchSpec:
    """What the ``gguf`` library does not know about one ``general.architecture``."""

    model_type: str
    architectures: tuple[str, ...]
    global_modules: tuple[str, ...] = _LLAMA_GLOBAL_MODULES
    block_modules: tuple[str, ...] = _LLAMA_BLOCK_MODULES
    config_keys: Mapping[str, str] = field(default_factory=lambda: dict(_COMMON_CONFIG_KEYS))
    # Fallback for head_dim when "attention.key_length" is absent (llama.cpp's llama writes
    # rope.dimension_count == head_dim; for other archs it may be a partial rotary size).
    head_dim_from_rope_dims: bool = False
    defaults: Mapping[str, Any] = field(default_factory=dict)
    # HF config flag -> GGUF tensor whose presence sets it.
    flags_from_tensors: Mapping[str, str] = field(default_factory=dict)
    rewrites: _Rewrites = field(default_factory=dict)
    # Last step of the config: fills keys derived from others (e.g. Gemma 3's layer_types).
    finish_config: Callable[[dict[str, Any]], None] | None = None


_ARCHITECTURES: dict[str, _ArchSpec] = {
    "llama": _ArchSpec(
        model_type="llama",
        architectures=("LlamaForCausalLM",),
        head_dim_from_rope_dims=True,
        defaults={"hidden_act": "silu"},
        flags_from_tensors={"attention_bias": "blk.0.attn_q.bias", "mlp_bias": "blk.0.ffn_up.bias"},
        rewrites=_LLAMA_REWRITES,
    ),
    # llama.cpp's Qwen2 conversion neither permutes Q/K nor rewrites norms.
    "qwen2": _ArchSpec(
        model_type="qwen2",
        architectures=("Qwen2ForCausalLM",),
        defaults={"hidden_act": "silu"},
    ),
    # Gemma 3 text (270M, 1B, and the text tower of the larger ones): q/k norms, pre+post norms
    # around attention and MLP, norms stored as 1 + w.
    "gemma3": _ArchSpec(
        model_type="gemma3_text",
        architectures=("Gemma3ForCausalLM",),
        block_modules=(
            "model.layers.{bid}.input_layernorm",
            "model.layers.{bid}.self_attn.q_proj",
            "model.layers.{bid}.self_attn.k_proj",
            "model.layers.{bid}.self_attn.v_proj",
            "model.layers.{bid}.self_attn.o_proj",
            "model.layers.{bid}.self_attn.q_norm",
            "model.layers.{bid}.self_attn.k_norm",
            "model.layers.{bid}.post_attention_layernorm",
            "model.layers.{bid}.pre_feedforward_layernorm",
            "model.layers.{bid}.post_feedforward_layernorm",
            "model.layers.{bid}.mlp.gate_proj",
            "model.layers.{bid}.mlp.up_proj",
            "model.layers.{bid}.mlp.down_proj",
        ),
        config_keys={**_COMMON_CONFIG_KEYS, "attention.sliding_window": "sliding_window"},
        defaults={
            "hidden_activation": "gelu_pytorch_tanh",
            "query_pre_attn_scalar": 256,
            "rope_local_base_freq": 10000.0,
            "sliding_window_pattern": 6,
            "attn_logit_softcapping": None,
            "final_logit_softcapping": None,
            "attention_bias": False,
        },
        rewrites=_GEMMA_REWRITES,
        finish_config=_gemma3_config,
    ),
}


def supported_architectures() -> list[str]:
    """GGUF ``general.architecture`` values that :func:`read_gguf` understands."""
    return sorted(_ARCHITECTURES)


# --------------------------------------------------------------------------- metadata helpers


def _scalar(reader: gguf.GGUFReader, key: str) -> Any:
    """A scalar metadata value, or ``None`` if the key is absent (arrays are not decoded)."""
    fld = reader.fields.get(key)
    if fld is None or not fld.types or fld.types[0] == gguf.GGUFValueType.ARRAY:
        return None
    return fld.contents()


def _array_len(reader: gguf.GGUFReader, key: str) -> int | None:
    fld = reader.fields.get(key)
    if fld is None or not fld.types or fld.types[0] != gguf.GGUFValueType.ARRAY:
        return None
    return len(fld.data)


def _checked_number(path: Path, key: str, value: Any) -> int | float:
    """A size or constant from the GGUF metadata: a positive finite number, an integer for the
    counts and lengths (every key lmscope reads into the config is one of these)."""
    counts = not key.endswith(("layer_norm_rms_epsilon", "layer_norm_epsilon", "freq_base"))
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    ok = ok and math.isfinite(value) and value > 0 and (isinstance(value, int) or not counts)
    if not ok:
        kind = "a positive integer" if counts else "a positive number"
        raise CheckpointError(f"{path}: metadata {key} is {value!r}, not {kind}; {_CORRUPT}")
    return value


def _build_config(
    reader: gguf.GGUFReader,
    arch: str,
    spec: _ArchSpec,
    gguf_tensors: Mapping[str, Any],
    path: Path,
) -> dict[str, Any]:
    cfg: dict[str, Any] = {"architectures": list(spec.architectures), "model_type": spec.model_type}
    cfg.update(spec.defaults)
    for gguf_key, hf_key in spec.config_keys.items():
        value = _scalar(reader, f"{arch}.{gguf_key}")
        if value is not None:
            cfg[hf_key] = _checked_number(path, f"{arch}.{gguf_key}", value)
    if spec.head_dim_from_rope_dims and "head_dim" not in cfg:
        rope_dims = _scalar(reader, f"{arch}.rope.dimension_count")
        if rope_dims is not None:
            cfg["head_dim"] = rope_dims
    if "num_key_value_heads" not in cfg and "num_attention_heads" in cfg:
        cfg["num_key_value_heads"] = cfg["num_attention_heads"]
    if "vocab_size" not in cfg:
        n_tokens = _array_len(reader, "tokenizer.ggml.tokens")
        if n_tokens is not None:
            cfg["vocab_size"] = n_tokens

    rope_type = _scalar(reader, f"{arch}.rope.scaling.type")
    if rope_type is not None and rope_type != "none":
        scaling: dict[str, Any] = {"rope_type": rope_type}
        for gguf_key, hf_key in (
            ("factor", "factor"),
            ("original_context_length", "original_max_position_embeddings"),
            ("attn_factor", "attention_factor"),
        ):
            value = _scalar(reader, f"{arch}.rope.scaling.{gguf_key}")
            if value is not None:
                scaling[hf_key] = value
        cfg["rope_scaling"] = scaling

    for hf_key, tensor_name in spec.flags_from_tensors.items():
        cfg[hf_key] = tensor_name in gguf_tensors
    cfg["tie_word_embeddings"] = "output.weight" not in gguf_tensors
    for gguf_key, hf_key in (("bos", "bos"), ("eos", "eos"), ("padding", "pad")):
        token_id = _scalar(reader, f"tokenizer.ggml.{gguf_key}_token_id")
        if token_id is not None:
            cfg[f"{hf_key}_token_id"] = token_id
    if cfg.get("num_hidden_layers", 0) > len(gguf_tensors):
        raise CheckpointError(
            f"{path}: metadata {arch}.block_count is {cfg['num_hidden_layers']}, but the file "
            f"holds only {len(gguf_tensors)} tensors; {_CORRUPT}"
        )
    if spec.finish_config is not None:
        spec.finish_config(cfg)
    return cfg


def _gguf_to_hf_names(
    arch: str, spec: _ArchSpec, n_blocks: int, gguf_tensors: Mapping[str, Any]
) -> tuple[dict[str, str], list[str]]:
    """Map the file's GGUF tensor names to HF names via ``gguf.get_tensor_name_map``.

    Returns ``(hf_name -> gguf_name, gguf tensors with no HF counterpart)``.
    """
    model_arch = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    name_map = gguf.get_tensor_name_map(model_arch, n_blocks)
    modules = list(spec.global_modules)
    modules += [m.format(bid=b) for b in range(n_blocks) for m in spec.block_modules]
    to_hf: dict[str, str] = {}
    for hf_module in modules:
        gguf_module = name_map.get_name(hf_module)
        if gguf_module is None:
            raise RuntimeError(f"gguf's TensorNameMap has no {arch!r} entry for {hf_module!r}")
        for suffix in (".weight", ".bias"):
            if gguf_module + suffix in gguf_tensors:
                to_hf[gguf_module + suffix] = hf_module + suffix
    hf_to_gguf = {to_hf[g]: g for g in gguf_tensors if g in to_hf}
    unmapped = [g for g in gguf_tensors if g not in to_hf]
    return hf_to_gguf, unmapped


# --------------------------------------------------------------------------- public API


def _open_reader(path: Path) -> gguf.GGUFReader:
    """`gguf.GGUFReader` over `path`, with any failure to parse it (a truncated header, a tensor
    past the end of the file, an unknown tensor type) as a CheckpointError naming the file."""
    try:
        return gguf.GGUFReader(path, "r")
    except (ValueError, IndexError, KeyError, TypeError, OverflowError, UnicodeDecodeError) as err:
        raise CheckpointError(
            f"{path} is not a valid GGUF file ({type(err).__name__}: {err}); {_CORRUPT}"
        ) from None


def _check_tensor_data(path: Path, reader: gguf.GGUFReader) -> None:
    """Every tensor's data must lie in the file's data section, apart from every other tensor's
    (gguf's reader does not check this; llama.cpp refuses such files)."""
    spans = sorted((t.data_offset, t.data_offset + int(t.n_bytes), t.name) for t in reader.tensors)
    end_of_previous, previous = reader.data_offset, None
    for begin, end, name in spans:
        if begin < end_of_previous:
            where = f"tensor {previous!r}" if previous else "the header"
            raise CheckpointError(
                f"{path}: the data of tensor {name!r} (bytes {begin}..{end}) overlaps {where}; "
                f"{_CORRUPT}"
            )
        end_of_previous, previous = end, name


class GGUFCheckpoint:
    """A memory-mapped GGUF file seen as a Hugging Face checkpoint.

    Attributes:
        path: the GGUF file.
        architecture: GGUF ``general.architecture`` (e.g. ``"llama"``).
        hf_config: an HF ``config.json``-style dict.
        unmapped_tensors: GGUF tensors with no HF counterpart (e.g. llama3's ``rope_freqs``);
            they are not served by :meth:`get`, and loading a model refuses them.
    """

    path: Path
    architecture: str
    hf_config: dict[str, Any]
    unmapped_tensors: list[str]
    reads_into = False  # tensors are dequantised in memory, then copied

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = self.config_file = Path(path)
        self._reader = _open_reader(self.path)
        _check_tensor_data(self.path, self._reader)
        try:
            self._read_metadata()
        except UnicodeDecodeError as err:
            raise CheckpointError(
                f"{self.path}: a metadata string is not UTF-8 ({err}); {_CORRUPT}"
            ) from None

    def _read_metadata(self) -> None:
        """Architecture, config and the HF names of the tensors, from the file's metadata."""
        arch = _scalar(self._reader, "general.architecture")
        if arch not in _ARCHITECTURES:
            raise CheckpointError(
                f"{self.path}: GGUF architecture {arch!r} is not supported; "
                f"supported: {', '.join(supported_architectures())}"
            )
        self.architecture = arch
        self._spec = _ARCHITECTURES[arch]
        self._tensors = {t.name: t for t in self._reader.tensors}
        self.hf_config = _build_config(self._reader, arch, self._spec, self._tensors, self.path)
        n_blocks = int(self.hf_config.get("num_hidden_layers", 0))
        self._hf_to_gguf, self.unmapped_tensors = _gguf_to_hf_names(
            arch, self._spec, n_blocks, self._tensors
        )

    def __repr__(self) -> str:
        return (
            f"GGUFCheckpoint({str(self.path)!r}, architecture={self.architecture!r}, "
            f"tensors={len(self._hf_to_gguf)})"
        )

    def tensor_names(self) -> list[str]:
        """HF names of all tensors in the file, in file order."""
        return list(self._hf_to_gguf)

    def tensor_shape(self, hf_name: str) -> tuple[int, ...]:
        """The HF-layout shape of a tensor, from the metadata (nothing is dequantised): GGUF
        lists dimensions innermost first."""
        return tuple(int(n) for n in reversed(self._tensors[self.gguf_name(hf_name)].shape))

    def gguf_name(self, hf_name: str) -> str:
        """The GGUF tensor name behind an HF name."""
        try:
            return self._hf_to_gguf[hf_name]
        except KeyError:
            tied = " (the model is tied: use the embedding)" if hf_name == "lm_head.weight" else ""
            raise MissingTensorError(
                f"tensor {hf_name!r} is not in GGUF checkpoint {self.path}{tied}"
            ) from None

    def resolve(self, name: str) -> str:
        """`name` itself, once checked to be in the file (tensors are listed by HF name)."""
        self.gguf_name(name)
        return name

    def unread_tensors(self, used: set[str]) -> list[str]:
        """GGUF names of the tensors no HF name in `used` reads, unmapped ones included."""
        unread = [g for hf, g in self._hf_to_gguf.items() if hf not in used]
        return unread + self.unmapped_tensors

    def file_of(self, name: str) -> Path:
        return self.path

    def n_elements(self) -> int:
        return sum(int(t.n_elements) for t in self._tensors.values())

    def get(
        self, hf_name: str, keep: bool = False, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Dequantise one tensor to float32, in HF layout (``nn.Linear`` weights are [out, in]).
        Every call returns fresh memory, so `keep` needs nothing more; `out` receives a copy."""
        if out is not None:
            return copy_checked(hf_name, self.get(hf_name), out)
        name = self.gguf_name(hf_name)
        info = self._tensors[name]
        try:
            array = gguf.quants.dequantize(info.data, info.tensor_type)
        except (NotImplementedError, ValueError) as err:
            raise CheckpointError(
                f"{self.path}: tensor {name!r} of type {info.tensor_type.name} cannot be "
                f"dequantised ({err}); convert the file with a type gguf supports"
            ) from None
        array = np.asarray(array, dtype=np.float32)
        if not array.flags.writeable:  # F32 comes back as a read-only view of the memory map
            array = array.copy()
        tensor = torch.from_numpy(array)
        rewrite = self.rewrite(hf_name)
        if rewrite is not None:
            try:
                tensor = rewrite(tensor)
            except (ValueError, RuntimeError) as err:
                raise CheckpointError(f"{self.path}: tensor {name!r}: {err}") from None
        return tensor.contiguous()

    def rewrite(self, hf_name: str) -> Transform | None:
        """The transform that undoes llama.cpp's rewrite of a tensor (its rotary permutation of
        q/k rows, Gemma's `1 + w` norms), or None; its `inverse` gives the file's tensor back.

        Example:
            >>> checkpoint.rewrite("model.layers.0.self_attn.q_proj.weight")
            RotaryUnpermute(n_heads=9)
        """
        for suffix, make in self._spec.rewrites.items():
            if hf_name.endswith(suffix):
                return make(self.hf_config)
        return None

    def tokenizer_loader(self) -> Callable[[], PreTrainedTokenizerBase] | None:
        """Builds a fresh HF tokenizer from the GGUF metadata when called (takes seconds); None
        when the file carries no tokenizer."""
        if "tokenizer.ggml.model" not in self._reader.fields:
            return None
        return functools.partial(gguf_tokenizer, self.path)


def gguf_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    """The tokenizer in a GGUF file's metadata, built from that file alone.

    transformers reads it from a private temporary directory holding only a link to the file,
    so no `tokenizer.json`, `tokenizer_config.json` or custom code that happens to sit beside
    the file can take part, and `trust_remote_code` is off.
    """
    with tempfile.TemporaryDirectory(prefix="lmscope-gguf-") as folder:
        link = Path(folder) / "model.gguf"
        os.symlink(Path(path).resolve(), link)
        try:
            return load_tokenizer(folder, trust_remote_code=False, gguf_file=link.name)
        except CheckpointError as err:
            raise CheckpointError(str(err).replace(str(folder), str(path))) from None


def read_gguf(path: str | os.PathLike[str]) -> GGUFCheckpoint:
    """Open a GGUF file (metadata only; tensors are dequantised on demand by ``get``)."""
    return GGUFCheckpoint(path)
