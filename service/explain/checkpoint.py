"""What the engine needs from whoever runs it: a call between units of work, and a progress report.

The serving scheduler's ``Checkpoint`` fits this (it may stop the work by raising, or run a decode step of
other requests before returning); tests and scripts use :data:`NO_CHECKPOINT`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol

import numpy as np


class Checkpoint(Protocol):
    #: Set by the engine: a context restoring the model's serving state while other work runs in between.
    pause: Callable[[], AbstractContextManager[Any]] | None

    def __call__(self, interleave: bool = True) -> None: ...

    def progress(self, done: int, total: int, phase: str) -> None: ...


class _Never:
    pause: Callable[[], AbstractContextManager[Any]] | None = None

    def __call__(self, interleave: bool = True) -> None:
        return None

    def progress(self, done: int, total: int, phase: str) -> None:
        return None


NO_CHECKPOINT: Checkpoint = _Never()

#: ``on_rows(method, rows, values, over_units)``: rows (indices into the task's rows) that are final, with
#: their raw scores ``[*lead, len(rows), positions or units]``.
RowsCallback = Callable[[str, list[int], np.ndarray, bool], None]
