"""lmscope accepts the calls TransformerLens 3.9's public methods and functions accept: every
parameter name, positional parameters in TransformerLens's order, and its simple defaults.

The TransformerLens signatures are read from tl_signatures.json (written by
scripts/tl_signatures.py; CI has no TransformerLens). Differences on purpose are listed below with
the reason, and docs/migration.md says them too.
"""

from __future__ import annotations

import importlib
import inspect
import json
from pathlib import Path
from typing import Any

import pytest

import lmscope.model as model_module
from lmscope.generation import GENERATE_ORDER

TL = json.loads((Path(__file__).parent / "tl_signatures.json").read_text())

# Not provided, on purpose (TransformerLens internals, its Mamba/bridge parts, hub datasets).
NOT_PROVIDED = {
    "transformer_lens.ActivationCache.compute_ssm_effective_attention": "state-space models",
    "transformer_lens.ActivationCache.compute_ssm_state": "state-space models",
    "transformer_lens.ActivationCache.ssm_layers": "state-space models",
    "transformer_lens.HookedTransformer.fill_missing_keys": "loading internals",
    "transformer_lens.HookedTransformer.get_pos_offset": "forward internals",
    "transformer_lens.HookedTransformer.get_residual": "forward internals",
    "transformer_lens.hook_points.HookPoint.enable_reshape": "the bridge's hook reshaping",
    "transformer_lens.evals.evaluate": "downloads datasets from the hub",
    "transformer_lens.evals.make_code_data_loader": "downloads a dataset from the hub",
    "transformer_lens.evals.make_mmlu_data_loader": "downloads a dataset from the hub",
    "transformer_lens.evals.make_owt_data_loader": "downloads a dataset from the hub",
    "transformer_lens.evals.make_pile_data_loader": "downloads a dataset from the hub",
    "transformer_lens.evals.make_wiki_data_loader": "downloads a dataset from the hub",
    "transformer_lens.evals.mmlu_eval": "downloads a dataset from the hub",
}
# (function, parameter) -> why lmscope's default differs
OTHER_DEFAULTS = {
    ("transformer_lens.evals.evaluate_on_dataset", "device"): "None: the model's device",
    ("transformer_lens.evals.induction_loss", "device"): "None: the model's device",
    ("transformer_lens.HookedTransformer.generate_stream", "max_tokens_per_yield"): (
        "None: a [batch] tensor (or text pieces) per step; N gives TransformerLens's chunks"
    ),
    ("transformer_lens.HookedTransformer.to_tokens", "truncate"): (
        "False: a text longer than n_ctx is an error in the forward, not silently cut"
    ),
    ("transformer_lens.HookedTransformer.generate_stream", "verbose"): (
        "False: a stream's consumer shows its own progress"
    ),
}
# (function, parameter) missing on purpose
OTHER_PARAMS = {
    ("transformer_lens.hook_points.HookPoint.add_hook", "alias_names"): "the bridge's aliases",
}
# Methods whose positional parameters after the first are named by an order table (so
# TransformerLens's positional calls mean the same) rather than spelled in the signature.
ORDER_TABLES = {
    "transformer_lens.HookedTransformer.from_pretrained": model_module._FROM_PRETRAINED_ORDER,
    "transformer_lens.HookedTransformer.from_pretrained_no_processing": (
        model_module._NO_PROCESSING_ORDER
    ),
    "transformer_lens.HookedTransformer.generate": GENERATE_ORDER,
    "transformer_lens.HookedTransformer.generate_stream": (
        "max_tokens_per_yield",
        *GENERATE_ORDER,
    ),
}
NN_MODULE = {"transformer_lens.HookedTransformer.to"}  # torch's own `to(*args, **kwargs)`


def _lmscope_owner(key: str) -> Any:
    """lmscope's counterpart of a TransformerLens module or class path."""
    path = "lmscope" + key[len("transformer_lens") :]
    try:
        module = importlib.import_module(path)
    except ImportError:
        module_path, _, name = path.rpartition(".")
        return getattr(importlib.import_module(module_path), name)
    name = path.rpartition(".")[2]
    owner = getattr(module, name, None)
    return owner if inspect.isclass(owner) else module


CASES = [
    (f"{owner}.{name}", owner, name, params)
    for owner, functions in TL["targets"].items()
    for name, params in functions.items()
]


@pytest.mark.parametrize(
    ("qualname", "owner", "name", "tl_params"), CASES, ids=[c[0] for c in CASES]
)
def test_lmscope_accepts_transformerlens_calls(
    qualname: str, owner: str, name: str, tl_params: list[dict[str, Any]]
) -> None:
    if qualname in NOT_PROVIDED:
        assert not hasattr(_lmscope_owner(owner), name) or name == "evaluate"
        return
    fn = getattr(_lmscope_owner(owner), name, None)
    assert fn is not None, f"{qualname} is missing"
    ours = inspect.signature(fn).parameters
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in ours.values())
    problems = []
    for p in tl_params:
        if p["kind"] in ("VAR_POSITIONAL", "VAR_KEYWORD") or (qualname, p["name"]) in OTHER_PARAMS:
            continue
        q = ours.get(p["name"])
        if q is None:
            if not takes_kwargs:
                problems.append(f"no parameter {p['name']!r}")
            continue
        if p.get("simple") and (qualname, p["name"]) not in OTHER_DEFAULTS:
            if q.default is inspect.Parameter.empty:
                problems.append(f"{p['name']!r} is required, TransformerLens defaults it")
            elif q.default != p["default"]:
                problems.append(f"{p['name']!r} defaults to {q.default!r}, not {p['default']!r}")
    if qualname not in NN_MODULE:
        positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        tl_order = [
            p["name"]
            for p in tl_params
            if p["kind"] == "POSITIONAL_OR_KEYWORD" and (qualname, p["name"]) not in OTHER_PARAMS
        ]
        our_order = [n for n, q in ours.items() if q.kind in positional]
        our_order += list(ORDER_TABLES.get(qualname, ()))
        if our_order[: len(tl_order)] != tl_order:
            problems.append(f"positional order {our_order} is not {tl_order}")
    assert not problems, f"{qualname}: " + "; ".join(problems)


def test_order_tables_name_real_parameters() -> None:
    from lmscope.generation import generate, generate_stream
    from lmscope.loading import from_pretrained

    for fn, names in [
        (from_pretrained, model_module._FROM_PRETRAINED_ORDER),
        (generate, GENERATE_ORDER),
        (generate_stream, ("max_tokens_per_yield", *GENERATE_ORDER)),
    ]:
        config_fields = {"n_ctx"}  # a HookedTransformerConfig override, through **kwargs
        assert set(names) - config_fields <= set(inspect.signature(fn).parameters), fn.__name__


def test_positional_calls_mean_what_they_mean_in_transformerlens(
    tiny_gpt2: Any, tokens: Any
) -> None:
    import torch

    from lmscope import HookedTransformer

    # from_pretrained_no_processing(name, fold_ln): the step is honoured, not overridden
    folded = HookedTransformer.from_pretrained_no_processing(tiny_gpt2.path, True)
    assert folded.cfg.processing.get("fold_ln") is True
    model = HookedTransformer.from_pretrained_no_processing(tiny_gpt2.path)
    assert not model.cfg.processing.get("fold_ln")
    prompt = tokens[:1, :4]
    # generate(input, max_new_tokens, stop_at_eos, eos_token_id, do_sample)
    positional = model.generate(prompt, 5, False, None, False)
    named = model.generate(prompt, max_new_tokens=5, stop_at_eos=False, do_sample=False)
    assert torch.equal(positional, named)
    with pytest.raises(TypeError, match="multiple values for 'stop_at_eos'"):
        model.generate(prompt, 5, False, stop_at_eos=True)
    with pytest.raises(TypeError, match="at most 12 more positional"):
        model.generate(prompt, 5, *([False] * 13))
    # generate_stream(input, max_new_tokens, max_tokens_per_yield, ...): TransformerLens's chunks
    args = dict(stop_at_eos=False, do_sample=False)
    chunks = list(model.generate_stream(prompt, 5, 6, **args))
    assert [c.shape for c in chunks] == [(1, 6), (1, 3)]  # the prompt's 4 count towards the first
    assert torch.equal(torch.cat(chunks, dim=1), named)
    steps = list(model.generate_stream(prompt, 5, **args))
    assert [s.shape for s in steps] == [(1,)] * 5
    with pytest.raises(ValueError, match="max_tokens_per_yield must be an int >= 1"):
        model.generate_stream(prompt, 5, 0, **args)
    model.set_use_attn_result(use_attn_result=True)
    assert model.cfg.use_attn_result
