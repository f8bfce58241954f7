"""Temporary model state for attribution, always restored: the model is shared and warm."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from typing import Any

import torch
import torch.utils.checkpoint
from transformers import PreTrainedModel

from service.explain.attention_rows import ROWS, AttentionMode
from service.explain.checkpoint import Checkpoint
from service.models.facts import facts_of

#: Set on a model while other work runs at one of an explanation's checkpoints: our hooks stand aside.
_PAUSED = "_glassbox_paused"


def is_paused(model: torch.nn.Module) -> bool:
    return bool(getattr(model, _PAUSED, False))


def attention_implementation(model: PreTrainedModel) -> str:
    return str(getattr(model.config, "_attn_implementation", None) or "eager")


@contextmanager
def implementation(model: PreTrainedModel, name: str | None) -> Iterator[None]:
    """The attention implementation ``name`` inside the block (None: unchanged); the previous one after."""
    previous = attention_implementation(model)
    switch = name is not None and previous != name
    if name is not None and switch:
        model.set_attn_implementation(name)
    try:
        yield
    finally:
        if switch:
            model.set_attn_implementation(previous)


def eager_attention(model: PreTrainedModel, enabled: bool = True) -> AbstractContextManager[None]:
    """Eager attention (the only one that returns every weight) inside the block; the previous one after."""
    return implementation(model, "eager" if enabled else None)


def implementation_for(model: PreTrainedModel, mode: AttentionMode) -> str | None:
    """The implementation an explanation's shared forward runs on: eager for full matrices, ours around the
    model's kernel for the explained rows, the model's own otherwise."""
    if mode == "full":
        return "eager"
    if mode == "rows":
        return ROWS
    return None


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


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's stack of decoder layers: the module list as long as the text config's layer count (or
    the longest module list when no config says)."""
    config = getattr(model, "config", None)
    text = config.get_text_config() if config is not None and hasattr(config, "get_text_config") else config
    count = getattr(text, "num_hidden_layers", None)
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) > 0]
    exact = [m for m in lists if len(m) == count]
    chosen = exact[0] if exact else max(lists, key=len, default=None)
    return list(chosen) if chosen is not None else []


@contextmanager
def layer_checkpoints(model: PreTrainedModel, checkpoint: Checkpoint) -> Iterator[None]:
    """Call ``checkpoint`` before every decoder layer's forward and after its backward, so that no pass over a
    long input is one indivisible unit (the scheduler interleaves, stops or times out work there)."""

    def before(_module: torch.nn.Module, _args: Any) -> None:
        if not is_paused(model):
            checkpoint()

    def backward(_grad: torch.Tensor) -> None:
        if not is_paused(model):
            # Inside a backward pass other work must not run (a batched backward is vmapped: no random ops,
            # batched tensors): there the checkpoint only stops work; generation interleaves between units
            # and at every layer of the forward passes.
            checkpoint(interleave=False)

    def after(_module: torch.nn.Module, _args: Any, output: Any) -> None:
        hidden = output[0] if isinstance(output, tuple) else output
        if isinstance(hidden, torch.Tensor) and hidden.requires_grad and not is_paused(model):
            hidden.register_hook(backward)

    handles = []
    for layer in decoder_layers(model):
        handles.append(layer.register_forward_pre_hook(before))
        handles.append(layer.register_forward_hook(after))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def recomputed_layers(model: PreTrainedModel, enabled: bool) -> Iterator[None]:
    """Gradient checkpointing inside the block: each decoder layer's forward keeps only its inputs for the
    backward pass and runs again there (``torch.utils.checkpoint``, non-reentrant: it composes with batched
    vector-Jacobian products). Our layer hooks run once, on the first forward."""
    layers = decoder_layers(model) if enabled else []

    def wrapped(forward: Any) -> Any:
        @functools.wraps(forward)
        def run(*args: Any, **kwargs: Any) -> Any:
            if is_paused(model) or not torch.is_grad_enabled():  # serving's decode steps, no-grad passes
                return forward(*args, **kwargs)
            return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)

        return run

    for layer in layers:
        layer.forward = wrapped(layer.forward)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward  # the instance attribute; the class's forward shows again


@contextmanager
def serving_state(model: PreTrainedModel, implementation: str) -> Iterator[None]:
    """The model as serving uses it (its own attention, our hooks idle), inside an explanation's pause."""
    current = attention_implementation(model)
    setattr(model, _PAUSED, True)
    if current != implementation:
        model.set_attn_implementation(implementation)
    try:
        yield
    finally:
        if current != implementation:
            model.set_attn_implementation(current)
        setattr(model, _PAUSED, False)


@contextmanager
def explaining(
    model: PreTrainedModel, *, attention: AttentionMode, checkpoint: Checkpoint, recompute: bool = False
) -> Iterator[None]:
    """Everything an explanation changes on the model, undone on every path (errors included); between
    units, ``checkpoint`` may run other requests' decode steps in the model's serving state."""
    was_training = model.training
    serving = attention_implementation(model)
    model.eval()
    previous_pause = checkpoint.pause
    checkpoint.pause = lambda: serving_state(model, serving)
    try:
        with ExitStack() as stack:
            stack.enter_context(implementation(model, implementation_for(model, attention)))
            stack.enter_context(input_gradients(model))
            stack.enter_context(layer_checkpoints(model, checkpoint))
            stack.enter_context(recomputed_layers(model, recompute))
            yield
    finally:
        checkpoint.pause = previous_pause
        model.train(was_training)


def _attention_modules(model: PreTrainedModel) -> list[tuple[torch.nn.Module, int]]:
    """The modules whose outputs carry attention weights (one per attention layer, in layer order, from the
    model's facts) and the index of the weights in their output tuple."""
    facts = facts_of(model)
    capture = facts.attention
    if capture is None or capture.how != "record":
        reason = facts.attention_reason or f"{facts.model_type} returns attention weights only with output_attentions"
        raise RuntimeError(f"no attention modules to hook: {reason}")
    return [(model.get_submodule(name), index) for name, index in zip(capture.modules, capture.indices, strict=True)]


@contextmanager
def attention_capture(model: PreTrainedModel) -> Iterator[list[torch.Tensor]]:
    """Each layer's attention weights, in call order, from forward hooks that exist only inside the block.

    Our own hooks rather than ``output_attentions=True``, which makes transformers install permanent
    hooks on the shared model the first time it is asked.
    """
    captured: list[torch.Tensor] = []

    def hook_at(index: int) -> Any:
        def hook(_module: torch.nn.Module, _args: Any, output: Any) -> None:
            if is_paused(model):
                return
            weights = output[index] if isinstance(output, tuple) else None
            if weights is None:
                raise RuntimeError("the attention module returned no weights (is eager attention on?)")
            captured.append(weights)

        return hook

    handles = [m.register_forward_hook(hook_at(index)) for m, index in _attention_modules(model)]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()
