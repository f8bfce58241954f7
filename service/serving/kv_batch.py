"""The shared KV cache of a decode batch: rows of different lengths, right-aligned, padding masked out.

Each row's keys are stored after its rotary embedding, so a row can sit at any column: what the model
needs is the attention mask (padding = 0) and each row's own position ids.

The cache lives in preallocated per-layer buffers ``[row slots, heads, columns, head dim]`` with spare
rows and columns, and the batch is a window of them: rows ``[0, rows)``, columns ``[start, end)``, every
row right-aligned at ``end``. So nothing copies the whole cache in the common case:

- a decode step writes one column per layer (transformers' ``DynamicLayer`` concatenates the whole cache
  every step instead);
- a joining row's solo prefill is written into a free slot, right-aligned at ``end``;
- a leaving row's slot is filled by the last row (one row copied), and columns that are padding in every
  row left are dropped by moving ``start`` (no copy).

Only when the window outgrows its buffers (no free slot, no column left for the next step, or a joining
prompt longer than the columns left of ``end``) is the live window copied once into a fresh layout with
room to spare on every side, so that copy is amortised over many steps and joins (:attr:`KVBatch.relayouts`
counts them).

Sliding-window layers (Mistral, Gemma 2/3) merge too: every row is right-aligned at ``end``, so a row's
column distance is its token distance, and the model's sliding-window mask (applied to columns) keeps each
row's own window; the buffers keep every column (a solo prefill longer than the window brings only its last
``window - 1`` keys, the older columns of that layer are never attended). Caches that are not exactly these
layers (``service/serving/cache_support.py`` decides, once per model) are not merged: such a model decodes one
row at a time as a :class:`~service.serving.cache_support.SerialRow`, with its own cache, state or none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicLayer, DynamicSlidingWindowLayer

from service.serving.cache_support import SerialRow, is_mergeable, unmergeable_reason

#: Column capacity is rounded up to this many columns.
_COLUMN_QUANTUM = 64


__all__ = ["KVBatch", "SlotCache", "SlotLayer", "is_mergeable"]


@dataclass
class _Window:
    """The live part of the buffers, shared by every layer: rows ``[0, rows)``, columns ``[start, end)``."""

    rows: int = 0
    start: int = 0
    end: int = 0


class SlotLayer(CacheLayerMixin):
    """One layer of a :class:`KVBatch`: writes the decode step's column in place, returns views of the window.

    Serves decode steps only (one new column per forward, already counted in the window by
    :meth:`KVBatch.step_inputs`); ``keys`` and ``values`` are views of the live window.
    """

    is_sliding = False

    def __init__(
        self, window: _Window, key_buffer: torch.Tensor, value_buffer: torch.Tensor, sliding_window: int | None = None
    ) -> None:
        super().__init__()
        self.window = window
        if sliding_window is not None:  # the model's mask applies the window; the buffers keep every column
            self.is_sliding = True
            self.sliding_window = sliding_window
        self.key_buffer = key_buffer
        self.value_buffer = value_buffer
        self.device = key_buffer.device
        self.is_initialized = True
        self.refresh()

    def refresh(self) -> None:
        """Point ``keys`` and ``values`` at the current window."""
        w = self.window
        self.keys = self.key_buffer[: w.rows, :, w.start : w.end]
        self.values = self.value_buffer[: w.rows, :, w.start : w.end]

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Nothing to do: the buffers exist before the first forward."""

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.window
        new = key_states.shape[-2]
        self.key_buffer[: w.rows, :, w.end - new : w.end] = key_states
        self.value_buffer[: w.rows, :, w.end - new : w.end] = value_states
        self.refresh()
        return cast(torch.Tensor, self.keys), cast(torch.Tensor, self.values)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.window.end - self.window.start, 0

    def get_seq_length(self) -> int:
        """Columns before the step's own (which :meth:`KVBatch.step_inputs` has already opened)."""
        return self.window.end - self.window.start - 1

    def get_max_length(self) -> int:
        return -1


class SlotCache(Cache):
    """The model-facing cache of a :class:`KVBatch` (one :class:`SlotLayer` per model layer)."""

    def __init__(self, layers: list[SlotLayer]) -> None:
        super().__init__(layers=list(layers))


def _layout(width: int) -> tuple[int, int]:
    """Spare columns left of a ``width``-column window, and the column capacity around it.

    A quarter of the width to the left (for longer prompts joining) and half of it plus a margin to the
    right (for the steps to come), so a relayout copies the window at most once per ``width // 2 + 64``
    steps: under two columns per step, against the whole cache per step for a concatenating cache.
    """
    left = width // 4
    capacity = left + width + width // 2 + _COLUMN_QUANTUM
    return left, -(-capacity // _COLUMN_QUANTUM) * _COLUMN_QUANTUM


class KVBatch:
    """Cache, attention mask and per-row lengths of the rows decoding together."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cache: Cache | None = None
        self.lengths: list[int] = []  # real tokens per row (also the next token's position)
        self.relayouts = 0  # times the live window was copied into new buffers (growth, compaction)
        self._window = _Window()
        self._keys: list[torch.Tensor] = []  # per layer [row slots, heads, columns, head dim]
        self._values: list[torch.Tensor] = []
        self._mask = torch.zeros((0, 0), dtype=torch.bool, device=device)  # [row slots, columns]
        self.serial: SerialRow | None = None  # a row decoding alone (its model's cache does not merge)

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def columns(self) -> int:
        return int(self.mask.shape[1])

    @property
    def mask(self) -> torch.Tensor:
        """The live attention mask [rows, columns] (True on real tokens)."""
        if self.serial is not None:
            return torch.ones((1, self.serial.length), dtype=torch.bool, device=self.device)
        w = self._window
        return self._mask[: w.rows, w.start : w.end]

    @property
    def buffers(self) -> list[torch.Tensor]:
        """The per-layer key and value buffers (for tests: their storage stays put across joins and leaves)."""
        return [*self._keys, *self._values]

    def add_serial(self, row: SerialRow) -> None:
        """Hold the one row that decodes alone (the batch must be empty)."""
        if self.lengths:
            raise ValueError("a row that cannot be merged decodes alone")
        self.serial, self.cache, self.lengths = row, None, [row.length]

    def add(self, cache: Cache, length: int) -> None:
        """Append a row whose (solo, unpadded) cache holds ``length`` tokens.

        Raises ValueError for a cache that does not merge (:func:`is_mergeable`), a row decoding alone, or
        a cache shaped unlike the batch's; a failed merge leaves the rows already here as they were (nothing
        is counted before the copy)."""
        if self.serial is not None:
            raise ValueError("a row that cannot be merged decodes alone")
        reason = unmergeable_reason(cache)
        if reason is not None:
            raise ValueError(f"this cache cannot be merged: {reason[1]}")
        layers = cast(list[DynamicLayer], cache.layers)
        if self.cache is not None and len(layers) != len(self._keys):
            raise ValueError(f"a cache of {len(layers)} layers cannot join a batch of {len(self._keys)}")
        if self.cache is None:
            self._allocate(layers, length)
        w = self._window
        width = max(w.end - w.start, length)
        if w.rows == self._keys[0].shape[0] or length > w.end:
            self._relayout(rows=w.rows + 1, width=width)
        slot = w.rows
        for buffer, source in zip([*self._keys, *self._values], _tensors(layers), strict=True):
            held = min(source.shape[-2], length)  # a sliding layer holds at most its window's last keys
            buffer[slot, :, w.end - held : w.end] = source[0, :, source.shape[-2] - held :]
        self._mask[slot] = False
        self._mask[slot, w.end - length : w.end] = True
        w.rows += 1
        w.start = w.end - width
        self.lengths.append(length)
        self._refresh()

    def remove(self, rows: list[int]) -> list[int]:
        """Drop ``rows``; each freed slot takes the last row. Returns the old indices in their new order."""
        gone = set(rows)
        size = len(self.lengths) - len(gone)
        tail = [r for r in range(size, len(self.lengths)) if r not in gone]  # as many as the holes below size
        order = [tail.pop() if r in gone else r for r in range(size)]
        self.keep(order)
        return order

    def keep(self, rows: list[int]) -> None:
        """Keep only ``rows`` (in this order), then drop columns that are padding in every row left.

        Only rows that change slot are copied; :meth:`remove` chooses an order that moves at most one row
        per row removed.
        """
        if not rows:
            self._clear()
            return
        if self.serial is not None:
            assert rows == [0], "a row decoding alone is the only row"
            return
        moves = [(new, old) for new, old in enumerate(rows) if new != old]
        w = self._window
        if moves:
            new = torch.tensor([m[0] for m in moves], device=self.device)
            old = torch.tensor([m[1] for m in moves], device=self.device)
            for buffer in self.buffers:
                live = buffer[:, :, w.start : w.end]
                live.index_copy_(0, new, live.index_select(0, old))
            self._mask.index_copy_(0, new, self._mask.index_select(0, old))
        self.lengths = [self.lengths[r] for r in rows]
        w.rows = len(rows)
        w.start = w.end - max(self.lengths)
        self._refresh()

    def step_inputs(self, last_ids: list[int]) -> dict[str, object]:
        """Model kwargs for one decode step feeding each row its last token (its column is opened here)."""
        if self.serial is not None:
            self.lengths = [self.lengths[0] + 1]
            return self.serial.step_inputs(last_ids[0])
        positions = torch.tensor(self.lengths, device=self.device).unsqueeze(1)
        self.lengths = [n + 1 for n in self.lengths]
        w = self._window
        if w.end == self._keys[0].shape[2]:
            self._relayout(rows=w.rows, width=w.end - w.start + 1)
        self._mask[: w.rows, w.end] = True
        w.end += 1
        self._refresh()
        return {
            "input_ids": torch.tensor(last_ids, device=self.device).unsqueeze(1),
            "attention_mask": self.mask,
            "position_ids": positions,
            "cache": self.cache,
            "use_cache": True,
        }

    # --- layout ---

    def after_step(self, output: Any) -> None:
        """Take the step's output where a row decoding alone needs it (a new state); merged rows need nothing."""
        if self.serial is not None:
            self.serial.after(output)

    def _allocate(self, layers: list[DynamicLayer], length: int) -> None:
        """Empty buffers shaped after the first row's cache, for one row of ``length`` tokens."""
        left, capacity = _layout(length)
        self._keys = [_empty_like(k, 1, capacity) for k, _ in _pairs(layers)]
        self._values = [_empty_like(v, 1, capacity) for _, v in _pairs(layers)]
        self._mask = torch.zeros((1, capacity), dtype=torch.bool, device=self.device)
        self._window = _Window(rows=0, start=left + length, end=left + length)
        windows = [layer.sliding_window if isinstance(layer, DynamicSlidingWindowLayer) else None for layer in layers]
        self.cache = SlotCache(
            [
                SlotLayer(self._window, k, v, window)
                for k, v, window in zip(self._keys, self._values, windows, strict=True)
            ]
        )

    def _relayout(self, rows: int, width: int) -> None:
        """Copy the live window into new buffers with room for ``rows`` rows and a ``width``-column window.

        Row slots double when short; the window ends ``width`` columns after :func:`_layout`'s left margin.
        """
        w = self._window
        slots = self._keys[0].shape[0]
        while slots < rows:
            slots *= 2
        left, capacity = _layout(width)
        capacity = max(capacity, self._keys[0].shape[2])
        live = w.end - w.start
        start = left + width - live
        self._keys = [_moved(b, slots, capacity, w, start) for b in self._keys]
        self._values = [_moved(b, slots, capacity, w, start) for b in self._values]
        mask = torch.zeros((slots, capacity), dtype=torch.bool, device=self.device)
        mask[: w.rows, start : start + live] = self._mask[: w.rows, w.start : w.end]
        self._mask = mask
        w.start, w.end = start, start + live
        for layer, k, v in zip(self._layers(), self._keys, self._values, strict=True):
            layer.key_buffer, layer.value_buffer = k, v
        self.relayouts += 1

    def _refresh(self) -> None:
        for layer in self._layers():
            layer.refresh()

    def _layers(self) -> list[SlotLayer]:
        return cast(list[SlotLayer], self.cache.layers) if self.serial is None and self.cache else []

    def _clear(self) -> None:
        self.cache = None
        self.lengths = []
        self._window = _Window()
        self._keys, self._values = [], []
        self._mask = torch.zeros((0, 0), dtype=torch.bool, device=self.device)
        self.serial = None


def _pairs(layers: list[DynamicLayer]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(cast(torch.Tensor, layer.keys), cast(torch.Tensor, layer.values)) for layer in layers]


def _tensors(layers: list[DynamicLayer]) -> list[torch.Tensor]:
    """Every layer's keys, then every layer's values (the order of :attr:`KVBatch.buffers`)."""
    pairs = _pairs(layers)
    return [k for k, _ in pairs] + [v for _, v in pairs]


def _empty_like(tensor: torch.Tensor, slots: int, columns: int) -> torch.Tensor:
    """Zeroed ``[slots, heads, columns, dim]``: masked columns must hold finite values (0 x NaN is NaN)."""
    _, heads, _, dim = tensor.shape
    return torch.zeros((slots, heads, columns, dim), dtype=tensor.dtype, device=tensor.device)


def _moved(buffer: torch.Tensor, slots: int, columns: int, w: _Window, start: int) -> torch.Tensor:
    """A new buffer holding ``buffer``'s live window at columns ``[start, start + width)``."""
    new = _empty_like(buffer, slots, columns)
    new[: w.rows, :, start : start + w.end - w.start] = buffer[: w.rows, :, w.start : w.end]
    return new
