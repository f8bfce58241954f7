"""The shared KV cache of a decode batch: rows of different lengths, right-aligned, padding masked out.

Each row's keys are stored after its rotary embedding, so a row can sit at any column: what the model
needs is the attention mask (padding = 0) and each row's own position ids. Rows join after a solo
prefill (their cache is left-padded into the batch) and leave when they finish (columns that hold only
padding are trimmed), so the cache is never longer than its longest live row.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


def is_mergeable(cache: object) -> bool:
    """True for plain dynamic caches (full attention, tensors we can pad and concatenate)."""
    layers = getattr(cache, "layers", None) or []
    return isinstance(cache, DynamicCache) and bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


def _layers(cache: DynamicCache) -> list[DynamicLayer]:
    return cast(list[DynamicLayer], cache.layers)


def _kv(layer: DynamicLayer) -> tuple[torch.Tensor, torch.Tensor]:
    return cast(torch.Tensor, layer.keys), cast(torch.Tensor, layer.values)


def _pad_left(tensor: torch.Tensor, columns: int) -> torch.Tensor:
    """Pad dim -2 (sequence) of a [batch, heads, seq, dim] tensor with ``columns`` zeros on the left."""
    return F.pad(tensor, (0, 0, columns, 0)) if columns else tensor


class KVBatch:
    """Cache, attention mask and per-row lengths of the rows decoding together."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cache: DynamicCache | None = None
        self.mask = torch.zeros((0, 0), dtype=torch.long, device=device)  # [rows, columns]
        self.lengths: list[int] = []  # real tokens per row (also the next token's position)

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def columns(self) -> int:
        return int(self.mask.shape[1])

    def add(self, cache: DynamicCache, length: int) -> None:
        """Append a row whose (solo, unpadded) cache holds ``length`` tokens."""
        if self.cache is None or not self.lengths:
            self.cache = cache
            self.mask = torch.ones((1, length), dtype=torch.long, device=self.device)
            self.lengths = [length]
            return
        width = max(self.columns, length)
        grow, pad = width - self.columns, width - length
        for mine, theirs in zip(_layers(self.cache), _layers(cache), strict=True):
            (keys, values), (new_keys, new_values) = _kv(mine), _kv(theirs)
            mine.keys = torch.cat([_pad_left(keys, grow), _pad_left(new_keys, pad)], dim=0)
            mine.values = torch.cat([_pad_left(values, grow), _pad_left(new_values, pad)], dim=0)
        row = torch.zeros((1, width), dtype=torch.long, device=self.device)
        row[0, pad:] = 1
        self.mask = torch.cat([F.pad(self.mask, (grow, 0)), row], dim=0)
        self.lengths.append(length)

    def keep(self, rows: list[int]) -> None:
        """Keep only ``rows`` (in this order), then drop columns that are padding in every row left."""
        if not rows:
            self.cache = None
            self.mask = torch.zeros((0, 0), dtype=torch.long, device=self.device)
            self.lengths = []
            return
        assert self.cache is not None
        index = torch.tensor(rows, device=self.device)
        start = self.columns - max(self.lengths[r] for r in rows)
        for layer in _layers(self.cache):
            keys, values = _kv(layer)
            layer.keys = keys[index, :, start:]
            layer.values = values[index, :, start:]
        self.mask = self.mask[index, start:]
        self.lengths = [self.lengths[r] for r in rows]

    def step_inputs(self, last_ids: list[int]) -> dict[str, object]:
        """Model kwargs for one decode step feeding each row its last token."""
        rows = len(self.lengths)
        self.mask = torch.cat([self.mask, torch.ones((rows, 1), dtype=torch.long, device=self.device)], dim=1)
        positions = torch.tensor(self.lengths, device=self.device).unsqueeze(1)
        self.lengths = [n + 1 for n in self.lengths]
        return {
            "input_ids": torch.tensor(last_ids, device=self.device).unsqueeze(1),
            "attention_mask": self.mask,
            "position_ids": positions,
            "cache": self.cache,
            "use_cache": True,
        }
