"""A harvest killed with SIGKILL at any point (tokenising, mid-shard, mid-write of a shard,
between a shard's rename and its manifest entry, mid-write of the manifest) and run again with
the same arguments ends with exactly the files of an uninterrupted run.

Each kill runs in a forked child (the parent's model and imports, no start-up cost) that
SIGKILLs itself at a chosen point: the nth call of a function the harvest goes through.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from harvest_helpers import HOOKS, corpus

import lmscope
from lmscope.harvest import MeanVar, TopK, data, store

KWARGS: dict[str, Any] = dict(
    hooks=HOOKS, seq_len=16, batch_size=8, shard_tokens=16 * 40, verbose=False,
    reducers={HOOKS[0]: [MeanVar(), TopK(k=3, context=1)]}, save_activations=True,
    fsync=True,  # the durable path (the rest of the tests write without fsync)
)  # fmt: skip
TEXTS = corpus(1100)  # two runs of texts to tokenise; 33 shards of 5 batches


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _on_call(module: Any, name: str, n: int) -> None:
    """Make the nth call of module.name SIGKILL the process before it runs."""
    original, calls = getattr(module, name), [0]

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == n:
            _die()
        return original(*args, **kwargs)

    setattr(module, name, wrapper)


def _after_shard_rename(n: int) -> None:
    """Kill right after the nth shard file is renamed into place, before the manifest (written
    by the other thread) can record it."""
    original, calls = store.publish, [0]

    def publish(tmp: Path, path: Path) -> None:
        original(tmp, path)
        if path.parent.name == "shards":
            calls[0] += 1
            if calls[0] == n:
                _die()

    store.publish = publish


def _mid_forward(model: Any) -> None:
    calls = [0]

    def hook(*_: Any) -> None:
        calls[0] += 1
        if calls[0] == 9:  # the fourth batch of shard 1
            _die()

    model.blocks[0].register_forward_hook(hook)


def _mid_shard_write() -> None:
    """The 18th chunk written (shard 1's first tensor, after the tokens, shard 0 and its reducer
    file): half of it reaches the file, then the process dies."""
    original, calls = store.write_chunk, [0]

    def half_then_die(f: Any, digest: Any, chunk: Any) -> None:
        calls[0] += 1
        if calls[0] == 18:
            f.write(memoryview(chunk)[: len(chunk) // 2])
            f.flush()
            _die()
        original(f, digest, chunk)

    store.write_chunk = half_then_die


def _mid_manifest_write() -> None:
    calls = [0]

    def half_then_die(path: Path, doc: Any, **kwargs: Any) -> None:
        calls[0] += 1
        if calls[0] == 5:
            import json

            text = json.dumps(doc, indent=1)
            (path.with_name(path.name + store.TMP_SUFFIX)).write_text(text[: len(text) // 2])
            _die()
        original(path, doc, **kwargs)

    original = store.write_json
    store.write_json = half_then_die


def _run_killed(setup: Callable[[], None], model: Any, out: Path) -> None:
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            setup()
            lmscope.harvest(model, TEXTS, out=out, **KWARGS)
        finally:
            os._exit(3)  # not killed: the kill point was never reached
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread (forking a process with a running OpenMP pool is unsafe)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def uninterrupted(
    tiny_tok_model: Any, tmp_path_factory: pytest.TempPathFactory, one_thread: None
) -> lmscope.harvest.Harvest:
    return lmscope.harvest(tiny_tok_model, TEXTS, out=tmp_path_factory.mktemp("whole"), **KWARGS)


def _visible_files_are_whole(out: Path) -> None:
    """Every file under its final name is complete (a truncated one fails to parse or is short)."""
    for path in out.rglob("*.safetensors"):
        header, start = store.read_header(path)
        end = max(spec["data_offsets"][1] for spec in header.values())
        assert path.stat().st_size == start + end, path
    import json

    json.loads((out / "manifest.json").read_text())


KILLS = {
    "tokenising": lambda model: _on_call(data, "as_int32", 2),
    "mid-forward": _mid_forward,
    "mid-shard-write": lambda model: _mid_shard_write(),
    "after-rename-before-manifest": lambda model: _after_shard_rename(3),
    "mid-manifest-write": lambda model: _mid_manifest_write(),
}


def _listed(out: Path) -> set[int]:
    import json

    return {r["id"] for r in json.loads((out / "manifest.json").read_text())["shards"]}


LEFT_BEHIND = {  # what each kill leaves, so the test knows it struck where it meant to
    "tokenising": lambda out: (
        (out / "tokens.bin.tmp").exists() and not (out / "tokens.safetensors").exists()
    ),
    "mid-forward": lambda out: _listed(out) <= {0},
    "mid-shard-write": lambda out: (
        (out / "shards/shard-00001.safetensors.tmp").stat().st_size > 0
        and not (out / "shards/shard-00001.safetensors").exists()
    ),
    "after-rename-before-manifest": lambda out: (
        (out / "shards/shard-00002.safetensors").exists() and 2 not in _listed(out)
    ),
    "mid-manifest-write": lambda out: (out / "manifest.json.tmp").exists(),
}


@pytest.mark.parametrize("point", list(KILLS))
def test_killed_and_resumed_equals_uninterrupted(
    point: str,
    tiny_tok_model: Any,
    uninterrupted: lmscope.harvest.Harvest,
    tmp_path: Path,
    one_thread: None,
) -> None:
    out = tmp_path / "acts"
    _run_killed(lambda: KILLS[point](tiny_tok_model), tiny_tok_model, out)
    assert LEFT_BEHIND[point](out)
    _visible_files_are_whole(out)
    resumed = lmscope.harvest(tiny_tok_model, TEXTS, out=out, **KWARGS)
    assert resumed.complete and not list(out.rglob(f"*{store.TMP_SUFFIX}"))
    assert resumed.manifest["shards"] == uninterrupted.manifest["shards"]  # same bytes (SHA-256)
    assert resumed.manifest["reduced"] == uninterrupted.manifest["reduced"]
    for hook in HOOKS:
        assert torch.equal(resumed.read(hook), uninterrupted.read(hook))
    resumed.verify()
