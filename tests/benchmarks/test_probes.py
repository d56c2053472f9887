"""benchmarks.probes' anonymous-memory probe, which benchmarks/load_floor.py reads through the
load worker: it counts memory a process writes, not a file it maps."""

from __future__ import annotations

import mmap
from pathlib import Path

import torch

from benchmarks import probes


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
