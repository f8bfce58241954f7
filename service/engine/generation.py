"""The decode loop: prefill once, then one token at a time from the KV cache, with logprobs and stops.

A hand-written loop rather than ``model.generate`` because every token needs its log-probability, its
alternatives, its text and offset as it is produced (for streaming), stop strings must cut the text
exactly, and a cancelled request must stop at the next token.

The per-sequence part (choosing a token, logprobs, text, stops, streaming) is :class:`SequenceDecoder`; the
continuous batch (``service/serving/batcher.py``) drives many sharing one forward pass, so a request decodes
the same way alone or in a batch. There is no other decode loop.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from service.engine.detokenize import IncrementalDetokenizer
from service.engine.sampling import Pick, Sampler, SamplingParams
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
    # "stop" (end-of-sequence token), "length", "stop_sequence", "cancelled" or "timeout" (deadline passed)
    finish_reason: str
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


class SequenceDecoder:
    """One sequence's decoding state, fed one chosen token (id, logprob, alternatives) at a time.

    It owns everything per request: the seeded generator (lent to the batch's chooser through ``sampler``),
    incremental text, stop strings, and streaming with hold-back, so batching changes only where the
    logits come from.
    """

    def __init__(
        self,
        lm: LoadedModel,
        params: SamplingParams,
        on_token: Callable[[GeneratedToken], None] | None = None,
    ) -> None:
        self.params = params
        self.seed = params.seed if params.seed is not None or params.greedy else secrets.randbits(62)
        self._generator: torch.Generator | None = None
        if self.seed is not None:
            self._generator = torch.Generator(device=lm.device).manual_seed(self.seed)
        self._eos = lm.eos_ids
        self._detok = IncrementalDetokenizer(lm.tokenizer)
        self._watcher = _StopWatcher(params.stop)
        self._on_token = on_token
        self._streamed = 0
        self.tokens: list[GeneratedToken] = []
        self.finish_reason: str | None = None

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    @property
    def last_id(self) -> int:
        """The token to feed the model next (only meaningful while not done)."""
        return self.tokens[-1].id

    def stop(self, reason: str) -> None:
        """End the sequence from outside (cancelled, deadline); the first reason wins."""
        if self.finish_reason is None:
            self.finish_reason = reason

    @property
    def sampler(self) -> Sampler:
        """What :func:`~service.engine.sampling.pick` needs to choose this sequence's next token."""
        return self.params, self._generator

    def accept(self, chosen: Pick) -> bool:
        """Append the chosen token (plain values, already on the host); True when the sequence ended."""
        token_id = chosen.id
        if token_id in self._eos:
            self.finish_reason = "stop"
            return True
        offset = len(self._detok.text)
        piece = self._detok.add(token_id)
        self.tokens.append(GeneratedToken(token_id, piece, offset, chosen.logprob, chosen.top))
        if self._watcher.check(self._detok.text, len(piece)):
            self.finish_reason = "stop_sequence"
            return True
        if self._on_token is not None:
            safe = self._watcher.safe_length(self._detok.text)
            tokens = self.tokens
            settled = min(len(tokens), self._detok.settled)  # a held-back token may still get text at the end
            while self._streamed < settled and tokens[self._streamed].offset + len(tokens[self._streamed].text) <= safe:
                self._on_token(tokens[self._streamed])
                self._streamed += 1
        if len(self.tokens) == self.params.max_new_tokens:
            self.finish_reason = "length"
            return True
        return False

    def finish(self, prefill_s: float, decode_s: float) -> GenerationOutput:
        """Flush held-back text, cut at the first stop string, stream the rest; call once, at the end."""
        finish = self.finish_reason or "length"
        tokens = self.tokens
        rest = self._detok.flush()
        if rest and tokens:
            tokens[-1].text += rest
            if self._watcher.check(self._detok.text, len(rest)):
                finish = "stop_sequence"
        text = self._detok.text
        cut = self._watcher.cut
        if cut is not None:
            text = text[:cut]
            tokens = [t for t in tokens if t.offset < cut or (t.offset == cut and not t.text)]
            if tokens:
                last = tokens[-1]
                last.text = text[last.offset :]
        if self._on_token is not None:
            for token in tokens[self._streamed :]:
                self._on_token(token)
            self._streamed = len(tokens)
        return GenerationOutput(tokens, text, finish, self.seed, prefill_s, decode_s)
