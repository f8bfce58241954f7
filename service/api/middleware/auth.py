"""Optional API keys: ``Authorization: Bearer KEY``, checked against SHA-256 digests in constant time."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.errors import error_response
from service.api.middleware.paths import PUBLIC_PATHS, is_public


def key_matches(presented: str, digests: frozenset[bytes]) -> bool:
    """Compare the presented key's digest with every configured one, without stopping at a match, so the
    time taken says nothing about which digest (or how much of it) matched."""
    digest = hashlib.sha256(presented.encode()).digest()
    matched = False
    for candidate in digests:
        matched |= hmac.compare_digest(digest, candidate)
    return matched


def _bearer(scope: Scope) -> str | None:
    for name, value in scope.get("headers") or []:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


class ApiKeyAuth:
    """401 for every route but the ``is_public`` ones without a valid key (installed only when keys exist)."""

    def __init__(self, app: ASGIApp, digests: frozenset[bytes]) -> None:
        self.app = app
        self.digests = digests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or is_public(scope["path"]):
            await self.app(scope, receive, send)
            return
        token = _bearer(scope)
        if token is not None and key_matches(token, self.digests):
            await self.app(scope, receive, send)
            return
        challenge = 'Bearer realm="glassbox"' + (', error="invalid_token"' if token is not None else "")
        message = "invalid API key" if token is not None else "this server needs an API key: Authorization: Bearer KEY"
        response = error_response(401, "unauthorized", message, headers={"WWW-Authenticate": challenge})
        await response(scope, receive, send)


def document_bearer_auth(app: FastAPI) -> None:
    """OpenAPI: a bearer scheme on every operation outside ``PUBLIC_PATHS``, so /docs offers "Authorize"."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        schema = build()  # FastAPI's cached document; the changes below are idempotent
        schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
        schemes["apiKey"] = {"type": "http", "scheme": "bearer", "description": "An API key: `Bearer KEY`."}
        for path, item in schema.get("paths", {}).items():
            if path not in PUBLIC_PATHS:
                for operation in item.values():
                    operation["security"] = [{"apiKey": []}]
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
