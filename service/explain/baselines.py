"""Integrated-gradients baselines in the space attribution works in: the embedding module's *output*.

Attribution is taken at the input embeddings as the model sees them, i.e. after the embedding module, and
some modules do more than look a row up: Gemma's ``GemmaScaledWordEmbedding`` multiplies by √d inside the
module. A baseline built from the raw weight rows would then sit √d away from every real token, so the
`pad` and `mean` baselines are computed by calling the module itself.
"""

from __future__ import annotations

import weakref

import torch
from transformers import PreTrainedModel

#: Token ids embedded per call when averaging over the vocabulary (bounds the transient memory).
_MEAN_CHUNK = 8192

#: Per embedding module: (what the weights were when averaged, the mean). The key detects a weight edited in
#: place or moved, so a stale mean is never served.
_MEANS: weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple[object, ...], torch.Tensor]] = (
    weakref.WeakKeyDictionary()
)


def _module(model: PreTrainedModel) -> torch.nn.Module:
    module = model.get_input_embeddings()
    assert isinstance(module, torch.nn.Module)
    return module


def _weight(module: torch.nn.Module) -> torch.Tensor:
    weight = getattr(module, "weight", None)
    assert isinstance(weight, torch.Tensor)
    return weight


def mean_embedding(model: PreTrainedModel) -> torch.Tensor:
    """The mean over the vocabulary of the embedding module's output [d] (cached per embedding module).

    Summed in float32 (float64 for a float64 model) chunk by chunk, then cast to the model's dtype.
    """
    module = _module(model)
    weight = _weight(module)
    key = (weight.data_ptr(), weight._version, weight.dtype, weight.device, tuple(weight.shape))
    cached = _MEANS.get(module)
    if cached is not None and cached[0] == key:
        return cached[1]
    vocab = weight.shape[0]
    acc = torch.float64 if weight.dtype == torch.float64 else torch.float32
    total = torch.zeros(weight.shape[1], dtype=acc, device=weight.device)
    with torch.no_grad():
        for start in range(0, vocab, _MEAN_CHUNK):
            ids = torch.arange(start, min(vocab, start + _MEAN_CHUNK), device=weight.device)
            total += module(ids).to(acc).sum(0)
    mean = (total / vocab).to(weight.dtype)
    _MEANS[module] = (key, mean)
    return mean


def token_embedding(model: PreTrainedModel, token: int) -> torch.Tensor:
    """The embedding module's output for one token id [d]."""
    module = _module(model)
    weight = _weight(module)
    with torch.no_grad():
        out = module(torch.tensor([token], device=weight.device))
    assert isinstance(out, torch.Tensor)
    return out[0].detach()


def baseline_vector(model: PreTrainedModel, kind: str, pad_id: int | None = None) -> torch.Tensor:
    """The baseline embedding [d] of ``kind``: `zero`, `pad` (``pad_id``, else the config's, else token 0) or `mean`."""
    weight = _weight(_module(model))
    if kind == "zero":
        return torch.zeros(weight.shape[1], dtype=weight.dtype, device=weight.device)
    if kind == "mean":
        return mean_embedding(model)
    if kind == "pad":
        if pad_id is None:
            pad_id = getattr(model.config, "pad_token_id", None)
        return token_embedding(model, pad_id if pad_id is not None else 0)
    raise ValueError(f"unknown baseline {kind!r}")
