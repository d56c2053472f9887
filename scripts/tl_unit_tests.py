"""Run TransformerLens's own unit tests against TransformerLens and against lmscope.

Needs a local TransformerLens checkout (its `tests/` folder; the TransformerLens wheel ships none)
and a Python with TransformerLens installed; not run by CI, never touches the network (the hub is
switched off with HF_HUB_OFFLINE, so a test that loads a hub model fails fast and is counted
"needs hub"):

    python scripts/tl_unit_tests.py --tl-tests ~/src/TransformerLens --tl-python /work/tl3/bin/python

Steps:
1. copy the classic-API test files (the HookedTransformer API: not the TransformerBridge's
   `model_bridge/`, benchmarks, audio/vision, weight-conversion internals) into a scratch folder,
   twice: once as they are, once with every `transformer_lens` import spelled `lmscope`;
2. run each copy with pytest (TransformerLens's Python for the first, this Python for the second),
   reading per-test outcomes from pytest's JUnit XML;
3. print one row per file: tests, passed on TransformerLens, needing the hub, passed on lmscope (of
   those that pass on TransformerLens), deliberate differences (DELIBERATE below, each named in
   docs/migration.md), and list every other test that passes on TransformerLens and fails on
   lmscope. The exit status is 1 when such a test exists.

The test files stay in the scratch folder: TransformerLens's code is never copied into lmscope.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

INCLUDE = (
    "tests/unit/*.py",
    "tests/unit/factored_matrix/*.py",
    "tests/unit/components/*.py",
    "tests/unit/components/mlps/*.py",
    "tests/unit/hooked_transformer_config/*.py",
    "tests/unit/utilities/*.py",
    "tests/integration/*.py",
    "tests/acceptance/*.py",
)
EXCLUDE = (
    "*/model_bridge/*",
    "*/benchmarks/*",
    "*hubert*",
    "*audio*",
    "*vision*",
    "*/conftest.py",
    "*/__init__.py",
    "*bridge*",
    "*multi_gpu*",
    "*test_make_docs.py",
)
HUB_SIGNS = (
    "HF_HUB_OFFLINE",
    "offline mode",
    "LocalEntryNotFoundError",
    "couldn't connect to 'https://huggingface.co'",
    "We couldn't connect",
    "Cannot find the requested files in the disk cache",
    "outgoing traffic has been disabled",
    "OfflineModeIsEnabled",
    "huggingface.co",
    "is not a local folder and is not a valid model identifier",
)
# test id (fnmatch pattern, "file::test") -> why lmscope differs on purpose; each is a line of
# docs/migration.md.
DELIBERATE: dict[str, str] = {
    "*test_hook_points.py::test_add_hook_prepend": (
        "hook handles are lmscope.hooks.HookHandle; the test patches hook_points.LensHandle"
    ),
    "*test_hook_points.py::*reshape*": (
        "HookPoint.enable_reshape / hook_conversion belong to the bridge's conversion_utils"
    ),
    "*test_hooked_root_module.py::test_enable_hook*": (
        "HookedRootModule's private _enable_hook* helpers: use add_hook(name or filter, fn)"
    ),
    "*test_hooked_root_module.py::test_legacy_hook_points_import_still_works": (
        "lmscope.hook_points.HookedRootModule is a supported path: no DeprecationWarning"
    ),
}
IMPORT = re.compile(r"\btransformer_lens\b")
# Seeds the random values some test files draw at import (and name their parametrized ids by), so
# both runs collect the same test ids.
CONFTEST = "import random\n\nimport numpy\nimport torch\n\nrandom.seed(0)\nnumpy.random.seed(0)\ntorch.manual_seed(0)\n"


@dataclass
class Outcome:
    """One test's result: 'passed', 'failed', 'error' or 'skipped', and the failure message."""

    status: str
    message: str = ""


def select_files(root: Path) -> list[Path]:
    """The classic-API test files under a TransformerLens checkout, relative to it.

    >>> select_files(Path("/nonexistent"))
    []
    """
    found: set[Path] = set()
    for pattern in INCLUDE:
        for path in root.glob(pattern):
            rel = path.relative_to(root).as_posix()
            if not any(fnmatch.fnmatch(rel, ex) for ex in EXCLUDE):
                found.add(path.relative_to(root))
    return sorted(found)


def copy_tests(root: Path, files: list[Path], dest: Path, to_lmscope: bool) -> None:
    """Copy `files` from `root` into `dest`; with `to_lmscope`, import lmscope instead.

    >>> import tempfile; d = Path(tempfile.mkdtemp())
    >>> _ = (d / "t.py").write_text("import transformer_lens.utils as u\\n")
    >>> copy_tests(d, [Path("t.py")], d / "out", True); (d / "out" / "t.py").read_text()
    'import lmscope.utils as u\\n'
    """
    for rel in files:
        text = (root / rel).read_text()
        if to_lmscope:
            text = IMPORT.sub("lmscope", text)
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    (dest / "conftest.py").write_text(CONFTEST)


def run_pytest(python: str, folder: Path, files: list[Path], report: Path, timeout: int) -> None:
    """Run pytest on `files` inside `folder` with `python`, the hub switched off."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env.setdefault("OMP_NUM_THREADS", "1")
    cmd = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts="]
    cmd += ["--continue-on-collection-errors"]
    cmd += ["--rootdir", str(folder), f"--junitxml={report}", *map(str, files)]
    subprocess.run(cmd, cwd=folder, env=env, timeout=timeout, stdout=subprocess.DEVNULL)


def read_report(report: Path) -> dict[str, Outcome]:
    """Per-test outcomes from a JUnit XML report, keyed 'path/to/file.py::Class::test[id]'."""
    outcomes: dict[str, Outcome] = {}
    if not report.exists():
        return outcomes
    for case in ET.parse(report).getroot().iter("testcase"):
        classname = case.get("classname", "")
        if not classname:  # a file that failed to import: one entry for the whole file
            classname, case.attrib["name"] = case.get("name", ""), "<collection>"
        parts = classname.split(".")
        # classname is 'tests.unit.test_x' or 'tests.unit.test_x.TestClass'
        n_module = next(
            (i + 1 for i, p in enumerate(parts) if p.startswith("test_") or p.endswith("_test")),
            len(parts),
        )
        key = "/".join(parts[:n_module]) + ".py"
        key = "::".join([key, *parts[n_module:], case.get("name", "")])
        status, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                status = "failed" if tag == "failure" else tag
                message = (node.get("message") or "") + "\n" + (node.text or "")
                break
        outcomes[key] = Outcome(status, message)
    return outcomes


def needs_hub(outcome: Outcome) -> bool:
    """True when a failure comes from the hub being out of reach."""
    return outcome.status in ("failed", "error") and any(s in outcome.message for s in HUB_SIGNS)


def deliberate(test_id: str) -> str | None:
    """The documented reason lmscope differs on this test, if it does on purpose."""
    return next((why for pat, why in DELIBERATE.items() if fnmatch.fnmatch(test_id, pat)), None)


def summarize(tl: dict[str, Outcome], ls: dict[str, Outcome]) -> tuple[list[list], list[str]]:
    """Table rows per file and the unexplained failures (passes on TL, fails on lmscope).

    A row: file, tests, passed on TL, needing the hub, passed on lmscope (of TL's passes),
    deliberate differences, and tests passing on lmscope only (TL 3.9 fails them: tests of
    TransformerLens 2.x module paths, or of fixes newer than 3.9).
    """
    per_file: dict[str, list[int]] = {}
    unexplained: list[str] = []
    for test_id, outcome in sorted(tl.items()):
        row = per_file.setdefault(test_id.split("::")[0], [0, 0, 0, 0, 0, 0])
        row[0] += 1
        if needs_hub(outcome):
            row[2] += 1
        if outcome.status != "passed":
            continue
        row[1] += 1
        mine = ls.get(test_id, Outcome("error", "not collected on lmscope"))
        if mine.status == "passed":
            row[3] += 1
        elif deliberate(test_id):
            row[4] += 1
        else:
            first = mine.message.strip().splitlines()[:1]
            unexplained.append(f"{test_id}: {first[0] if first else mine.status}")
    for test_id, mine in ls.items():
        theirs = tl.get(test_id)
        if mine.status == "passed" and (theirs is None or theirs.status != "passed"):
            per_file.setdefault(test_id.split("::")[0], [0, 0, 0, 0, 0, 0])[5] += 1
    rows = [[name, *counts] for name, counts in sorted(per_file.items())]
    return rows, unexplained


def print_table(rows: list[list]) -> None:
    """Print the per-file table and its totals."""
    head = ["file", "tests", "pass TL", "needs hub", "pass lmscope", "deliberate", "lmscope only"]
    totals = ["total", *[sum(r[i] for r in rows) for i in range(1, 7)]]
    width = max(len(str(r[0])) for r in [head, *rows, totals])
    for r in [head, *rows, totals]:
        print(f"{r[0]:<{width}} " + " ".join(f"{c:>12}" for c in r[1:]))


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tl-tests", type=Path, required=True, help="TransformerLens checkout")
    parser.add_argument("--tl-python", default=os.environ.get("TL_PYTHON", "python"))
    parser.add_argument("--lmscope-python", default=sys.executable)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: tmp)")
    parser.add_argument("--only", nargs="*", default=None, help="fnmatch patterns of files")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per pytest run")
    args = parser.parse_args(argv)
    root = args.tl_tests.resolve()
    if (root / "unit").is_dir() and not (root / "tests").is_dir():
        root = root.parent
    if not (root / "tests").is_dir():
        parser.error(f"{args.tl_tests} has no tests/ folder: pass a TransformerLens checkout")
    files = select_files(root)
    if args.only:
        files = [f for f in files if any(fnmatch.fnmatch(f.as_posix(), p) for p in args.only)]
    if not files:
        parser.error("no test files selected")
    work = args.work or Path(tempfile.mkdtemp(prefix="tl_unit_"))
    results = {}
    for name, python, to_lmscope in (
        ("tl", args.tl_python, False),
        ("lmscope", args.lmscope_python, True),
    ):
        folder = work / name
        shutil.rmtree(folder, ignore_errors=True)
        copy_tests(root, files, folder, to_lmscope)
        report = work / f"{name}.xml"
        report.unlink(missing_ok=True)
        print(f"running {len(files)} files with {python} ({name}) ...", file=sys.stderr)
        run_pytest(python, folder, files, report, args.timeout)
        results[name] = read_report(report)
    rows, unexplained = summarize(results["tl"], results["lmscope"])
    print_table(rows)
    if unexplained:
        print(f"\n{len(unexplained)} pass on TransformerLens and fail on lmscope:")
        print("\n".join(f"  {line}" for line in unexplained))
    return 1 if unexplained else 0


if __name__ == "__main__":
    raise SystemExit(main())
