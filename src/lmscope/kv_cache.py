"""The KV cache: every layer's keys and values for the positions seen so far, preallocated, with
their padding mask and a step API the model drives.

A forward over new positions asks the cache for its step (`cache.step(batch, n_pos, mask)`: where
the positions start, the mask over every key they attend to, and their positions counted over real
tokens), runs its blocks (each writes its keys and values in place into its `KVCacheEntry`), then
commits the step (`cache.commit(step)`), which advances the cache unless it is frozen. The buffers
hold the whole run, so a step writes in place (no `torch.cat` growth); a step that needs more room
doubles them.

Example:
    >>> cache = KVCache.init_cache(model.cfg, model.W_E.device, batch_size=1)
    >>> logits = model(prompt_tokens, past_kv_cache=cache)
    >>> logits = model(next_token, past_kv_cache=cache)   # attends to the prompt too
    >>> cache.length == prompt_tokens.shape[1] + 1
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lmscope.config import HookedTransformerConfig, LayerConfig
from lmscope.tokens import real_positions


class KVCacheEntry:
    """One layer's keys and values, [batch, kv_head, capacity, d_head], filled up to the cache's
    length (latent attention: its KV latent [batch, 1, capacity, kv_lora_rank] and shared rotary
    key [batch, 1, capacity, qk_rope_head_dim]).

    Example:
        >>> entry = KVCacheEntry(model.cfg, 1, 16, torch.device("cpu"), torch.float32)
        >>> k, v = entry.append(new_k, new_v, start=0)   # views of positions [0, new)
    """

    def __init__(
        self,
        cfg: HookedTransformerConfig | LayerConfig,
        batch: int,
        capacity: int,
        device: torch.device | str,
        dtype: torch.dtype,
    ) -> None:
        n_heads = cfg.n_heads if cfg.ungroup_grouped_query_attention else cfg.n_key_value_heads
        shape = (batch, n_heads, capacity, cfg.d_head)
        k_shape = v_shape = shape
        if cfg.kv_lora_rank:  # latent attention caches its latent and its shared rotary key
            k_shape = (batch, 1, capacity, cfg.kv_lora_rank)
            v_shape = (batch, 1, capacity, cfg.qk_rope_head_dim)
        self.k = torch.zeros(k_shape, device=device, dtype=dtype)
        self.v = torch.zeros(v_shape, device=device, dtype=dtype)

    def append(
        self,
        k: Float[Tensor, "batch kv_head pos d_head"],
        v: Float[Tensor, "batch kv_head pos d_head_v"],  # MLA: values have their own size
        start: int,
    ) -> tuple[Tensor, Tensor]:
        """Write the new positions at `start` and return views of everything up to them."""
        end = start + k.shape[2]
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]

    def grow(self, capacity: int) -> None:
        """Pad the buffers with zeros up to `capacity` positions."""
        pad = capacity - self.k.shape[2]
        self.k = torch.nn.functional.pad(self.k, (0, 0, 0, pad))
        self.v = torch.nn.functional.pad(self.v, (0, 0, 0, pad))

    def to(self, device: torch.device) -> None:
        """Move the keys and values to `device` (in place; nothing is copied when they are there).

        Example:
            >>> entry.to(torch.device("meta"))
            >>> entry.k.device
            device(type='meta')
        """
        if self.k.device != device:
            self.k, self.v = self.k.to(device), self.v.to(device)


class RecurrentState:
    """A linear-attention layer's entry in the KV cache: the convolution's last inputs [batch,
    conv_size - 1, conv_dim] and the delta rule's state [batch, v_head, d_key, d_value] (float32),
    kept for the position a call started at and the one it ended at, so a frozen cache's calls all
    continue from the same state.

    Example:
        >>> entry = RecurrentState()
        >>> entry.read(0) is None      # nothing before the first position
        True
    """

    def __init__(self, *_: object) -> None:
        self.saved: dict[int, tuple[Tensor, Tensor]] = {}

    def read(self, start: int) -> tuple[Tensor, Tensor] | None:
        """(conv inputs, state) after `start` positions (None at 0: zeros)."""
        if start == 0:
            return None
        if start not in self.saved:
            raise ValueError(
                f"the linear-attention state after {start} positions is not in this KV cache "
                f"(it holds positions {sorted(self.saved)}): a recurrent layer continues only "
                "from where its last call started or ended; run the positions in order"
            )
        return self.saved[start]

    def write(self, start: int, end: int, conv: Tensor, state: Tensor) -> None:
        """Keep the state after `end` positions (and the one after `start`)."""
        self.saved = {k: v for k, v in self.saved.items() if k == start}
        self.saved[end] = (conv, state)

    def grow(self, capacity: int) -> None:
        """Nothing to grow: a recurrent state does not depend on the number of positions."""

    def to(self, device: torch.device) -> None:
        """Move every kept state (convolution inputs and delta-rule state) to `device`, in place.
        A layer writes its state on its own device, so this moves something only when the
        model's placement changed after the state was written.

        Example:
            >>> entry.to(torch.device("meta"))
            >>> entry.read(3)[1].device
            device(type='meta')
        """
        self.saved = {
            end: (conv.to(device), state.to(device)) for end, (conv, state) in self.saved.items()
        }


def _layer_entry(
    cfg: HookedTransformerConfig,
    layer: int,
    batch: int,
    capacity: int,
    device: torch.device | str,
    dtype: torch.dtype,
) -> KVCacheEntry | RecurrentState:
    """Layer `layer`'s entry: a recurrent state for a linear-attention layer, else keys and values
    of the layer's own head size and key/value heads (Gemma 4's global layers differ). A layer
    past `cfg.layer_types` (an encoder-decoder's decoder) uses the config as it is."""
    kinds = cfg.layer_types
    if layer >= len(kinds):
        return KVCacheEntry(cfg, batch, capacity, device, dtype)
    if kinds[layer] == "linear":
        return RecurrentState()  # keeps a state, not keys and values
    return KVCacheEntry(cfg.for_layer(layer), batch, capacity, device, dtype)


@dataclass(frozen=True)
class KVStep:
    """One forward's view of a KV cache: its new positions are [start, end) of the cache.

    `key_mask` [batch, end] marks which keys (cached and new) are real tokens, None when all are;
    `positions` [batch, end - start] are the new tokens' positions counted over real tokens only,
    so left-padded rows get the same positions as unpadded ones.
    """

    start: int
    end: int
    key_mask: Int[Tensor, "batch key"] | None
    positions: Int[Tensor, "batch pos"]


class KVCache:
    """Keys and values of every layer for the positions seen so far, plus their padding mask.

    Pass it to `model(tokens, past_kv_cache=cache)` step by step: each call attends to everything
    cached and appends its own positions (unless `frozen`). Capacity grows by doubling when a
    call needs more; `generate` sizes it exactly, so it never grows there. A model drives it with
    `step` (the mask and positions of a call's new tokens) and `commit` (advance past them).

    Example:
        >>> cache = KVCache.init_cache(model.cfg, model.W_E.device, batch_size=1)
        >>> logits = model(prompt_tokens, past_kv_cache=cache)
        >>> logits = model(next_token, past_kv_cache=cache)   # attends to the prompt too
    """

    def __init__(
        self,
        cfg: HookedTransformerConfig,
        batch: int,
        capacity: int,
        device: torch.device | str,
        dtype: torch.dtype,
        layer_devices: Sequence[torch.device | str] | None = None,
    ) -> None:
        self.cfg = cfg
        self.batch = batch
        device = torch.device(device) if device is not None else torch.device("cpu")
        # A model spread over devices keeps each layer's entry on that layer's device.
        layer_devices = layer_devices or [device] * cfg.n_layers
        self.entries = [
            _layer_entry(cfg, layer, batch, capacity, layer_device, dtype)
            for layer, layer_device in enumerate(layer_devices)
        ]
        self.mask = torch.zeros(batch, capacity, dtype=torch.long, device=device)  # 1 = real token
        self.length = 0
        self.frozen = False

    @classmethod
    def init_cache(
        cls,
        cfg: HookedTransformerConfig,
        device: torch.device | str | None = None,
        batch_size: int = 1,
        capacity: int = 256,
        dtype: torch.dtype | None = None,
    ) -> KVCache:
        """An empty cache for `batch_size` sequences, room for `capacity` positions (TransformerLens name).

        Example:
            >>> cache = KVCache.init_cache(model.cfg, "cpu", batch_size=2, capacity=32)
            >>> cache.length, cache.capacity
            (0, 32)
        """
        return cls(cfg, batch_size, min(capacity, cfg.n_ctx), device or "cpu", dtype or cfg.dtype)

    @property
    def capacity(self) -> int:
        """How many positions the buffers hold now (they grow when a step needs more)."""
        return self.mask.shape[1]

    def __getitem__(self, layer: int) -> KVCacheEntry:
        """Layer `layer`'s entry (TransformerLens indexes its cache this way)."""
        return self.entries[layer]

    def reserve(self, batch: int, end: int) -> None:
        """Make room for positions up to `end`, checking the batch size and the context length."""
        if batch != self.batch:
            raise ValueError(
                f"this KV cache holds {self.batch} sequences, but the input has {batch}"
            )
        if end > self.cfg.n_ctx:
            raise ValueError(
                f"the KV cache would hold {end} positions, more than the model's context n_ctx={self.cfg.n_ctx}"
            )
        if end > self.capacity:
            capacity = min(max(end, 2 * self.capacity), self.cfg.n_ctx)
            for entry in self.entries:
                entry.grow(capacity)
            self.mask = torch.nn.functional.pad(self.mask, (0, capacity - self.capacity))

    def step(
        self,
        batch: int,
        n_pos: int,
        attention_mask: Int[Tensor, "batch pos"] | None = None,
    ) -> KVStep:
        """The step of `n_pos` new positions after those cached: room is made for them, their
        padding mask (`attention_mask`, a checked long tensor; None: all real) recorded, and the
        mask over every key and the new positions returned. Nothing is committed: the cache's
        length moves on only at `commit`, so a step that fails leaves the cache as it was.

        Example:
            >>> step = cache.step(1, 3)        # three new tokens, no padding
            >>> step.start, step.end, step.positions.tolist()
            (0, 3, [[0, 1, 2]])
        """
        start = self.length
        end = start + n_pos
        self.reserve(batch, end)
        if attention_mask is None:
            self.mask[:, start:end] = 1
        else:
            self.mask[:, start:end] = attention_mask
        key_mask = self.mask[:, :end]
        positions, key_mask = real_positions(key_mask, n_pos, check=attention_mask is not None)
        return KVStep(start, end, key_mask, positions)

    def commit(self, step: KVStep) -> None:
        """Advance past `step`'s positions (unless frozen: then they are read but not kept)."""
        if not self.frozen:
            self.length = step.end

    def freeze(self) -> None:
        """Later calls read the cache but do not advance it (e.g. to score several continuations)."""
        self.frozen = True

    def unfreeze(self) -> None:
        """Later calls advance the cache again."""
        self.frozen = False
