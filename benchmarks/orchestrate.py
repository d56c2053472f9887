"""The orchestrator's side: one worker subprocess per tool, in that tool's venv (`lmscope` in
`.venv`, `tl4` and `nnsight` in `.venv-bench`, `tl3` in `.venv-bench-tl3`), and the merge of their
JSON documents into the results file by (device, model, tool).

    >>> from benchmarks.orchestrate import merge_results
    >>> doc = {"device": "cpu", "model": "gpt2-tiny", "tool": "lmscope"}
    >>> merge_results({}, [doc])["results"]["cpu"]["gpt2-tiny"]["lmscope"] is doc
    True
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.checkpoints import worker_env
from benchmarks.spec import RESULTS_JSON, ROOT, RUN_PY, TOOLS, Settings


def worker_command(tool: str, settings: Settings) -> list[str]:
    """The command line of `tool`'s worker on `settings`."""
    # lmscope runs in the orchestrator's own interpreter (.venv under `make bench`), the others
    # in their benchmark venvs.
    python = sys.executable if tool == "lmscope" else str(ROOT / TOOLS[tool] / "bin" / "python")
    cmd = [python, str(RUN_PY), "--_worker", tool]
    cmd += ["--models", settings.model, "--device", settings.device]
    cmd += ["--threads", str(settings.threads), "--warmup", str(settings.warmup)]
    cmd += ["--repeats", str(settings.repeats), "--load-repeats", str(settings.load_repeats)]
    cmd += ["--batch", str(settings.batch), "--seq", str(settings.seq)]
    cmd += ["--new-tokens", str(settings.new_tokens), "--cache-dir", str(settings.cache_dir)]
    cmd += ["--gen-batches", *map(str, settings.gen_batches)]
    if settings.dtypes:
        cmd += ["--dtypes", *settings.dtypes]
    return cmd


def run_tool(tool: str, settings: Settings) -> dict[str, Any]:
    """One worker subprocess in the tool's venv; its JSON (or the error that stopped it)."""
    cmd = worker_command(tool, settings)
    failed = {"tool": tool, "model": settings.model, "device": settings.device}
    if not Path(cmd[0]).exists():
        return {**failed, "error": f"no venv {TOOLS[tool]} (make bench)"}
    proc = subprocess.run(
        cmd,
        stdout=subprocess.PIPE,
        text=True,
        check=False,
        env=worker_env(settings.model, settings),
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {**failed, "error": f"worker exited {proc.returncode}"}
    return json.loads(lines[-1])


def load_results(path: Path = RESULTS_JSON) -> dict[str, Any]:
    """A results file (`{"results": {device: {model: {tool: doc}}}}`), empty when missing."""
    if path.exists():
        return json.loads(path.read_text())
    return {"results": {}}


def merge_results(old: dict[str, Any], new: list[dict[str, Any]]) -> dict[str, Any]:
    """Replace the (device, model, tool) entries of `old` with the new worker documents; the
    others (another tool, model or device measured earlier) stay."""
    results = old.get("results", {})
    merged = {"results": {d: {m: dict(t) for m, t in ms.items()} for d, ms in results.items()}}
    for doc in new:
        merged["results"].setdefault(doc["device"], {}).setdefault(doc["model"], {})[
            doc["tool"]
        ] = doc
    return merged
