"""Where a harvest's text comes from, and packing it into rows of tokens.

A dataset is one of:
- a `.txt` file (one text per line, as `datasets.load_dataset("text")` reads it), a `.jsonl`
  file (one JSON object per line, text in `column`), a `.parquet` file (text in `column`);
- a folder holding such files (every one below it, in sorted order), or a Hugging Face
  `datasets` dataset saved with `save_to_disk` (a folder with `state.json`);
- a `datasets.Dataset` object, a list of strings, or already-packed token ids
  (a [n_seqs, seq_len] integer tensor).

Packing follows TransformerLens's `tokenize_and_concatenate` on a `datasets.Dataset` (whose
`map` hands it 1000 texts at a time): each run of 1000 texts is joined with EOS, tokenised,
cut into rows of `seq_len - 1` tokens and a BOS put first; each run's remainder is dropped.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from lmscope.utils import _concat_and_chunk

TEXT_SUFFIXES = (".txt", ".jsonl", ".parquet")
TEXTS_PER_RUN = 1000  # datasets.Dataset.map's default batch size, which TransformerLens packs by


class DatasetError(ValueError):
    """A dataset argument harvest cannot read: it says what was given and what would work."""


@dataclass(frozen=True)
class Source:
    """A resolved dataset: how to iterate its texts (or token rows) and what identifies it."""

    kind: str  # "files", "hf_dataset", "texts" or "tokens"
    description: str
    fingerprint: str  # changes whenever the data may have changed
    items: Any  # the files, the datasets.Dataset, the strings or the token tensor

    def texts(self, column: str) -> Iterator[str]:
        """Every text, in order (not for kind "tokens")."""
        if self.kind == "files":
            for path in self.items:
                yield from _file_texts(path, column)
        elif self.kind == "hf_dataset":
            if column not in self.items.column_names:
                raise DatasetError(
                    f"{self.description} has no column {column!r}; its columns are "
                    f"{self.items.column_names}: pass column=..."
                )
            for batch in self.items.iter(batch_size=TEXTS_PER_RUN):
                yield from batch[column]
        else:
            yield from self.items


def _sha(*parts: object) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(repr(part).encode())
    return digest.hexdigest()


def _file_identity(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


def _files_source(files: list[Path], description: str) -> Source:
    for f in files:
        if f.suffix not in TEXT_SUFFIXES:
            raise DatasetError(
                f"dataset file {str(f)!r} is not one of {', '.join(TEXT_SUFFIXES)}; "
                "convert it, or pass a datasets.Dataset or a list of strings"
            )
    return Source("files", description, _sha(*map(_file_identity, files)), files)


def resolve(dataset: Any) -> Source:
    """The `Source` of a dataset argument (see the module docstring), or a DatasetError.

    Example:
        >>> resolve("corpus.jsonl").description
        "file 'corpus.jsonl'"
    """
    if isinstance(dataset, Tensor):
        if dataset.ndim != 2 or dataset.dtype.is_floating_point or dataset.is_complex():
            raise DatasetError(
                f"a token tensor must be integer [n_seqs, seq_len]; got {dataset.dtype} "
                f"of shape {tuple(dataset.shape)}"
            )
        tokens = dataset.detach().to("cpu", torch.int64).contiguous()
        digest = hashlib.sha256(tokens.numpy().tobytes()).hexdigest()
        return Source("tokens", f"token tensor {tuple(tokens.shape)}", digest, tokens)
    if isinstance(dataset, (str, os.PathLike)):
        path = Path(dataset)
        if not path.exists():
            raise DatasetError(
                f"dataset {str(path)!r} does not exist; pass a .txt/.jsonl/.parquet file, a "
                "folder of them, or a datasets folder written by save_to_disk"
            )
        if path.is_dir():
            if (path / "dataset_dict.json").exists():
                splits = sorted(p.name for p in path.iterdir() if (p / "state.json").exists())
                raise DatasetError(
                    f"{str(path)!r} holds a DatasetDict (splits {splits}); pass one split's "
                    f"folder, e.g. {str(path / (splits[0] if splits else 'train'))!r}"
                )
            if (path / "state.json").exists():
                return _hf_source(_load_from_disk(path), f"datasets folder {str(path)!r}")
            files = sorted(p for p in path.rglob("*") if p.suffix in TEXT_SUFFIXES)
            if not files:
                raise DatasetError(
                    f"folder {str(path)!r} holds no {', '.join(TEXT_SUFFIXES)} file and is not "
                    "a datasets folder (no state.json)"
                )
            return _files_source(files, f"folder {str(path)!r} ({len(files)} files)")
        return _files_source([path], f"file {str(path)!r}")
    if _is_hf_dataset(dataset):
        return _hf_source(dataset, f"datasets.Dataset ({dataset.num_rows} rows)")
    if isinstance(dataset, Sequence) and dataset and all(_is_path(p) for p in dataset):
        files = [Path(p) for p in dataset]
        return _files_source(files, f"{len(files)} files")
    if isinstance(dataset, Sequence) and dataset and all(isinstance(t, str) for t in dataset):
        return Source("texts", f"{len(dataset)} texts", _sha(list(dataset)), list(dataset))
    raise DatasetError(
        f"cannot read a dataset from {type(dataset).__name__}; pass a path (.txt, .jsonl, "
        ".parquet, a folder, a datasets save_to_disk folder), a datasets.Dataset, a list of "
        "strings or a [n_seqs, seq_len] token tensor"
    )


def _is_path(p: object) -> bool:
    """A path object, or a string naming an existing .txt/.jsonl/.parquet file (any other
    string in a list is a text)."""
    if isinstance(p, os.PathLike):
        return True
    return isinstance(p, str) and p.endswith(TEXT_SUFFIXES) and Path(p).is_file()


def _is_hf_dataset(obj: object) -> bool:
    return type(obj).__module__.startswith("datasets.") and hasattr(obj, "column_names")


def _hf_source(ds: Any, description: str) -> Source:
    return Source("hf_dataset", description, _sha(ds._fingerprint, ds.num_rows), ds)


def _load_from_disk(path: Path) -> Any:
    try:
        import datasets
    except ImportError:
        raise DatasetError(
            f"{str(path)!r} is a datasets folder; reading it needs the `datasets` package: "
            "pip install datasets (or 'lmscope[harvest]')"
        ) from None
    return datasets.load_from_disk(str(path))


def _file_texts(path: Path, column: str) -> Iterator[str]:
    if path.suffix == ".txt":
        with open(path, encoding="utf-8") as f:
            for line in f:
                yield line[:-1] if line.endswith("\n") else line
    elif path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                row = json.loads(line)
                if not isinstance(row, dict) or column not in row:
                    keys = list(row) if isinstance(row, dict) else type(row).__name__
                    raise DatasetError(
                        f"{path}:{n} has no {column!r} field (it has {keys}); pass column=..."
                    )
                yield row[column]
    else:
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DatasetError(
                f"reading {str(path)!r} needs pyarrow: pip install pyarrow (or 'lmscope[harvest]')"
            ) from None
        file = pq.ParquetFile(path)
        if column not in file.schema_arrow.names:
            raise DatasetError(
                f"{str(path)!r} has no column {column!r}; its columns are "
                f"{file.schema_arrow.names}: pass column=..."
            )
        for batch in file.iter_batches(columns=[column], batch_size=TEXTS_PER_RUN):
            yield from batch.column(0).to_pylist()


def pack(
    source: Source, tokenizer: Any, seq_len: int, column: str, prepend_bos: bool
) -> Iterator[Int[Tensor, "rows seq_len"]]:
    """The dataset's token rows, a run of texts at a time (see the module docstring).

    Example:
        >>> rows = torch.cat(list(pack(resolve(["a text", "another"]), tok, 64, "text", True)))
    """
    if source.kind == "tokens":
        if source.items.shape[1] != seq_len:
            raise DatasetError(
                f"the token tensor's rows are {source.items.shape[1]} tokens, not seq_len="
                f"{seq_len}; pass seq_len={source.items.shape[1]}"
            )
        yield source.items
        return
    if tokenizer is None:
        raise DatasetError(
            "the model has no tokenizer, so text cannot be tokenised; set one "
            "(model.set_tokenizer(...)) or pass token ids as a [n_seqs, seq_len] tensor"
        )
    if prepend_bos and tokenizer.bos_token_id is None:
        raise DatasetError(
            "the tokenizer has no BOS token; pass prepend_bos=False, or a tokenizer with one"
        )
    run: list[str] = []
    for text in source.texts(column):
        if not isinstance(text, str):
            raise DatasetError(
                f"{source.description}: a {column!r} value is not a string: {text!r}"
            )
        run.append(text)
        if len(run) == TEXTS_PER_RUN:
            yield _concat_and_chunk(run, tokenizer, seq_len, prepend_bos)
            run = []
    if run:
        yield _concat_and_chunk(run, tokenizer, seq_len, prepend_bos)


def as_int32(rows: Tensor) -> np.ndarray:
    """Token rows as the int32 array the tokens file stores."""
    return rows.to(torch.int32).numpy()
