"""Faithfulness evaluation (`evaluate.faithfulness`): comprehensiveness and sufficiency against a direct
computation (delete the units, run the model on the shorter ids, compare log-probabilities), seeded random
sets reproducible, the cost counted, bad options a 422."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from schemas.common import ChatMessage
from schemas.explain import ExplainOptions
from service.engine.continuation import tokenize_continuation
from service.engine.prompt import build_prompt
from service.errors import BudgetExceeded
from service.explain import faithfulness
from service.explain.engine import explain, total_units
from service.explain.faithfulness import FaithfulnessParams
from service.explain.options import AttentionParams, LogitLensParams
from service.explain.task import Chunks
from service.usecases.explain import plan_for
from tests.explain.conftest import make_task

CHAT = [{"role": "user", "content": "What is the capital of France? The Eiffel Tower is in Paris."}]
PARAMS = FaithfulnessParams(k=(0.2, 0.5, 1.0), random=3, seed=0)


def _span_logprob(model, ids: list[int], span: range) -> float:
    """log p(span tokens) by a plain forward over ``ids`` (span positions index ``ids``)."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    lps = torch.log_softmax(logits, -1)
    return float(sum(lps[t - 1, ids[t]] for t in span))


def _delete(model, ids: tuple[int, ...], span: tuple[int, int], drop: set[int], pad: int = 0) -> float:
    """log p(span) with ``drop`` deleted; a pad token leads when nothing would be left before the span."""
    short = [tok for p, tok in enumerate(ids) if p not in drop]
    shift = len(drop)
    if shift >= span[0]:
        short, shift = [pad, *short], shift - 1
    return _span_logprob(model, short, range(span[0] - shift, span[1] - shift))


def _direct(model, task, scores: np.ndarray, k: tuple[float, ...]) -> tuple[list[float], list[float]]:
    units = [u for u in task.units if max(u) < task.span[0]]
    order = list(np.argsort(-scores, kind="stable"))
    base = _span_logprob(model, list(task.ids), range(*task.span))
    comp, suff = [], []
    for f in k:
        n = max(1, math.ceil(f * len(units) - 1e-9))
        top = {p for u in order[:n] for p in units[u]}
        rest = {p for u in order[n:] for p in units[u]}
        comp.append(base - _delete(model, task.ids, task.span, top))
        suff.append(base - _delete(model, task.ids, task.span, rest))
    return comp, suff


@pytest.mark.parametrize(
    ("method", "options"), [("input_x_gradient", None), ("occlusion", None), ("attention", AttentionParams())]
)
def test_comprehensiveness_and_sufficiency_equal_direct_deletion(model, ids, method, options):
    # whole units of two tokens, so deleting a unit removes both; positions 0 and 1 are no unit (they stay)
    units = (*((p, p + 1) for p in range(2, 9, 2)), (9,), (10,), (11,), (12,), (13,))
    task = make_task(ids, {method: options}, units=units, span=(10, 14), rows=(10, 11, 12, 13), evaluate=PARAMS)
    result = explain(model, task)
    figures = result.evaluations[method]
    out = result.outputs[method]
    seq_units = faithfulness.sequence_units(task)
    assert len(seq_units) == 5  # four pairs and (9,)
    scores = out.sequence if out.over_units else np.array([out.sequence[list(u)].sum() for u in seq_units])
    comp, suff = _direct(model, task, scores[: len(seq_units)], PARAMS.k)
    # eager attention (switched on for attention weights) takes its softmax in float32
    tol = 1e-6 if method == "attention" else 1e-9
    assert figures["comprehensiveness"] == pytest.approx(comp, abs=tol)
    assert figures["sufficiency"] == pytest.approx(suff, abs=tol)
    assert figures["removed"] == [1, 3, 5]
    assert figures["removal"] == "delete"
    assert figures["base_logprob"] == pytest.approx(_span_logprob(model, list(ids), range(10, 14)), abs=tol)
    # with every unit removed the method and random agree; keeping every unit changes nothing
    assert figures["random_comprehensiveness"][-1] == pytest.approx(comp[-1], abs=tol)
    assert figures["sufficiency"][-1] == pytest.approx(0.0, abs=1e-12)
    assert figures["aopc"] == pytest.approx(np.mean(comp), abs=tol)
    assert figures["beats_random"] == (figures["aopc"] > figures["random_aopc"])


def test_random_sets_are_seeded_and_equal_direct_deletion(model, ids):
    task = make_task(ids, {"saliency": None}, evaluate=PARAMS, scopes=frozenset({"sequence"}))
    first = explain(model, task).evaluations["saliency"]
    again = explain(model, task).evaluations["saliency"]
    assert first["random_comprehensiveness"] == again["random_comprehensiveness"]
    assert first["random_sufficiency"] == again["random_sufficiency"]
    other = explain(model, make_task(ids, {"saliency": None}, evaluate=FaithfulnessParams(PARAMS.k, 3, 1))).evaluations
    assert other["saliency"]["random_comprehensiveness"][:2] != first["random_comprehensiveness"][:2]
    # each random ranking is one seeded permutation of the units; their mean is what is reported
    units = faithfulness.sequence_units(task)
    orders = faithfulness.random_rankings(len(units), 3, 0)
    direct = np.mean([_direct(model, task, -np.argsort(order).astype(float), PARAMS.k)[0] for order in orders], 0)
    assert first["random_comprehensiveness"] == pytest.approx(direct.tolist(), abs=1e-9)


@pytest.mark.parametrize("sequences", [1, 3, 16])
def test_batched_masked_forwards_equal_one_at_a_time(model, ids, sequences):
    reference = explain(model, make_task(ids, {"occlusion": None}, evaluate=PARAMS)).evaluations["occlusion"]
    chunks = Chunks(targets=3, steps=3, sequences=sequences)
    batched = explain(model, make_task(ids, {"occlusion": None}, evaluate=PARAMS, chunks=chunks)).evaluations
    for key in ("comprehensiveness", "sufficiency", "random_comprehensiveness", "random_sufficiency"):
        assert batched["occlusion"][key] == pytest.approx(reference[key], abs=1e-9)


def test_tokens_scope_ranks_by_rows_summed_and_logit_lens_is_skipped(model, ids):
    task = make_task(ids, {"input_x_gradient": None, "logit_lens": LogitLensParams(top_k=1)}, evaluate=PARAMS)
    tokens_only = make_task(
        ids, {"input_x_gradient": None}, evaluate=PARAMS, scopes=frozenset({"tokens"}), rows=tuple(range(9, 14))
    )
    both = explain(model, task)
    assert "skipped" in both.evaluations["logit_lens"]
    rows = explain(model, tokens_only)
    out = rows.outputs["input_x_gradient"]
    comp, _ = _direct(model, tokens_only, out.tokens.sum(0)[:9], PARAMS.k)
    assert rows.evaluations["input_x_gradient"]["comprehensiveness"] == pytest.approx(comp, abs=1e-9)
    assert "summed over the rows" in rows.evaluations["input_x_gradient"]["ranking"]


def test_units_of_work_and_forwards_are_counted(model, ids):
    task = make_task(ids, {"occlusion": None, "saliency": None}, evaluate=PARAMS)
    result = explain(model, task)
    # 9 token units: counts 2, 5, 9 -> the whole input, all deleted, and 2 per count below 9 per ranking
    inputs = faithfulness.planned_inputs(PARAMS, task.methods, 9)
    assert inputs == 1 + 1 + 2 * 2 * (2 + 3)
    assert result.units <= total_units(task)
    assert result.evaluations["occlusion"]["forwards"] <= 1 + 1 + 2 * 2 * (1 + 3)


def _request(lm, evaluate=None, **options):
    body = {"methods": ["input_x_gradient", "occlusion"], "granularity": "word", **options}
    if evaluate is not None:
        body["evaluate"] = evaluate
    opts = ExplainOptions.model_validate(body)
    prompt = build_prompt(lm.tokenizer, messages=[ChatMessage(role="user", content=CHAT[0]["content"])])
    answer = tokenize_continuation(lm.tokenizer, "Paris is nice.", "target", after=prompt.text)
    return prompt, answer, opts


def test_the_cost_model_charges_the_masked_forwards(lm, explain_settings):
    prompt, answer, plain = _request(lm)
    _, _, evaluated = _request(lm, {"faithfulness": {"k": [0.1, 0.5], "random": 2}})
    without = plan_for(lm, explain_settings, prompt, answer, None, plain)
    with_eval = plan_for(lm, explain_settings, prompt, answer, None, evaluated)
    units = without.sequence_units
    counts = faithfulness.counts((0.1, 0.5), units)
    inputs = 1 + 2 * len(set(counts)) * (2 + 2)
    assert with_eval.work - without.work == inputs * (len(prompt) + len(answer.ids))
    assert with_eval.estimate_s > without.estimate_s
    tight = explain_settings.model_copy(update={"explain_max_work": without.work})
    plan_for(lm, tight, prompt, answer, None, plain)
    with pytest.raises(BudgetExceeded):
        plan_for(lm, tight, prompt, answer, None, evaluated)


def test_through_the_api_equals_direct_deletion_over_words(client, lm):
    body = {
        "messages": CHAT,
        "target": "Paris is nice.",
        "methods": ["occlusion", "logit_lens"],
        "granularity": "word",
        "precision": None,
        "evaluate": {"faithfulness": {"k": [0.2, 0.5], "random": 2, "seed": 7}},
    }
    r = client.post("/explain", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    f = out["methods"]["occlusion"]["evaluation"]["faithfulness"]
    assert out["methods"]["logit_lens"]["evaluation"]["skipped"]
    assert f["removal"] == "delete" and f["k"] == [0.2, 0.5] and f["seed"] == 7
    assert isinstance(f["beats_random"], bool) and f["forwards"] >= 1 + 2 * 2
    prompt_ids = [t["id"] for t in out["prompt_tokens"]]
    target_ids = [t["id"] for t in out["target_tokens"]]
    ids = prompt_ids + target_ids
    span = range(len(prompt_ids), len(ids))
    sources = out["sources"][: out["sequence_sources"]]
    scores = np.array(out["methods"]["occlusion"]["sequence"]["data"])
    order = np.argsort(-scores, kind="stable")
    base = _span_logprob(lm.model, ids, span)
    assert f["base_logprob"] == pytest.approx(base, abs=1e-4)
    for i, k in enumerate(f["k"]):
        n = max(1, math.ceil(k * len(sources) - 1e-9))
        drop = {t for u in order[:n] for t in sources[u]["tokens"]}
        short = [tok for p, tok in enumerate(ids) if p not in drop]
        expected = base - _span_logprob(lm.model, short, range(span.start - len(drop), span.stop - len(drop)))
        assert f["comprehensiveness"][i] == pytest.approx(expected, abs=1e-4)
    assert "Deleting its top 20%" in out["summary"]


@pytest.mark.parametrize(
    ("faith", "param"),
    [
        ({"k": [0]}, "evaluate.faithfulness.k.0"),
        ({"k": [0.2, 1.5]}, "evaluate.faithfulness.k.1"),
        ({"k": []}, "evaluate.faithfulness.k"),
        ({"k": [0.2, 0.2]}, "evaluate.faithfulness"),
        ({"k": [-0.1]}, "evaluate.faithfulness.k.0"),
        ({"random": -1}, "evaluate.faithfulness.random"),
        ({"seed": -1}, "evaluate.faithfulness.seed"),
        ({"kk": [0.2]}, "evaluate.faithfulness.kk"),
    ],
)
def test_bad_faithfulness_options_are_a_422(client, faith, param):
    r = client.post("/explain", json={"messages": CHAT, "target": "Paris", "evaluate": {"faithfulness": faith}})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["param"] == param


class _Recorder:
    """A checkpoint that records progress and can stop the work at the first faithfulness batch."""

    pause = None

    def __init__(self, stop_in: str | None = None) -> None:
        self.phases: list[tuple[int, int, str]] = []
        self.stop_in = stop_in

    def __call__(self, interleave: bool = True) -> None:
        if self.stop_in is not None and self.phases and self.phases[-1][2] == self.stop_in:
            raise TimeoutError("stopped")

    def progress(self, done: int, total: int, phase: str) -> None:
        self.phases.append((done, total, phase))


def test_masked_forwards_run_in_bounded_units_the_scheduler_can_stop(model, ids):
    chunks = Chunks(targets=3, steps=3, sequences=4)
    task = make_task(ids, {"occlusion": None, "saliency": None}, evaluate=PARAMS, chunks=chunks)
    recorder = _Recorder()
    result = explain(model, task, recorder)
    batches = sum(1 for *_, phase in recorder.phases if phase == "faithfulness")
    assert batches >= math.ceil((1 + 1 + 2 * 2 * 2) / 4)  # at least the two methods' own inputs
    assert batches <= faithfulness.units(task)
    plain = _Recorder()
    explain(model, make_task(ids, {"occlusion": None, "saliency": None}, chunks=chunks), plain)
    # the evaluation adds exactly the units it ran, to the units done and to the total planned
    assert result.units - plain.phases[-1][0] == batches
    assert recorder.phases[-1][1] - plain.phases[-1][1] == batches
    with pytest.raises(TimeoutError):
        explain(model, task, _Recorder(stop_in="faithfulness"))


def test_generate_and_the_cache_carry_the_evaluation(client):
    evaluate = {"faithfulness": {"k": [0.5], "random": 1}}
    r = client.post(
        "/generate",
        json={"messages": CHAT, "max_new_tokens": 3, "explain": {"methods": ["saliency"], "evaluate": evaluate}},
    )
    assert r.status_code == 200, r.text
    assert r.json()["explanation"]["methods"]["saliency"]["evaluation"]["faithfulness"]["k"] == [0.5]
    request = {"messages": CHAT, "target": "Paris", "methods": ["saliency"], "evaluate": evaluate}
    first, second = client.post("/explain", json=request), client.post("/explain", json=request)
    assert second.headers["x-cache"] == "hit"
    f1 = first.json()["methods"]["saliency"]["evaluation"]
    assert f1 == second.json()["methods"]["saliency"]["evaluation"]
    # a different evaluation is a different key
    other = client.post("/explain", json={**request, "evaluate": {"faithfulness": {"k": [0.5], "random": 2}}})
    assert other.headers["x-cache"] == "miss"
