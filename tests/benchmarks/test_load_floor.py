"""The load-floor benchmark (benchmarks/load_floor.py): the anonymous-memory probe it reads
through the load worker (benchmarks.probes) counts memory a process writes, not a file it maps,
and its first-write probe times a fill of fresh memory."""

from __future__ import annotations

import mmap
from pathlib import Path

import torch

from benchmarks import load_floor, probes


def test_anon_rss_counts_written_memory_not_mapped_files(tmp_path: Path) -> None:
    block = mmap.mmap(-1, 64 * 2**20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # fresh pages
    before = probes.anon_rss_bytes()
    torch.frombuffer(block, dtype=torch.uint8).fill_(1)
    written = probes.anon_rss_bytes() - before
    assert written >= 60 * 2**20, written

    file = tmp_path / "x.bin"
    file.write_bytes(b"\1" * (32 * 2**20))
    before = probes.anon_rss_bytes()
    mapped = torch.from_file(str(file), shared=True, size=32 * 2**20, dtype=torch.uint8)
    assert int(mapped.sum()) == 32 * 2**20  # every page read
    assert probes.anon_rss_bytes() - before < 8 * 2**20


def test_first_write_probe_times_both_fills() -> None:
    result = load_floor.worker("first_write", "gpt2-random", "", 8 * 2**20)
    assert set(result) == {"first_s", "again_s"}
    assert result["first_s"] > 0 and result["again_s"] > 0
