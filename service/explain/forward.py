"""Model calls on input embeddings, keeping logits only where a target is predicted."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from service.explain.attention_rows import attention_rows
from service.explain.state import attention_capture
from service.models.facts import facts_of


def embedding_weight(model: PreTrainedModel) -> torch.Tensor:
    weight = model.get_input_embeddings().weight
    assert isinstance(weight, torch.Tensor)
    return weight


def embed_batch(model: PreTrainedModel, ids: torch.Tensor) -> torch.Tensor:
    """Embeddings of an id tensor, detached: attribution is at the embedding layer's output, like Captum's."""
    with torch.no_grad():
        out = model.get_input_embeddings()(ids)
    assert isinstance(out, torch.Tensor)
    return out.detach()


def embed(model: PreTrainedModel, ids: list[int] | tuple[int, ...]) -> torch.Tensor:
    """Input embeddings [T, d]."""
    return embed_batch(model, torch.tensor(list(ids), device=embedding_weight(model).device))


#: Per decoder layer (the model's own indices): [B, H, T, T] attention weights, None at a layer without them
#: (a hybrid's mamba, recurrent or linear-attention layers).
Attentions = tuple[torch.Tensor | None, ...]


@dataclass
class Outputs:
    logits: torch.Tensor  # [B, n, V] at the kept positions
    attentions: Attentions | None


def run(
    model: PreTrainedModel,
    embeds: torch.Tensor,
    keep: torch.Tensor,
    *,
    attentions: bool = False,
    queries: Sequence[int] | None = None,
) -> Outputs:
    """One forward over [B, T, d] embeddings; ``keep`` is [n] positions or [B, n] per-row positions.

    With ``attentions``, the weights come from hooks on the modules transformers declares
    (``_can_record_outputs``) or, for families that declare none (bloom, falcon, gpt_neo, mpt), from
    ``output_attentions=True``; either way indexed by decoder layer (see ``ModelFacts.attention``). With
    ``queries`` as well (the model on a ``glassbox_rows_*`` implementation, see ``attention_rows``), each layer's
    weights are only those rows: [B, H, len(queries), T].
    """
    if not attentions:
        out = model(inputs_embeds=embeds, logits_to_keep=keep, use_cache=False)
        return Outputs(out.logits, None)
    facts = facts_of(model)
    capture = facts.attention
    if capture is None:  # the planner refuses attention methods on such models first
        raise RuntimeError(f"no attention weights to capture: {facts.attention_reason}")
    if queries is not None:
        with attention_rows(queries, embeds.device) as captured:
            out = model(inputs_embeds=embeds, logits_to_keep=keep, use_cache=False)
        if len(captured) != len(capture.layers):
            raise RuntimeError(f"captured {len(captured)} row sets for {len(capture.layers)} attention layers")
        weights = dict(zip(capture.layers, captured, strict=True))
    elif capture.how == "flag":
        out = model(inputs_embeds=embeds, logits_to_keep=keep, use_cache=False, output_attentions=True)
        weights = {i: out.attentions[i] for i in capture.layers}
    else:
        with attention_capture(model) as captured:
            out = model(inputs_embeds=embeds, logits_to_keep=keep, use_cache=False)
        if len(captured) != len(capture.layers):
            raise RuntimeError(f"captured {len(captured)} attention tensors for {len(capture.layers)} attention layers")
        weights = dict(zip(capture.layers, captured, strict=True))
    return Outputs(out.logits, tuple(weights.get(i) for i in range(facts.layers)))


def query_rows(weights: torch.Tensor, queries: Sequence[int], kept: Sequence[int] | None) -> torch.Tensor:
    """``weights[..., queries, :]`` of one layer's [..., Q, T] weights, whether the forward kept every query row
    (``kept`` None) or only the rows at positions ``kept``."""
    if kept is None:
        return weights[..., list(queries), :]
    index = {q: i for i, q in enumerate(kept)}
    return weights[..., [index[q] for q in queries], :]


def predicting(positions: list[int] | tuple[int, ...] | range, device: torch.device) -> torch.Tensor:
    """Positions whose logits predict the tokens at ``positions``."""
    return torch.tensor([p - 1 for p in positions], device=device, dtype=torch.long)


def batched_input_grads(
    outputs: torch.Tensor, leaf: torch.Tensor, vectors: torch.Tensor, *, keep_graph: bool = True
) -> torch.Tensor:
    """Vector-Jacobian products for several output weightings at once: [c, *leaf.shape].

    One reverse pass per vector would repeat the graph traversal; ``is_grads_batched`` vmaps it.
    """
    if vectors.shape[0] == 1:
        (grad,) = torch.autograd.grad(outputs, leaf, vectors[0], retain_graph=keep_graph)
        return grad.unsqueeze(0)
    (grad,) = torch.autograd.grad(outputs, leaf, vectors, retain_graph=keep_graph, is_grads_batched=True)
    return grad


def one_hot_rows(rows: range, count: int, batch: int, weights: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """[len(rows), batch, count] grad_outputs selecting one output column each (weighted per batch row)."""
    vectors = torch.zeros(len(rows), batch, count, device=like.device, dtype=like.dtype)
    for i, row in enumerate(rows):
        vectors[i, :, row] = 1.0 if weights is None else weights.to(like.dtype)
    return vectors
