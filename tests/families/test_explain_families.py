"""Every zoo family served through the service (saved folder -> loader -> HTTP): ``/models`` answers, and
every explain method is either a 200 whose arrays match a direct transformers reference on the same weights
(reloaded from the same folder) or a 422 naming the method and the model's reason.

References: attention against ``output_attentions=True`` (eager) at the attention layers; saliency and
input × gradient against autograd on the embeddings; integrated gradients against the same quadrature
evaluated by hand from a zero baseline; occlusion against deleting each token and re-running; rollout and
gradient-weighted attention against their published rules on the reference attention weights; the logit
lens's last layer against the model's own log-probabilities; Shapley values against efficiency.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from transformers import AutoModelForCausalLM, PreTrainedModel

from service.api.app import create_app
from service.explain.methods.integrated_gradients import quadrature
from service.explain.methods.rollout import rollout
from service.models.registry import ModelRegistry
from service.settings import Settings
from tests.families import zoo

warnings.filterwarnings("ignore", message=".*falling back to its reference.*")

PROMPT = "Hello world, the"
TARGET = " capital is"
ATTENTION_METHODS = ("attention", "attention_rollout", "attention_gradient")
NO_ATTENTION = frozenset({"mamba", "mamba2", "falcon_mamba", "rwkv"})
#: Hybrids of the zoo: attention at decoder layer 1 only (layer 0 is mamba, linear attention, recurrent).
HYBRIDS = frozenset({"jamba", "minimax", "recurrent_gemma"})
TOKEN_METHODS = ("saliency", "input_x_gradient", "integrated_gradients", "occlusion", "logit_lens", *ATTENTION_METHODS)
IG_STEPS = 4


def expected_refusals(family: str) -> set[str]:
    if family in NO_ATTENTION:
        return set(ATTENTION_METHODS)
    if family in HYBRIDS:
        return {"attention_rollout", "attention_gradient"}
    return set()


def attention_layers(family: str) -> list[int]:
    if family in NO_ATTENTION:
        return []
    return [1] if family in HYBRIDS else list(range(zoo.COMMON["num_hidden_layers"]))


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("zoo")
    for family in zoo.ALL:
        zoo.save(family, root / family)
    return root


@pytest.fixture(scope="module")
def served(zoo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, ModelRegistry]]:
    """One server with every family; tiny models run fastest on one thread (and the machine is shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    settings = Settings(
        models=",".join(f"{family}={zoo_dir / family}" for family in zoo.ALL),
        cache_dir=tmp_path_factory.mktemp("glassbox-cache"),
        device="cpu",
        offline=True,
        warmup=False,
        max_context=64,  # a shorter load-time calibration
    )
    try:
        with TestClient(create_app(settings)) as client:
            registry: ModelRegistry = client.app.state.registry  # type: ignore[attr-defined]
            client.portal.call(registry.wait_loaded)  # type: ignore[union-attr]
            yield client, registry
    finally:
        torch.set_num_threads(threads)


def _loaded(served: tuple[TestClient, ModelRegistry], family: str) -> TestClient:
    client, registry = served
    slot = next(s for s in registry.slots if s.name == family)
    if slot.model is None and slot.error and "has no attribute 'cache'" in slot.error:
        pytest.xfail(f"{family} does not load until the serving side of issue 11 decodes its state: {slot.error}")
    assert slot.model is not None, slot.error
    return client


@pytest.fixture(scope="module")
def model_list(served: tuple[TestClient, ModelRegistry]) -> dict[str, Any]:
    response = served[0].get("/models")
    assert response.status_code == 200, response.text
    return {m["id"]: m for m in response.json()}


def _reference(folder: Path) -> PreTrainedModel:
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    model.set_attn_implementation("eager")
    model.requires_grad_(False)
    return model


def _array(result: dict[str, Any], scope: str = "tokens") -> np.ndarray:
    data = result[scope]
    assert data["encoding"] == "json"
    return np.asarray(data["data"], dtype=np.float64).reshape(data["shape"])


def _ids(body: dict[str, Any]) -> tuple[list[int], list[int]]:
    """(all ids, the rows' positions in them)."""
    prompt = [t["id"] for t in body["prompt_tokens"]]
    answer = [t["id"] for t in body["target_tokens"]]
    return prompt + answer, [len(prompt) + r for r in body["rows"]]


def _post(client: TestClient, family: str, methods: list[str], **extra: Any) -> Any:
    body = {
        "model": family,
        "prompt": PROMPT,
        "target": TARGET,
        "methods": methods,
        "include_special": True,
        "scope": ["tokens"],
        "precision": None,
        **extra,
    }
    return client.post("/explain", json=body)


def _reference_attentions(model: PreTrainedModel, outputs: Any, family: str) -> dict[int, torch.Tensor]:
    """Decoder layer -> [1, H, T, T] (the graph's own tensors) from ``output_attentions=True``, which lists one
    tensor per attention layer, or one per layer with other layers' states in between (MiniMax)."""
    layers = attention_layers(family)
    atts = outputs.attentions
    if len(atts) == len(layers):
        return dict(zip(layers, atts, strict=True))
    return {layer: atts[layer] for layer in layers}


@pytest.mark.parametrize("family", zoo.ALL)
def test_models_lists_the_family_with_its_facts_and_supports(
    served: tuple[TestClient, ModelRegistry], model_list: dict[str, Any], family: str
) -> None:
    _loaded(served, family)
    info = model_list[family]
    facts = info["facts"]
    assert facts["layers"] == zoo.COMMON["num_hidden_layers"] == len(facts["layer_kinds"])
    assert facts["attention_layers"] == attention_layers(family)
    assert (facts["heads"] is None) == (family in NO_ATTENTION) == (info["num_heads"] is None)
    refused = {name for name, s in info["supports"].items() if not s["supported"]}
    assert refused == expected_refusals(family)
    assert all(s["reason"] for s in info["supports"].values() if not s["supported"])
    assert info["max_context"] == 64 and facts["context"] == zoo.COMMON["max_position_embeddings"]
    assert isinstance(info["batching"]["supported"], bool) and isinstance(info["generation"]["supported"], bool)


@pytest.mark.parametrize("family", zoo.ALL)
def test_refused_methods_are_422_naming_method_and_reason(
    served: tuple[TestClient, ModelRegistry], model_list: dict[str, Any], family: str
) -> None:
    client = _loaded(served, family)
    for method in sorted(expected_refusals(family)):
        response = _post(client, family, [method])
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["param"] == "methods" and method in error["message"]
        assert model_list[family]["supports"][method]["reason"] in error["message"]


@pytest.mark.parametrize("family", zoo.ALL)
def test_methods_match_transformers_references(
    served: tuple[TestClient, ModelRegistry], zoo_dir: Path, family: str
) -> None:
    client = _loaded(served, family)
    methods = [m for m in TOKEN_METHODS if m not in expected_refusals(family)]
    response = _post(
        client,
        family,
        methods,
        attention={"reduce_heads": "none", "reduce_layers": "none"},
        integrated_gradients={"n_steps": IG_STEPS, "baseline": "zero", "keep_first": False},  # the reference's path
    )
    assert response.status_code == 200, response.text
    body = response.json()
    results = body["methods"]
    ids, rows = _ids(body)
    model = _reference(zoo_dir / family)
    embeddings = model.get_input_embeddings()(torch.tensor([ids])).detach()
    leaf = embeddings.clone().requires_grad_(True)
    wants_attention = family not in NO_ATTENTION
    with torch.enable_grad():
        outputs = model(inputs_embeds=leaf, use_cache=False, output_attentions=wants_attention)
        logprobs = torch.log_softmax(outputs.logits[0].double(), -1)
        scores = [logprobs[r - 1, ids[r]] for r in rows]
        grads = [torch.autograd.grad(s, leaf, retain_graph=True)[0][0].double() for s in scores]
    tol = {"rtol": 1e-4, "atol": 1e-5}
    saliency = np.stack([g.norm(dim=-1).numpy() for g in grads])
    np.testing.assert_allclose(_array(results["saliency"]), saliency, **tol)
    ixg = np.stack([(g * embeddings[0].double()).sum(-1).numpy() for g in grads])
    np.testing.assert_allclose(_array(results["input_x_gradient"]), ixg, **tol)

    lens = np.asarray(results["logit_lens"]["params"]["target_logprob"])
    np.testing.assert_allclose(lens[-1], [float(s) for s in scores], **tol)

    alphas, weights = quadrature(results["integrated_gradients"]["params"]["rule"], IG_STEPS)
    ig = torch.zeros(len(rows), len(ids), dtype=torch.float64)
    for alpha, weight in zip(alphas, weights, strict=True):
        step = (alpha * embeddings).requires_grad_(True)
        with torch.enable_grad():
            lp = torch.log_softmax(model(inputs_embeds=step, use_cache=False).logits[0].double(), -1)
            for i, r in enumerate(rows):
                (g,) = torch.autograd.grad(lp[r - 1, ids[r]], step, retain_graph=True)
                ig[i] += weight * (g[0].double() * embeddings[0].double()).sum(-1)
    np.testing.assert_allclose(_array(results["integrated_gradients"]), ig.numpy(), rtol=1e-3, atol=1e-4)

    occlusion = np.zeros((len(rows), len(ids)))
    with torch.no_grad():
        for j in range(len(ids)):
            kept = ids[:j] + ids[j + 1 :]
            lp = torch.log_softmax(model(input_ids=torch.tensor([kept]), use_cache=False).logits[0].double(), -1)
            for i, r in enumerate(rows):
                if j < r:
                    occlusion[i, j] = float(scores[i]) - float(lp[r - 2, ids[r]])
    np.testing.assert_allclose(_array(results["occlusion"]), occlusion, rtol=1e-3, atol=1e-4)

    if not wants_attention:
        return
    reference = _reference_attentions(model, outputs, family)
    got = _array(results["attention"])  # [layer, head, target, source]
    assert results["attention"]["params"]["layers"] == attention_layers(family)
    expected = np.stack(
        [np.stack([reference[layer][0, :, r - 1].detach().numpy() for r in rows], 1) for layer in reference]
    )
    np.testing.assert_allclose(got, expected, **tol)
    if family in HYBRIDS:
        without = results["attention"]["params"]["layers_without_attention"]
        assert [w["layer"] for w in without] == [0] and without[0]["kind"] != "attention"
        return
    residual = results["attention_rollout"]["params"]["residual"]
    rolled = rollout([reference[layer][0].detach().mean(0) for layer in sorted(reference)], residual)
    np.testing.assert_allclose(_array(results["attention_rollout"]), rolled[[r - 1 for r in rows]].numpy(), **tol)
    relevance = []
    for score in scores:
        atts = [reference[layer] for layer in sorted(reference)]
        att_grads = torch.autograd.grad(score, atts, retain_graph=True)
        r_matrix = torch.eye(len(ids), dtype=torch.float64)
        for a, g in zip(atts, att_grads, strict=True):
            r_matrix = r_matrix + (g[0].double() * a[0].detach().double()).clamp(min=0).mean(0) @ r_matrix
        relevance.append(r_matrix)
    expected_grad = np.stack([m[r - 1].numpy() for m, r in zip(relevance, rows, strict=True)])
    np.testing.assert_allclose(_array(results["attention_gradient"]), expected_grad, **tol)


@pytest.mark.parametrize("family", zoo.ALL)
def test_shapley_is_efficient(served: tuple[TestClient, ModelRegistry], family: str) -> None:
    client = _loaded(served, family)
    response = _post(client, family, ["shapley"], granularity="word", scope=["sequence"], shapley={"exact": True})
    assert response.status_code == 200, response.text
    assert response.json()["methods"]["shapley"]["params"]["efficiency"]["gap"] < 1e-5


@pytest.mark.parametrize("family", sorted(HYBRIDS))
def test_hybrid_attention_layer_without_weights_is_a_422_before_running(
    served: tuple[TestClient, ModelRegistry], family: str
) -> None:
    client = _loaded(served, family)
    response = _post(client, family, ["attention"], attention={"layers": [0]})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["param"] == "attention.layers" and "attention layers are [1]" in error["message"]
    assert _post(client, family, ["attention"], attention={"layers": [-1]}).status_code == 200


#: Methods the reference test above does not compare (their own references live in tests/explain): here
#: each family must answer them with a 200 (finite scores) or, where refused, the 422 already checked.
OTHER_METHODS = ("context_attribution", "counterfactual")


@pytest.mark.parametrize("family", zoo.ALL)
def test_other_methods_answer_on_every_family(
    served: tuple[TestClient, ModelRegistry], model_list: dict[str, Any], family: str
) -> None:
    client = _loaded(served, family)
    for method in OTHER_METHODS:
        response = _post(client, family, [method], granularity="word", scope=["sequence"])
        if not model_list[family]["supports"][method]["supported"]:
            assert response.status_code == 422, response.text
            continue
        assert response.status_code == 200, f"{method}: {response.text}"
        result = response.json()["methods"][method]
        for scope in ("tokens", "sequence"):
            if result.get(scope) is not None:
                assert np.isfinite(_array(result, scope)).all()
