"""API keys: every registered route needs one except the explicit public paths."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable

import pytest
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient
from pydantic import ValidationError
from starlette.routing import Mount, Route

from service.api.middleware.auth import key_matches
from service.api.middleware.paths import PUBLIC_PATHS, is_public
from service.settings import Settings
from tests.test_api_generate import assert_error

KEYS = ("s3cret-key-one", "another-key-two")
DIGESTS = ",".join(hashlib.sha256(k.encode()).hexdigest() for k in KEYS)


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path)


def routes(client: TestClient) -> list[tuple[str, str]]:
    """(method, path) of every registered route, routers included, in FastAPI's own walk order."""
    found = []
    for context in iter_route_contexts(client.app.routes):  # type: ignore[attr-defined]
        route = context.original_route
        if isinstance(route, Mount) and route.path == "/ui":  # static files, public: tests/ui/test_ui_route.py
            continue
        assert isinstance(route, Route) and context.path, f"unexpected route type {route!r}"
        for method in sorted(route.methods or {"GET"}):
            found.append((method, concrete(context.path)))
    return found


def test_every_route_needs_a_key_except_the_public_ones(serving_client: Callable[..., TestClient]) -> None:
    client = serving_client(api_keys=DIGESTS.upper())  # digests are case-insensitive hex
    walked = routes(client)
    assert {path for _, path in walked} >= PUBLIC_PATHS | {"/generate", "/models", "/openapi.json", "/docs"}
    for method, path in walked:
        response = client.request(method, path, json={} if method == "POST" else None)
        if is_public(path):
            assert response.status_code != 401, (method, path)
            continue
        assert response.status_code == 401, (method, path, response.status_code)
        if method != "HEAD":
            assert_error(response, 401, "unauthorized")
        assert response.headers["www-authenticate"].startswith("Bearer")
    for method, path in walked:  # a valid key opens every route
        response = client.request(method, path, headers={"Authorization": f"Bearer {KEYS[1]}"})
        assert response.status_code != 401, (method, path)


def test_wrong_or_malformed_keys_are_refused(serving_client: Callable[..., TestClient]) -> None:
    client = serving_client(api_keys=DIGESTS)
    request = {"prompt": "Hello", "max_new_tokens": 2}
    for header in (f"Bearer {KEYS[0]}x", f"Basic {KEYS[0]}", "Bearer", KEYS[0], f"Bearer {DIGESTS.split(',')[0]}"):
        response = client.post("/generate", json=request, headers={"Authorization": header})
        assert_error(response, 401, "unauthorized")
    wrong = client.post("/generate", json=request, headers={"Authorization": "Bearer nope"})
    assert 'error="invalid_token"' in wrong.headers["www-authenticate"]
    ok = client.post("/generate", json=request, headers={"Authorization": f"bearer {KEYS[0]}"})
    assert ok.status_code == 200


def test_openapi_declares_the_bearer_scheme_where_it_applies(serving_client: Callable[..., TestClient]) -> None:
    client = serving_client(api_keys=DIGESTS)
    spec = client.get("/openapi.json", headers={"Authorization": f"Bearer {KEYS[0]}"}).json()
    assert spec["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
    assert spec["paths"]["/generate"]["post"]["security"] == [{"apiKey": []}]
    assert "security" not in spec["paths"]["/healthz"]["get"]


def test_without_keys_configured_nothing_needs_one(app_client: TestClient) -> None:
    assert app_client.get("/models").status_code == 200
    assert "securitySchemes" not in app_client.get("/openapi.json").json().get("components", {})


def test_key_matching_uses_every_configured_digest() -> None:
    digests = frozenset(hashlib.sha256(k.encode()).digest() for k in KEYS)
    assert key_matches(KEYS[0], digests) and key_matches(KEYS[1], digests)
    assert not key_matches("s3cret-key-on", digests) and not key_matches("", digests)


@pytest.mark.parametrize("value", ["plain-text-key", "abc", hashlib.sha256(b"k").hexdigest()[:-1] + "g"])
def test_settings_refuse_keys_that_are_not_digests(value: str) -> None:
    with pytest.raises(ValidationError, match="SHA-256 hex digests"):
        Settings(api_keys=value)


def test_settings_accept_digest_lists() -> None:
    settings = Settings(api_keys=f" {DIGESTS} , ")
    assert len(settings.api_key_digests()) == 2
    assert Settings().api_key_digests() == frozenset()
