"""Execute the notebooks under notebooks/ (jupytext py:percent sources) and write executed copies.

Each `notebooks/*.py` is converted with jupytext, run top to bottom by nbclient in a kernel of
this Python (the .venv's, through ipykernel), and saved with its outputs as
`notebooks/executed/<name>.ipynb` (gitignored). A cell that raises (an assertion about a finding
included) stops that notebook, and the script exits non-zero after running the others. The time of
each notebook and the total are printed.

Usage:
    python scripts/run_notebooks.py                 # every notebook
    python scripts/run_notebooks.py main_demo       # some of them, by name
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ROOT / "notebooks"
EXECUTED = SOURCES / "executed"
CELL_TIMEOUT_S = 600


def notebook_sources(names: list[str] | None = None) -> list[Path]:
    """The jupytext sources to run: every `notebooks/*.py`, or those named (without `.py`).

    Example:
        >>> [p.name for p in notebook_sources(["main_demo"])]
        ['main_demo.py']
    """
    found = sorted(SOURCES.glob("*.py"))
    if not names:
        return found
    by_name = {p.stem: p for p in found}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise SystemExit(f"no notebook named {unknown}; there are {sorted(by_name)}")
    return [by_name[n] for n in names]


def kernel_cpu_seconds() -> float:
    """CPU time (user + system) used so far by this process's finished children: the kernels.

    On a shared machine wall time depends on the other load; CPU time is the work itself.
    """
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def execute(source: Path, out_dir: Path = EXECUTED) -> float:
    """Run one py:percent notebook in a fresh kernel; write the executed .ipynb; return seconds.

    Raises nbclient's CellExecutionError (after writing the partial notebook) when a cell fails.

    Example:
        >>> seconds = execute(SOURCES / "main_demo.py")
    """
    import jupytext
    import nbformat
    from nbclient import NotebookClient

    nb = jupytext.read(source, fmt="py:percent")
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(source.parent)}},
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{source.stem}.ipynb"
    start = time.perf_counter()
    try:
        client.execute()
    finally:
        nbformat.write(nb, target)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    """Run the notebooks, print the time of each and the total; 1 if any failed."""
    from nbclient.exceptions import CellExecutionError

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="notebook names (default: all)")
    args = parser.parse_args(argv)
    failed: list[str] = []
    total = total_cpu = 0.0
    for source in notebook_sources(args.names):
        print(f"{source.stem}: running ...", flush=True)
        start, cpu_start = time.perf_counter(), kernel_cpu_seconds()
        try:
            seconds = execute(source)
        except CellExecutionError as err:
            seconds = time.perf_counter() - start
            failed.append(source.stem)
            print(f"{source.stem}: FAILED after {seconds:.1f} s\n{err}", flush=True)
        cpu = kernel_cpu_seconds() - cpu_start
        if source.stem not in failed:
            print(f"{source.stem}: ok in {seconds:.1f} s (kernel CPU time {cpu:.1f} s)", flush=True)
        total, total_cpu = total + seconds, total_cpu + cpu
    print(
        f"total: {total:.1f} s (kernel CPU time {total_cpu:.1f} s); "
        f"executed copies in {EXECUTED.relative_to(ROOT)}/"
    )
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
