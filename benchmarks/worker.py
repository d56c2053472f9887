"""A worker: one tool on one model in one process, with HF (eager and sdpa attention) in the same
process as its baseline. It checks the tool's logits and greedy tokens against HF, then times every
workload round-robin with HF; `run_dtype_worker` does the same for forward and run_with_cache in
each dtype of `Settings.dtypes`, against HF in that dtype.

    >>> from benchmarks.worker import token_agreement
    >>> import torch
    >>> token_agreement(torch.tensor([[1, 2, 3]]), torch.tensor([[1, 2, 9]]), eos_id=None)
    {'rows_agree': 0, 'rows': 1, 'tokens_agree': 2, 'tokens': 3}
"""

from __future__ import annotations

import datetime as dt
import sys
import time
import traceback
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks.adapters import ADAPTERS, HFAdapter
from benchmarks.checkpoints import snapshot_dir
from benchmarks.loads import bench_load
from benchmarks.probes import cache_bytes, loadavg, machine_info
from benchmarks.spec import MODELS, PROMPTS, ModelSpec, Settings
from benchmarks.timing import error_text, time_round_robin


def prompt_batch(spec: ModelSpec, tok: Any, batch: int, device: str) -> tuple[Any, Any, list[str]]:
    """Left-padded prompt ids and mask for `batch` rows, and the prompt strings."""
    import random

    if spec.text_prompts:
        prompts = (PROMPTS * (batch // len(PROMPTS) + 1))[:batch]
    else:
        rng = random.Random(batch)
        n_words = len(tok) - 1
        prompts = [
            " ".join(f"t{rng.randrange(n_words)}" for _ in range(rng.randint(5, 16)))
            for _ in range(batch)
        ]
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    return enc["input_ids"].to(device), enc["attention_mask"].to(device), prompts


def logits_of(out: Any) -> Any:
    return out[0] if isinstance(out, tuple) else out


def token_agreement(ours: Any, ref: Any, eos_id: int | None) -> dict[str, Any]:
    """Rows whose greedy tokens equal the reference's up to the reference's first EOS (HF's
    `min_new_tokens` bans EOS, so later tokens may legitimately differ), and the token match."""
    rows = 0
    same = 0
    total = 0
    for row_ours, row_ref in zip(ours.tolist(), ref.tolist(), strict=True):
        upto = row_ref.index(eos_id) if eos_id in row_ref else len(row_ref)
        upto = min(upto, row_ours.index(eos_id)) if eos_id in row_ours else upto
        rows += row_ours[:upto] == row_ref[:upto]
        same += sum(a == b for a, b in zip(row_ours[:upto], row_ref[:upto], strict=True))
        total += upto
    return {"rows_agree": rows, "rows": len(ref), "tokens_agree": same, "tokens": total}


def _quiet_hf() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def new_document(tool: str, settings: Settings) -> dict[str, Any]:
    """A worker's JSON document before any measurement: who, what, where, when, settings."""
    settings_doc = {
        "batch": settings.batch,
        "seq": settings.seq,
        "new_tokens": settings.new_tokens,
        "gen_batches": list(settings.gen_batches),
        "warmup": settings.warmup,
        "repeats": settings.repeats,
        "load_repeats": settings.load_repeats,
        "threads": settings.threads,
        "quick": settings.quick,
    }
    if settings.dtypes:
        settings_doc["dtypes"] = list(settings.dtypes)
    return {
        "tool": tool,
        "model": settings.model,
        "device": settings.device,
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "loadavg_start": loadavg(),
        "machine": machine_info(settings.device),
        "settings": settings_doc,
        "timings": {},
        "errors": {},
    }


def progress_log(tool: str, settings: Settings) -> Callable[[str], None]:
    """A logger to stderr stamped with the tool, model and seconds since it was made."""
    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{tool}/{settings.model} {time.perf_counter() - started:6.0f}s] {msg}",
              file=sys.stderr, flush=True)  # fmt: skip

    return log


def load_hf(
    path: Any, device: str, dtype: str = "float32", impls: tuple[str, ...] = ("eager", "sdpa")
) -> dict[str, Any]:
    """HF's model with each attention implementation of `impls`, in `dtype`, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    return {
        impl: AutoModelForCausalLM.from_pretrained(
            path, attn_implementation=impl, dtype=getattr(torch, dtype)
        )
        .to(device)
        .eval()
        for impl in impls
    }


def load_tokenizer(path: Any) -> Any:
    """The checkpoint's tokenizer, with a pad token (its EOS when it has none)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def random_tokens(vocab: int, settings: Settings) -> Any:
    """The timed batch: `settings.batch` x `settings.seq` token ids drawn with seed 0."""
    import torch

    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab, (settings.batch, settings.seq), generator=gen).to(
        settings.device
    )


def begin(tool: str, settings: Settings) -> tuple[ModelSpec, Path, dict[str, Any]]:
    """A worker's start: HF quiet, torch's threads and seed set; the model's spec, its checkpoint
    folder and a fresh JSON document."""
    import torch

    _quiet_hf()
    torch.set_num_threads(settings.threads)
    torch.manual_seed(0)
    spec = MODELS[settings.model]
    return spec, snapshot_dir(settings.model, settings.cache_dir), new_document(tool, settings)


def finish(result: dict[str, Any], started: float, log: Callable[[str], None]) -> dict[str, Any]:
    """A worker's end: the load average and wall time written into its document."""
    result["loadavg_end"] = loadavg()
    result["wall_s"] = time.perf_counter() - started
    log("done")
    return result


def run_worker(tool: str, settings: Settings) -> dict[str, Any]:
    """Load HF (eager, sdpa) and `tool` on one model, check, time every workload; a JSON dict."""
    import torch

    started = time.perf_counter()
    spec, path, result = begin(tool, settings)
    dev = settings.device
    log = progress_log(tool, settings)

    # 1. loads, in fresh subprocesses, before this process fills memory
    log("load subprocesses")
    result["load"] = bench_load(tool, settings, path)

    # 2. the models
    log("loading models")
    hf = load_hf(path, dev)
    tok = load_tokenizer(path)
    base = {impl: HFAdapter(spec, path, m, tok, dev) for impl, m in hf.items()}
    adapter = ADAPTERS[tool](spec, path, hf["eager"], tok, dev)
    try:
        adapter.load()
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        result["errors"]["load"] = error_text(exc)
        return result
    result["version"] = adapter.version()

    tokens = random_tokens(hf["eager"].config.vocab_size, settings)
    layer, head = adapter.n_layers // 2, 0

    # 3. correctness, once
    log("checks")
    checks: dict[str, Any] = {}
    with torch.inference_mode():
        ref = base["sdpa"].forward(tokens)
        for name, fn in (
            ("forward", adapter.forward),
            ("cache_all", adapter.cache_all),
            ("ablate_head_vs_hf", lambda t: adapter.ablate_head(t, layer, head)),
        ):
            try:
                with adapter.no_grad_context():
                    out = logits_of(fn(tokens))
                r = base["sdpa"].ablate_head(tokens, layer, head) if name.startswith("abl") else ref
                checks[f"max_abs_logit_diff_{name}"] = (out.float() - r).abs().max().item()
            except Exception as exc:
                checks[f"max_abs_logit_diff_{name}"] = error_text(exc)
    try:
        with adapter.no_grad_context():
            _, cache = adapter.cache_all(tokens)
        n_bytes, n_tensors = cache_bytes(cache)
        result["cache_memory"] = {"bytes": n_bytes, "tensors": n_tensors}
        del cache
    except Exception as exc:
        result["cache_memory"] = {"error": error_text(exc)}
    result["checks"] = checks

    # 4. timings
    fwd_hf = {f"hf_{k}": partial(b.forward, tokens) for k, b in base.items()}
    abl_hf = {f"hf_{k}": partial(b.ablate_head, tokens, layer, head) for k, b in base.items()}
    groups: dict[str, dict[str, Callable[[], Any]]] = {
        "forward": {
            **fwd_hf,
            "forward": lambda: adapter.forward(tokens),
            "cache_all": lambda: adapter.cache_all(tokens),
            "cache_resid_post": lambda: adapter.cache_resid_post(tokens),
        },
        "ablate_head": {**abl_hf, "ablate_head": lambda: adapter.ablate_head(tokens, layer, head)},
    }
    for group, fns in groups.items():
        log(f"timing {group}")
        with adapter.no_grad_context():
            result["timings"][group] = time_round_robin(fns, settings.warmup, settings.repeats, dev)
    log("timing fwd_bwd_cache")
    fb = {f"hf_{k}": partial(b.fwd_bwd_cache, tokens) for k, b in base.items()}
    fb["fwd_bwd_cache"] = lambda: adapter.fwd_bwd_cache(tokens)
    result["timings"]["fwd_bwd_cache"] = time_round_robin(
        fb, settings.warmup, settings.repeats, dev
    )
    for m in hf.values():
        m.zero_grad(set_to_none=True)
    adapter.zero_grad()

    n = settings.new_tokens
    for batch in settings.gen_batches:
        group = f"generate_b{batch}"
        log(f"timing {group}")
        ids, mask, prompts = prompt_batch(spec, tok, batch, dev)
        fns = {f"hf_{k}": partial(b.generate, ids, mask, prompts, n) for k, b in base.items()}
        fns[group] = partial(adapter.generate, ids, mask, prompts, n)
        try:
            new_ref = base["sdpa"].generate(ids, mask, prompts, n)
            new_tool = adapter.generate(ids, mask, prompts, n)
            checks[f"{group}_agree"] = token_agreement(new_tool, new_ref, tok.eos_token_id)
        except Exception as exc:
            checks[f"{group}_agree"] = error_text(exc)
        timing = time_round_robin(fns, settings.warmup, settings.repeats, dev)
        for stats in timing.values():
            if "median_s" in stats:
                stats["tokens_per_s"] = batch * n / stats["median_s"]
        result["timings"][group] = timing

    return finish(result, started, log)


def run_dtype_worker(tool: str, settings: Settings) -> dict[str, Any]:
    """The dtype rows: for each dtype of `settings.dtypes`, HF (eager, sdpa) and `tool` loaded in
    that dtype in this process; the tool's logits against HF's in that dtype and both against HF
    float32's; forward and run_with_cache timed round-robin with HF in that dtype. A JSON dict
    with a `dtypes` entry per dtype (its `checks` and `timings`, or its `error`)."""
    import torch

    started = time.perf_counter()
    spec, path, result = begin(tool, settings)
    dev = settings.device
    result["dtypes"] = {}
    log = progress_log(tool, settings)
    tok = load_tokenizer(path)
    log("float32 reference")
    ref_model = load_hf(path, dev, "float32", impls=("sdpa",))["sdpa"]
    tokens = random_tokens(ref_model.config.vocab_size, settings)
    with torch.inference_mode():
        ref32 = ref_model(tokens, use_cache=False).logits.float()
    del ref_model

    def dist(a: Any, b: Any) -> float:
        return (logits_of(a).float() - b).abs().max().item()

    for dtype in settings.dtypes:
        entry: dict[str, Any] = {"checks": {}, "timings": {}}
        result["dtypes"][dtype] = entry
        log(f"{dtype}: loading models")
        try:
            hf = load_hf(path, dev, dtype)
            base = {impl: HFAdapter(spec, path, m, tok, dev, dtype) for impl, m in hf.items()}
            adapter = ADAPTERS[tool](spec, path, hf["eager"], tok, dev, dtype)
            adapter.load()
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            entry["error"] = error_text(exc)
            continue
        result["version"] = adapter.version()
        log(f"{dtype}: checks")
        checks = entry["checks"]
        with torch.inference_mode():
            ref = base["sdpa"].forward(tokens).float()
            for impl, b in base.items():
                checks[f"hf_{impl}_vs_float32"] = dist(b.forward(tokens), ref32)
            for name, fn in (("forward", adapter.forward), ("cache_all", adapter.cache_all)):
                try:
                    with adapter.no_grad_context():
                        out = fn(tokens)
                    checks[f"max_abs_logit_diff_{name}"] = dist(out, ref)
                    checks[f"{name}_vs_float32"] = dist(out, ref32)
                except Exception as exc:
                    checks[f"max_abs_logit_diff_{name}"] = error_text(exc)
        log(f"{dtype}: timing")
        fns: dict[str, Callable[[], Any]] = {
            f"hf_{k}": partial(b.forward, tokens) for k, b in base.items()
        }
        fns["forward"] = partial(adapter.forward, tokens)
        fns["cache_all"] = partial(adapter.cache_all, tokens)
        fns["cache_resid_post"] = partial(adapter.cache_resid_post, tokens)
        with adapter.no_grad_context():
            entry["timings"] = time_round_robin(fns, settings.warmup, settings.repeats, dev)
        del hf, base, adapter, fns

    return finish(result, started, log)
