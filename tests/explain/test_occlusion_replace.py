"""Occlusion's `replace` mode against manual re-runs with the unit's embeddings swapped in place (positions
kept), and the stand-in embeddings computed through the embedding module (a tiny Gemma scales by √d)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import GemmaConfig, GemmaForCausalLM

from service.explain import forward as fw
from service.explain.baselines import mean_embedding
from service.explain.engine import explain
from service.explain.options import OcclusionParams
from service.explain.task import Chunks
from tests.explain.conftest import make_task

PAD = 3


def _logprob_embeds(model, embeds: torch.Tensor, ids, t: int) -> float:
    with torch.no_grad():
        logits = model(inputs_embeds=embeds.unsqueeze(0)).logits[0, t - 1]
    return float(torch.log_softmax(logits, -1)[ids[t]])


def _replaced(model, ids, unit, stand_in: torch.Tensor) -> torch.Tensor:
    embeds = model.get_input_embeddings()(torch.tensor(list(ids))).detach().clone()
    embeds[list(unit)] = stand_in
    return embeds


@pytest.mark.parametrize("replace_with", ["pad", "mean"])
def test_replace_matches_manual_reruns(model, ids, replace_with):
    units = ((0, 1), (2, 3, 4), (5,), (6, 7, 8), (9, 10), (11,), (12, 13))
    opts = OcclusionParams(mode="replace", replace_with=replace_with)
    task = make_task(ids, {"occlusion": opts}, units=units, span=(11, 14), pad_id=PAD)
    out = explain(model, task).outputs["occlusion"]
    table = model.get_input_embeddings()
    stand_in = table(torch.tensor([PAD]))[0] if replace_with == "pad" else table(torch.arange(48)).mean(0)
    full = _replaced(model, ids, (), stand_in)
    for i, t in enumerate(task.rows):
        for u, unit in enumerate(units):
            if max(unit) >= t:
                assert out.tokens[i, u] == 0
                continue
            occluded = _logprob_embeds(model, _replaced(model, ids, unit, stand_in), ids, t)
            assert out.tokens[i, u] == pytest.approx(_logprob_embeds(model, full, ids, t) - occluded, abs=1e-9)
    for u, unit in enumerate(units[:5]):
        total = sum(_logprob_embeds(model, full, ids, s) for s in range(11, 14))
        occluded = sum(_logprob_embeds(model, _replaced(model, ids, unit, stand_in), ids, s) for s in range(11, 14))
        assert out.sequence[u] == pytest.approx(total - occluded, abs=1e-9)
    assert out.params["mode"] == "replace" and out.params["replace_with"] == replace_with


def test_replace_differs_from_delete_and_params_say_which(model, ids):
    delete = explain(model, make_task(ids, {"occlusion": OcclusionParams()}, pad_id=PAD)).outputs["occlusion"]
    replace = explain(model, make_task(ids, {"occlusion": OcclusionParams("replace")}, pad_id=PAD)).outputs
    assert delete.params["mode"] == "delete" and "replace_with" not in delete.params
    assert not np.allclose(delete.tokens, replace["occlusion"].tokens)


@pytest.mark.parametrize("sequences", [1, 3, 16])
def test_replace_batched_equals_one_at_a_time(model, ids, sequences):
    opts = {"occlusion": OcclusionParams("replace", "mean")}
    one = explain(model, make_task(ids, opts, chunks=Chunks(sequences=1), pad_id=PAD)).outputs["occlusion"]
    many = explain(model, make_task(ids, opts, chunks=Chunks(sequences=sequences), pad_id=PAD)).outputs["occlusion"]
    np.testing.assert_allclose(many.tokens, one.tokens, atol=1e-9)
    np.testing.assert_allclose(many.sequence, one.sequence, atol=1e-9)


def test_replace_contrast_is_the_difference_of_single_attributions(model, ids):
    opts = {"occlusion": OcclusionParams("replace", "pad")}
    contrast_ids = (5, 6, 7)
    seq = {"span": (11, 14), "rows": (11, 12, 13), "scopes": frozenset({"sequence"}), "pad_id": PAD}
    target = explain(model, make_task(ids, opts, **seq)).outputs["occlusion"].sequence
    other = explain(model, make_task(ids[:11] + contrast_ids, opts, **seq)).outputs["occlusion"].sequence
    both = explain(model, make_task(ids, opts, contrast_ids=contrast_ids, **seq)).outputs["occlusion"].sequence
    np.testing.assert_allclose(both, target - other, atol=1e-9)


def test_stand_ins_go_through_the_embedding_module_on_gemma():
    torch.manual_seed(0)
    config = GemmaConfig(
        vocab_size=40,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=32,
    )
    gemma = GemmaForCausalLM(config).double().eval()
    weight = gemma.get_input_embeddings().weight.detach()
    expected = weight.mean(0) * math.sqrt(16)  # Gemma multiplies its embeddings by √d
    np.testing.assert_allclose(mean_embedding(gemma).numpy(), expected.numpy(), rtol=1e-12)
    np.testing.assert_allclose(fw.embed(gemma, [PAD])[0].numpy(), (weight[PAD] * 4).numpy(), rtol=1e-12)


def test_api_occlusion_mode(client):
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    common = {"messages": chat, "target": "Paris.", "methods": ["occlusion"], "granularity": "word"}
    r = client.post("/explain", json={**common, "occlusion": {"mode": "replace", "replace_with": "mean"}})
    assert r.status_code == 200, r.text
    params = r.json()["methods"]["occlusion"]["params"]
    assert params["mode"] == "replace" and params["replace_with"] == "mean"
    bad = client.post("/explain", json={**common, "occlusion": {"mode": "blank"}})
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "occlusion.mode"
