"""scripts/tl_unit_tests.py: the runner of TransformerLens's own unit tests (CI has no
TransformerLens checkout, so its selection, import rewrite and bookkeeping are tested here on
files and a JUnit report written by the test)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "tl_unit_tests.py"


@pytest.fixture(scope="module")
def runner():
    spec = importlib.util.spec_from_file_location("tl_unit_tests", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up while being defined
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_selects_classic_api_tests_only(runner, tmp_path: Path) -> None:
    for rel in [
        "tests/unit/test_hook_points.py",
        "tests/unit/factored_matrix/test_properties.py",
        "tests/unit/model_bridge/test_bridge.py",
        "tests/unit/benchmarks/test_vision_benchmarks.py",
        "tests/unit/hubert_test.py",
        "tests/unit/__init__.py",
    ]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("")
    assert [p.as_posix() for p in runner.select_files(tmp_path)] == [
        "tests/unit/factored_matrix/test_properties.py",
        "tests/unit/test_hook_points.py",
    ]


def test_copy_rewrites_imports_only_for_lmscope(runner, tmp_path: Path) -> None:
    src = "import transformer_lens.utils as utils\nfrom transformer_lens import HookedTransformer\n"
    src += "name = 'my_transformer_lens_fork'\n"
    (tmp_path / "t.py").write_text(src)
    runner.copy_tests(tmp_path, [Path("t.py")], tmp_path / "tl", to_lmscope=False)
    runner.copy_tests(tmp_path, [Path("t.py")], tmp_path / "ls", to_lmscope=True)
    assert (tmp_path / "tl" / "t.py").read_text() == src
    assert (tmp_path / "ls" / "t.py").read_text() == (
        "import lmscope.utils as utils\nfrom lmscope import HookedTransformer\n"
        "name = 'my_transformer_lens_fork'\n"
    )
    assert "torch.manual_seed(0)" in (tmp_path / "ls" / "conftest.py").read_text()


REPORT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="tests.unit.test_a" name="test_ok"/>
<testcase classname="tests.unit.test_a.TestK" name="test_m[1]"/>
<testcase classname="tests.unit.test_hook_points" name="test_add_hook_prepend"/>
<testcase classname="tests.unit.test_b" name="test_hub"><error message="failed on setup with
&quot;huggingface_hub.errors.LocalEntryNotFoundError: not in the cache&quot;"/></testcase>
<testcase classname="" name="tests.unit.test_c"><error message="collection failure">
ModuleNotFoundError: No module named 'transformer_lens.HookedTransformerConfig'</error></testcase>
</testsuite></testsuites>"""

LMSCOPE_REPORT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="tests.unit.test_a" name="test_ok"/>
<testcase classname="tests.unit.test_a.TestK" name="test_m[1]"><failure message="AssertionError:
shapes differ"/></testcase>
<testcase classname="tests.unit.test_hook_points" name="test_add_hook_prepend"><failure
message="AttributeError: LensHandle"/></testcase>
<testcase classname="tests.unit.test_c" name="test_old_path"/>
</testsuite></testsuites>"""


def test_report_bookkeeping(runner, tmp_path: Path) -> None:
    (tmp_path / "tl.xml").write_text(REPORT)
    (tmp_path / "ls.xml").write_text(LMSCOPE_REPORT)
    tl = runner.read_report(tmp_path / "tl.xml")
    ls = runner.read_report(tmp_path / "ls.xml")
    assert sorted(tl) == [
        "tests/unit/test_a.py::TestK::test_m[1]",
        "tests/unit/test_a.py::test_ok",
        "tests/unit/test_b.py::test_hub",
        "tests/unit/test_c.py::<collection>",
        "tests/unit/test_hook_points.py::test_add_hook_prepend",
    ]
    assert runner.needs_hub(tl["tests/unit/test_b.py::test_hub"])
    assert not runner.needs_hub(tl["tests/unit/test_c.py::<collection>"])
    rows, unexplained = runner.summarize(tl, ls)
    assert rows == [
        ["tests/unit/test_a.py", 2, 2, 0, 1, 0, 0],
        ["tests/unit/test_b.py", 1, 0, 1, 0, 0, 0],
        ["tests/unit/test_c.py", 1, 0, 0, 0, 0, 1],
        ["tests/unit/test_hook_points.py", 1, 1, 0, 0, 1, 0],
    ]
    assert unexplained == ["tests/unit/test_a.py::TestK::test_m[1]: AssertionError: shapes differ"]
