"""lmscope.harvest on one process: the activations equal run_with_cache's on the same batches,
the manifest describes the files, the reader memory-maps them, and bad input fails clearly."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from harvest_helpers import HOOKS, by_hand, corpus
from safetensors import safe_open

import lmscope
from lmscope.harvest import DatasetError, HarvestDirectoryError, MeanVar, store

SEQ, BATCH, ROWS = 32, 4, 6  # 6 rows per shard: batches of 4 and 2


@pytest.fixture(scope="module")
def harvested(
    tiny_tok_model: Any, tmp_path_factory: pytest.TempPathFactory
) -> lmscope.harvest.Harvest:
    out = tmp_path_factory.mktemp("harvest") / "acts"
    return lmscope.harvest(
        tiny_tok_model, corpus(), hooks=HOOKS, out=out, seq_len=SEQ, batch_size=BATCH,
        shard_tokens=SEQ * ROWS + 5, verbose=False,
    )  # fmt: skip


def test_activations_equal_run_with_cache_on_the_same_batches(
    harvested: lmscope.harvest.Harvest, tiny_tok_model: Any
) -> None:
    tokens = harvested.tokens
    assert tokens.dtype == torch.int32 and tokens.shape[1] == SEQ and len(harvested) == len(tokens)
    assert len(tokens) % ROWS != 0  # a shorter last shard
    ref = by_hand(tiny_tok_model, tokens, HOOKS, ROWS, BATCH)
    for hook in HOOKS:
        assert torch.equal(harvested.read(hook), ref[hook]), hook
    item = harvested[ROWS + 1]
    assert torch.equal(item["blocks.0.attn.hook_z"], ref["blocks.0.attn.hook_z"][ROWS + 1])
    assert torch.equal(item["tokens"], tokens[ROWS + 1])
    per_token = harvested.tokens_of("blocks.0.hook_resid_post")
    flat = ref["blocks.0.hook_resid_post"].reshape(-1, tiny_tok_model.cfg.d_model)
    assert len(per_token) == flat.shape[0]
    assert torch.equal(per_token[SEQ * ROWS + 3], flat[SEQ * ROWS + 3])
    loader = torch.utils.data.DataLoader(per_token, batch_size=50)
    assert torch.equal(next(iter(loader)), flat[:50])


def test_manifest_describes_the_shards(
    harvested: lmscope.harvest.Harvest, tiny_tok_model: Any
) -> None:
    m = json.loads((harvested.folder / "manifest.json").read_text())
    assert m["complete"] and m["lmscope_version"] == lmscope.__version__
    assert m["model"]["name"] == tiny_tok_model.cfg.model_name
    assert m["model"]["weights_sha256"] == lmscope.harvest.weights_sha256(tiny_tok_model)
    assert m["arguments"]["hooks"] == HOOKS and m["arguments"]["dtype"] == "float32"
    assert m["stop_at_layer"] == 1  # the blocks after the last hooked one never run
    n_tokens = m["tokens"]["n_tokens"]
    assert n_tokens == len(harvested) * SEQ
    ends = [0]
    for i, shard in enumerate(m["shards"]):
        assert shard["id"] == i and shard["tokens"][0] == ends[-1]
        ends.append(shard["tokens"][1])
        path = harvested.folder / shard["file"]
        assert store.sha256_file(path) == shard["sha256"] and path.stat().st_size == shard["bytes"]
        with safe_open(path, framework="pt") as f:  # a real safetensors file
            assert list(f.keys()) == sorted(HOOKS)
            assert torch.equal(f.get_tensor(HOOKS[0]), harvested.shard(i)[HOOKS[0]])
    assert ends[-1] == n_tokens and m["n_shards"] == len(m["shards"])
    assert m["shapes"] == {HOOKS[0]: [SEQ, 64], HOOKS[1]: [SEQ, 4, 16]}
    harvested.verify()
    # activations only: 4 bytes per float32 value, plus a few hundred header bytes per shard
    ideal = sum(torch.Size(s).numel() * 4 for s in m["shapes"].values()) * len(harvested)
    written = sum(s["bytes"] for s in m["shards"])
    assert ideal < written < ideal + 200 * len(m["shards"])


def test_rerun_is_a_no_op_and_verify_catches_damage(
    harvested: lmscope.harvest.Harvest, tiny_tok_model: Any, tmp_path: Path
) -> None:
    again = lmscope.harvest(
        tiny_tok_model, corpus(), hooks=HOOKS, out=harvested.folder, seq_len=SEQ, batch_size=BATCH,
        shard_tokens=SEQ * ROWS + 5, verbose=False,
    )  # fmt: skip
    assert again.shards == harvested.shards
    copy = tmp_path / "copy"
    import shutil

    shutil.copytree(harvested.folder, copy)
    shard = copy / harvested.shards[1]["file"]
    raw = bytearray(shard.read_bytes())
    raw[-1] ^= 1
    shard.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="shard-00001.safetensors does not match"):
        lmscope.harvest.open(copy).verify()


def test_stored_dtype_and_hooks_before_the_blocks(tiny_tok_model: Any, tmp_path: Path) -> None:
    h = lmscope.harvest(
        tiny_tok_model, corpus(40), hooks=["hook_embed", "blocks.1.mlp.hook_post"], out=tmp_path,
        seq_len=SEQ, batch_size=BATCH, shard_tokens=SEQ * ROWS, dtype=torch.bfloat16, verbose=False,
    )  # fmt: skip
    assert h.manifest["stop_at_layer"] == 2
    ref = by_hand(tiny_tok_model, h.tokens, ["hook_embed", "blocks.1.mlp.hook_post"], ROWS, BATCH)
    for hook, value in ref.items():
        stored = h.read(hook)
        assert stored.dtype == torch.bfloat16 and torch.equal(stored, value.bfloat16())


def test_packing_is_tokenize_and_concatenate_on_a_datasets_dataset(
    tiny_tok_model: Any, tmp_path: Path
) -> None:
    """Every source packs as TransformerLens's tokenize_and_concatenate on a datasets.Dataset
    (runs of 1000 texts joined with EOS, BOS first in each row)."""
    datasets = pytest.importorskip("datasets")
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    texts = corpus(1100)  # two runs of texts
    tok = tiny_tok_model.tokenizer
    ds = datasets.Dataset.from_dict({"text": texts})
    # num_proc=None: in this process (a datasets worker forked from a process whose OpenMP
    # threads have run would hang in torch)
    packed = lmscope.utils.tokenize_and_concatenate(ds, tok, max_length=SEQ, num_proc=None)
    expected = packed[:]["tokens"]
    ds.save_to_disk(str(tmp_path / "hf"))
    (tmp_path / "a.txt").write_text("\n".join(texts) + "\n")
    (tmp_path / "a.jsonl").write_text(
        "".join(json.dumps({"text": t, "n": 1}) + "\n" for t in texts)
    )
    pq.write_table(pa.table({"body": texts}), tmp_path / "a.parquet")
    sources = {
        "list": (texts, "text"), "dataset": (ds, "text"), "txt": (tmp_path / "a.txt", "text"),
        "jsonl": (str(tmp_path / "a.jsonl"), "text"), "parquet": (tmp_path / "a.parquet", "body"),
        "save_to_disk": (tmp_path / "hf", "text"), "paths": ([str(tmp_path / "a.txt")], "text"),
    }  # fmt: skip
    for name, (source, column) in sources.items():
        h = lmscope.harvest(
            tiny_tok_model, source, hooks=["hook_embed"], out=tmp_path / f"out-{name}",
            seq_len=SEQ, batch_size=16, shard_tokens=SEQ * 64, column=column, verbose=False,
        )  # fmt: skip
        assert torch.equal(h.tokens.long(), expected), name
    assert (expected[:, 0] == tok.bos_token_id).all()


def _call(model: Any, out: Path, **kw: Any) -> Any:
    args: dict[str, Any] = dict(
        hooks=HOOKS, out=out, seq_len=SEQ, shard_tokens=SEQ * ROWS, verbose=False
    )
    return lmscope.harvest(model, kw.pop("dataset", corpus(20)), **{**args, **kw})


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"hooks": ["blocks.0.hook_resid_psot"]},
            ValueError,
            "Did you mean: blocks.0.hook_resid_post",
        ),
        ({"hooks": []}, ValueError, "hooks is empty"),
        ({"hooks": ["blocks.0.attn.hook_result"]}, ValueError, "set_use_attn_result"),
        ({"shard_tokens": 10}, ValueError, "pass shard_tokens >= 32"),
        ({"seq_len": 65}, ValueError, "n_ctx=64"),
        ({"dtype": torch.int8}, ValueError, "not a floating torch dtype"),
        ({"engine": "spark"}, ValueError, "engine must be one of"),
        ({"dataset": 3}, DatasetError, "cannot read a dataset from int"),
        ({"dataset": "nope.jsonl"}, DatasetError, "does not exist"),
        ({"dataset": ["x" * 10]}, DatasetError, "makes no sequence of seq_len=32"),
        ({"save_activations": False}, ValueError, "would store nothing"),
        (
            {"hooks": ["blocks.0.attn.hook_pattern"], "reducers": [MeanVar()]},
            ValueError,
            "harvest it raw",
        ),
        ({"reducers": [MeanVar(), MeanVar()]}, ValueError, "give one a name="),
    ],
)
def test_bad_arguments_fail_clearly(
    tiny_tok_model: Any, tmp_path: Path, kwargs: dict[str, Any], error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        _call(tiny_tok_model, tmp_path / "out", **kwargs)


def test_refuses_other_arguments_and_foreign_folders(tiny_tok_model: Any, tmp_path: Path) -> None:
    _call(tiny_tok_model, tmp_path / "out")
    with pytest.raises(
        HarvestDirectoryError, match=r"other arguments \(seq_len: 16 now, 32 there\)"
    ):
        _call(tiny_tok_model, tmp_path / "out", seq_len=16)
    with pytest.raises(HarvestDirectoryError, match="dataset: another one, or its files changed"):
        _call(tiny_tok_model, tmp_path / "out", dataset=corpus(21))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(HarvestDirectoryError, match="not empty and holds no manifest.json"):
        _call(tiny_tok_model, tmp_path / "other")
    (tmp_path / "jsonl").write_text('{"body": "x"}\n')
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"body": "x"}\n')
    with pytest.raises(
        DatasetError, match=r"bad.jsonl:1 has no 'text' field \(it has \['body'\]\)"
    ):
        _call(tiny_tok_model, tmp_path / "out2", dataset=bad)


def test_ray_engine_without_ray_says_how_to_install(
    tiny_tok_model: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r"pip install 'lmscope\[ray\]'"):
        _call(tiny_tok_model, tmp_path / "out", engine="ray")


def test_harvest_is_callable_and_a_package() -> None:
    from lmscope.harvest import harvest

    assert callable(lmscope.harvest) and lmscope.harvest.harvest is harvest
    assert lmscope.harvest.open is lmscope.harvest.reader.open
