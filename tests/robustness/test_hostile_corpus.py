"""A corpus of hostile checkpoints, each written here from a valid tiny one, and for each the
rule of `hostile_files.assert_clear_or_faithful`: a CheckpointError naming the file and the
problem, or a load whose weights equal what the file really says; never a raw library error,
never a marker file written by hostile code.

Directory cases are loaded both without and with weight processing (their code paths read
tensors differently); GGUF cases without.
"""

from __future__ import annotations

import builtins
import functools
import json
import os
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hostile_files import (
    LOADERS,
    assert_clear_or_faithful,
    copy_dir,
    edit_config,
    edit_header,
    faithful_reference,
    gguf_tensor_info,
    gguf_value_offset,
    patch,
    split_safetensors,
    truncate,
    weights,
    write_safetensors,
)
from safetensors.torch import load_file, save_file

from lmscope.errors import (
    CheckpointNotFoundError,
    MissingTensorError,
    RemoteCodeError,
    UnsafeCheckpointError,
)
from tests._tiny import TinyModel
from tests.loading.test_gguf import _write_tiny

MARKER = "HOSTILE_CODE_RAN"
Q = "model.layers.0.self_attn.q_proj.weight"  # [64, 64] in the tiny Llama
O_PROJ = "model.layers.0.self_attn.o_proj.weight"  # [64, 64]
UP = "model.layers.0.mlp.up_proj.weight"  # [192, 64]


@dataclass(frozen=True)
class Case:
    """One hostile file. `build(work, marker)` breaks the copy `work` of the base and returns
    (the path to load, the path the error must name). `problem` is a regex the message must
    match (None: the load must succeed with `expected` weights: "base", the unbroken base's, or
    "file", what the safetensors library reads from the broken file)."""

    base: str
    build: Callable[[Path, Path], tuple[Path, Path]]
    problem: str | None
    expected: str | None = None
    error: type[Exception] | None = None


def _st(work: Path) -> Path:
    return work / "model.safetensors"


def _header_length(work: Path) -> int:
    return struct.unpack("<Q", _st(work).read_bytes()[:8])[0]


def _cut_safetensors(at: Callable[[Path], int]) -> Callable[[Path, Path], tuple[Path, Path]]:
    def build(work: Path, marker: Path) -> tuple[Path, Path]:
        truncate(_st(work), at(work))
        return work, _st(work)

    return build


def _header(edit: Callable[[dict], None]) -> Callable[[Path, Path], tuple[Path, Path]]:
    def build(work: Path, marker: Path) -> tuple[Path, Path]:
        edit_header(work, edit)
        return work, _st(work)

    return build


def _config(edit: Callable[[dict], None]) -> Callable[[Path, Path], tuple[Path, Path]]:
    def build(work: Path, marker: Path) -> tuple[Path, Path]:
        edit_config(work, edit)
        return work, work / "config.json"

    return build


def _tensors(edit: Callable[[dict], None]) -> Callable[[Path, Path], tuple[Path, Path]]:
    """Rewrite model.safetensors (validly) after `edit` of its tensors."""

    def build(work: Path, marker: Path) -> tuple[Path, Path]:
        tensors = load_file(_st(work))
        edit(tensors)
        save_file(tensors, _st(work), metadata={"format": "pt"})
        return work, work

    return build


def _set(name: str, key: str, value: object) -> Callable[[dict], None]:
    return lambda header: header[name].__setitem__(key, value)


def _swap_offsets(header: dict) -> None:
    header[Q]["data_offsets"], header[O_PROJ]["data_offsets"] = (
        header[O_PROJ]["data_offsets"],
        header[Q]["data_offsets"],
    )


def _past_end(header: dict) -> None:
    last = max(
        (e for k, e in header.items() if k != "__metadata__"), key=lambda e: e["data_offsets"][1]
    )
    last["data_offsets"] = [last["data_offsets"][0] + 64, last["data_offsets"][1] + 64]


def _replace_header(value: object) -> Callable[[Path, Path], tuple[Path, Path]]:
    def build(work: Path, marker: Path) -> tuple[Path, Path]:
        _, data = split_safetensors(_st(work))
        write_safetensors(_st(work), value, data)
        return work, _st(work)

    return build


def _patch_st(offset: int, data: bytes | Callable[[Path], bytes]) -> Callable:
    def build(work: Path, marker: Path) -> tuple[Path, Path]:
        patch(_st(work), offset, data(work) if callable(data) else data)
        return work, _st(work)

    return build


def _extra_layer(tensors: dict) -> None:
    for name in [n for n in tensors if n.startswith("model.layers.1.")]:
        tensors[name.replace("layers.1.", "layers.2.")] = tensors[name].clone()


def _shards_with_a_duplicate(work: Path, marker: Path) -> tuple[Path, Path]:
    tensors = load_file(_st(work))
    _st(work).unlink()
    names = sorted(tensors)
    first = {n: tensors[n] for n in names[: len(names) // 2]}
    second = {n: tensors[n] for n in names[len(names) // 2 :]} | {names[0]: tensors[names[0]]}
    save_file(first, work / "model-00001-of-00002.safetensors")
    save_file(second, work / "model-00002-of-00002.safetensors")
    return work, work


def _index_missing_shard(work: Path, marker: Path) -> tuple[Path, Path]:
    index = work / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {Q: "model-00002-of-00002.safetensors"}}))
    return work, index


def _no_weights(work: Path, marker: Path) -> tuple[Path, Path]:
    _st(work).unlink()
    return work, work


def _missing_path(work: Path, marker: Path) -> tuple[Path, Path]:
    return work / "no-such-model", work / "no-such-model"


def _file_not_dir(work: Path, marker: Path) -> tuple[Path, Path]:
    return _st(work), _st(work)


def _write_config(text: str) -> Callable[[Path, Path], tuple[Path, Path]]:
    def build(work: Path, marker: Path) -> tuple[Path, Path]:
        (work / "config.json").write_text(text)
        return work, work / "config.json"

    return build


def _cut_config(work: Path, marker: Path) -> tuple[Path, Path]:
    truncate(work / "config.json", 40)
    return work, work / "config.json"


class _System:
    """A pickle payload that would run a shell command (os.system) when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Exec:
    """A pickle payload that would run Python source (builtins.exec) when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",))


def _bin(
    payload: Callable[[Path], object] | None = None, legacy: bool = False, cut: bool = False
) -> Callable[[Path, Path], tuple[Path, Path]]:
    """Replace the safetensors weights by a pytorch_model.bin of the same tensors (plus
    `payload`), in the zip or the legacy format, optionally truncated."""

    def build(work: Path, marker: Path) -> tuple[Path, Path]:
        state: dict[str, object] = dict(load_file(_st(work)))
        _st(work).unlink()
        if payload is not None:
            state["evil"] = payload(marker)
        file = work / "pytorch_model.bin"
        torch.save(state, file, _use_new_zipfile_serialization=not legacy)
        if cut:
            truncate(file, file.stat().st_size // 2)
        return work, file

    return build


def _bin_object(value: object) -> Callable[[Path, Path], tuple[Path, Path]]:
    def build(work: Path, marker: Path) -> tuple[Path, Path]:
        _st(work).unlink()
        torch.save(value, work / "pytorch_model.bin")
        return work, work / "pytorch_model.bin"

    return build


def _int_weight_bin(work: Path, marker: Path) -> tuple[Path, Path]:
    state = dict(load_file(_st(work)))
    _st(work).unlink()
    state["transformer.h.0.mlp.c_fc.weight"] = state["transformer.h.0.mlp.c_fc.weight"].int()
    torch.save(state, work / "pytorch_model.bin")
    return work, work / "pytorch_model.bin"


def _remote_tokenizer(in_file: str) -> Callable[[Path, Path], tuple[Path, Path]]:
    """A tokenizer whose auto_map points at a module that writes the marker when imported."""

    def build(work: Path, marker: Path) -> tuple[Path, Path]:
        (work / "evil_tokenizer.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
        file = work / in_file
        config = json.loads(file.read_text())
        config["auto_map"] = {"AutoTokenizer": ["evil_tokenizer.EvilTokenizer", None]}
        file.write_text(json.dumps(config))
        return work, file

    return build


def _gguf_cut(at: Callable[[Path], int]) -> Callable[[Path, Path], tuple[Path, Path]]:
    def build(work: Path, marker: Path) -> tuple[Path, Path]:
        file = work / "tiny.gguf"
        truncate(file, at(file))
        return file, file

    return build


def _gguf_value(key: str, data: bytes) -> Callable[[Path, Path], tuple[Path, Path]]:
    def build(work: Path, marker: Path) -> tuple[Path, Path]:
        file = work / "tiny.gguf"
        patch(file, gguf_value_offset(file, key), data)
        return file, file

    return build


def _gguf_tensor(
    name: str, field: str, value: Callable[[dict[str, int], int], int], size: int = 8
) -> Callable[[Path, Path], tuple[Path, Path]]:
    def build(work: Path, marker: Path) -> tuple[Path, Path]:
        file = work / "tiny.gguf"
        info = gguf_tensor_info(file, name)
        patch(file, info[f"{field}_at"], value(info, file.stat().st_size).to_bytes(size, "little"))
        return file, file

    return build


def _gguf_bytes(offset: int, data: bytes) -> Callable[[Path, Path], tuple[Path, Path]]:
    def build(work: Path, marker: Path) -> tuple[Path, Path]:
        file = work / "tiny.gguf"
        patch(file, offset, data)
        return file, file

    return build


def _gguf_renamed(name: str) -> Callable[[Path, Path], tuple[Path, Path]]:
    def build(work: Path, marker: Path) -> tuple[Path, Path]:
        file = (work / "tiny.gguf").rename(work / name)
        return file, file

    return build


def _safetensors_as_gguf(work: Path, marker: Path) -> tuple[Path, Path]:
    file = work / "tiny.gguf"
    save_file({"a": torch.zeros(4)}, file)
    return file, file


def _u32(value: int) -> bytes:
    return value.to_bytes(4, "little")


def _f32(value: float) -> bytes:
    return struct.pack("<f", value)


def _first_offset(name: str) -> Callable[[Path], int]:
    return lambda file: gguf_tensor_info(file, name)["data_start"]


NOT_ST = r"not a valid safetensors file .*truncated or corrupt"
NOT_GGUF = r"not a valid GGUF file .*truncated or corrupt"
SHAPE = r"shape \(.*\), the model expects|gives shape"
PICKLE = r"Weights only load failed: the pickle asks for .*never unpickles"

CASES: dict[str, Case] = {
    # safetensors: truncation at every structural boundary
    "st-empty": Case("llama", _cut_safetensors(lambda w: 0), NOT_ST),
    "st-cut-in-length": Case("llama", _cut_safetensors(lambda w: 4), NOT_ST),
    "st-cut-after-length": Case("llama", _cut_safetensors(lambda w: 8), NOT_ST),
    "st-cut-in-header": Case(
        "llama", _cut_safetensors(lambda w: 8 + _header_length(w) // 2), NOT_ST
    ),
    "st-cut-after-header": Case("llama", _cut_safetensors(lambda w: 8 + _header_length(w)), NOT_ST),
    "st-cut-in-data": Case(
        "llama", _cut_safetensors(lambda w: 8 + _header_length(w) + 100), NOT_ST
    ),
    "st-cut-last-byte": Case(
        "llama", _cut_safetensors(lambda w: _st(w).stat().st_size - 1), NOT_ST
    ),
    # safetensors: header length and header body
    "st-length-huge": Case("llama", _patch_st(0, struct.pack("<Q", 2**40)), NOT_ST),
    "st-length-zero": Case("llama", _patch_st(0, struct.pack("<Q", 0)), NOT_ST),
    "st-header-garbage": Case("llama", _patch_st(8, lambda w: b"\xff" * _header_length(w)), NOT_ST),
    "st-header-array": Case("llama", _replace_header([1, 2, 3]), NOT_ST),
    "st-metadata-not-strings": Case(
        "llama", _header(lambda h: h.update(__metadata__={"a": 1})), NOT_ST
    ),
    # safetensors: offsets
    "st-overlap": Case(
        "llama", _header(lambda h: h[O_PROJ].update(data_offsets=h[Q]["data_offsets"])), NOT_ST
    ),
    "st-negative-offset": Case(
        "llama",
        _header(lambda h: h[Q].update(data_offsets=[-8, h[Q]["data_offsets"][1] - 8])),
        NOT_ST,
    ),
    "st-offset-past-end": Case("llama", _header(_past_end), NOT_ST),
    "st-begin-after-end": Case(
        "llama", _header(lambda h: h[Q].update(data_offsets=h[Q]["data_offsets"][::-1])), NOT_ST
    ),
    "st-swapped-offsets": Case("llama", _header(_swap_offsets), None, expected="file"),
    # safetensors: dtypes and shapes
    "st-int32-weight": Case(
        "llama",
        _header(_set(Q, "dtype", "I32")),
        r"'model\.layers\.0\.self_attn\.q_proj\.weight' is stored as I32, not a floating-point type",
    ),
    "st-uint8-weight": Case(
        "llama",
        _header(lambda h: h[Q].update(dtype="U8", shape=[64, 256])),
        r"stored as U8, not a floating-point type",
    ),
    "st-unknown-dtype": Case("llama", _header(_set(Q, "dtype", "F33")), NOT_ST),
    "st-f16-twice-the-elements": Case(
        "llama", _header(lambda h: h[Q].update(dtype="F16", shape=[128, 64])), SHAPE
    ),
    "st-transposed-shape": Case("llama", _header(_set(UP, "shape", [64, 192])), SHAPE),
    "st-shape-disagrees-with-bytes": Case("llama", _header(_set(UP, "shape", [100, 64])), NOT_ST),
    # safetensors: tensors the model does not use, or lacks
    "st-extra-tensor": Case(
        "llama",
        _tensors(lambda t: t.update({"model.layers.0.self_attn.evil.weight": torch.ones(3)})),
        r"does not use: model\.layers\.0\.self_attn\.evil\.weight",
    ),
    "st-extra-layer": Case("llama", _tensors(_extra_layer), r"does not use: model\.layers\.2\."),
    "st-missing-tensor": Case(
        "llama",
        _tensors(lambda t: t.pop(UP)),
        r"is missing tensor 'model\.layers\.0\.mlp\.up_proj\.weight'",
        error=MissingTensorError,
    ),
    "st-harmless-buffers": Case(
        "gpt2",
        _tensors(
            lambda t: t.update(
                {
                    "transformer.h.0.attn.bias": torch.ones(1, 1, 4, 4).tril(),
                    "transformer.h.0.attn.masked_bias": torch.tensor(-1e4),
                    "transformer.h.1.attn.rotary_emb.inv_freq": torch.ones(8),
                }
            )
        ),
        None,
        expected="base",
    ),
    "st-tied-head-duplicate": Case(
        "tied",
        _tensors(lambda t: t.update({"lm_head.weight": t["model.embed_tokens.weight"].clone()})),
        None,
        expected="base",
    ),
    "st-tied-head-differs": Case(
        "tied",
        _tensors(lambda t: t.update({"lm_head.weight": t["model.embed_tokens.weight"] + 1})),
        r"ties the unembedding to the embedding .*lm_head\.weight differs",
    ),
    "st-shards-share-a-tensor": Case(
        "llama",
        _shards_with_a_duplicate,
        r"is stored twice, in model-00001-of-00002\.safetensors and model-00002-of-00002\.safetensors",
    ),
    "st-index-names-missing-shard": Case(
        "llama",
        _index_missing_shard,
        r"lists shards that are not in",
        error=CheckpointNotFoundError,
    ),
    "dir-no-weights": Case(
        "llama",
        _no_weights,
        r"has no \*\.safetensors or pytorch_model\*\.bin weights",
        error=CheckpointNotFoundError,
    ),
    "path-missing": Case(
        "llama", _missing_path, r"no such file or directory", error=CheckpointNotFoundError
    ),
    "path-is-a-weights-file": Case(
        "llama", _file_not_dir, r"is a file, but lmscope loads a model directory"
    ),
    # config.json
    "config-not-json": Case("llama", _write_config("{this is not json"), r"is not valid JSON"),
    "config-truncated": Case("llama", _cut_config, r"is not valid JSON"),
    "config-a-list": Case("llama", _write_config("[1, 2]"), r"holds a JSON list, not an object"),
    "config-layers-huge": Case(
        "llama",
        _config(lambda c: c.update(num_hidden_layers=10**9)),
        r"num_hidden_layers is 1000000000, but .* holds only 21 tensors",
    ),
    "config-width-huge": Case(
        "llama",
        _config(lambda c: c.update(hidden_size=2**20, head_dim=2**18)),
        r"describes a model of .* values, but",
    ),
    "config-fewer-layers": Case(
        "llama",
        _config(lambda c: c.update(num_hidden_layers=1)),
        r"does not use: model\.layers\.1\.",
    ),
    "config-width-a-string": Case(
        "llama",
        _config(lambda c: c.update(hidden_size="64")),
        r"not a (usable llama|valid model) config",
    ),
    "config-width-missing": Case(
        "llama", _config(lambda c: c.pop("hidden_size")), r"not a (usable llama|valid model) config"
    ),
    "config-heads-zero": Case(
        "llama",
        _config(lambda c: c.update(num_attention_heads=0)),
        r"not a (usable llama|valid model) config",
    ),
    "config-custom-architecture": Case(
        "llama",
        _config(
            lambda c: c.update(
                architectures=["EvilForCausalLM"],
                auto_map={"AutoModelForCausalLM": "evil.EvilForCausalLM"},
            )
        ),
        r"not supported by lmscope.*never runs a checkpoint's modelling code",
    ),
    # pickled weights
    "bin-os-system-payload": Case("gpt2", _bin(_System), PICKLE, error=UnsafeCheckpointError),
    "bin-exec-payload": Case("gpt2", _bin(_Exec), PICKLE, error=UnsafeCheckpointError),
    "bin-legacy-payload": Case(
        "gpt2", _bin(_System, legacy=True), PICKLE, error=UnsafeCheckpointError
    ),
    "bin-legacy-format": Case("gpt2", _bin(legacy=True), None, expected="base"),
    "bin-truncated": Case("gpt2", _bin(cut=True), r"not a readable PyTorch checkpoint"),
    "bin-a-list": Case("gpt2", _bin_object([torch.zeros(2)]), r"holds a list, not a state dict"),
    "bin-int-weight": Case(
        "gpt2", _int_weight_bin, r"'transformer\.h\.0\.mlp\.c_fc\.weight' is stored as int32"
    ),
    # code beside the weights
    "tokenizer-auto-map": Case(
        "gpt2_tok",
        _remote_tokenizer("tokenizer_config.json"),
        r"custom Python code .*trust_remote_code=True",
        error=RemoteCodeError,
    ),
    "config-tokenizer-auto-map": Case(
        "gpt2_tok",
        _remote_tokenizer("config.json"),
        r"custom Python code .*trust_remote_code=True",
        error=RemoteCodeError,
    ),
    # GGUF: truncation at every structural boundary
    "gguf-empty": Case("gguf", _gguf_cut(lambda f: 0), NOT_GGUF),
    "gguf-cut-in-magic": Case("gguf", _gguf_cut(lambda f: 3), NOT_GGUF),
    "gguf-cut-after-version": Case("gguf", _gguf_cut(lambda f: 8), NOT_GGUF),
    "gguf-cut-after-counts": Case("gguf", _gguf_cut(lambda f: 24), NOT_GGUF),
    "gguf-cut-in-metadata": Case("gguf", _gguf_cut(lambda f: 300), NOT_GGUF),
    "gguf-cut-in-tensor-info": Case("gguf", _gguf_cut(lambda f: 700), NOT_GGUF),
    "gguf-cut-at-data": Case("gguf", _gguf_cut(_first_offset("token_embd.weight")), NOT_GGUF),
    "gguf-cut-in-data": Case("gguf", _gguf_cut(lambda f: f.stat().st_size // 2), NOT_GGUF),
    "gguf-cut-last-bytes": Case("gguf", _gguf_cut(lambda f: f.stat().st_size - 4), NOT_GGUF),
    # GGUF: header fields
    "gguf-bad-magic": Case("gguf", _gguf_bytes(0, b"GGUX"), r"not a valid GGUF file .*magic"),
    "gguf-bad-version": Case(
        "gguf", _gguf_bytes(4, _u32(99)), r"not a valid GGUF file .*version 99"
    ),
    "gguf-tensor-past-end": Case(
        "gguf", _gguf_tensor("blk.1.ffn_down.weight", "offset", lambda i, size: size), NOT_GGUF
    ),
    "gguf-tensors-overlap": Case(
        "gguf",
        _gguf_tensor("output_norm.weight", "offset", lambda i, size: 0),
        r"the data of tensor '.*' \(bytes .*\) overlaps tensor",
    ),
    "gguf-unknown-tensor-type": Case(
        "gguf", _gguf_tensor("token_embd.weight", "type", lambda i, size: 200, size=4), NOT_GGUF
    ),
    "gguf-blocks-too-many": Case(
        "gguf",
        _gguf_value("llama.block_count", _u32(100)),
        r"block_count is 100, but the file holds only",
    ),
    "gguf-blocks-huge": Case(
        "gguf", _gguf_value("llama.block_count", _u32(2**31)), r"block_count is 2147483648"
    ),
    "gguf-blocks-fewer": Case(
        "gguf", _gguf_value("llama.block_count", _u32(1)), r"does not use: .*blk\.1\."
    ),
    "gguf-heads-zero": Case(
        "gguf",
        _gguf_value("llama.attention.head_count", _u32(0)),
        r"metadata llama\.attention\.head_count is 0, not a positive integer",
    ),
    "gguf-heads-indivisible": Case(
        "gguf",
        _gguf_value("llama.attention.head_count", _u32(3)),
        r"not a valid model config|shape",
    ),
    "gguf-eps-nan": Case(
        "gguf",
        _gguf_value("llama.attention.layer_norm_rms_epsilon", _f32(float("nan"))),
        r"layer_norm_rms_epsilon is nan, not a positive number",
    ),
    "gguf-eps-changed": Case(
        "gguf",
        _gguf_value("llama.attention.layer_norm_rms_epsilon", _f32(1e-3)),
        None,
        expected="base",
    ),
    "gguf-unknown-architecture": Case(
        "gguf",
        _gguf_value("general.architecture", b"llamb"),
        r"GGUF architecture 'llamb' is not supported",
    ),
    "gguf-architecture-not-utf8": Case(
        "gguf", _gguf_value("general.architecture", b"\x80lama"), r"metadata string is not UTF-8"
    ),
    "gguf-suffix-on-safetensors": Case("gguf", _safetensors_as_gguf, NOT_GGUF),
    "gguf-without-suffix": Case("gguf", _gguf_renamed("weights.bin"), None, expected="base"),
}


@pytest.fixture(scope="module")
def bases(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_llama: TinyModel,
    tiny_gpt2: TinyModel,
    tiny_llama_tied_bias: TinyModel,
    tiny_gpt2_tok: TinyModel,
) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("gguf-base")
    _write_tiny(folder / "tiny.gguf", "llama")
    return {
        "llama": tiny_llama.path,
        "gpt2": tiny_gpt2.path,
        "tied": tiny_llama_tied_bias.path,
        "gpt2_tok": tiny_gpt2_tok.path,
        "gguf": folder,
    }


def test_the_corpus_is_large() -> None:
    assert len(CASES) >= 40
    assert sum(c.base == "gguf" for c in CASES.values()) >= 15


def _expected(
    case: Case, bases: dict[str, Path], work: Path, loader: Callable
) -> dict[str, torch.Tensor]:
    """The weights a faithful load of the case gives (see `Case`)."""
    if case.expected == "file":
        return faithful_reference(work, loader)
    base = bases[case.base]
    return weights(loader(base / "tiny.gguf" if case.base == "gguf" else base))


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_file(name: str, bases: dict[str, Path], tmp_path: Path) -> None:
    case = CASES[name]
    work = copy_dir(bases[case.base], tmp_path / "work")
    marker = tmp_path / MARKER
    path, named = case.build(work, marker)
    loaders = ["raw"] if case.base == "gguf" else ["raw", "processed"]
    for kind in loaders:
        loader = LOADERS[kind]
        expected = functools.partial(_expected, case, bases, work, loader)
        error = assert_clear_or_faithful(
            path, loader, problem=case.problem, names=named, expected=expected, marker=marker
        )
        if case.error is not None:
            assert isinstance(error, case.error)


def test_pickle_refusal_never_suggests_weights_only_false(bases, tmp_path: Path) -> None:
    work = copy_dir(bases["gpt2"], tmp_path / "work")
    path, _ = _bin(_System)(work, tmp_path / MARKER)
    with pytest.raises(UnsafeCheckpointError, match="convert it to safetensors") as info:
        LOADERS["raw"](path)
    assert "weights_only=False" not in str(info.value)
    assert isinstance(info.value, pickle.UnpicklingError)
