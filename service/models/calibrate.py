"""Measure, once at load, how fast this model runs on this device: the cost model's seconds come from here."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel


@dataclass(frozen=True)
class Speed:
    """Token passes per second (one token through the model once, forward or backward) and decode step time."""

    passes_per_s: float  # marginal rate: forward keeping the graph + backward to the input embeddings
    forward_per_s: float  # forward without a graph
    call_s: float  # fixed cost of one pass (forward or backward), whatever its length
    decode_step_s: float  # one decode step of one sequence from its KV cache
    length: int  # tokens of the longer measured sequence


def _best(fn: Callable[[], None], repeats: int = 2) -> float:
    fn()  # lazy initialisation, allocator warm-up
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return max(best, 1e-6)


def calibrate(model: PreTrainedModel, device: torch.device, *, max_context: int, length: int = 128) -> Speed:
    """A few passes over ``length`` and ``length / 8`` random tokens (~1 s for a 135M model on 2 CPU cores):
    the time of a pass is a fixed cost plus a cost per token, and the two lengths tell them apart.

    Decode steps run as the batcher runs them, in the model's decode mode (its cache, its recurrent state,
    or a recompute of the whole sequence); finding that mode here is what probes it at load."""
    # service.serving's package imports the batcher, which imports this module's LoadedModel user: import late
    from service.serving.cache_support import SerialRow, cache_support, prefill_inputs

    mode = cache_support(model).decode_mode
    length = max(16, min(length, max_context - 4))
    short = length // 8
    vocab = int(model.config.get_text_config().vocab_size)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (1, length), generator=generator).to(device)
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]

    def forward() -> None:
        with torch.inference_mode():
            model(input_ids=ids, use_cache=False)

    def gradient(n: int = length) -> None:
        with torch.no_grad():
            embeds = model.get_input_embeddings()(ids[:, :n])
        leaf = embeds.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model(inputs_embeds=leaf, use_cache=False).logits
            torch.autograd.grad(logits[0, -1].log_softmax(-1)[0], leaf)

    def decode() -> None:
        with torch.inference_mode():
            out = model(**prefill_inputs(mode, ids[:, :4]))
            row = SerialRow(mode, out, ids[0, :4].tolist(), device)
            for _ in range(4):
                row.after(model(**row.step_inputs(int(ids[0, 0]))))

    def prefill() -> None:
        with torch.inference_mode():
            model(**prefill_inputs(mode, ids[:, :4]))

    try:
        for p in params:
            p.requires_grad_(False)
        forward_s = _best(forward)
        gradient_s = _best(gradient)
        short_s = min(_best(lambda: gradient(short)), gradient_s)
        prefill_s = _best(prefill)
        decode_total_s = _best(decode)
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
    decode_s = max((decode_total_s - prefill_s) / 4, 1e-6)
    per_token = max((gradient_s - short_s) / (length - short), gradient_s / length / 8)  # one forward + backward
    call = max(0.0, (short_s - per_token * short) / 2)
    return Speed(
        passes_per_s=2 / per_token,
        forward_per_s=length / max(forward_s - call, forward_s / 8),
        call_s=call,
        decode_step_s=decode_s,
        length=length,
    )
