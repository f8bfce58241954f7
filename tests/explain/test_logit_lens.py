"""Logit lens: the last layer read through the final norm and head is the model's own output."""

from __future__ import annotations

import numpy as np
import torch

from service.explain import engine
from service.explain.options import LogitLensParams
from tests.explain.conftest import make_task


def test_logit_lens_last_layer_equals_the_models_logprobs(model, ids):
    task = make_task(ids, {"logit_lens": LogitLensParams(top_k=3)})
    result = engine.explain(model, task)
    params = result.outputs["logit_lens"].params
    lps = np.array(params["target_logprob"])
    assert lps.shape == (model.config.num_hidden_layers + 1, len(task.rows))
    np.testing.assert_allclose(lps[-1], result.answer_logprobs, rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    predicting = [r - 1 for r in task.rows]
    full = torch.log_softmax(logits[predicting], -1)
    top = full.topk(3, -1)
    np.testing.assert_array_equal(np.array(params["top_k_ids"])[-1], top.indices.numpy())
    np.testing.assert_allclose(np.array(params["top_k_logprobs"])[-1], top.values.numpy(), atol=1e-6)
    ranks = 1 + (full > full.gather(-1, torch.tensor(ids)[list(task.rows)].view(-1, 1))).sum(-1)
    assert params["rank_of_target"][-1] == ranks.tolist()


def test_logit_lens_layer_zero_reads_the_embeddings(model, ids):
    task = make_task(ids, {"logit_lens": LogitLensParams(top_k=0)}, scopes=frozenset({"sequence"}))
    params = engine.explain(model, task).outputs["logit_lens"].params
    with torch.no_grad():
        h = model.model.embed_tokens(torch.tensor(ids))[[t - 1 for t in range(*task.span)]]
        lps = torch.log_softmax(model.lm_head(model.model.norm(h)).double(), -1)
    expected = lps.gather(-1, torch.tensor(ids)[list(range(*task.span))].view(-1, 1))[:, 0]
    np.testing.assert_allclose(params["target_logprob"][0], expected.numpy(), atol=1e-6)
    assert params["top_k_ids"][0] == [[] for _ in range(*task.span)]
