"""The unit of work of a harvest: a pure function of a shard id.

A `Plan` fixes everything a shard depends on (hooks, dtype, seq_len, batch size, shard layout,
reducers, stop_at_layer); `run_shard` runs the model over one shard's token rows and returns its
activations and reducer states; `write_shard` stores them under the shard's names and returns
the manifest record. The local engine and the Ray engine both call exactly these, so a shard's
bytes do not depend on which engine, process or machine made them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from lmscope.harvest import store
from lmscope.harvest.reducers import Reducer, State, from_spec

SHARDS_DIR = "shards"
REDUCER_DIR = "reducers"
_NO_POS_SECOND = ("hook_pattern", "hook_attn_scores")  # [batch, head, query, key]


@dataclass(frozen=True)
class Plan:
    """What every shard of a harvest is made from (JSON-able, shipped to workers as is)."""

    hooks: tuple[str, ...]
    dtype: str  # storage dtype of the activations, a torch dtype name
    seq_len: int
    batch_size: int
    rows_per_shard: int  # sequences per shard
    n_seqs: int
    stop_at_layer: int | None
    reducers: tuple[tuple[str, tuple[dict[str, Any], ...]], ...]  # hook -> reducer specs
    save_activations: bool
    fsync: bool = False  # wait for each file to reach the disk (not part of the harvest's identity)

    @property
    def n_shards(self) -> int:
        return -(-self.n_seqs // self.rows_per_shard)

    def seqs(self, shard: int) -> tuple[int, int]:
        """The sequences [start, end) of `shard`."""
        start = shard * self.rows_per_shard
        return start, min(start + self.rows_per_shard, self.n_seqs)

    def reducer_objects(self) -> dict[str, list[Reducer]]:
        return {hook: [from_spec(s) for s in specs] for hook, specs in self.reducers}


def shard_file(shard: int) -> str:
    return f"{SHARDS_DIR}/shard-{shard:05d}.safetensors"


def reducer_file(shard: int) -> str:
    return f"{REDUCER_DIR}/shard-{shard:05d}.safetensors"


def stop_layer(hooks: tuple[str, ...], model: Any) -> int | None:
    """The `stop_at_layer` that still fires every hook: one past the deepest block hooked;
    None (the whole model) when a hook lies after the blocks (ln_final, unembed)."""
    deepest = -1
    for name in hooks:
        point = model.hook_dict[name]
        if name.startswith("blocks."):
            deepest = max(deepest, point.layer())
        elif name not in ("hook_embed", "hook_pos_embed") and not name.startswith("ln_embed"):
            return None
    return deepest + 1


def check_hooks(model: Any, hooks: tuple[str, ...], with_reducers: set[str]) -> None:
    """A ValueError naming any hook that does not exist, does not fire, or cannot be reduced."""
    if not hooks:
        raise ValueError(
            "hooks is empty; name at least one hook point, e.g. 'blocks.0.hook_resid_post'"
        )
    for name in hooks:
        try:
            model._resolve(name)
        except KeyError as err:
            raise ValueError(err.args[0]) from None
        if name in with_reducers and name.endswith(_NO_POS_SECOND):
            raise ValueError(
                f"{name} is [batch, head, query, key] and reducers take activations with the "
                "position second ([batch, pos, ...]); harvest it raw (no reducer)"
            )


@dataclass
class ShardOutput:
    """One shard's activations (hook -> [rows, seq_len, ...] in the storage dtype; empty
    without save_activations) and reducer states (hook/reducer/field -> tensor)."""

    shard: int
    activations: dict[str, Tensor]
    states: dict[str, Tensor]


def _state_key(hook: str, reducer: Reducer, field: str) -> str:
    return f"{hook}/{reducer.key}/{field}"


@torch.inference_mode()
def run_shard(
    model: Any,
    plan: Plan,
    tokens: Int[Tensor, "n_seqs seq_len"],
    shard: int,
    on_batch: Callable[[int], None] | None = None,
) -> ShardOutput:
    """Run the model over `shard`'s sequences, batch by batch, with hooks that copy each
    activation straight into the shard's buffers (and feed the reducers); `on_batch(n_tokens)`
    is called after each batch.

    Example:
        >>> out = run_shard(model, plan, tokens, 0)
        >>> out.activations["blocks.0.hook_resid_post"].shape
    """
    start, end = plan.seqs(shard)
    device = model.W_E.device
    on_gpu = device.type == "cuda"
    dtype = getattr(torch, plan.dtype)
    reducers = plan.reducer_objects()
    buffers: dict[str, Tensor] = {}
    states: dict[tuple[str, int], State] = {}
    batch_at = [0, None]  # row offset of the batch within the shard, its tokens

    def save(act: Tensor, hook: Any) -> None:
        name, n = hook.name, act.shape[0]
        lo = batch_at[0]
        if plan.save_activations:
            buf = buffers.get(name)
            if buf is None:
                shape = (end - start, *act.shape[1:])
                buf = buffers[name] = torch.empty(shape, dtype=dtype, pin_memory=on_gpu)
            buf[lo : lo + n].copy_(act, non_blocking=on_gpu)
        for i, reducer in enumerate(reducers.get(name, ())):
            x = act.reshape(n, act.shape[1], -1)
            first = (start + lo) * plan.seq_len
            batch_state = reducer.batch_state(x, batch_at[1], first)
            old = states.get((name, i))
            states[(name, i)] = batch_state if old is None else reducer.merge(old, batch_state)

    fwd = [(name, save) for name in plan.hooks]
    with model.hooks(fwd_hooks=fwd):
        for lo in range(0, end - start, plan.batch_size):
            rows = tokens[start + lo : min(start + lo + plan.batch_size, end)]
            batch = rows.to(device=device, dtype=torch.int64, non_blocking=on_gpu)
            batch_at[0], batch_at[1] = lo, batch
            model(batch, return_type=None, stop_at_layer=plan.stop_at_layer)
            if on_gpu:
                torch.cuda.synchronize(device)
            if on_batch is not None:
                on_batch(batch.numel())
    flat: dict[str, Tensor] = {}
    for (name, i), state in states.items():
        reducer = reducers[name][i]
        for field, value in state.items():
            flat[_state_key(name, reducer, field)] = value.cpu()
    return ShardOutput(shard, buffers, flat)


def write_shard(out: Path, plan: Plan, result: ShardOutput) -> dict[str, Any]:
    """Store a shard's activations and reducer states (each file atomically) and return its
    manifest record: sequences and tokens covered, files, their SHA-256 and sizes, shapes."""
    start, end = plan.seqs(result.shard)
    record: dict[str, Any] = {
        "id": result.shard,
        "seqs": [start, end],
        "tokens": [start * plan.seq_len, end * plan.seq_len],
    }
    if plan.save_activations:
        ordered = {name: result.activations[name] for name in plan.hooks}
        sha, size = store.write_safetensors(
            out / shard_file(result.shard), ordered, fsync=plan.fsync
        )
        record["file"], record["sha256"], record["bytes"] = shard_file(result.shard), sha, size
        record["shapes"] = {name: list(t.shape[1:]) for name, t in ordered.items()}
    if result.states:
        sha, size = store.write_safetensors(
            out / reducer_file(result.shard), result.states, fsync=plan.fsync
        )
        record["reducer_file"] = reducer_file(result.shard)
        record["reducer_sha256"], record["reducer_bytes"] = sha, size
    return record


def merge_states(plan: Plan, states: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """The shards' reducer states merged, in the order given (shard order)."""
    merged: dict[str, Tensor] = {}
    for hook, reducers in plan.reducer_objects().items():
        for reducer in reducers:
            prefix = f"{hook}/{reducer.key}/"
            total: State | None = None
            for shard in states:
                part = {k[len(prefix) :]: v for k, v in shard.items() if k.startswith(prefix)}
                total = part if total is None else reducer.merge(total, part)
            for field, value in (total or {}).items():
                merged[prefix + field] = value
    return merged
