"""The official `openai` client on the tiny-model app, through the app's own TestClient (an httpx.Client)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from openai import OpenAI

from tests.serving.conftest import serving_client

__all__ = ["serving_client"]


def openai_client(client: TestClient, **kwargs: Any) -> OpenAI:
    """Strict validation: a response that does not match the client's own types fails the test."""
    options: dict[str, Any] = {"api_key": "unused", "max_retries": 0, "_strict_response_validation": True}
    return OpenAI(base_url=f"{client.base_url}/v1", http_client=client, **{**options, **kwargs})


@pytest.fixture
def oai(app_client: TestClient) -> OpenAI:
    return openai_client(app_client)


@pytest.fixture
def make_oai() -> Callable[..., OpenAI]:
    return openai_client


CHAT = [{"role": "user", "content": "What is the capital of France?"}]
