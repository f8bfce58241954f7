"""Continuous batching: one model's generations share each decode step.

A request joins the running batch at the next step boundary after a solo prefill (so its first token is
exactly what it would be alone), decodes one token per step alongside the others, and leaves as soon as
it finishes, is cancelled or passes its deadline. Sampling, seeds, stop strings, logprobs and streaming
stay per request in :class:`~service.engine.generation.SequenceDecoder`.

The model's scheduler (``service/serving/scheduler.py``) owns the thread that runs it: it calls ``tick``
between other work, and inside long work at its checkpoints, so arrivals never wait for an explanation.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from service.engine.generation import GeneratedToken, GenerationOutput, SequenceDecoder
from service.engine.sampling import Pick, SamplingParams, pick
from service.errors import DeadlineExceeded, GlassboxError, InvalidRequest, ShuttingDown
from service.metrics import (
    BATCH_SIZE,
    MODEL_BATCHING,
    SERIAL_DECODES,
    TIME_PER_OUTPUT_TOKEN,
    TIME_TO_FIRST_TOKEN,
    TOKENS,
)
from service.models.loaded import LoadedModel, as_oom_error, is_oom
from service.serving.cache_support import SerialRow, cache_support, prefill_inputs
from service.serving.deadline import Deadline
from service.serving.kv_batch import KVBatch

log = logging.getLogger(__name__)

#: Seconds past its deadline that a request waits for the model thread to answer it before it answers
#: itself (a model thread stuck in one forward pass cannot hold a request past its deadline for long).
_DEADLINE_GRACE_S = 2.0

#: Prompt tokens prefilled between two decode steps (at least one whole prompt): bounds the stall that
#: joining requests cause to running streams.
_PREFILL_TOKENS_PER_STEP = 512


@dataclass(eq=False)
class _Job:
    """One request inside the batcher. Its future is resolved on the event loop, never on the model thread."""

    prompt_ids: list[int]
    decoder: SequenceDecoder
    deadline: Deadline | None
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[GenerationOutput]
    arrived: float  # time.monotonic() when the request arrived (for time to first token)
    enqueued: float = field(default_factory=time.perf_counter)
    queue_s: float = 0.0
    prefill_s: float = 0.0
    decode_started: float = 0.0
    abandoned: threading.Event = field(default_factory=threading.Event)
    #: A prefilled row that could not join the batch: the job waits to decode alone with it.
    held: SerialRow | None = None

    def stop_reason(self) -> str | None:
        if self.abandoned.is_set():
            return "cancelled"
        return self.deadline.stop_reason() if self.deadline is not None else None

    def resolve(self, output: GenerationOutput | None, error: BaseException | None = None) -> None:
        def settle() -> None:
            if self.future.done():
                return
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(output)  # type: ignore[arg-type]

        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            self.loop.call_soon_threadsafe(settle)


@dataclass(frozen=True)
class _CacheOutput:
    """A prefilled cache standing in for the model output it came from (to decode it alone)."""

    cache: Any


class Batcher:
    """Generation for one model: a queue of arrivals and the batch decoding on the model thread.

    The model thread belongs to the model's :class:`~service.serving.scheduler.Scheduler`, which calls
    :meth:`tick` (admit arrivals, decode one token for every row) whenever :meth:`has_work`; ``wake`` tells
    it that a request arrived.

    Whether rows share the batch is read once, here, from the model's
    :func:`~service.serving.cache_support.cache_support` (probed at load); a model that does not batch
    decodes one sequence at a time, and so does one whose cache, batchable by its class, then fails to merge.
    """

    def __init__(self, lm: LoadedModel, *, max_batch_size: int, wake: Callable[[], None] = lambda: None) -> None:
        self.lm = lm
        self.max_batch_size = max_batch_size
        self._wake = wake
        self._pending: deque[_Job] = deque()  # appended on the loop, popped on the model thread
        self._rows: list[_Job] = []  # model thread only (read on the loop between slices)
        self._kv = KVBatch(lm.device)
        self.support = cache_support(lm.model)
        self._mergeable = self.support.batching
        self._serial_reason = self.support.reason or "merge_failed"
        self._capacity = max_batch_size if self._mergeable else 1
        MODEL_BATCHING.labels(model=lm.name).set(1 if self._mergeable else 0)
        self.closed = False
        self._last_logits = "logits_to_keep" in inspect.signature(lm.model.forward).parameters

    async def generate(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        *,
        deadline: Deadline | None = None,
        on_token: Callable[[GeneratedToken], None] | None = None,
    ) -> tuple[GenerationOutput, float]:
        """Generate for one prompt; returns the output and the seconds it waited to be prefilled.

        The output's ``finish_reason`` is ``cancelled`` or ``timeout`` when the deadline stopped it. If the
        awaiting task is cancelled, the row stops at its next token.
        """
        if self.closed:
            raise ShuttingDown("the server is shutting down")
        if self.support.refusal is not None:
            raise InvalidRequest(f"model {self.lm.name!r} cannot generate: {self.support.refusal}")
        loop = asyncio.get_running_loop()
        decoder = SequenceDecoder(self.lm, params, on_token)
        arrived = deadline.started if deadline is not None else time.monotonic()
        job = _Job(prompt_ids, decoder, deadline, loop, loop.create_future(), arrived)
        self._pending.append(job)
        self._wake()
        try:
            if deadline is None:
                output = await job.future
            else:
                # The model thread stops a row at its deadline; this bounds the wait even if it never does.
                output = await asyncio.wait_for(asyncio.shield(job.future), deadline.remaining() + _DEADLINE_GRACE_S)
        except asyncio.CancelledError:
            job.abandoned.set()
            job.future.cancel()  # shielded: cancel it here, so a late answer from the model thread is dropped
            raise
        except TimeoutError:
            job.abandoned.set()
            job.future.cancel()
            log.error("model %s: a generation was not answered by its deadline; it has been abandoned", self.lm.name)
            raise DeadlineExceeded(
                f"generation did not finish within the request's {deadline.timeout_s:g} s deadline"  # type: ignore[union-attr]
            ) from None
        return output, job.queue_s

    @property
    def running(self) -> int:
        return len(self._rows)

    def has_work(self) -> bool:
        return bool(self._pending or self._rows)

    def fail_all(self, exc: BaseException) -> None:
        """Answer every queued and running request with ``exc`` (shutdown, or a bug) and start clean."""
        if isinstance(exc, ShuttingDown):
            self.closed = True
        error = exc if isinstance(exc, GlassboxError) else GlassboxError("internal error; it has been logged")
        for job in [*self._rows, *self._pending]:
            job.resolve(None, error)
        self._rows = []
        self._pending.clear()
        self._kv.keep([])

    # --- on the model thread ---

    def tick(self) -> None:
        """Admit arrivals (prefill), then one decode step for every row. Call under inference mode."""
        admitting: list[_Job] = []
        try:
            self._reap_pending()
            self._admit(admitting)
            if self._rows:
                self._step()
        except Exception as exc:  # a bug: fail everyone (the job being admitted too), keep the server up
            log.exception("batch step failed for model %s", self.lm.name)
            for job in admitting:
                self._fail(job, exc)
            self.fail_all(exc)

    def _reap_pending(self) -> None:
        """Answer queued requests whose client left or whose deadline passed while they wait (a full batch,
        or one that decodes alone, can keep them queued for long)."""
        stopped = [job for job in list(self._pending) if job.stop_reason() is not None]
        for job in stopped:
            with contextlib.suppress(ValueError):  # only this thread pops, but be safe
                self._pending.remove(job)
            job.queue_s = time.perf_counter() - job.enqueued
            job.decoder.stop(job.stop_reason() or "cancelled")
            self._finish(job)

    def _admit(self, admitting: list[_Job]) -> None:
        budget = _PREFILL_TOKENS_PER_STEP
        while self._pending and len(self._rows) < self._capacity and budget > 0:
            job = self._pending.popleft()
            admitting[:] = [job]
            job.queue_s = job.queue_s or time.perf_counter() - job.enqueued
            reason = job.stop_reason()
            if reason is not None:  # left or timed out while queued: no model time spent on it
                job.decoder.stop(reason)
                self._finish(job)
                continue
            if job.held is not None:  # prefilled earlier; its cache could not join, so it decodes alone now
                row, job.held = job.held, None
                self._join_serial(job, row)
                continue
            budget -= len(job.prompt_ids)
            self._prefill(job)
        admitting.clear()

    def _forward(self, **inputs: Any) -> tuple[torch.Tensor, Any]:
        """Next-token logits [rows, vocab] and the whole output (only the last position's logits where allowed)."""
        if self._last_logits:
            inputs["logits_to_keep"] = 1
        out = self.lm.model(**inputs)
        return out.logits[:, -1], out

    def _prefill(self, job: _Job) -> None:
        started = time.perf_counter()
        mode = self.support.decode_mode
        try:
            ids = torch.tensor([job.prompt_ids], device=self.lm.device)
            logits, out = self._forward(**prefill_inputs(mode, ids))
        except Exception as exc:
            self._fail(job, exc)
            return
        job.prefill_s = time.perf_counter() - started
        job.decode_started = time.perf_counter()
        TOKENS.labels(model=self.lm.name, kind="prompt").inc(len(job.prompt_ids))
        try:
            chosen = pick(logits, [job.decoder.sampler])[0]
        except Exception as exc:
            self._fail(job, exc)
            return
        if self._push(job, chosen):
            return
        if self._mergeable:
            self._join(job, out.cache, len(job.prompt_ids))
        else:
            self._join_serial(job, SerialRow(mode, out, job.prompt_ids, self.lm.device))

    def _join(self, job: _Job, cache: Any, length: int) -> None:
        """Add a prefilled row to the batch. A cache that passed the model's batching check but fails to
        merge does not fail the rows running: the model falls back to one sequence at a time, and this job
        waits, with its cache, to decode alone after them."""
        try:
            self._kv.add(cache, length)
        except Exception as exc:
            log.warning(
                "model %s: cache type %s failed to merge (%r); one sequence at a time from now on",
                self.lm.name,
                type(cache).__name__,
                exc,
            )
            self._mergeable, self._capacity, self._serial_reason = False, 1, "merge_failed"
            MODEL_BATCHING.labels(model=self.lm.name).set(0)
            if not self._rows:
                self._kv.keep([])  # drop whatever the failed merge left
            job.held = SerialRow("cache", _CacheOutput(cache), job.prompt_ids, self.lm.device)
            self._pending.appendleft(job)
            return
        self._rows.append(job)

    def _join_serial(self, job: _Job, row: SerialRow) -> None:
        """Start decoding a row alone; it waits (first in the queue) while others still run."""
        if self._rows:
            job.held = row
            self._pending.appendleft(job)
            return
        self._kv.keep([])
        self._kv.add_serial(row)
        SERIAL_DECODES.labels(model=self.lm.name, reason=self._serial_reason).inc()
        self._rows.append(job)

    def _push(self, job: _Job, chosen: Pick) -> bool:
        """Feed one row its chosen token; True when it is finished (and resolved)."""
        reason = job.stop_reason()
        if reason is not None:
            job.decoder.stop(reason)
            self._finish(job)
            return True
        try:
            first = not job.decoder.tokens
            done = job.decoder.accept(chosen)
        except Exception as exc:
            self._fail(job, exc)
            return True
        if first:
            TIME_TO_FIRST_TOKEN.labels(model=self.lm.name).observe(time.monotonic() - job.arrived)
        if done:
            self._finish(job)
        return done

    def _step(self) -> None:
        self._reap()
        rows = self._rows
        if not rows:
            return
        try:
            logits, out = self._forward(**self._kv.step_inputs([job.decoder.last_id for job in rows]))
            self._kv.after_step(out)
            picks = pick(logits, [job.decoder.sampler for job in rows])  # the step's one transfer to the host
        except Exception as exc:
            # The batch shares one forward pass: on failure (out of memory, typically) every row fails and
            # the cache is dropped, so the next request starts clean.
            if not is_oom(exc) and not isinstance(exc, GlassboxError):
                log.error("batched decode step failed for model %s (%d rows)", self.lm.name, len(rows), exc_info=exc)
                exc = GlassboxError("generation failed in a batched decode step; the error has been logged")
            for job in rows:
                self._fail(job, exc)
            self._rows = []
            self._kv.keep([])
            return
        BATCH_SIZE.labels(model=self.lm.name).observe(len(rows))
        done = [i for i, job in enumerate(rows) if self._push(job, picks[i])]
        if done:  # a finished row's slot takes the last row: the batch's order changes with the cache's
            self._rows = [rows[i] for i in self._kv.remove(done)]

    def _reap(self) -> None:
        """Drop rows whose client left or whose deadline passed, before spending a step on them."""
        stopped = [i for i, job in enumerate(self._rows) if job.stop_reason() is not None]
        if not stopped:
            return
        for i in stopped:
            job = self._rows[i]
            job.decoder.stop(job.stop_reason() or "cancelled")
            self._finish(job)
        self._rows = [self._rows[i] for i in self._kv.remove(stopped)]

    def _finish(self, job: _Job) -> None:
        decode_s = time.perf_counter() - job.decode_started if job.decode_started else 0.0
        try:
            output = job.decoder.finish(job.prefill_s, decode_s)
        except Exception as exc:
            self._fail(job, exc)
            return
        if output.tokens:
            TOKENS.labels(model=self.lm.name, kind="completion").inc(len(output.tokens))
        if len(output.tokens) > 1:
            TIME_PER_OUTPUT_TOKEN.labels(model=self.lm.name).observe(decode_s / (len(output.tokens) - 1))
        job.resolve(output)

    def _fail(self, job: _Job, exc: BaseException) -> None:
        if is_oom(exc):
            error: BaseException = as_oom_error(exc, self.lm)
        elif isinstance(exc, GlassboxError):
            error = exc
        else:
            log.error("generation failed for model %s", self.lm.name, exc_info=exc)
            error = GlassboxError("internal error; it has been logged")
        job.resolve(None, error)
