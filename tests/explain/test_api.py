"""/explain through the app on a tiny model: the response contract, aggregation, and every validation error."""

from __future__ import annotations

import asyncio
import base64
import json

import numpy as np
import pytest

from schemas.explain import METHOD_NAMES, ExplainRequest
from service.errors import BudgetExceeded, InvalidRequest
from service.explain import methods
from service.usecases import explain as usecase
from tests.support.run import explain as run_explain

CHAT = [{"role": "user", "content": "What is the capital of France? The Eiffel Tower is in Paris."}]
ALL = list(METHOD_NAMES)
#: Methods that score layers, not sources: no `tokens` or `sequence` arrays.
LAYER_METHODS = {"logit_lens"}
#: Methods with one vector for the whole answer only (a counterfactual's ranking of the units).
SEQUENCE_ONLY = {"counterfactual"}


def _post(client, **body):
    return client.post("/explain", json=body)


def test_explain_target_returns_every_method_with_named_dims(client):
    r = _post(client, messages=CHAT, target="The capital of France is Paris.", methods=ALL)
    assert r.status_code == 200, r.text
    body = r.json()
    n_rows = len(body["target_tokens"])
    assert body["rows"] == list(range(n_rows)) and body["span"] == [0, n_rows]
    assert all(t["logprob"] < 0 for t in body["target_tokens"])
    for name in set(ALL) - LAYER_METHODS:
        result = body["methods"][name]
        assert result["sequence"]["shape"] == [body["sequence_sources"]]
        if name in SEQUENCE_ONLY:
            assert "tokens" not in result
            continue
        assert result["tokens"]["dims"] == ["target", "source"]
        assert result["tokens"]["shape"] == [n_rows, len(body["sources"])]
        assert result["sequence"]["shape"] == [body["sequence_sources"]]
    assert body["sequence_sources"] == sum(1 for s in body["sources"] if s["kind"] == "prompt")
    assert body["attributed"]["function"] == "logprob"
    assert "message 0" in body["summary"]
    prov = body["provenance"]
    assert prov["model"]["id"] == "tiny" and prov["dtype"] == "float32" and prov["device"] == "cpu"
    assert {"engine", "engine.forward", "engine.integrated_gradients"} <= set(prov["timings_ms"])
    # template and special tokens are not sources by default
    prompt_ids = {i for s in body["sources"] if s["kind"] == "prompt" for i in s["tokens"]}
    assert all(not body["prompt_tokens"][i]["template"] for i in prompt_ids)


def test_explain_without_target_explains_the_greedy_answer(client):
    generated = client.post("/generate", json={"messages": CHAT, "max_new_tokens": 6}).json()
    r = _post(client, messages=CHAT, max_new_tokens=6)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["text"] == generated["text"]
    assert [t["id"] for t in body["target_tokens"]] == [t["id"] for t in generated["tokens"]]
    for mine, theirs in zip(body["target_tokens"], generated["tokens"], strict=True):
        assert mine["logprob"] == pytest.approx(theirs["logprob"], abs=1e-4)


@pytest.mark.parametrize("granularity", ["word", "sentence", "message"])
def test_coarse_granularity_is_the_sum_of_token_scores(client, granularity):
    common = {"messages": CHAT, "target": "Paris is the capital.", "methods": ["input_x_gradient"], "precision": None}
    tokens = _post(client, **common).json()
    coarse = _post(client, **common, granularity=granularity).json()
    by_token = {(s["kind"], s["tokens"][0]): c for c, s in enumerate(tokens["sources"])}
    fine = np.array(tokens["methods"]["input_x_gradient"]["tokens"]["data"])
    grouped = np.array(coarse["methods"]["input_x_gradient"]["tokens"]["data"])
    for c, unit in enumerate(coarse["sources"]):
        columns = [by_token[(unit["kind"], i)] for i in unit["tokens"]]
        rows = [r for r, row in enumerate(coarse["rows"]) if unit["kind"] == "prompt" or max(unit["tokens"]) < row]
        np.testing.assert_allclose(grouped[rows, c], fine[rows][:, columns].sum(1), rtol=1e-5, atol=1e-7)
    seq_fine = np.array(tokens["methods"]["input_x_gradient"]["sequence"]["data"])
    seq = np.array(coarse["methods"]["input_x_gradient"]["sequence"]["data"])
    for c, unit in enumerate(coarse["sources"][: coarse["sequence_sources"]]):
        assert seq[c] == pytest.approx(sum(seq_fine[by_token[("prompt", i)]] for i in unit["tokens"]), abs=1e-6)


def test_segments_label_the_columns(client):
    r = _post(
        client,
        messages=CHAT,
        target="Paris",
        granularity="segments",
        segments=[{"text": "capital of France", "label": "question"}, {"start": 31, "end": 60, "message": 0}],
    )
    assert r.status_code == 200, r.text
    sources = r.json()["sources"]
    assert [s["label"] for s in sources] == ["question", CHAT[0]["content"][31:60]]


def test_contrast_reports_both_sides(client):
    r = _post(client, prompt="The Eiffel Tower is in", target=" Paris", contrast=" France", methods=["saliency"])
    assert r.status_code == 200, r.text
    attributed = r.json()["attributed"]
    assert attributed["contrast"] == " France" and "minus" in attributed["description"]
    assert attributed["contrast_tokens"][0]["logprob"] < 0


def test_options_shape_the_arrays(client):
    r = _post(
        client,
        prompt="The Eiffel Tower was designed by Gustave Eiffel",
        target=" in 1887.",
        methods=["attention"],
        attention={"reduce_heads": "none", "reduce_layers": "none", "layers": [-1]},
        scope=["tokens"],
        row_top_k=3,
        encoding="base64",
        binary_dtype="float16",
        normalize="l1",
    )
    assert r.status_code == 200, r.text
    array = r.json()["methods"]["attention"]["tokens"]
    assert array["dims"] == ["layer", "head", "target", "source"]
    layers, heads, rows, _ = array["shape"]
    values = np.frombuffer(base64.b64decode(array["data"]), dtype="<f2").reshape(layers, heads, rows, 3)
    assert np.all(np.abs(values).sum(-1) <= 1.001)
    assert "sequence" not in r.json()["methods"]["attention"]


def test_default_response_for_500_prompt_tokens_and_64_answer_tokens_is_well_under_1_mb(client, lm):
    prompt = " ".join(["The Eiffel Tower was designed by Gustave Eiffel and built in 1887."] * 60)
    n_prompt = len(lm.tokenizer(prompt)["input_ids"])
    assert n_prompt >= 500
    answer = " ".join(["Paris is the capital of France."] * 12)
    r = _post(client, prompt=lm.tokenizer.decode(lm.tokenizer(prompt)["input_ids"][:500]), target=answer)
    assert r.status_code == 200, r.text
    assert len(r.json()["target_tokens"]) >= 64
    assert len(r.content) < 700_000


# --- validation: every error names its field ------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"methods": ["shap"]}, "methods.0"),
        ({"methods": ["saliency", "saliency"]}, None),
        ({"scope": ["everything"]}, "scope.0"),
        ({"function": "entropy"}, "function"),
        ({"granularity": "segments"}, None),
        ({"segments": [{"text": "x"}]}, None),
        ({"granularity": "segments", "segments": [{"text": "x", "start": 1, "end": 2}]}, "segments.0"),
        ({"granularity": "segments", "segments": [{"start": 3, "end": 2}]}, "segments.0"),
        ({"target_span": {"start": 2, "end": 2}}, "target_span"),
        ({"target_span": {"start": -1}}, "target_span.start"),
        ({"normalize": "softmax"}, "normalize"),
        ({"row_top_k": 0}, "row_top_k"),
        ({"precision": 0}, "precision"),
        ({"encoding": "msgpack"}, "encoding"),
        ({"binary_dtype": "int8"}, "binary_dtype"),
        ({"attention": {"reduce_heads": "sum"}}, "attention.reduce_heads"),
        ({"attention": {"layers": []}}, "attention.layers"),
        ({"attention_rollout": {"residual": 2}}, "attention_rollout.residual"),
        ({"integrated_gradients": {"n_steps": 0}}, "integrated_gradients.n_steps"),
        ({"integrated_gradients": {"baseline": "noise"}}, "integrated_gradients.baseline"),
        ({"integrated_gradients": {"rule": "riemann_trapezoid", "n_steps": 1}}, "integrated_gradients"),
        ({"contrast": ""}, "contrast"),
        ({"target": ""}, "target"),
        ({"bogus": 1}, "bogus"),
        ({"prompt": "also a prompt"}, None),
    ],
)
def test_schema_errors_are_422_naming_the_field(client, body, param):
    r = _post(client, **{"messages": CHAT, "target": "Paris", **body})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request"
    if param is not None:
        assert error["param"] == param


def test_unknown_method_lists_the_valid_names(client):
    r = _post(client, messages=CHAT, target="Paris", methods=["lime"])
    message = r.json()["error"]["message"]
    assert all(name in message for name in METHOD_NAMES)


def test_explain_options_do_not_shadow_generation_fields():
    """ExplainRequest (and /generate's explain field) merge both sets: a shared name would silently win."""
    from schemas.explain import ExplainOptions
    from schemas.generate import GenerateRequest

    assert not set(ExplainOptions.model_fields) & set(GenerateRequest.model_fields)


def test_registry_and_schema_agree():
    assert set(methods.names()) == set(METHOD_NAMES)
    with pytest.raises(InvalidRequest, match="valid methods: attention, attention_gradient, attention_rollout") as err:
        methods.get("lime")
    assert err.value.param == "methods"


@pytest.mark.parametrize(
    ("body", "param", "needle"),
    [
        ({"prompt": "The Eiffel", "granularity": "message"}, "granularity", "needs chat"),
        ({"target_span": {"start": 40}}, "target_span", "outside the answer"),
        ({"target_span": {"start": 0, "end": 99}}, "target_span", "outside the answer"),
        ({"methods": ["attention"], "attention": {"layers": [7]}}, "attention.layers", "out of range"),
        ({"methods": ["attention"], "attention": {"heads": [-5]}}, "attention.heads", "out of range"),
        ({"granularity": "segments", "segments": [{"text": "Berlin"}]}, "segments.0", "not in the prompt"),
        ({"granularity": "segments", "segments": [{"start": 0, "end": 5}]}, "segments.0", "needs `message`"),
        ({"include_template": True, "granularity": "segments", "segments": [{"text": "<|im_start|>"}]}, None, None),
    ],
)
def test_semantic_errors_are_422_naming_the_field(client, body, param, needle):
    base = {"target": "Paris"} if "prompt" in body else {"messages": CHAT, "target": "Paris"}
    r = _post(client, **{**base, **body})
    if param is None:
        assert r.status_code == 422 and r.json()["error"]["param"] == "granularity"  # only special tokens chosen
        return
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["param"] == param and needle in error["message"]


def _explain(registry, settings, **body):
    req = ExplainRequest.model_validate({"messages": CHAT, "target": "Paris is the capital of France.", **body})
    return run_explain(registry, settings, req)


@pytest.mark.parametrize(
    ("limit", "body", "code", "param"),
    [
        ({"explain_max_tokens": 20}, {}, "explain_max_tokens", "prompt"),
        ({"explain_max_targets": 2}, {}, "explain_max_targets", "target_span"),
        (
            {"explain_max_steps": 8},
            {"methods": ["integrated_gradients"]},
            "explain_max_steps",
            "integrated_gradients.n_steps",
        ),
        ({"explain_max_work": 1000}, {"methods": ["integrated_gradients"]}, "explain_max_work", "methods"),
        (
            {"explain_max_values": 1000},
            {"methods": ["attention"], "attention": {"reduce_heads": "none", "reduce_layers": "none"}},
            "explain_max_values",
            "methods",
        ),
        (
            {"explain_memory_mb": 64},
            {"messages": [{"role": "user", "content": "x " * 450}], "methods": ["attention_rollout", "saliency"]},
            "explain_memory_mb",
            "prompt",
        ),
    ],
)
def test_budget_errors_say_which_limit_and_by_how_much(registry, explain_settings, limit, body, code, param):
    settings = explain_settings.model_copy(update=limit)
    with pytest.raises(BudgetExceeded) as err:
        _explain(registry, settings, **body)
    assert err.value.code == code and err.value.param == param
    assert str(next(iter(limit.values()))) in err.value.message.replace(",", "")


def test_budget_is_checked_before_generating(registry, explain_settings, monkeypatch):
    calls = []

    async def source(prompt):
        calls.append(prompt)

    settings = explain_settings.model_copy(update={"explain_max_targets": 4})
    req = ExplainRequest.model_validate({"messages": CHAT, "max_new_tokens": 8})
    with pytest.raises(BudgetExceeded):
        run_explain(registry, settings, req, answer_source=source)
    assert calls == []


def test_context_overflow_is_refused(registry, explain_settings, lm):
    too_long = "Paris " * (lm.max_context + 10)
    with pytest.raises(InvalidRequest, match="context"):
        _explain(registry, explain_settings.model_copy(update={"explain_max_tokens": 100_000}), target=too_long)


def test_response_is_json_serialisable_without_nan(registry, explain_settings):
    response = _explain(registry, explain_settings, methods=ALL)
    json.loads(response.model_dump_json())


def test_an_empty_generation_is_a_422(registry, explain_settings, monkeypatch):
    from service.engine.continuation import Answer

    async def source(prompt):
        return Answer([], "", [], [])

    req = ExplainRequest.model_validate({"messages": CHAT, "max_new_tokens": 4})
    with pytest.raises(InvalidRequest, match="no tokens") as err:
        run_explain(registry, explain_settings, req, answer_source=source)
    assert err.value.param == "max_new_tokens"


def test_explain_generation_explains_what_generate_returned(registry, explain_settings, lm):
    """The entry point for /generate's `explain` field: no second generation, the same tokens."""
    from schemas.common import ChatMessage
    from schemas.explain import ExplainOptions
    from service.engine.prompt import build_prompt
    from service.engine.sampling import SamplingParams
    from service.serving import Serving
    from tests.support.run import generate

    prompt = build_prompt(lm.tokenizer, messages=[ChatMessage(role="user", content="What is the capital of France?")])
    options = ExplainOptions(methods=["saliency"])
    usecase.precheck(lm, explain_settings, prompt, options, max_new_tokens=5)
    output = generate(lm, prompt, SamplingParams(max_new_tokens=5))
    answer = usecase.answer_of(output, lm.special_ids)

    async def go():
        serving = Serving(explain_settings)
        try:
            return await usecase.explain_answer(
                lm, explain_settings, serving, prompt, answer, options, deadline=serving.deadline()
            )
        finally:
            await serving.close()

    response = asyncio.run(go())
    assert [t.id for t in response.target_tokens] == output.ids
    assert response.text == output.text
    with pytest.raises(BudgetExceeded):
        usecase.precheck(lm, explain_settings.model_copy(update={"explain_max_targets": 4}), prompt, options, 5)
