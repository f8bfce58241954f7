"""Saliency and input × gradient against Captum on the same tokens, and the sharing/chunking invariants."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from service.explain.engine import explain
from service.explain.task import Chunks
from tests.explain import oracle
from tests.explain.conftest import make_task

GRADIENT = {"saliency": None, "input_x_gradient": None}


@pytest.mark.parametrize("function", ["logprob", "prob", "logit"])
def test_gradient_rows_match_captum(model, ids, function):
    task = make_task(ids, GRADIENT, function=function)
    out = explain(model, task).outputs
    x = oracle.embeds(model, ids)
    for i, t in enumerate(task.rows):
        fn = oracle.token_fn(model, ids, t, function)
        np.testing.assert_allclose(out["saliency"].tokens[i], oracle.saliency(fn, x).numpy(), rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(
            out["input_x_gradient"].tokens[i], oracle.input_x_gradient(fn, x).numpy(), rtol=1e-5, atol=1e-9
        )


@pytest.mark.parametrize("function", ["logprob", "prob", "logit"])
def test_gradient_sequence_matches_captum(model, ids, function):
    task = make_task(ids, GRADIENT, function=function, span=(10, 13), rows=(10, 11, 12))
    out = explain(model, task).outputs
    x = oracle.embeds(model, ids)
    fn = oracle.span_fn(model, ids, (10, 13), function)
    np.testing.assert_allclose(out["saliency"].sequence, oracle.saliency(fn, x)[:10].numpy(), rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(
        out["input_x_gradient"].sequence, oracle.input_x_gradient(fn, x)[:10].numpy(), rtol=1e-5, atol=1e-9
    )


def test_gradient_rows_respect_the_causal_mask(model, ids):
    out = explain(model, make_task(ids, GRADIENT)).outputs
    for i, t in enumerate(range(9, len(ids))):
        assert np.all(out["saliency"].tokens[i, t:] == 0)
        assert np.all(out["saliency"].tokens[i, :t] > 0)


@pytest.mark.parametrize("targets", [1, 2, 16])
def test_gradient_chunked_equals_unbatched(model, ids, targets):
    one = explain(model, make_task(ids, GRADIENT, chunks=Chunks(targets=1))).outputs
    many = explain(model, make_task(ids, GRADIENT, chunks=Chunks(targets=targets))).outputs
    for name in GRADIENT:
        np.testing.assert_allclose(many[name].tokens, one[name].tokens, rtol=1e-6, atol=1e-12)


def _swap_last(ids: tuple[int, ...], token: int) -> tuple[int, ...]:
    return (*ids[:-1], token)


def test_token_contrast_is_the_difference_of_single_attributions(model, ids):
    last = len(ids) - 1
    foil = (ids[-1] + 5) % 48
    single = {"rows": (last,), "span": (last, last + 1), "scopes": frozenset({"tokens"})}
    target = explain(model, make_task(ids, GRADIENT, **single)).outputs
    other = explain(model, make_task(_swap_last(ids, foil), GRADIENT, **single)).outputs
    contrast = explain(model, make_task(ids, GRADIENT, foils=(foil,), **single)).outputs
    np.testing.assert_allclose(
        contrast["input_x_gradient"].tokens[0][:last],
        target["input_x_gradient"].tokens[0][:last] - other["input_x_gradient"].tokens[0][:last],
        rtol=1e-5,
        atol=1e-9,
    )
    # saliency is not linear: it is the norm of the difference of gradients (Yin & Neubig, 2022)
    x = oracle.embeds(model, ids)
    reference = oracle.saliency(oracle.token_fn(model, ids, last, foil=foil), x)
    np.testing.assert_allclose(contrast["saliency"].tokens[0], reference.numpy(), rtol=1e-5, atol=1e-9)


def test_sequence_contrast_is_the_difference_of_single_attributions(model, ids):
    contrast_ids = (3, 4, 5)
    seq = {"span": (11, 14), "rows": (11, 12, 13), "scopes": frozenset({"sequence"})}
    target = explain(model, make_task(ids, GRADIENT, **seq)).outputs
    other = explain(model, make_task(ids[:11] + contrast_ids, GRADIENT, **seq)).outputs
    contrast = explain(model, make_task(ids, GRADIENT, contrast_ids=contrast_ids, **seq)).outputs
    np.testing.assert_allclose(
        contrast["input_x_gradient"].sequence,
        target["input_x_gradient"].sequence - other["input_x_gradient"].sequence,
        rtol=1e-5,
        atol=1e-9,
    )


def test_gradient_methods_share_one_set_of_passes(model, ids, monkeypatch):
    """Both methods together cost the backward passes of one: count autograd calls."""
    import service.explain.forward as fw

    calls = []
    real = fw.batched_input_grads

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(fw, "batched_input_grads", counting)
    task = make_task(ids, GRADIENT, scopes=frozenset({"tokens"}), chunks=Chunks(targets=2))
    explain(model, task)
    both = len(calls)
    calls.clear()
    explain(model, dataclasses.replace(task, methods={"saliency": None}))
    assert both == len(calls) == 3  # 5 rows in chunks of 2
