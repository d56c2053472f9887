"""Reducers: statistics of activations computed as they stream past, for when the raw
activations would not fit on disk. Each is mergeable: a shard's state and another's merge into
the state of both, so shards computed by different processes or machines combine into the state
one pass over every token would give (equal up to float64 rounding for the moments, exactly for
top-k and histograms).

A reducer sees each batch as [batch, pos, features] (per-head activations [batch, pos, head, d]
are flattened to head * d features), in the model's dtype, before the storage dtype is applied.
Its state is a dict of tensors (what a shard's reducer file stores); `result(state)` gives the
statistics.

Example:
    >>> r = MeanVar()
    >>> s = r.update(r.init(4), torch.randn(2, 8, 4), torch.zeros(2, 8, dtype=torch.long), 0)
    >>> r.result(s)["mean"].shape
    torch.Size([4])
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import torch
from jaxtyping import Float, Int
from torch import Tensor

State = dict[str, Tensor]
_EMPTY_INDEX = torch.iinfo(torch.int64).max  # sorts after every real token index


@dataclass(frozen=True)
class Reducer:
    """Base class: `init`, `update`, `merge` and `result` on a state dict of tensors."""

    kind: ClassVar[str] = "reducer"
    name: str = field(default="", kw_only=True)  # the key of its results; default: `kind`

    @property
    def key(self) -> str:
        return self.name or self.kind

    def spec(self) -> dict[str, Any]:
        """What identifies this reducer in a manifest (its kind and parameters)."""
        return {"kind": self.kind, **asdict(self)}

    def init(self, n_features: int, device: torch.device | str = "cpu") -> State:
        raise NotImplementedError

    def batch_state(
        self,
        x: Float[Tensor, "batch pos feat"],
        tokens: Int[Tensor, "batch pos"],
        first_token: int,
    ) -> State:
        """The state of one batch alone; `first_token` is the index of x[0, 0] in the dataset."""
        raise NotImplementedError

    def merge(self, a: State, b: State) -> State:
        raise NotImplementedError

    def result(self, state: State) -> dict[str, Tensor]:
        raise NotImplementedError

    def update(
        self,
        state: State,
        x: Float[Tensor, "batch pos feat"],
        tokens: Int[Tensor, "batch pos"],
        first_token: int,
    ) -> State:
        """`state` merged with one batch's."""
        return self.merge(state, self.batch_state(x, tokens, first_token))


def _chan(na: Tensor, ma: Tensor, nb: Tensor, mb: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Count, mean, mean difference and na*nb/n of two groups (Chan et al.'s parallel update)."""
    n = na + nb
    delta = mb - ma
    frac = nb.to(ma.dtype) / n.clamp(min=1).to(ma.dtype)  # in float64: int / int is float32
    return n, ma + delta * frac, delta, na.to(ma.dtype) * frac


@dataclass(frozen=True)
class MeanVar(Reducer):
    """Running mean and variance of each feature (float64; variance unbiased, as torch.var).

    Example:
        >>> harvest(model, data, hooks=["blocks.0.hook_resid_post"], reducers=[MeanVar()], out=d)
    """

    kind: ClassVar[str] = "mean_var"

    def init(self, n_features: int, device: torch.device | str = "cpu") -> State:
        zeros = torch.zeros(n_features, dtype=torch.float64, device=device)
        return {
            "count": torch.zeros((), dtype=torch.int64, device=device),
            "mean": zeros,
            "m2": zeros,
        }

    def batch_state(self, x: Tensor, tokens: Tensor, first_token: int) -> State:
        flat = x.reshape(-1, x.shape[-1]).double()
        mean = flat.mean(0)
        count = torch.tensor(flat.shape[0], dtype=torch.int64, device=x.device)
        return {"count": count, "mean": mean, "m2": (flat - mean).square().sum(0)}

    def merge(self, a: State, b: State) -> State:
        n, mean, delta, w = _chan(a["count"], a["mean"], b["count"], b["mean"])
        return {"count": n, "mean": mean, "m2": a["m2"] + b["m2"] + delta.square() * w}

    def result(self, state: State) -> dict[str, Tensor]:
        n = state["count"]
        return {"count": n, "mean": state["mean"], "var": state["m2"] / (n - 1).clamp(min=1)}


@dataclass(frozen=True)
class Covariance(Reducer):
    """Mean and covariance matrix of the features (float64, unbiased, as torch.cov): a
    [features, features] state, so mind wide hooks (d_mlp, or per-head activations).

    Example:
        >>> harvest(model, data, hooks=["blocks.0.hook_resid_post"], reducers=[Covariance()], out=d)
    """

    kind: ClassVar[str] = "covariance"

    def init(self, n_features: int, device: torch.device | str = "cpu") -> State:
        return {
            "count": torch.zeros((), dtype=torch.int64, device=device),
            "mean": torch.zeros(n_features, dtype=torch.float64, device=device),
            "comoment": torch.zeros(n_features, n_features, dtype=torch.float64, device=device),
        }

    def batch_state(self, x: Tensor, tokens: Tensor, first_token: int) -> State:
        flat = x.reshape(-1, x.shape[-1]).double()
        mean = flat.mean(0)
        centred = flat - mean
        count = torch.tensor(flat.shape[0], dtype=torch.int64, device=x.device)
        return {"count": count, "mean": mean, "comoment": centred.T @ centred}

    def merge(self, a: State, b: State) -> State:
        n, mean, delta, w = _chan(a["count"], a["mean"], b["count"], b["mean"])
        comoment = a["comoment"] + b["comoment"] + torch.outer(delta, delta) * w
        return {"count": n, "mean": mean, "comoment": comoment}

    def result(self, state: State) -> dict[str, Tensor]:
        n = state["count"]
        cov = state["comoment"] / (n - 1).clamp(min=1)
        return {"count": n, "mean": state["mean"], "cov": cov}


@dataclass(frozen=True)
class TopK(Reducer):
    """The `k` tokens on which each feature is largest, with their contexts (Garcon / baukit
    style max-activating examples): values [k, feat], their token indices in the dataset
    (sequence = index // seq_len, position = index % seq_len) and the token ids around each
    [k, feat, 2 * context + 1] (-1 past a sequence's ends). Ties go to the earlier token, so
    merging shards in any grouping gives exactly one pass's result.

    Example:
        >>> harvest(model, data, hooks=["blocks.0.mlp.hook_post"], reducers=[TopK(k=20)], out=d)
    """

    kind: ClassVar[str] = "top_k"
    k: int = 16
    context: int = 8

    def __post_init__(self) -> None:
        if self.k < 1 or self.context < 0:
            raise ValueError(
                f"TopK needs k >= 1 and context >= 0; got k={self.k}, context={self.context}"
            )

    def init(self, n_features: int, device: torch.device | str = "cpu") -> State:
        k, w = self.k, 2 * self.context + 1
        return {
            "values": torch.full((k, n_features), -torch.inf, device=device),
            "index": torch.full((k, n_features), _EMPTY_INDEX, dtype=torch.int64, device=device),
            "context": torch.full((k, n_features, w), -1, dtype=torch.int32, device=device),
        }

    def batch_state(self, x: Tensor, tokens: Tensor, first_token: int) -> State:
        batch, pos, feat = x.shape
        flat = x.reshape(batch * pos, feat).float()
        k = min(self.k, flat.shape[0])
        values, rows = flat.sort(dim=0, descending=True, stable=True)  # ties: earlier row first
        values, rows = values[:k], rows[:k]
        c = self.context
        padded = torch.nn.functional.pad(tokens.to(torch.int32), (c, c), value=-1)
        windows = padded.unfold(1, 2 * c + 1, 1).reshape(batch * pos, 2 * c + 1)
        return {"values": values, "index": rows + first_token, "context": windows[rows]}

    def merge(self, a: State, b: State) -> State:
        values = torch.cat([a["values"], b["values"].to(a["values"].dtype)])
        index = torch.cat([a["index"], b["index"]])
        context = torch.cat([a["context"], b["context"]])
        by_index = index.argsort(dim=0, stable=True)
        values, index = values.gather(0, by_index), index.gather(0, by_index)
        by_value = values.argsort(dim=0, descending=True, stable=True)[: self.k]
        order = by_index.gather(0, by_value)  # rows of the concatenation, best first
        w = context.shape[-1]
        return {
            "values": values.gather(0, by_value),
            "index": index.gather(0, by_value),
            "context": context.gather(0, order[..., None].expand(-1, -1, w)),
        }

    def result(self, state: State) -> dict[str, Tensor]:
        return dict(state)


@dataclass(frozen=True)
class Histogram(Reducer):
    """Per-feature counts in `bins` equal bins over [low, high), plus one bin below and one at
    or above: counts [feat, bins + 2] (int64), exact under any merge.

    Example:
        >>> harvest(model, data, hooks=["blocks.0.mlp.hook_post"], reducers=[Histogram(-1, 4)], out=d)
    """

    kind: ClassVar[str] = "histogram"
    low: float = -10.0
    high: float = 10.0
    bins: int = 64

    def __post_init__(self) -> None:
        if not self.low < self.high or self.bins < 1:
            raise ValueError(
                f"Histogram needs low < high and bins >= 1; got {self.low}, {self.high}, {self.bins}"
            )

    def _edges(self, device: torch.device | str) -> Tensor:
        return torch.linspace(
            self.low, self.high, self.bins + 1, dtype=torch.float64, device=device
        )

    def init(self, n_features: int, device: torch.device | str = "cpu") -> State:
        return {"counts": torch.zeros(n_features, self.bins + 2, dtype=torch.int64, device=device)}

    def batch_state(self, x: Tensor, tokens: Tensor, first_token: int) -> State:
        feat = x.shape[-1]
        flat = x.reshape(-1, feat).double()
        bucket = torch.bucketize(flat, self._edges(x.device), right=True)  # 0: below, bins+1: above
        where = bucket + torch.arange(feat, device=x.device) * (self.bins + 2)
        counts = torch.bincount(where.reshape(-1), minlength=feat * (self.bins + 2))
        return {"counts": counts.reshape(feat, self.bins + 2)}

    def merge(self, a: State, b: State) -> State:
        return {"counts": a["counts"] + b["counts"]}

    def result(self, state: State) -> dict[str, Tensor]:
        return {"counts": state["counts"], "edges": self._edges("cpu")}


REDUCERS: dict[str, type[Reducer]] = {
    cls.kind: cls for cls in (MeanVar, Covariance, TopK, Histogram)
}


def from_spec(spec: dict[str, Any]) -> Reducer:
    """The reducer a manifest's spec describes.

    Example:
        >>> from_spec(TopK(k=4).spec())
        TopK(name='', k=4, context=8)
    """
    params = {k: v for k, v in spec.items() if k != "kind"}
    return REDUCERS[spec["kind"]](**params)


def parse(text: str) -> Reducer:
    """A reducer from its command-line form, `kind` or `kind:param=value,...`.

    Example:
        >>> parse("top_k:k=20,context=4")
        TopK(name='', k=20, context=4)
    """
    kind, _, params = text.partition(":")
    if kind not in REDUCERS:
        raise ValueError(f"unknown reducer {kind!r}; the reducers are {sorted(REDUCERS)}")
    cls = REDUCERS[kind]
    fields = {f.name: f.type for f in cls.__dataclass_fields__.values() if f.name != "kind"}
    values: dict[str, Any] = {}
    for item in filter(None, params.split(",")):
        key, eq, value = item.partition("=")
        if not eq or key not in fields:
            raise ValueError(
                f"reducer {text!r}: {item!r} is not param=value with a param of {kind} "
                f"({', '.join(fields)})"
            )
        try:
            values[key] = (
                value
                if key == "name"
                else (float(value) if "." in value or "e" in value else int(value))
            )
        except ValueError:
            raise ValueError(f"reducer {text!r}: {key}={value!r} is not a number") from None
    return cls(**values)
