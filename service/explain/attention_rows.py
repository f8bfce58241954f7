"""Attention weights of a few query rows without any T×T matrix: the model runs on its memory-efficient
attention and each layer's weights are recomputed for the rows an explanation shows (as AT2 does).

The ``attention`` method reads only the rows of the positions that predict the explained tokens, so asking for
64 answer tokens over an 8k prompt costs O(layers × heads × 64 × 8k) instead of the O(layers × heads × 8k²)
that eager attention keeps. It works through transformers' attention interface: an attention function of ours
(registered as ``glassbox_rows``) calls the SDPA kernel for the layer's output and computes, from the same
queries and keys, softmax(q_rows · kᵀ · scaling + mask) for the rows. Rollout
and gradient-weighted attention multiply whole matrices, so they keep eager attention (``full``).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from service.models.facts import ModelFacts

#: How the shared forward gets attention weights: not at all, the needed rows only, or every full matrix.
AttentionMode = Literal["none", "rows", "full"]

ROWS = "glassbox_rows"


@dataclass
class _Rows:
    queries: torch.Tensor  # [Q] query positions
    captured: list[torch.Tensor] = field(default_factory=list)  # per attention layer [B, H, Q, T], float32


_ACTIVE: ContextVar[_Rows | None] = ContextVar("glassbox_attention_rows", default=None)


def queries_of(rows: Sequence[int], span: tuple[int, int], scopes: Collection[str]) -> tuple[int, ...]:
    """Query positions whose attention rows an explanation shows: the position before each explained token
    (tokens scope) and before each token of the span (sequence scope)."""
    wanted: set[int] = set()
    if "tokens" in scopes:
        wanted.update(r - 1 for r in rows)
    if "sequence" in scopes:
        wanted.update(range(span[0] - 1, span[1] - 1))
    return tuple(sorted(wanted))


def rows_supported(facts: ModelFacts) -> bool:
    """Families whose attention modules go through transformers' attention interface on SDPA; the others
    (bloom, falcon, gpt_neo, mpt, Gemma 2's soft-capping) return weights only from eager attention."""
    return facts.attention_rows


def _row_weights(
    query: torch.Tensor,
    key: torch.Tensor,
    mask: torch.Tensor | None,
    queries: torch.Tensor,
    scaling: float | None,
    softcap: float | None,
    sinks: torch.Tensor | None,
) -> torch.Tensor:
    """softmax(q_rows · kᵀ · scaling (+ softcap) + mask) in float32 for the query rows: [B, H, Q, T]."""
    groups = query.shape[1] // key.shape[1]
    keys = key.float().repeat_interleave(groups, dim=1) if groups > 1 else key.float()
    q = query[:, :, queries].float()
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    scores = (q @ keys.transpose(-1, -2)) * scale
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    length = key.shape[2]
    if mask is None:  # the kernel was told is_causal
        causal = torch.arange(length, device=key.device)[None, :] <= queries[:, None]
        scores = scores.masked_fill(~causal, float("-inf"))
    elif mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask[:, :, queries, :length], float("-inf"))
    else:
        scores = scores + mask[:, :, queries, :length].float()
    if sinks is None:
        return scores.softmax(-1)
    sink = sinks.float().reshape(1, -1, 1, 1).expand(scores.shape[0], -1, scores.shape[2], 1)
    return torch.cat([scores, sink], dim=-1).softmax(-1)[..., :-1]


def _attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """SDPA's output; the active rows' weights on the side."""
    out, _ = ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, attention_mask, **kwargs)
    active = _ACTIVE.get()
    if active is not None:
        with torch.no_grad():
            rows = _row_weights(
                query,
                key,
                attention_mask,
                active.queries,
                kwargs.get("scaling"),
                kwargs.get("softcap"),
                kwargs.get("s_aux"),
            )
        active.captured.append(rows)
    return out, None


AttentionInterface.register(ROWS, _attention)
AttentionMaskInterface.register(ROWS, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])


@contextmanager
def attention_rows(queries: Sequence[int], device: torch.device) -> Iterator[list[torch.Tensor]]:
    """Inside the block, forwards on a ``glassbox_rows_*`` implementation capture each attention layer's weights
    for ``queries`` (in call order, [B, H, Q, T])."""
    active = _Rows(torch.tensor(list(queries), device=device, dtype=torch.long))
    token = _ACTIVE.set(active)
    try:
        yield active.captured
    finally:
        _ACTIVE.reset(token)
