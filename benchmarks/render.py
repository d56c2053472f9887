"""docs/benchmarks.md, rendered from the results: per device the machine and settings, then per
model lmscope's targets (judged strictly from the run), times and ratios against HF in the same
process, loads and memory, correctness checks; then the dtype rows, the big-checkpoint and
harvesting sections (from their own JSON files, when present) and how each tool is driven.

    >>> from benchmarks.render import render
    >>> render({"results": {}}).splitlines()[0]
    '# Benchmarks'
"""

from __future__ import annotations

import json
from typing import Any

from benchmarks.spec import (
    BIG_LOAD_JSON,
    BIG_LOAD_LABELS,
    BIG_LOAD_TARGETS,
    DTYPE_WORKLOADS,
    DTYPES_JSON,
    HARVEST_JSON,
    HF_BASELINE,
    HF_CONTENDERS,
    LOAD_KINDS,
    LOAD_LABELS,
    MODELS,
    TOOL_HOW,
    TOOL_LABELS,
    TOOLS,
    WORKLOAD_LABELS,
    WORKLOADS,
)

TARGETS_TEXT = [
    ("forward", "forward, no hooks <= 1.0x the faster of HF eager and HF sdpa"),
    ("cache_all", "run_with_cache(all) <= 1.15x that HF forward"),
    ("cache_resid_post", "run_with_cache(resid_post only) <= 1.05x that HF forward"),
]


def _median(stats: dict[str, Any] | None) -> float | None:
    return None if not stats or "median_s" not in stats else stats["median_s"]


def hf_best(doc: dict[str, Any], workload: str) -> tuple[float | None, str]:
    """The faster HF attention's median seconds for `workload`'s group, and which."""
    group = doc.get("timings", {}).get(WORKLOADS[workload], {})
    best: tuple[float | None, str] = (None, "")
    for name in HF_CONTENDERS:
        m = _median(group.get(name))
        if m is not None and (best[0] is None or m < best[0]):
            best = (m, name.removeprefix("hf_"))
    return best


def tool_stats(doc: dict[str, Any], workload: str) -> dict[str, Any] | None:
    return doc.get("timings", {}).get(WORKLOADS[workload], {}).get(workload)


def ratio(doc: dict[str, Any], workload: str) -> float | None:
    """Tool time / best HF time in the same process (lower is better; for generate this is the
    inverse of the tokens/s ratio)."""
    t = _median(tool_stats(doc, workload))
    hf, _ = hf_best(doc, workload)
    return None if t is None or hf is None else t / hf


def _fmt_time(s: float) -> str:
    return f"{s * 1e3:.0f} ms" if s >= 0.1 else f"{s * 1e3:.1f} ms"


def _cell(doc: dict[str, Any] | None, workload: str) -> str:
    if doc is None:
        return "not run"
    if "error" in doc:
        return f"failed: {doc['error']}"
    if "load" in doc.get("errors", {}):
        return f"failed to load: {doc['errors']['load']}"
    stats = tool_stats(doc, workload)
    if stats is None:
        return "not run"
    if "error" in stats:
        return f"failed: {stats['error'][:120]}"
    r = ratio(doc, workload)
    assert r is not None
    if workload.startswith("generate"):
        return f"{stats['tokens_per_s']:.0f} tok/s, **{1 / r:.2f}x**"
    return f"{_fmt_time(stats['median_s'])}, **{r:.2f}x**"


def _hf_cell(doc: dict[str, Any] | None, workload: str) -> str:
    if doc is None or "timings" not in doc:
        return "-"
    m, which = hf_best(doc, workload)
    if m is None:
        return "-"
    if workload.startswith("generate"):
        stats = doc["timings"][WORKLOADS[workload]][f"hf_{which}"]
        return f"{stats['tokens_per_s']:.0f} tok/s ({which})"
    return f"{_fmt_time(m)} ({which})"


def _mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def evaluate_targets(model_docs: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """lmscope's targets on one model: (target, measured, holds) rows; holds None = not measured."""
    rows: list[tuple[str, str, bool | None]] = []
    lm = model_docs.get("lmscope")
    if lm is None or "timings" not in lm:
        return [("lmscope was not run on this model", "-", None)]
    limits = {"forward": 1.0, "cache_all": 1.15, "cache_resid_post": 1.05}
    for workload, text in TARGETS_TEXT:
        r = ratio(lm, workload)
        rows.append(
            (text, "-" if r is None else f"{r:.3f}x", None if r is None else r <= limits[workload])
        )
    for workload in (w for w in WORKLOADS if w.startswith("generate")):
        r = ratio(lm, workload)
        text = f"{WORKLOAD_LABELS[workload]}: >= 1.0x HF tokens/s"
        rows.append(
            (text, "-" if r is None else f"{1 / r:.3f}x", None if r is None else 1 / r >= 1.0)
        )
        for tl in ("tl3", "tl4"):
            other = model_docs.get(tl)
            ro = None if other is None or "timings" not in other else ratio(other, workload)
            text = f"{WORKLOAD_LABELS[workload]}: >= 3x {TOOL_LABELS[tl]} tokens/s"
            if r is None or ro is None:
                rows.append((text, "not measured", None))
            else:
                rows.append((text, f"{ro / r:.3f}x", ro / r >= 3.0))
    # Loads compare load + one read of every weight: HF (and lmscope without processing) map the
    # safetensors file and read a page only when it is first used, so a bare load does not load.
    load = lm.get("load", {}).get("kinds", {})
    hf_load = load.get("hf", {}).get("load_touch_s")
    disk = lm.get("load", {}).get("weights_bytes")
    for kind in LOAD_KINDS["lmscope"]:
        k = load.get(kind, {})
        if "load_touch_s" not in k or not hf_load or not disk:
            continue
        r = k["load_touch_s"] / hf_load
        label = load_label(kind, load)
        if kind not in ("lmscope_first", "lmscope_keeps"):  # (they process: performance.md)
            rows.append((f"load + read, {label}: <= 1.0x HF", f"{r:.3f}x", r <= 1.0))
        g = k["rss_growth_touch"] / disk
        rows.append((f"peak RSS growth, {label}: <= 1.3x weights", f"{g:.2f}x", g <= 1.3))
    for workload in WORKLOADS:
        r = ratio(lm, workload)
        slower, measured = [], []
        for other_tool in ("tl3", "tl4", "nnsight"):
            other = model_docs.get(other_tool)
            ro = None if other is None or "timings" not in other else ratio(other, workload)
            if r is not None and ro is not None:
                measured.append(other_tool)
                if r >= ro:
                    slower.append(f"{TOOL_LABELS[other_tool]} ({ro:.3f}x vs {r:.3f}x)")
        if r is None:
            continue
        text = f"{WORKLOAD_LABELS[workload]}: faster than TL 3.9, TL 4.3 and nnsight"
        if not measured:
            rows.append((text, "no other tool measured", None))
        else:
            text += "" if len(measured) == 3 else " (measured: " + ", ".join(measured) + ")"
            rows.append((text, "slower than " + ", ".join(slower) if slower else "yes", not slower))
    lm_load = load.get("lmscope_no_processing", {}).get("load_touch_s")
    if lm_load and hf_load:
        for other_tool in ("tl3", "tl4", "nnsight"):
            other = model_docs.get(other_tool, {}).get("load", {}).get("kinds", {})
            ohf = other.get("hf", {}).get("load_touch_s")
            for kind in LOAD_KINDS[other_tool]:
                ok = other.get(kind, {}).get("load_touch_s")
                if ok and ohf:
                    ours, theirs = lm_load / hf_load, ok / ohf
                    rows.append((
                        f"load faster than {LOAD_LABELS[kind]} (no-processing lmscope)",
                        f"{ours:.2f}x vs {theirs:.2f}x HF", ours < theirs,
                    ))  # fmt: skip
    return rows


def load_label(kind: str, kinds: dict[str, Any]) -> str:
    """The label of a load kind in results whose kinds are `kinds`: results written before the
    processed-weights cache have an "lmscope" load that processed (no first/second rows)."""
    if kind == "lmscope" and "lmscope_keeps" not in kinds:
        return LOAD_LABELS["lmscope_before_cache"]
    return LOAD_LABELS[kind]


def render_device(device: str, results: dict[str, Any]) -> list[str]:
    """The sections of one device: machine and settings, then each model's tables."""
    docs = [d for m in results.values() for d in m.values() if "machine" in d]
    lines: list[str] = []
    if docs:
        m = docs[0]["machine"]
        s = docs[0]["settings"]
        dates = sorted({d["date"] for d in docs})
        versions = {d["tool"]: d.get("version", "?") for d in docs}
        torch_versions = sorted({d["machine"]["torch"] for d in docs})
        tf_versions = sorted({d["machine"]["transformers"] for d in docs})
        loads = [f"{d['tool']}/{d['model']}: {d['loadavg_start']}" for d in docs]
        lines += [
            f"## Machine and settings ({device})",
            "",
            f"- machine: {m['platform']}, {m['cpu']}, {m['cpu_count']} CPUs"
            + (f", GPU {m['gpu']}" if "gpu" in m else ""),
            f"- device: {m['device']}; torch threads: {s['threads']}; python {m['python']}",
            f"- torch {', '.join(torch_versions)}; transformers {', '.join(tf_versions)}; "
            + "; ".join(f"{TOOL_LABELS[t]} {v}" for t, v in sorted(versions.items())),
            f"- date: {dates[0]}" + (f" to {dates[-1]}" if len(dates) > 1 else ""),
            f"- workloads: batch {s['batch']} x {s['seq']} tokens; generate {s['new_tokens']} "
            f"new tokens at batch {' and '.join(map(str, s['gen_batches']))}; warm-up "
            f"{s['warmup']}, median of {s['repeats']} repeats; loads: median of "
            f"{s['load_repeats']} fresh subprocesses"
            + (" (QUICK smoke run)" if s["quick"] else ""),
            "- load average (1, 5, 15 min) at each worker's start: " + "; ".join(loads),
            "",
        ]
        if device.startswith("cuda"):
            lines += [
                "On CUDA the load table's peak RSS is host memory (the CUDA context included), "
                "not GPU memory. Only the tools installed on the GPU machine were measured.",
                "",
            ]
    for model, model_docs in results.items():
        tools = [t for t in TOOLS if t in model_docs]
        lines += [f"## {model} ({device})", "", MODELS[model].description + ".", ""]
        lm = model_docs.get("lmscope")
        lines += [
            "### Targets (lmscope)",
            "",
            "Computed from this run, strictly: differences of a few percent between ratios are "
            "within run-to-run noise on a shared machine (compare the HF baselines of the tools' "
            "processes below).",
            "",
            "| target | measured | |",
            "| --- | --- | --- |",
        ]
        for text, measured, holds in evaluate_targets(model_docs):
            mark = "n/a" if holds is None else ("hold" if holds else "**missed**")
            lines.append(f"| {text} | {measured} | {mark} |")
        lines += ["", "### Times and ratios", ""]
        head = "| workload | HF in lmscope's process | " + " | ".join(TOOL_LABELS[t] for t in tools)
        lines += [head + " |", "| --- | --- |" + " --- |" * len(tools)]
        for workload in WORKLOADS:
            cells = [_cell(model_docs[t], workload) for t in tools]
            lines.append(
                f"| {WORKLOAD_LABELS[workload]} | {_hf_cell(lm, workload)} | "
                + " | ".join(cells)
                + " |"
            )
        lines += [
            "",
            "HF baselines: " + "; ".join(f"{WORKLOAD_LABELS[w]}: {HF_BASELINE[w]}" for w in
                                          ("ablate_head", "fwd_bwd_cache")) + "; the others: HF "
            "forward / `generate` (`min_new_tokens = max_new_tokens`), the faster of eager and sdpa.",
            "",
            "### Load and memory",
            "",
            "| load (fresh subprocess) | load | load + read every weight | vs HF in the same venv "
            "| peak RSS growth (after the read) | / weights on disk |",
            "| --- | --- | --- | --- | --- | --- |",
        ]  # fmt: skip
        for tool in tools:
            ld = model_docs[tool].get("load", {})
            kinds = ld.get("kinds", {})
            hf_load = kinds.get("hf", {}).get("load_touch_s")
            disk = ld.get("weights_bytes")
            for kind in ("hf",) + LOAD_KINDS[tool]:
                if kind == "hf" and tool != "lmscope":
                    continue
                k = kinds.get(kind)
                if k is None:
                    continue
                if "error" in k:
                    lines.append(
                        f"| {load_label(kind, kinds)} | failed: {k['error'][:120]} | | | | |"
                    )
                    continue
                vs = f"{k['load_touch_s'] / hf_load:.2f}x" if hf_load else "-"
                grow = f"{k['rss_growth_touch'] / disk:.2f}x" if disk else "-"
                lines.append(
                    f"| {load_label(kind, kinds)} | {k['load_s']:.2f} s | {k['load_touch_s']:.2f} s | {vs} "
                    f"| {_mib(k['rss_growth'])} ({_mib(k['rss_growth_touch'])}) | {grow} |"
                )
        if lm and lm.get("load", {}).get("weights_bytes"):
            lines += ["", f"Weights on disk: {_mib(lm['load']['weights_bytes'])}. Load time is "
                      "measured after the imports; the ratios use load + one read of every weight, since HF "
                      "(and lmscope without processing) map the safetensors file and read a page "
                      "only when it is first used. Peak RSS growth is VmHWM (reset after the "
                      "imports) minus the RSS after the imports."]  # fmt: skip
        lines += ["", "| full cache (every activation) | memory | tensors |", "| --- | --- | --- |"]
        for tool in tools:
            cm = model_docs[tool].get("cache_memory")
            if cm is None:
                continue
            if "error" in cm:
                lines.append(f"| {TOOL_LABELS[tool]} | failed: {cm['error'][:120]} | |")
            else:
                lines.append(f"| {TOOL_LABELS[tool]} | {_mib(cm['bytes'])} | {cm['tensors']} |")
        lines += ["", "### Correctness checks", "",
                  "| tool | max abs logit diff vs HF sdpa (forward / cache / ablation) | greedy "
                  "tokens equal to HF sdpa's, up to EOS |", "| --- | --- | --- |"]  # fmt: skip
        for tool in tools:
            ch = model_docs[tool].get("checks", {})

            def num(x: Any) -> str:
                return f"{x:.1e}" if isinstance(x, float) else (f"failed: {x}" if x else "-")

            diffs = " / ".join(
                num(ch.get(f"max_abs_logit_diff_{k}"))
                for k in ("forward", "cache_all", "ablate_head_vs_hf")
            )
            agree = []
            for key, val in ch.items():
                if key.endswith("_agree"):
                    b = key.removeprefix("generate_").removesuffix("_agree")
                    if isinstance(val, dict):
                        agree.append(f"{b}: {val['rows_agree']}/{val['rows']} rows, "
                                     f"{val['tokens_agree']}/{val['tokens']} tokens")  # fmt: skip
                    else:
                        agree.append(f"{b}: failed: {val}")
            lines.append(f"| {TOOL_LABELS[tool]} | {diffs} | {'; '.join(agree)} |")
        lines += ["", "### Per-tool process HF baselines and run details", ""]
        for tool in tools:
            d = model_docs[tool]
            if "timings" not in d:
                lines.append(f"- {TOOL_LABELS[tool]}: {d.get('error') or d.get('errors')}")
                continue
            hf_fwd, which = hf_best(d, "forward")
            lines.append(
                f"- {TOOL_LABELS[tool]} ({d.get('version', '?')}): HF forward {_fmt_time(hf_fwd or 0)} "
                f"({which}); run {d['date']}, {d['wall_s']:.0f} s, load average "
                f"{d['loadavg_start']} -> {d.get('loadavg_end')}"
            )
        lines.append("")
    return lines


def _dtype_ratio(timings: dict[str, Any], workload: str) -> tuple[float | None, float | None]:
    """(the tool's median seconds, its ratio to the faster HF attention) in one dtype's group."""
    t = _median(timings.get(workload))
    hfs = [m for m in (_median(timings.get(c)) for c in HF_CONTENDERS) if m is not None]
    return t, (t / min(hfs) if t is not None and hfs else None)


def _num(x: Any) -> str:
    return f"{x:.1e}" if isinstance(x, float) else (f"failed: {x[:80]}" if x else "-")


def render_dtypes(merged: dict[str, Any]) -> list[str]:
    """The dtype rows (`run.py --dtypes ...`, results in benchmarks/results/dtypes.json): per
    model, each tool's forward and run_with_cache in each dtype against HF in that dtype, timed in
    the same process, and the logits' distances to HF in that dtype and to HF float32."""
    lines: list[str] = []
    for device, results in merged.get("results", {}).items():
        docs = [d for m in results.values() for d in m.values() if "machine" in d]
        if not docs:
            continue
        d0 = docs[0]
        m, st = d0["machine"], d0["settings"]
        models = " ".join(results)
        tools = " ".join(t for t in TOOLS if any(t in ms for ms in results.values()))
        command = (
            f"OMP_NUM_THREADS={st['threads']} .venv/bin/python benchmarks/run.py --dtypes "
            f"{' '.join(st.get('dtypes', []))} --models {models} --tools {tools} --threads "
            f"{st['threads']} --batch {st['batch']} --seq {st['seq']} --warmup {st['warmup']} "
            f"--repeats {st['repeats']}"
        )
        lines += [
            f"## Dtypes: forward and run_with_cache against HF in the same dtype ({device})",
            "",
            "Each dtype's HF model (eager and sdpa attention) and the tool are loaded in that dtype "
            "in one worker process and timed round-robin: warm-up "
            f"{st['warmup']}, median of {st['repeats']}; batch {st['batch']} x {st['seq']} "
            f"tokens, torch threads {st['threads']}. Ratios are the tool's time over the faster HF "
            "attention's time in the same dtype (below 1.00x is faster than HF). Machine: "
            f"{m['cpu']}, {m['cpu_count']} CPUs, torch {m['torch']}, transformers "
            f"{m['transformers']}; {d0['date']}, load average {d0['loadavg_start']} -> "
            f"{d0.get('loadavg_end')}. Re-run: `{command}`.",
            "",
            "In a half dtype two correct implementations differ by their rounding (bfloat16 keeps "
            "8 significant bits), so the last column is the measure of parity: the tool's distance "
            "to HF float32 against HF's own distance in that dtype (issue 12 asks for no worse than "
            "1.5x HF's).",
            "",
        ]
        for model, model_docs in results.items():
            lines += [
                f"### {model} ({device})",
                "",
                "| tool | dtype | HF forward (faster attention) | "
                + " | ".join(WORKLOAD_LABELS[w] for w in DTYPE_WORKLOADS)
                + " | max abs logit diff vs HF in that dtype (forward / cache) "
                "| max abs logit diff vs HF float32: tool / HF sdpa / HF eager |",
                "| --- | --- | --- |" + " --- |" * (len(DTYPE_WORKLOADS) + 2),
            ]
            speed: dict[str, float] = {}
            for tool in (t for t in TOOLS if t in model_docs):
                doc = model_docs[tool]
                if "dtypes" not in doc:
                    failed = doc.get("error") or doc.get("errors") or "not run"
                    lines.append(f"| {TOOL_LABELS[tool]} | - | failed: {failed} |")
                    continue
                for dtype, entry in doc["dtypes"].items():
                    if "error" in entry:
                        lines.append(
                            f"| {TOOL_LABELS[tool]} | {dtype} | failed: {entry['error']} |"
                        )
                        continue
                    timings, ch = entry["timings"], entry["checks"]
                    hf_m, which = min(
                        ((_median(timings.get(c)), c.removeprefix("hf_")) for c in HF_CONTENDERS),
                        key=lambda x: float("inf") if x[0] is None else x[0],
                    )
                    cells = []
                    for w in DTYPE_WORKLOADS:
                        t, r = _dtype_ratio(timings, w)
                        err = (timings.get(w) or {}).get("error")
                        cells.append(
                            f"failed: {err[:80]}" if err else
                            "-" if t is None or r is None else f"{_fmt_time(t)}, **{r:.2f}x**"
                        )  # fmt: skip
                    same = " / ".join(
                        _num(ch.get(f"max_abs_logit_diff_{k}")) for k in ("forward", "cache_all")
                    )
                    to32 = " / ".join(
                        _num(ch.get(k))
                        for k in ("forward_vs_float32", "hf_sdpa_vs_float32", "hf_eager_vs_float32")
                    )
                    hf_cell = "-" if hf_m is None else f"{_fmt_time(hf_m)} ({which})"
                    lines.append(
                        f"| {TOOL_LABELS[tool]} | {dtype} | {hf_cell} | {' | '.join(cells)} | "
                        f"{same} | {to32} |"
                    )
                    f32 = doc["dtypes"].get("float32", {}).get("timings", {})
                    hf32 = [m for m in (_median(f32.get(c)) for c in HF_CONTENDERS) if m]
                    if dtype != "float32" and hf_m and hf32:
                        where = "" if tool == "lmscope" else f" ({TOOL_LABELS[tool]}'s process)"
                        speed[dtype + where] = hf_m / min(hf32)
            lines.append("")
            if speed:
                lines += [
                    "HF's own forward in each dtype over its float32 time in the same process: "
                    + ", ".join(f"{k} {v:.2f}x" for k, v in speed.items())
                    + "."
                    + (
                        " Where that is well above 1x, this CPU has no fast kernels for the dtype's "
                        "matrix products, so those rows compare like with like but say little about "
                        "speed on hardware that runs the dtype natively."
                        if max(speed.values()) > 1.5
                        else ""
                    ),
                    "",
                ]
    return lines


def render_big_load(doc: dict[str, Any]) -> list[str]:
    """The big-checkpoint section (benchmarks/big_load.py's results): per checkpoint dtype, each
    load's time and peak RSS growth, and the targets."""
    shape, m = doc["shape"], doc["machine"]
    lines = [
        "## Big checkpoint, loaded in its own dtype (cpu)",
        "",
        f"A synthetic Llama-shaped checkpoint written by `benchmarks/big_load.py` (d_model "
        f"{shape['hidden_size']}, {shape['num_hidden_layers']} layers, GQA "
        f"{shape['num_attention_heads']}/{shape['num_key_value_heads']} heads, d_mlp "
        f"{shape['intermediate_size']}, {shape['vocab_size']:,} tokens, untied), loaded in the "
        "checkpoint's dtype; each load in a fresh subprocess, median of "
        f"{doc['repeats']}. Machine: {m['cpu']}, {m['cpu_count']} CPUs, torch {m['torch']}, "
        f"transformers {m['transformers']}, torch threads 1; {doc['date']}, load average at the "
        f"start {doc['loadavg_start']}. Re-run: `.venv/bin/python benchmarks/big_load.py`.",
        "",
        "| checkpoint | load (fresh subprocess) | load | load + read every weight | vs HF "
        "| peak RSS growth (after the read) | / loaded weights |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    targets: list[Any] = []
    floors: list[str] = []
    for dtype, result in doc["checkpoints"].items():
        kinds = result["kinds"]
        hf = kinds.get("hf", {}).get("load_touch_s")
        size = f"{dtype}, {result['weights_bytes'] / 2**30:.2f} GiB"
        for kind, label in BIG_LOAD_LABELS.items():
            k = kinds.get(kind)
            if k is None:  # not measured by the run that wrote the file (an older big_load.py)
                continue
            if "error" in k:
                lines.append(f"| {size} | {label} | failed: {k['error'][:120]} | | | | |")
                continue
            vs = k["load_touch_s"] / hf if hf else None
            grow = k["rss_growth_touch"] / k["param_bytes"]
            lines.append(
                f"| {size} | {label} | {k['load_s']:.2f} s | {k['load_touch_s']:.2f} s | "
                f"{f'{vs:.2f}x' if vs else '-'} | {_mib(k['rss_growth'])} "
                f"({_mib(k['rss_growth_touch'])}) | {grow:.3f}x |"
            )
            floor = kinds.get("copy", {}).get("load_touch_s")
            if kind == "lmscope_first" and floor:
                floors.append(
                    f"{dtype}: the first processed load + read takes "
                    f"{k['load_touch_s'] / floor:.2f}x the copy floor."
                )
            if kind in BIG_LOAD_TARGETS and vs:
                time_target, memory_target = BIG_LOAD_TARGETS[kind]
                if time_target is not None:
                    targets.append(
                        (
                            f"{dtype}: load + read, {label}: <= {time_target}x HF",
                            vs,
                            time_target,
                            "x",
                        )
                    )
                targets.append(
                    (
                        f"{dtype}: peak RSS growth, {label}: <= {memory_target}x the weights",
                        grow,
                        memory_target,
                        "x",
                    )
                )
    lines += ["", "| target | measured | |", "| --- | --- | --- |"]
    for text, value, limit, unit in targets:
        lines.append(
            f"| {text} | {value:.3f}{unit} | {'hold' if value <= limit else '**missed**'} |"
        )
    lines += ["", *floors] if floors else []
    lines += [
        "",
        "The loaded weights are the bytes of the model's parameters. Load time is measured after "
        "the imports, and the ratio uses load + one read of every weight, since HF (and lmscope's "
        "adopted weights) map the file and read a page when it is first used. Why the targets "
        "hold or are missed: [performance.md](performance.md#loading).",
        "",
    ]
    return lines


def render_harvest(doc: dict[str, Any]) -> list[str]:
    """The activation-harvesting section (benchmarks/harvest.py's results): tokens/s of
    lmscope.harvest against run_with_cache by hand, Ray against one process, bytes per token."""
    m = doc["machine"]
    lines = [
        "## Activation harvesting (cpu)",
        "",
        f"`lmscope.harvest` on {doc['model']} ({doc['n_layers']} layers) over {doc['tokens']:,} "
        f"tokens of this repository's docs (rows of {doc['seq_len']}, batches of {doc['batch']}, "
        f"shards of {doc['shard_tokens']} tokens, float32), against the same batches run by hand "
        "(`run_with_cache` in a loop, each shard saved with `safetensors.torch.save_file`); end "
        f"to end, interleaved, median of {doc['repeats']}. Machine: {m['cpu']}, {m['cpu_count']} "
        f"CPUs, torch {m['torch']}, torch threads {m['torch_threads']}; {doc['date']}, load "
        f"average {doc['loadavg_start']} -> {doc['loadavg_end']}. Re-run: "
        "`.venv/bin/python benchmarks/harvest.py`.",
        "",
        "| hooks | stop_at_layer | by hand | harvest | speed-up (target >= 1.0x) | bytes written "
        "/ token | ideal |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for case in doc["cases"].values():
        tps = case["tokens_per_s"]
        lines.append(
            f"| {', '.join(f'`{h}`' for h in case['hooks'])} | {case['stop_at_layer']} | "
            f"{tps['by_hand']:.0f} tok/s | {tps['harvest']:.0f} tok/s | {case['speedup']:.2f}x "
            f"({'hold' if case['speedup'] >= 1.0 else '**missed**'}) | "
            f"{case['bytes_per_token']:.1f} | {case['ideal_bytes_per_token']:.0f} |"
        )
    ray = doc.get("ray")
    if ray:
        tps = ray["tokens_per_s"]
        lines += [
            "",
            f"Ray: `engine='ray'` with {ray['workers']} workers (0.5 CPU, one torch thread each; "
            "Ray started before the timing, the actors' start and the model's trip through the "
            f"object store included) {tps['ray']:.0f} tok/s against `engine='local'` "
            f"{tps['local']:.0f} tok/s ({ray['speedup']:.2f}x), hooks "
            f"{', '.join(f'`{h}`' for h in ray['hooks'])}.",
        ]
    lines += [
        "",
        "Bytes written per token count every file of the harvest folder (shards, the int32 "
        "tokens, the manifest); the ideal is the activations' own float32 bytes. Why: "
        "[harvest.md](harvest.md#performance).",
        "",
    ]
    return lines


def render(merged: dict[str, Any], dtypes: dict[str, Any] | None = None) -> str:
    """docs/benchmarks.md from the merged results (and the dtype rows' results: by default
    benchmarks/results/dtypes.json, when it exists)."""
    lines = [
        "# Benchmarks",
        "",
        "<!-- Generated by benchmarks/run.py from benchmarks/results/latest.json; do not edit. -->",
        "",
        "lmscope against Hugging Face transformers, TransformerLens (3.9, the last classic "
        "`HookedTransformer`, and 4.3's `TransformerBridge`) and nnsight, on the same float32 "
        "weights. Each tool runs in its own worker process with an HF baseline (eager and sdpa "
        "attention) measured in that same process, round-robin with the tool: warm-up rounds, then "
        "the median of the repeats. **Ratios are the tool's time over the faster HF attention's "
        "time in the same process (below 1.00x is faster than HF)**, except for generate, where "
        "the ratio is tokens/s over HF's (above 1.00x is faster). Comparisons between tools divide "
        "these ratios, so each tool's own HF run cancels out machine-load drift between processes.",
        "Why each target holds or is missed: [performance.md](performance.md).",
        "",
        "Regenerate everything (creates the benchmark venvs on first use):",
        "",
        "```",
        "make bench                                         # = .venv/bin/python benchmarks/run.py",
        ".venv/bin/python benchmarks/run.py --tools lmscope  # re-run lmscope only, keep the rest",
        ".venv/bin/python benchmarks/run.py --render-only    # re-render this page from the JSON",
        "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/run.py --dtypes float32 bfloat16 float16 \\",
        "    --tools lmscope --models smollm2-135m --threads 1 --batch 1 --seq 64 --repeats 5  # dtype rows",
        "```",
        "",
    ]
    for device, results in merged.get("results", {}).items():
        lines += render_device(device, results)
    if dtypes is None and DTYPES_JSON.exists():
        dtypes = json.loads(DTYPES_JSON.read_text())
    if dtypes:
        lines += render_dtypes(dtypes)
    if BIG_LOAD_JSON.exists():
        lines += render_big_load(json.loads(BIG_LOAD_JSON.read_text()))
    if HARVEST_JSON.exists():
        lines += render_harvest(json.loads(HARVEST_JSON.read_text()))
    lines += ["## How each tool is driven", ""]
    lines += [f"- **{TOOL_LABELS[t]}**: {TOOL_HOW[t]}" for t in TOOLS]
    lines += [
        "",
        "Checkpoints are written once into a Hugging Face hub cache under "
        "`benchmarks/.cache/hub/<model>/` and every tool resolves them offline (`HF_HUB_OFFLINE=1`)."
        " The forward-only workloads run under `torch.inference_mode()` for every tool and HF; "
        "`generate` runs as each library runs it. Cross-tool claims above divide ratios to "
        "each process's own HF baseline.",
        "",
    ]
    return "\n".join(lines)
