"""Temporary model state for attribution, always restored: the model is shared and warm."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from transformers import PreTrainedModel


def attention_implementation(model: PreTrainedModel) -> str:
    return str(getattr(model.config, "_attn_implementation", None) or "eager")


@contextmanager
def eager_attention(model: PreTrainedModel, enabled: bool = True) -> Iterator[None]:
    """Eager attention (the only one that returns weights) inside the block; the previous one after."""
    previous = attention_implementation(model)
    switch = enabled and previous != "eager"
    if switch:
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if switch:
            model.set_attn_implementation(previous)


@contextmanager
def input_gradients(model: PreTrainedModel) -> Iterator[None]:
    """Gradients on, but only towards inputs: parameters frozen inside, their flags restored after."""
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        with torch.inference_mode(False), torch.enable_grad():
            yield
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)


@contextmanager
def explaining(model: PreTrainedModel, *, attention: bool) -> Iterator[None]:
    """Everything an explanation changes on the model, undone on every path (errors included)."""
    was_training = model.training
    model.eval()
    try:
        with eager_attention(model, attention), input_gradients(model):
            yield
    finally:
        model.train(was_training)


def _attention_modules(model: PreTrainedModel) -> tuple[list[torch.nn.Module], int]:
    """The modules whose outputs carry attention weights, from the model's own recording spec
    (``_can_record_outputs["attentions"]``), and the index of the weights in their output tuple."""
    for module in model.modules():
        spec = (getattr(module, "_can_record_outputs", None) or {}).get("attentions")
        if spec is None:
            continue
        spec = spec[0] if isinstance(spec, list) else spec
        target = getattr(spec, "target_class", spec)
        index = int(getattr(spec, "index", 1)) if hasattr(spec, "target_class") else 1
        if isinstance(target, type):
            return [m for m in model.modules() if isinstance(m, target)], index
    raise RuntimeError(f"{type(model).__name__} does not say which modules produce attention weights")


@contextmanager
def attention_capture(model: PreTrainedModel) -> Iterator[list[torch.Tensor]]:
    """Each layer's attention weights, in call order, from forward hooks that exist only inside the block.

    Our own hooks rather than ``output_attentions=True``, which makes transformers install permanent
    hooks on the shared model the first time it is asked.
    """
    modules, index = _attention_modules(model)
    captured: list[torch.Tensor] = []

    def hook(_module: torch.nn.Module, _args: Any, output: Any) -> None:
        weights = output[index] if isinstance(output, tuple) else None
        if weights is None:
            raise RuntimeError("the attention module returned no weights (is eager attention on?)")
        captured.append(weights)

    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()
