"""Gradient checkpointing: the same scores with layers recomputed in backward, chosen by the planner only when
it is what brings the estimated peak under the memory budget, and a refusal when even that does not fit."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from schemas.common import ChatMessage
from schemas.explain import ExplainOptions
from service.engine.continuation import tokenize_continuation
from service.engine.prompt import build_prompt
from service.errors import BudgetExceeded
from service.explain.cost import ModelDims
from service.explain.engine import explain
from service.explain.options import AttentionParams, IntegratedGradientsParams
from service.explain.state import decoder_layers
from service.models.facts import facts_of
from service.usecases.explain import plan_for
from tests.explain.conftest import make_task

GRADIENT_METHODS = ("saliency", "input_x_gradient", "integrated_gradients", "attention_gradient")


def _methods() -> dict[str, object]:
    return {
        "saliency": None,
        "input_x_gradient": None,
        "integrated_gradients": IntegratedGradientsParams(n_steps=4),
        "attention_gradient": AttentionParams(),
    }


def test_recomputed_layers_give_the_same_scores(model, ids):
    counted = []
    handles = [layer.register_forward_hook(lambda *a: counted.append(1)) for layer in decoder_layers(model)]
    try:
        plain = explain(model, make_task(ids, _methods()))
        calls_plain = len(counted)
        counted.clear()
        recomputed = explain(model, make_task(ids, _methods(), recompute=True))
    finally:
        for handle in handles:
            handle.remove()
    assert len(counted) == calls_plain  # module hooks (ours: the scheduler's checkpoints) fire once per forward
    assert all("forward" not in vars(layer) for layer in decoder_layers(model))  # unwrapped afterwards
    for name in GRADIENT_METHODS:
        a, b = plain.outputs[name], recomputed.outputs[name]
        np.testing.assert_allclose(b.tokens, a.tokens, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(b.sequence, a.sequence, rtol=1e-10, atol=1e-12)


def test_recompute_actually_runs_the_layers_again_in_backward(model, ids):
    runs = []
    layer = decoder_layers(model)[0]
    original = type(layer).forward

    def counting(self, *args, **kwargs):
        runs.append(torch.is_grad_enabled())
        return original(self, *args, **kwargs)

    methods = {"saliency": None}
    type(layer).forward = counting
    try:
        explain(model, make_task(ids, methods, scopes=frozenset({"sequence"})))
        plain = len(runs)
        runs.clear()
        explain(model, make_task(ids, methods, scopes=frozenset({"sequence"}), recompute=True))
    finally:
        type(layer).forward = original
    # (the class's forward: every layer counts) the one backward pass ran each layer's forward once more
    assert plain == len(decoder_layers(model)) and len(runs) == 2 * plain


def _request(lm, words: int):
    prompt = build_prompt(lm.tokenizer, messages=[ChatMessage(role="user", content="The river runs. " * words)])
    answer = tokenize_continuation(lm.tokenizer, "Paris is nice.", "target", after=prompt.text)
    return prompt, answer, ExplainOptions.model_validate({"methods": ["input_x_gradient"], "scope": ["sequence"]})


def test_planner_recomputes_only_when_needed_and_refuses_what_never_fits(default_lm, default_settings):
    """On the default model (its tokenizer and dims; nothing runs): ~2k tokens fit without checkpointing in the
    default budget, need it in a budget between the two estimates, and are refused below both."""
    lm = default_lm
    settings = default_settings.model_copy(update={"explain_max_tokens": 8192})
    prompt, answer, options = _request(lm, 500)
    seq = len(prompt) + len(answer.ids)
    assert 1500 < seq < 4000
    dims = ModelDims.of(facts_of(lm.model))
    full = dims.graph_bytes(1, seq, len(answer.ids), False)
    light = dataclasses.replace(dims, recompute=True).graph_bytes(1, seq, len(answer.ids), False)
    assert light < full / 4
    roomy = plan_for(
        lm, settings.model_copy(update={"explain_memory_mb": 4 * full // 2**20}), prompt, answer, None, options
    )
    assert not roomy.task.recompute
    between = settings.model_copy(update={"explain_memory_mb": (full + light) // 2 // 2**20})
    tight = plan_for(lm, between, prompt, answer, None, options)
    assert tight.task.recompute and tight.work > roomy.work
    below = settings.model_copy(update={"explain_memory_mb": max(64, light // 2 // 2**20)})
    with pytest.raises(BudgetExceeded) as refused:
        plan_for(lm, below, prompt, answer, None, options)
    assert refused.value.code == "explain_memory_mb"


def test_attention_alone_at_the_full_context_is_not_charged_a_backward_graph(default_lm, default_settings):
    """Attention alone keeps no graph: at ~8k tokens the plan fits in 3 GiB (measured by make bench-long:
    ~2.3 GB of activations, linear in length), while the same request with saliency needs checkpointing
    there or is refused."""
    lm = default_lm
    settings = default_settings.model_copy(update={"explain_max_tokens": 8192, "explain_memory_mb": 3072})
    prompt, answer, _ = _request(lm, 2000)
    assert 7000 < len(prompt) + len(answer.ids) <= 8192
    alone = ExplainOptions.model_validate({"methods": ["attention"], "scope": ["tokens"]})
    plan = plan_for(lm, settings, prompt, answer, None, alone)
    assert not plan.task.recompute
    both = ExplainOptions.model_validate({"methods": ["attention", "saliency"], "scope": ["tokens"]})
    try:
        assert plan_for(lm, settings, prompt, answer, None, both).task.recompute
    except BudgetExceeded as refused:
        assert refused.code == "explain_memory_mb"
