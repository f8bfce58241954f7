"""Shared fixtures: a tiny model folder, a loaded tiny model, and an API client on the tiny model."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.models.loaded import LoadedModel
from service.models.loader import load_model
from service.settings import Settings
from tests.support.tiny_model import build_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_settings(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(
        models=f"tiny={tiny_model_dir}",
        cache_dir=tmp_path_factory.mktemp("glassbox-cache"),
        device="cpu",
        offline=True,
    )


@pytest.fixture(scope="session")
def tiny_lm(tiny_settings: Settings) -> LoadedModel:
    name, source = tiny_settings.model_specs()[0]
    return load_model(name, source, tiny_settings)


def wait_ready(client: TestClient, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.02)
    raise AssertionError(f"app not ready after {timeout} s: {client.get('/readyz').json()}")


@pytest.fixture(scope="session")
def app_client(tiny_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(tiny_settings)) as client:
        wait_ready(client)
        yield client


@pytest.fixture(scope="session")
def default_settings() -> Settings:
    """The real default model (converted once into the user's cache folder, then reloaded in < 1 s)."""
    return Settings(device="cpu")


@pytest.fixture(scope="session")
def default_lm(default_settings: Settings) -> LoadedModel:
    name, source = default_settings.model_specs()[0]
    return load_model(name, source, default_settings)


@pytest.fixture(scope="session")
def default_client(default_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(default_settings)) as client:
        wait_ready(client, timeout=300)
        yield client
