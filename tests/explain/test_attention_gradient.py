"""Gradient-weighted attention against a direct, slow implementation of Chefer et al.'s rule (float64)."""

from __future__ import annotations

import numpy as np
import torch

from service.explain import engine
from service.explain.checkpoint import NO_CHECKPOINT
from service.explain.state import attention_capture, explaining
from tests.explain.conftest import make_task


def _relevance_matrix(model, ids, score) -> torch.Tensor:
    """The full [T, T] matrix R = (I + Ā_L)⋯(I + Ā_1) for the scalar ``score(logprobs)``, one layer at a time."""
    with explaining(model, attention="full", checkpoint=NO_CHECKPOINT):
        leaf = model.get_input_embeddings()(torch.tensor([ids])).detach().requires_grad_(True)
        with attention_capture(model) as atts:
            logits = model(inputs_embeds=leaf, use_cache=False).logits
        value = score(torch.log_softmax(logits[0].double(), -1))
        grads = torch.autograd.grad(value, list(atts))
    size = len(ids)
    r = torch.eye(size, dtype=torch.float64)
    for a, g in zip(atts, grads, strict=True):
        heads = [(g[0, h] * a[0, h].detach()).clamp(min=0) for h in range(a.shape[1])]
        bar = sum(heads) / len(heads)
        r = r + bar.double() @ r
    return r


def test_attention_gradient_equals_the_published_rule(model, ids):
    task = make_task(ids, {"attention_gradient": None})
    out = engine.explain(model, task).outputs["attention_gradient"]
    assert out.tokens is not None and out.sequence is not None
    for i, t in enumerate(task.rows):
        r = _relevance_matrix(model, ids, lambda lp, t=t: lp[t - 1, ids[t]])
        np.testing.assert_allclose(out.tokens[i], r[t - 1].numpy(), rtol=1e-5, atol=1e-6)
    start, end = task.span
    r = _relevance_matrix(model, ids, lambda lp: sum(lp[p - 1, ids[p]] for p in range(start, end)))
    np.testing.assert_allclose(out.sequence, r[start - 1 : end - 1, :start].mean(0).numpy(), rtol=1e-5, atol=1e-6)
    assert (out.tokens >= 0).all()


def test_attention_gradient_is_the_same_in_any_chunking(model, ids):
    from service.explain.task import Chunks

    one = engine.explain(model, make_task(ids, {"attention_gradient": None}, chunks=Chunks(targets=1)))
    five = engine.explain(model, make_task(ids, {"attention_gradient": None}, chunks=Chunks(targets=5)))
    a, b = one.outputs["attention_gradient"].tokens, five.outputs["attention_gradient"].tokens
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
