"""The methods of issue 16 through /explain: a 200 with their documented fields, a bad option a 422."""

from __future__ import annotations

import numpy as np
import pytest

CHAT = [{"role": "user", "content": "What is the capital of France? The Eiffel Tower is in Paris."}]


def _post(client, **body):
    return client.post("/explain", json={"messages": CHAT, "target": "Paris is nice.", **body})


def test_logit_lens_through_the_api(client, lm):
    r = _post(client, methods=["logit_lens"], logit_lens={"top_k": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    params = body["methods"]["logit_lens"]["params"]
    n = len(body["target_tokens"])
    lps = np.array(params["target_logprob"])
    assert lps.shape[1] == n and params["dims"] == ["layer", "target"]
    got = lps[-1]
    expected = [t["logprob"] for t in body["target_tokens"]]
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert np.array(params["top_k_ids"]).shape == (lps.shape[0], n, 2)
    # The texts are the tokenizer's decoding of those ids, cell by cell (a client has no vocabulary).
    texts = params["top_k_tokens"]
    assert np.array(texts).shape == (lps.shape[0], n, 2)
    tokenizer = lm.tokenizer
    for row_ids, row_texts in zip(params["top_k_ids"], texts, strict=True):
        for cell_ids, cell_texts in zip(row_ids, row_texts, strict=True):
            assert cell_texts == [tokenizer.decode([i]) for i in cell_ids]


@pytest.mark.parametrize(
    "option",
    [
        {"logit_lens": {"top_k": -1}},
        {"logit_lens": {"top_k": 101}},
        {"logit_lens": {"k": 3}},
        {"shapley": {"n_samples": 0}},
        {"shapley": {"masking": "blur"}},
        {"shapley": {"seed": -1}},
    ],
)
def test_bad_new_method_option_is_a_422(client, option):
    r = _post(client, methods=[*option], **option)
    assert r.status_code == 422, r.text


def test_attention_gradient_through_the_api_with_a_contrast(client):
    r = _post(client, methods=["attention_gradient"], contrast="Lyon is nice.", granularity="word")
    assert r.status_code == 200, r.text
    body = r.json()
    result = body["methods"]["attention_gradient"]
    assert result["tokens"]["dims"] == ["target", "source"]
    assert result["tokens"]["shape"][1] == len(body["sources"])
    assert result["sequence"]["shape"] == [body["sequence_sources"]]
    assert "sign" in result["params"]


def test_attention_gradient_takes_no_options(client):
    r = _post(client, methods=["attention_gradient"], attention_gradient={"heads": "max"})
    assert r.status_code == 422, r.text


@pytest.mark.parametrize("masking", ["delete", "replace"])
def test_shapley_through_the_api(client, masking):
    r = _post(client, methods=["shapley"], granularity="word", shapley={"n_samples": 4, "masking": masking})
    assert r.status_code == 200, r.text
    body = r.json()
    result = body["methods"]["shapley"]
    assert result["tokens"]["shape"] == [len(body["rows"]), len(body["sources"])]
    assert result["sequence"]["shape"] == [body["sequence_sources"]]
    params = result["params"]
    assert params["players"] == body["sequence_sources"] and params["efficiency"]["gap"] < 1e-6
    assert params["masking"] == masking and params["n_samples"] == 4
    assert "Shapley values" in body["summary"]


def test_shapley_with_a_contrast_through_the_api(client):
    r = _post(client, methods=["shapley"], granularity="sentence", contrast="Lyon.", shapley={"n_samples": 3})
    assert r.status_code == 200, r.text
    eff = r.json()["methods"]["shapley"]["params"]["efficiency"]
    assert eff["gap"] < 1e-6
