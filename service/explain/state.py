"""Temporary model state for attribution, always restored: the model is shared and warm."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

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
