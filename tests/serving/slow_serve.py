"""`glassbox serve` with every forward pass of the model slowed down (GLASSBOX_TEST_STEP_DELAY_S seconds),
so a test can act while a generation is still running. Used as a subprocess: ``python -m tests.serving.slow_serve
serve ...``. Everything else is the real CLI, uvicorn and app."""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any

from service import cli
from service.models import registry
from service.models.calibrate import calibrate
from service.models.loaded import LoadedModel
from service.settings import Settings


def slow_down(lm: LoadedModel, delay_s: float) -> LoadedModel:
    forward = lm.model.forward

    @functools.wraps(forward)
    def slowed(*args: Any, **kwargs: Any) -> Any:
        time.sleep(delay_s)
        return forward(*args, **kwargs)

    lm.model.forward = slowed  # type: ignore[method-assign]
    return lm


def main() -> None:
    delay = float(os.environ.get("GLASSBOX_TEST_STEP_DELAY_S", "0.05"))
    load = registry.load_model

    def slow_load(name: str, source: str, settings: Settings) -> LoadedModel:
        lm = slow_down(load(name, source, settings), delay)
        lm.speed = calibrate(lm.model, lm.device, max_context=lm.max_context)  # the cost model sees the delay
        if os.environ.get("GLASSBOX_TEST_CALIBRATE_SLOWED", "1") == "0":  # estimates 1000x too optimistic
            speed = lm.speed
            lm.speed = dataclasses.replace(
                speed, passes_per_s=speed.passes_per_s * 1000, forward_per_s=speed.forward_per_s * 1000, call_s=0.0
            )
        return lm

    registry.load_model = slow_load  # type: ignore[assignment]
    cli.main()


if __name__ == "__main__":
    main()
