"""Choosing the next token: greedy, or temperature / top-k / top-p sampling from a per-request generator.

:func:`pick` does it for a whole decode batch at once, with each row's logprob and alternatives, and hands
the results to Python in one device-to-host transfer per step; :func:`choose` is the one-row reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

_MIN_TEMPERATURE = 1e-6
_NUCLEUS_CANDIDATES = 256


@dataclass(frozen=True)
class SamplingParams:
    """Everything that decides which tokens come out. ``temperature == 0`` means greedy."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)
    top_logprobs: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def filter_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Temperature, then top-k, then top-p (nucleus) on a 1-D or [batch, vocab] logits tensor."""
    # Shifted so the best token scores 0, and the temperature floored at a float32-safe value, so a tiny
    # temperature (5e-324 is valid input) behaves like greedy instead of dividing by zero into NaN.
    temperature = max(params.temperature, _MIN_TEMPERATURE)
    scores = (logits - logits.max(dim=-1, keepdim=True).values) / temperature
    if 0 < params.top_k < scores.shape[-1]:
        kth = torch.topk(scores, params.top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if params.top_p < 1.0:
        scores = scores.masked_fill(_outside_nucleus(scores, params.top_p), float("-inf"))
    return scores


def _outside_nucleus(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """True for tokens outside the smallest most-likely set whose probability reaches ``top_p``.

    Sorting a whole vocabulary costs milliseconds per token; the nucleus almost always lies within the
    top few hundred tokens, so those are ranked first and the full sort is the fallback.
    """
    probs = torch.softmax(scores, dim=-1)
    candidates = min(_NUCLEUS_CANDIDATES, probs.shape[-1])
    if probs.device.type == "cpu":  # the shortcut's check reads a value back: free on a CPU, a sync elsewhere
        top, order = torch.topk(probs, candidates, dim=-1)
        if candidates < probs.shape[-1] and not bool((top.sum(dim=-1) >= top_p).all()):
            top, order = torch.sort(probs, descending=True, dim=-1)
    else:
        top, order = torch.sort(probs, descending=True, dim=-1)
    drop_sorted = top.cumsum(dim=-1) - top >= top_p  # the mass before a token already reaches top_p
    return torch.ones_like(probs, dtype=torch.bool).scatter(-1, order, drop_sorted)


def _draw(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
    """A sampled token id from a 1-D logits vector, as a 0-d tensor (nothing is read back to the host)."""
    probs = torch.softmax(filter_logits(logits.float(), params), dim=-1)
    # Inverse-CDF draw: one uniform number per token from the request's generator. torch.multinomial
    # gives the same distribution at ~20x the cost over a 50k vocabulary.
    cumulative = probs.double().cumsum(dim=-1)
    draw = torch.rand(1, generator=generator, dtype=torch.float64, device=probs.device) * cumulative[-1]
    return torch.searchsorted(cumulative, draw, right=True).clamp_max(probs.shape[-1] - 1)[0]


def choose(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """Pick one token id from a 1-D logits vector (the one-row reference for :func:`pick`)."""
    if params.greedy:
        return int(torch.argmax(logits))
    return int(_draw(logits, params, generator))


#: How one row of a batch samples: its parameters and its own seeded generator (``None`` when greedy).
Sampler = tuple[SamplingParams, torch.Generator | None]


@dataclass(frozen=True)
class Pick:
    """One row's next token as plain Python values: its id, its logprob, its ``top_logprobs`` alternatives."""

    id: int
    logprob: float
    top: list[tuple[int, float]]


def pick(logits: torch.Tensor, samplers: Sequence[Sampler]) -> list[Pick]:
    """Next tokens for every row of ``logits`` [rows, vocab], with logprobs and alternatives.

    Greedy rows share one argmax, sampled rows draw from their own generators (so a seeded request gives
    the same tokens alone or in any batch), logprobs come from one log_softmax and alternatives from one
    topk at the largest ``top_logprobs`` asked for; then everything crosses to the host in one transfer.
    """
    logits = logits.float()
    ids = torch.argmax(logits, dim=-1)
    for row, (params, generator) in enumerate(samplers):
        if not params.greedy:
            ids[row] = _draw(logits[row], params, generator)
    logprobs = torch.log_softmax(logits, dim=-1)
    columns = [ids.unsqueeze(1).double(), logprobs.gather(1, ids.unsqueeze(1)).double()]
    k = max(params.top_logprobs for params, _ in samplers)
    if k:
        values, indices = torch.topk(logprobs, k, dim=-1)
        columns += [indices.double(), values.double()]
    table = torch.cat(columns, dim=1).tolist()  # the step's one device-to-host transfer
    picks = []
    for (params, _), row in zip(samplers, table, strict=True):
        n = params.top_logprobs
        top = [(int(i), v) for i, v in zip(row[2 : 2 + n], row[2 + k : 2 + k + n], strict=True)]
        picks.append(Pick(int(row[0]), row[1], top))
    return picks
