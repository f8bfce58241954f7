"""Every registered method states its sign convention, and every method result in the JSON carries it."""

from __future__ import annotations

import pytest

from schemas.explain import METHOD_NAMES
from service.explain import methods
from service.explain.methods.base import Sign

CHAT = [{"role": "user", "content": "What is the capital of France? The Eiffel Tower is in Paris."}]
SIGNED = {"input_x_gradient", "integrated_gradients", "occlusion", "shapley", "context_attribution", "counterfactual"}


@pytest.mark.parametrize("name", methods.names())
def test_every_registered_method_has_a_sign(name):
    sign = type(methods.get(name)).__dict__.get("sign") or getattr(type(methods.get(name)), "sign", None)
    assert isinstance(sign, Sign) and sign.meaning
    assert sign.signed == (name in SIGNED)


def test_every_method_result_carries_its_sign_in_the_json(client):
    r = client.post("/explain", json={"messages": CHAT, "target": "Paris.", "methods": list(METHOD_NAMES)})
    assert r.status_code == 200, r.text
    results = r.json()["methods"]
    assert set(results) == set(METHOD_NAMES)
    for name, result in results.items():
        assert result["signed"] is methods.get(name).sign.signed, name
        assert result["sign_meaning"] == methods.get(name).sign.meaning, name
    assert results["input_x_gradient"]["sign_meaning"].startswith("positive supports the answer")
    assert results["saliency"]["sign_meaning"].startswith("magnitude only")


def test_with_a_contrast_signed_scores_are_about_the_difference(client):
    body = {"messages": CHAT, "target": "Paris", "contrast": "Lyon", "methods": ["input_x_gradient", "saliency"]}
    r = client.post("/explain", json=body)
    assert r.status_code == 200, r.text
    results = r.json()["methods"]
    assert results["input_x_gradient"]["signed"] is True
    assert "over the contrast" in results["input_x_gradient"]["sign_meaning"]
    assert results["saliency"]["sign_meaning"] == methods.get("saliency").sign.meaning
