"""The decode loop: prefill once, then one token at a time from the KV cache, with logprobs and stops.

A hand-written loop rather than ``model.generate`` because every token needs its log-probability, its
alternatives, its text and offset as it is produced (for streaming), stop strings must cut the text
exactly, and a cancelled request must stop at the next token.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from service.engine.detokenize import IncrementalDetokenizer
from service.engine.prompt import PromptTokens
from service.engine.sampling import SamplingParams, choose
from service.models.loaded import LoadedModel


@dataclass
class GeneratedToken:
    id: int
    text: str
    offset: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class GenerationOutput:
    tokens: list[GeneratedToken]
    text: str
    finish_reason: str  # "stop" (end-of-sequence token), "length", "stop_sequence" or "cancelled"
    seed: int | None
    prefill_s: float
    decode_s: float

    @property
    def ids(self) -> list[int]:
        return [t.id for t in self.tokens]


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters could still be the start of a stop string (so must not stream yet)."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:size]):
                longest = max(longest, size)
                break
    return longest


class _StopWatcher:
    """Finds stop strings in the growing answer and decides which tokens are safe to stream."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = tuple(s for s in stops if s)
        self.cut: int | None = None

    def check(self, text: str, new_len: int) -> bool:
        for stop in self.stops:
            pos = text.find(stop, max(0, len(text) - new_len - len(stop) + 1))
            if pos >= 0 and (self.cut is None or pos < self.cut):
                self.cut = pos
        return self.cut is not None

    def safe_length(self, text: str) -> int:
        return len(text) - _held_back(text, self.stops)


def generate(
    lm: LoadedModel,
    prompt: PromptTokens,
    params: SamplingParams,
    on_token: Callable[[GeneratedToken], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> GenerationOutput:
    """Generate up to ``params.max_new_tokens`` tokens after ``prompt``. Runs on the model's thread."""
    seed = params.seed if params.seed is not None or params.greedy else secrets.randbits(62)
    generator: torch.Generator | None = None
    if seed is not None:
        generator = torch.Generator(device=lm.device).manual_seed(seed)
    detok = IncrementalDetokenizer(lm.tokenizer)
    watcher = _StopWatcher(params.stop)
    tokens: list[GeneratedToken] = []
    streamed = 0
    finish = "length"
    started = time.perf_counter()
    prefill_s = 0.0
    with torch.inference_mode():
        out = lm.model(input_ids=torch.tensor([prompt.ids], device=lm.device), use_cache=True)
        prefill_s = time.perf_counter() - started
        for _ in range(params.max_new_tokens):
            if cancelled is not None and cancelled():
                finish = "cancelled"
                break
            logits = out.logits[0, -1].float()
            token_id = choose(logits, params, generator)
            if token_id in lm.eos_ids:
                finish = "stop"
                break
            logprobs = torch.log_softmax(logits, dim=-1)
            top: list[tuple[int, float]] = []
            if params.top_logprobs:
                values, indices = torch.topk(logprobs, params.top_logprobs)
                top = list(zip(indices.tolist(), values.tolist(), strict=True))
            offset = len(detok.text)
            piece = detok.add(token_id)
            tokens.append(GeneratedToken(token_id, piece, offset, float(logprobs[token_id]), top))
            if watcher.check(detok.text, len(piece)):
                finish = "stop_sequence"
                break
            if on_token is not None:
                safe = watcher.safe_length(detok.text)
                while streamed < len(tokens) and tokens[streamed].offset + len(tokens[streamed].text) <= safe:
                    on_token(tokens[streamed])
                    streamed += 1
            if len(tokens) == params.max_new_tokens:
                break
            out = lm.model(
                input_ids=torch.tensor([[token_id]], device=lm.device),
                cache=out.cache,
                use_cache=True,
            )
    rest = detok.flush()
    if rest and tokens:
        tokens[-1].text += rest
        if watcher.check(detok.text, len(rest)):
            finish = "stop_sequence"
    text = detok.text
    if watcher.cut is not None:
        text = text[: watcher.cut]
        tokens = [t for t in tokens if t.offset < watcher.cut or (t.offset == watcher.cut and not t.text)]
        if tokens:
            last = tokens[-1]
            last.text = text[last.offset :]
    if on_token is not None:
        for token in tokens[streamed:]:
            on_token(token)
    return GenerationOutput(tokens, text, finish, seed, prefill_s, time.perf_counter() - started - prefill_s)
