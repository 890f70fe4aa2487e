"""Batched KV storage for many monitored streams of different lengths (used by ``serve/monitor.py``).

Why not Hugging Face's ``DynamicCache``: it appends new keys with ``torch.cat`` (a full copy of the cache on every
step, so per-token work grows with the number of pushes), and it assumes every row of a batch sits at the same
position. A streaming monitor serves streams that started at different times, have different prompt lengths and
receive different numbers of new tokens per push.

The layout used here, a *slab*, is one pre-allocated buffer per layer of shape ``(rows, kv_heads, capacity,
head_dim)``:

- row ``r`` holds one stream; its ``length`` valid positions are buffer columns ``0 .. length-1``, so a buffer
  column is also the token's absolute position (RoPE positions equal buffer columns);
- a step writes each row's new keys at the row's own columns ``length .. length+n-1`` (one ``index_put_``), so the
  past is never copied; the capacity grows by doubling, which amortises to O(1) per token;
- rows that receive fewer new tokens than the widest row of the step are padded; padding queries write their keys
  into the last buffer column, a scratch column that no real query ever attends to, so padding never pollutes a
  row and a row's capacity depends only on its real length;
- the attention mask is an explicit 4D mask in buffer coordinates: the query at absolute position ``p`` of a row
  may read columns ``0..p`` of that row. Each row therefore only ever sees its own past, which is what isolates
  streams from each other.

The same layout (static buffers, per-row write positions, an explicit mask) is what a CUDA-graph fast path needs,
so a later GPU implementation can keep this storage and only swap the step function.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

# The attention implementations whose mask format we know how to build: sdpa takes a boolean "may attend" mask,
# eager (and the None that some composite models leave on their backbone config, which dispatches to eager) adds a
# float mask to the attention logits.
BOOLEAN_MASK_ATTENTION = ("sdpa",)
ADDITIVE_MASK_ATTENTION = ("eager", None)

# Capacity is rounded up to this many columns so that short streams do not reallocate on their first pushes.
CAPACITY_QUANTUM = 64


def _round_up(value: int, quantum: int) -> int:
    return ((value + quantum - 1) // quantum) * quantum


class KVSlab:
    """Per-layer key/value buffers for a fixed number of rows (streams); see the module docstring for the layout.

    Attributes:
        n_layers: number of attention layers of the backbone.
        owners: for each row, the object (a stream state) that owns it, or None when the row is free.
        capacity: number of buffer columns, the last of which is the scratch column for padding writes.
    """

    def __init__(self, n_layers: int, n_rows: int, capacity: int) -> None:
        self.n_layers = n_layers
        self.owners: list[object | None] = [None] * n_rows
        self.capacity = max(capacity, 2)
        self.keys: list[torch.Tensor | None] = [None] * n_layers
        self.values: list[torch.Tensor | None] = [None] * n_layers

    @property
    def n_rows(self) -> int:
        return len(self.owners)

    @property
    def usable_columns(self) -> int:
        """Columns that can hold real tokens (all but the scratch column)."""
        return self.capacity - 1

    def free_rows(self) -> list[int]:
        """Rows that no stream owns (free rows still take part in the batched forward, as idle rows)."""
        return [row for row, owner in enumerate(self.owners) if owner is None]

    def live_rows(self) -> int:
        return sum(owner is not None for owner in self.owners)

    def is_allocated(self) -> bool:
        return all(buffer is not None for buffer in self.keys)

    def ensure_capacity(self, needed_columns: int) -> None:
        """Make room for ``needed_columns`` real columns (plus the scratch column), doubling to amortise copies."""
        if needed_columns <= self.usable_columns:
            return
        new_capacity = max(_round_up(needed_columns + 1, CAPACITY_QUANTUM), 2 * self.capacity)
        # All new buffers first, then the swap: a failed allocation (out of memory) leaves the slab as it was.
        grown: dict[tuple[int, int], torch.Tensor] = {}
        for layer in range(self.n_layers):
            for kind, buffers in enumerate((self.keys, self.values)):
                old = buffers[layer]
                if old is None:
                    continue
                new = old.new_zeros(old.shape[0], old.shape[1], new_capacity, old.shape[3])
                # Only the real columns move; the old scratch column holds padding garbage.
                new[:, :, : self.usable_columns] = old[:, :, : self.usable_columns]
                grown[layer, kind] = new
        for (layer, kind), new in grown.items():
            (self.keys, self.values)[kind][layer] = new
        self.capacity = new_capacity

    def _allocate(self, layer: int, like: torch.Tensor) -> None:
        # Zeros, not empty: masked columns are multiplied by an attention weight of 0, and 0 * NaN would be NaN.
        shape = (self.n_rows, like.shape[1], self.capacity, like.shape[3])
        self.keys[layer] = like.new_zeros(shape)
        self.values[layer] = like.new_zeros(shape)

    def write(
        self, layer: int, keys: torch.Tensor, values: torch.Tensor, write_columns: torch.Tensor, kv_length: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the step's new keys/values at each row's own columns; return the keys/values to attend over.

        Args:
            layer: layer index.
            keys, values: ``(rows, kv_heads, new, head_dim)`` for the step's (padded) new tokens.
            write_columns: ``(rows, new)`` long tensor: the buffer column of each new token (padding -> scratch).
            kv_length: number of leading columns the step's queries may need (the widest row's end).

        Returns:
            Views ``(rows, kv_heads, kv_length, head_dim)`` of the buffers: no copy of the past is made.
        """
        if self.keys[layer] is None:
            self._allocate(layer, keys)
        rows = torch.arange(keys.shape[0], device=keys.device).unsqueeze(1).expand_as(write_columns)
        # Advanced indexing on (row, column) with the head slice in between gives (rows, new, heads, dim).
        self.keys[layer][rows, :, write_columns] = keys.transpose(1, 2)
        self.values[layer][rows, :, write_columns] = values.transpose(1, 2)
        return self.keys[layer][:, :, :kv_length], self.values[layer][:, :, :kv_length]

    def copy_row_from(self, row: int, source: "KVSlab", source_row: int, length: int) -> None:
        """Copy the first ``length`` columns of ``source``'s row into this slab's ``row`` (moving a stream).

        Raises:
            RuntimeError: when the source slab holds no keys yet (a stream that was never run).
        """
        if not source.is_allocated():
            raise RuntimeError("cannot move a stream whose prompt was never run through the backbone")
        self.ensure_capacity(length)
        for layer in range(self.n_layers):
            if self.keys[layer] is None:
                self._allocate(layer, source.keys[layer])
            self.keys[layer][row, :, :length] = source.keys[layer][source_row, :, :length]
            self.values[layer][row, :, :length] = source.values[layer][source_row, :, :length]

    def nbytes(self) -> int:
        """Memory held by the buffers (for reports)."""
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values) if t is not None)

    def bytes_per_token(self) -> int:
        """Bytes one token's keys and values take over all layers (0 before the first write)."""
        return sum(t.shape[1] * t.shape[3] * t.element_size() for t in (*self.keys, *self.values) if t is not None)

    def release(self) -> None:
        """Drop the buffers (the slab is empty and no longer used); a later write would allocate them again."""
        self.keys = [None] * self.n_layers
        self.values = [None] * self.n_layers


@dataclass
class StepPlan:
    """Where one batched step writes and what it may read.

    Attributes:
        write_columns: ``(rows, new)`` buffer column of every (padded) new token.
        kv_length: leading buffer columns the step attends over.
    """

    write_columns: torch.Tensor
    kv_length: int


class _SlabLayer(CacheLayerMixin):
    """Adapter that lets a backbone's attention layer write into and read from one layer of a slab."""

    is_sliding = False
    is_compileable = False

    def __init__(self, cache: "SlabCache", layer: int) -> None:
        super().__init__()
        self._cache = cache
        self._layer = layer
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Nothing to do: the slab allocates its buffers on first write."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        plan = self._cache.plan
        if plan is None:
            raise RuntimeError("SlabCache used outside a planned streaming step")
        return self._cache.slab.write(self._layer, key_states, value_states, plan.write_columns, plan.kv_length)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        # Only reached when a caller did not pass our explicit 4D mask; the sizes then describe the attended span.
        plan = self._cache.plan
        return (plan.kv_length if plan is not None else query_length), 0

    def get_seq_length(self) -> int:
        plan = self._cache.plan
        return 0 if plan is None else plan.kv_length

    def get_max_length(self) -> int:
        return -1


class SlabCache(Cache):
    """A transformers ``Cache`` whose layers read and write a :class:`KVSlab` according to a :class:`StepPlan`.

    The cache object is reusable across steps of the same slab: :meth:`plan_step` sets where the next forward
    writes. It must be used with an explicit 4D attention mask (see :func:`build_attention_mask`), because the
    per-row offsets cannot be expressed by transformers' default mask construction.
    """

    def __init__(self, slab: KVSlab) -> None:
        self.slab = slab
        self.plan: StepPlan | None = None
        super().__init__(layers=[_SlabLayer(self, layer) for layer in range(slab.n_layers)])

    def plan_step(self, plan: StepPlan) -> None:
        self.plan = plan


def build_attention_mask(
    positions: torch.Tensor, kv_length: int, attn_implementation: str | None, dtype: torch.dtype
) -> torch.Tensor:
    """The 4D mask of one step: the query at absolute position ``p`` may read buffer columns ``0..p`` of its row.

    Args:
        positions: ``(rows, new)`` absolute position (= buffer column) of each query; padding queries carry the
            position they would have had, which keeps at least column 0 visible so no softmax row is empty.
        kv_length: number of key columns the step attends over.
        attn_implementation: the backbone's ``config._attn_implementation``.
        dtype: the model's compute dtype (for the additive mask of eager attention).

    Returns:
        ``(rows, 1, new, kv_length)``: boolean for sdpa, additive float for eager.

    Raises:
        NotImplementedError: for attention implementations that cannot take an arbitrary 4D mask (flash-attention
            kernels take only padding masks); load the monitor with ``attn_implementation="sdpa"``.
    """
    columns = torch.arange(kv_length, device=positions.device)
    allowed = (columns.view(1, 1, -1) <= positions.unsqueeze(-1)).unsqueeze(1)
    if attn_implementation in BOOLEAN_MASK_ATTENTION:
        return allowed
    if attn_implementation in ADDITIVE_MASK_ATTENTION:
        mask = torch.zeros(allowed.shape, dtype=dtype, device=positions.device)
        return mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    raise NotImplementedError(
        f"the streaming runtime needs an attention implementation that accepts an explicit 4D mask; the backbone "
        f"uses {attn_implementation!r}. Load the monitor with attn_implementation='sdpa' (or 'eager')."
    )
