"""Fixtures for the serving tests: apps with their own limits, a slowed-down model, fault injection."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.models import registry as registry_module
from service.models.loaded import LoadedModel
from service.settings import Settings
from tests.conftest import wait_ready
from tests.serving.slow_serve import slow_down


@contextlib.contextmanager
def patched_forward(lm: LoadedModel, wrapper: Callable[..., Any]) -> Iterator[None]:
    """Route the model's forward through ``wrapper(forward, *args, **kwargs)`` for the block (instance only)."""
    forward = lm.model.forward

    def patched(*args: Any, **kwargs: Any) -> Any:
        return wrapper(forward, *args, **kwargs)

    lm.model.forward = patched  # type: ignore[method-assign]
    try:
        yield
    finally:
        del lm.model.forward  # back to the class's forward


def oom_when(predicate: Callable[[dict[str, Any]], bool]) -> Callable[..., Any]:
    """A forward wrapper that raises torch's OOM error for calls whose kwargs match ``predicate``."""

    def wrapper(forward: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if predicate(kwargs):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected)")
        return forward(*args, **kwargs)

    return wrapper


@pytest.fixture
def serving_client(tiny_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Callable[..., TestClient]:
    """``make(step_delay_s=..., **settings)``: a started app on the tiny model with its own settings.

    A positive ``step_delay_s`` slows every forward pass, so a test can act while generation runs.
    """
    stack = contextlib.ExitStack()

    def make(step_delay_s: float = 0.0, **overrides: Any) -> TestClient:
        if step_delay_s > 0:
            load = registry_module.load_model
            monkeypatch.setattr(
                registry_module, "load_model", lambda *a: slow_down(load(*a), step_delay_s), raising=True
            )
        settings = tiny_settings.model_copy(update=overrides)
        client = stack.enter_context(TestClient(create_app(settings)))
        wait_ready(client)
        return client

    with stack:
        yield make


def wait_for(condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Run ``fn`` in a daemon thread; its result (or exception) lands in the returned list."""
    result: list[Any] = []

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as exc:
            result.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result
