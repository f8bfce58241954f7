"""The attributed function: log-probability (default), probability or logit of target tokens."""

from __future__ import annotations

import torch

from service.explain.task import Function

DESCRIPTIONS: dict[str, str] = {
    "logprob": "log-probability of each target token given everything before it",
    "prob": "probability of each target token given everything before it",
    "logit": "pre-softmax logit of each target token given everything before it",
}


def _wide(logits: torch.Tensor) -> torch.Tensor:
    """At least float32 for the softmax (half-precision logits lose the tail), never narrower than given."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def _pick(logits: torch.Tensor, ids: torch.Tensor, function: Function) -> torch.Tensor:
    """logits [B, n, V], ids [n] -> [B, n]."""
    index = ids.view(1, -1, 1).expand(logits.shape[0], -1, 1)
    if function == "logit":
        return _wide(logits).gather(-1, index).squeeze(-1)
    logprobs = torch.log_softmax(_wide(logits), dim=-1).gather(-1, index).squeeze(-1)
    return logprobs.exp() if function == "prob" else logprobs


def token_scores(
    logits: torch.Tensor, targets: torch.Tensor, function: Function, foils: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-target function values [B, n]; with foils, the difference target - foil ("why X rather than Y")."""
    scores = _pick(logits, targets, function)
    if foils is not None:
        scores = scores - _pick(logits, foils, function)
    return scores


def sequence_score(logits: torch.Tensor, targets: torch.Tensor, function: Function) -> torch.Tensor:
    """One value per batch row for a whole span: its log-probability, probability or summed logits."""
    if function == "logit":
        return _pick(logits, targets, "logit").sum(-1)
    total = _pick(logits, targets, "logprob").sum(-1)
    return total.exp() if function == "prob" else total


def logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return _pick(logits, targets, "logprob")
