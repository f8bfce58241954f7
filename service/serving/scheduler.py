"""One scheduler per model: the only thread that runs the model, in small units of work.

Policy (also in the README, "Scheduling"):

- Generation is a continuous batch (:class:`~service.serving.batcher.Batcher`); one *tick* admits
  arrivals and decodes one token for every running row.
- Other model work (an explanation) is a function that calls its :class:`Checkpoint` between units: between
  chunks of batched backward passes, integrated-gradients step batches, occlusion batches, and inside every
  forward and backward pass at each decoder layer (the explain engine installs those hooks), so no unit
  grows with the size of a request.
- At each checkpoint the scheduler stops the work if its deadline passed, its client left or the server is
  shutting down (:class:`Stopped`), and otherwise lets generation take its turn: when rows are waiting and
  the work has run at least ``share / (1 - share)`` times as long as the last decode tick, it runs decode
  ticks until generation has had ``(1 - share) / share`` times the time the work just ran (at least one
  tick). Time share is kept as an account, not per tick: a stretch that cannot be interrupted (a vmapped
  backward pass) is repaid with several ticks at the next checkpoint, so with ``share = 1/3`` generation
  keeps about two thirds of the device on average while an explanation runs, and time per output token
  stays near 1.5x its time alone. With nothing else waiting a checkpoint costs one clock read:
  explanations run at full speed.
- Work items run one at a time, first come first served (each holds its own activation-memory budget);
  while queued they still answer their deadline and their client's disconnect at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from service.errors import ClientClosedRequest, DeadlineExceeded, GlassboxError, ShuttingDown
from service.metrics import WORK_STOPPED
from service.models.loaded import LoadedModel, as_oom_error, is_oom
from service.serving.batcher import Batcher
from service.serving.deadline import Deadline

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Upper bound on joining the model thread at shutdown (it stops at its next checkpoint or decode step).
_JOIN_TIMEOUT_S = 10.0
#: Most work time that generation's turn repays at one checkpoint (bounds the explanation's pause).
_MAX_OWED_S = 2.0


class Stopped(Exception):
    """Raised at a checkpoint: the work must stop now (``reason``: timeout, cancelled or shutdown)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


ProgressFn = Callable[[int, int, str], None]


@dataclass(eq=False)
class _Work:
    fn: Callable[[Checkpoint], Any]
    deadline: Deadline | None
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    on_progress: ProgressFn | None
    kind: str
    enqueued: float = field(default_factory=time.perf_counter)
    abandoned: threading.Event = field(default_factory=threading.Event)

    def stop_reason(self) -> str | None:
        reason = self.deadline.stop_reason() if self.deadline is not None else None
        return reason or ("cancelled" if self.abandoned.is_set() else None)

    def resolve(self, result: Any = None, error: BaseException | None = None) -> None:
        def settle() -> None:
            if self.future.done():
                return
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(result)

        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            self.loop.call_soon_threadsafe(settle)


class Checkpoint:
    """What a unit of work calls between units (and the engine's layer hooks call inside passes).

    ``pause`` is set by the work itself: a context that puts the model back in its serving state (for
    example normal attention, no capture hooks) while other work runs in between.
    """

    def __init__(self, scheduler: Scheduler | None = None, work: _Work | None = None) -> None:
        self._scheduler = scheduler
        self._work = work
        self.pause: Callable[[], AbstractContextManager[Any]] | None = None

    def __call__(self, interleave: bool = True) -> None:
        """Stop here if the work must stop; with ``interleave``, let waiting generation take its turn."""
        if self._scheduler is not None and self._work is not None:
            self._scheduler._checkpoint(self._work, self.pause if interleave else None, interleave)

    def progress(self, done: int, total: int, phase: str) -> None:
        if self._work is not None and self._work.on_progress is not None:
            self._work.on_progress(done, total, phase)


#: For callers without a scheduler (tests, scripts): never stops, never interleaves.
NO_CHECKPOINT = Checkpoint()


class Scheduler:
    """Owns one model's thread: the generation batch and a queue of unit-yielding work."""

    def __init__(self, lm: LoadedModel, *, max_batch_size: int, work_share: float = 1 / 3) -> None:
        self.lm = lm
        self.batcher = Batcher(lm, max_batch_size=max_batch_size, wake=self._notify)
        self._ratio = work_share / max(1e-6, 1.0 - work_share)
        self._queue: deque[_Work] = deque()
        self._cv = threading.Condition()
        self._closing = False
        self._nested = False
        self._work_since = 0.0  # when the current work last got the device back (or nothing was waiting)
        self._last_tick_s = 0.0
        self._current: _Work | None = None
        self._thread = threading.Thread(target=self._loop, name=f"model-{lm.name}", daemon=True)
        self._thread.start()

    # --- on the event loop ---

    async def run(
        self,
        fn: Callable[[Checkpoint], T],
        *,
        deadline: Deadline | None,
        on_progress: ProgressFn | None = None,
        kind: str = "explain",
    ) -> T:
        """Run ``fn(checkpoint)`` on the model thread in its turn; its deadline and disconnect apply while
        it is queued (answered at once) and while it runs (at its next checkpoint)."""
        if self._closing:
            raise ShuttingDown("the server is shutting down")
        loop = asyncio.get_running_loop()
        work = _Work(fn, deadline, loop, loop.create_future(), on_progress, kind)
        unregister = (
            deadline.on_cancel(lambda: self._leave(work, ClientClosedRequest("the client disconnected")))
            if deadline is not None
            else (lambda: None)
        )
        with self._cv:
            self._queue.append(work)
            self._cv.notify()
        try:
            timeout = deadline.remaining() if deadline is not None else None
            done, _ = await asyncio.wait({work.future}, timeout=timeout)
            if not done:  # the deadline passed first (queued, or running past its last checkpoint)
                assert deadline is not None
                self._leave(work, _timeout(deadline, work.kind))
            return await work.future  # type: ignore[no-any-return]
        except asyncio.CancelledError:
            work.abandoned.set()
            raise
        finally:
            unregister()

    def _leave(self, work: _Work, error: GlassboxError) -> None:
        """The waiter gives up: the work is skipped if still queued, stopped at its next checkpoint if not."""
        work.abandoned.set()  # counted in WORK_STOPPED when the model thread stops it (or skips it)
        if not work.future.done():
            work.future.set_exception(error)

    def _notify(self) -> None:
        with self._cv:
            self._cv.notify()

    @property
    def busy(self) -> bool:
        return self._current is not None

    async def close(self) -> None:
        """Stop at the next checkpoint or decode step; whatever is left fails with 503 shutting down."""
        with self._cv:
            self._closing = True
            self._cv.notify()
        await asyncio.to_thread(self._thread.join, _JOIN_TIMEOUT_S)

    # --- on the model thread ---

    def _loop(self) -> None:
        try:
            while True:
                with self._cv:
                    while not self._closing and not self.batcher.has_work() and not self._queue:
                        self._cv.wait()
                    if self._closing:
                        return
                    work = self._queue.popleft() if self._queue else None
                if self.batcher.has_work():
                    with torch.inference_mode():
                        self.batcher.tick()
                if work is not None:
                    self._run(work)
        except BaseException:  # a bug: fail everyone rather than hang them
            log.exception("scheduler of model %s failed", self.lm.name)
        finally:
            self._closing = True
            self.batcher.fail_all(ShuttingDown("the server is shutting down"))
            with self._cv:
                queued, self._queue = list(self._queue), deque()
            for work in queued:
                work.resolve(error=ShuttingDown("the server is shutting down"))

    def _run(self, work: _Work) -> None:
        reason = work.stop_reason()
        if reason is not None:  # left or timed out while queued: no model time spent on it
            self._stopped(work, reason)
            return
        self._current = work
        self._work_since = time.perf_counter()
        self._last_tick_s = 0.0
        try:
            result = work.fn(Checkpoint(self, work))
        except Stopped as stop:
            self._stopped(work, stop.reason)
        except Exception as exc:
            work.resolve(error=self._error(exc, work))
        else:
            work.resolve(result)
        finally:
            self._current = None

    def _stopped(self, work: _Work, reason: str) -> None:
        WORK_STOPPED.labels(model=self.lm.name, kind=work.kind, reason=reason).inc()
        if reason == "shutdown":
            work.resolve(error=ShuttingDown("the server is shutting down; this work was stopped"))
        elif reason == "timeout" and work.deadline is not None:
            work.resolve(error=_timeout(work.deadline, work.kind))
        else:
            work.resolve(error=ClientClosedRequest("the client disconnected"))

    def _error(self, exc: Exception, work: _Work) -> GlassboxError:
        if is_oom(exc):
            return as_oom_error(exc, self.lm)
        if isinstance(exc, GlassboxError):
            return exc
        log.error("%s failed for model %s", work.kind, self.lm.name, exc_info=exc)
        return GlassboxError("internal error; it has been logged")

    def _checkpoint(
        self, work: _Work, pause: Callable[[], AbstractContextManager[Any]] | None, interleave: bool = True
    ) -> None:
        if self._nested:
            return
        reason = "shutdown" if self._closing else work.stop_reason()
        if reason is not None:
            raise Stopped(reason)
        now = time.perf_counter()
        if not self.batcher.has_work():
            self._work_since = now  # nobody waited: this time is owed to no one
            return
        if not interleave:
            return
        ran = now - self._work_since
        if ran < self._last_tick_s * self._ratio:
            return
        owed = min(ran, _MAX_OWED_S) / self._ratio
        with self._paused(pause):
            while True:
                began = time.perf_counter()
                self.batcher.tick()
                self._last_tick_s = time.perf_counter() - began
                if time.perf_counter() - now >= owed or self._closing or not self.batcher.has_work():
                    break
        self._work_since = time.perf_counter()

    @contextlib.contextmanager
    def _paused(self, pause: Callable[[], AbstractContextManager[Any]] | None) -> Iterator[None]:
        self._nested = True
        try:
            with pause() if pause is not None else contextlib.nullcontext(), torch.inference_mode():
                yield
        finally:
            self._nested = False


def _timeout(deadline: Deadline, kind: str) -> DeadlineExceeded:
    return DeadlineExceeded(
        f"the request's deadline of {deadline.timeout_s:g} s passed during its {kind}; ask for less work or a "
        "longer X-Request-Timeout-Ms (up to the server's limit)"
    )
