"""No leaks on the shared warm model: attention implementation, gradient flags, hooks, generation output."""

from __future__ import annotations

import pytest
import torch

from schemas.common import ChatMessage
from schemas.explain import ExplainRequest
from service.engine.prompt import build_prompt
from service.engine.sampling import SamplingParams
from service.explain.engine import explain
from service.explain.methods import base
from service.explain.options import AttentionParams
from tests.explain.conftest import make_task
from tests.support.run import explain as run_explain
from tests.support.run import generate


def _state(model: torch.nn.Module) -> tuple:
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())
    return (
        model.config._attn_implementation,
        tuple(p.requires_grad for p in model.parameters()),
        any(p.grad is not None for p in model.parameters()),
        hooks,
        model.training,
        torch.is_grad_enabled(),
    )


def test_explain_leaves_the_model_as_it_found_it(model, ids):
    before = _state(model)
    methods = {"attention": AttentionParams(), "saliency": None, "occlusion": None}
    explain(model, make_task(ids, methods))
    assert _state(model) == before


def test_explain_restores_state_when_a_method_fails(model, ids, monkeypatch):
    before = _state(model)

    def boom(self, ctx, options):
        _ = ctx.forward  # fail mid-way, with eager attention on and a graph built
        raise RuntimeError("boom")

    monkeypatch.setattr(base.get("attention"), "run", boom.__get__(base.get("attention")))
    with pytest.raises(RuntimeError, match="boom"):
        explain(model, make_task(ids, {"attention": AttentionParams()}))
    assert _state(model) == before


def test_parameter_flags_are_restored_even_if_they_were_on(model, ids):
    first = next(model.parameters())
    first.requires_grad_(True)
    try:
        explain(model, make_task(ids, {"input_x_gradient": None}))
        assert first.requires_grad and first.grad is None
    finally:
        first.requires_grad_(False)


def test_generate_after_explain_is_bit_identical(lm, registry, explain_settings):
    prompt = build_prompt(lm.tokenizer, messages=[ChatMessage(role="user", content="What is the capital of France?")])
    params = SamplingParams(max_new_tokens=8, temperature=0.8, seed=3, top_logprobs=2)
    before = generate(lm, prompt, params)
    req = ExplainRequest(
        messages=[{"role": "user", "content": "What is the capital of France?"}],  # type: ignore[list-item]
        methods=["attention", "attention_rollout", "saliency", "input_x_gradient", "integrated_gradients", "occlusion"],
        max_new_tokens=4,
    )
    run_explain(registry, explain_settings, req)
    after = generate(lm, prompt, params)
    assert after.ids == before.ids
    assert [t.logprob for t in after.tokens] == [t.logprob for t in before.tokens]
    assert [t.top for t in after.tokens] == [t.top for t in before.tokens]
