"""Greedy generation on the embedded SmolLM2-135M against transformers on the same GGUF weights.

Finding behind `test_hf_min_new_tokens_diverges_at_eos`: lmscope and HF agree token for token.
An apparent divergence after ~30 tokens on "The capital of France is" is EOS handling, not
numerics: the 30th new token is `<|im_end|>` (the EOS, id 2, winning by 2.7 logits), where HF
stops by default, and where HF with `min_new_tokens` bans EOS and takes the runner-up "\\n". With
EOS off on both sides (`stop_at_eos=False`, `eos_token_id=None`) the tokens stay equal; the
smallest top-2 logit gap met along the way is orders of magnitude above the lmscope - HF logit
difference, so no near-tie decides anything.
"""

from __future__ import annotations

import pytest
import torch

from lmscope import HookedTransformer
from lmscope.loading.embedded import embedded_model_path

pytestmark = pytest.mark.slow

PROMPTS = [
    "The capital of France is",
    "Once upon a time, there was a",
    "def add(a, b):",
]
N_NEW = 40


@pytest.fixture(scope="module")
def lm() -> HookedTransformer:
    # compared with transformers, which tokenizes as the GGUF says: no BOS
    return HookedTransformer.from_pretrained_no_processing(
        "smollm2-135m", default_prepend_bos=False
    )


@pytest.fixture(scope="module")
def hf():
    from transformers import AutoModelForCausalLM

    p = embedded_model_path("smollm2-135m")
    model = AutoModelForCausalLM.from_pretrained(p.parent, gguf_file=p.name, dtype=torch.float32)
    return model.eval()


def _ours(lm, tokens, n=N_NEW, **kwargs) -> torch.Tensor:
    kwargs.setdefault("stop_at_eos", False)
    return lm.generate(tokens, n, do_sample=False, verbose=False, **kwargs)


def _theirs(hf, tokens, n=N_NEW, **kwargs) -> torch.Tensor:
    kwargs.setdefault("eos_token_id", None)
    kwargs.setdefault("attention_mask", torch.ones_like(tokens))
    with torch.no_grad():
        return hf.generate(tokens, do_sample=False, max_new_tokens=n, pad_token_id=2, **kwargs)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_matches_hf(lm, hf, prompt: str) -> None:
    tokens = lm.to_tokens(prompt)
    assert torch.equal(_ours(lm, tokens), _theirs(hf, tokens))


def test_greedy_with_eos_matches_hf(lm, hf) -> None:
    """Both stop at the tokenizer's EOS (<|im_end|>, id 2) by default."""
    tokens = lm.to_tokens(PROMPTS[0])
    assert lm.tokenizer.eos_token_id == hf.generation_config.eos_token_id == 2
    ours = _ours(lm, tokens, stop_at_eos=True)
    with torch.no_grad():
        theirs = hf.generate(tokens, attention_mask=torch.ones_like(tokens), do_sample=False,
                             max_new_tokens=N_NEW)  # fmt: skip
    assert torch.equal(ours, theirs)
    assert ours.shape[1] < tokens.shape[1] + N_NEW and ours[0, -1] == 2


def test_hf_min_new_tokens_diverges_at_eos(lm, hf) -> None:
    """The divergence seen at ~32 tokens: HF's `min_new_tokens` bans EOS, nothing numeric."""
    tokens = lm.to_tokens(PROMPTS[0])
    n_prompt = tokens.shape[1]
    ours = _ours(lm, tokens)
    new = ours[0, n_prompt:].tolist()
    first_eos = new.index(2)
    assert first_eos == 29
    with torch.no_grad():
        logits = lm(ours)[0, n_prompt - 1 : -1]  # the logits that chose each new token
        hf_logits = hf(ours).logits[0, n_prompt - 1 : -1]
    assert (logits - hf_logits).abs().max() < 1e-4
    top2 = logits.topk(2, dim=-1)
    gaps = top2.values[:, 0] - top2.values[:, 1]
    assert torch.equal(top2.indices[:, 0], ours[0, n_prompt:])
    assert gaps.min() > 0.04  # >= 400x the lmscope - HF difference: no near-tie anywhere
    assert gaps[first_eos] > 2.5  # EOS wins clearly
    banned = _theirs(hf, tokens, min_new_tokens=N_NEW, eos_token_id=2)[0, n_prompt:]
    assert banned[:first_eos].tolist() == new[:first_eos]  # equal up to the EOS step
    assert int(banned[first_eos]) == int(top2.indices[first_eos, 1]) == 198  # the runner-up, "\n"


def test_left_padded_batch_equals_single_prompts(lm, hf) -> None:
    batched = lm.generate(
        PROMPTS, 24, do_sample=False, stop_at_eos=False, verbose=False, return_type="tokens"
    )
    tokens, mask = lm._tokenize(PROMPTS, padding_side="left")
    assert mask is not None and not bool(mask.all())
    width = tokens.shape[1]
    for i, prompt in enumerate(PROMPTS):
        alone = _ours(lm, lm.to_tokens(prompt), 24)
        assert batched[i, width:].tolist() == alone[0, -24:].tolist(), prompt
    assert torch.equal(batched, _theirs(hf, tokens, 24, attention_mask=mask))


def test_docs_steering_example_runs(capsys) -> None:
    """The steering example of docs/generation.md runs as written and steers both ways."""
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "generation.md").read_text()
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", doc, re.S) if "def steer(" in b]
    namespace: dict = {}
    exec(compile(block, "docs/generation.md", "exec"), namespace)
    plain, kind, unkind = (namespace[k] for k in ("plain", "kind", "unkind"))
    prompt = namespace["prompt"]
    assert all(text.startswith(prompt) for text in (plain, kind, unkind))
    assert len({plain, kind, unkind}) == 3  # each direction changes the continuation
    printed = capsys.readouterr().out.splitlines()
    assert printed == [plain, kind, unkind]
