"""Errors the server really sends, documented and counted for what they are (issue 10)."""

from __future__ import annotations

import gzip
import logging

import pytest
from fastapi.testclient import TestClient

from service.metrics import FAILURES
from service.observability.logging import REDACTED, QuietUnsupportedUpgrade, RedactSecrets
from tests.test_api_generate import assert_error

BAD_BODIES = {
    "nested_1000": b'{"prompt": ' + b"[" * 1000 + b"]" * 1000 + b"}",
    "invalid_utf8": b'{"prompt": "\xff\xfe"}',
    "gzip": gzip.compress(b'{"prompt": "hello"}'),
    "integer_5000_digits": b'{"prompt": "x", "seed": ' + b"9" * 5000 + b"}",
}


def failures(reason: str) -> float:
    return FAILURES.labels(endpoint="/generate", reason=reason)._value.get()


@pytest.mark.parametrize("name", sorted(BAD_BODIES))
def test_body_failing_before_json_decoding_is_malformed_request(app_client: TestClient, name: str) -> None:
    """Before: 400 with type `http_error`, counted as an `internal` failure."""
    internal = failures("internal")
    headers = {"Content-Type": "application/json"}
    if name == "gzip":
        headers["Content-Encoding"] = "gzip"
    response = app_client.post("/generate", content=BAD_BODIES[name], headers=headers)
    assert_error(response, 400, "malformed_request")
    assert failures("internal") == internal


def test_trailing_slash_is_a_documented_404_not_a_redirect(app_client: TestClient) -> None:
    response = app_client.post("/generate/", json={"prompt": "x"}, follow_redirects=False)
    assert_error(response, 404, "not_found")


def test_wrong_method_is_405(app_client: TestClient) -> None:
    assert_error(app_client.get("/generate"), 405, "method_not_allowed")


def test_openapi_lists_the_statuses_the_server_sends(app_client: TestClient) -> None:
    paths = app_client.get("/openapi.json").json()["paths"]
    for path in ("/generate", "/explain"):
        responses = paths[path]["post"]["responses"]
        assert {"400", "404", "405", "408", "413", "422", "503", "504"} <= set(responses), path
        assert "307" not in responses  # never sent: redirect_slashes is off


def _record(logger: str, msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord(logger, logging.DEBUG, __file__, 1, msg, args, None)


@pytest.mark.parametrize(
    ("msg", "args"),
    [
        ("headers: %r", ([(b"authorization", b"Bearer sk-secret-1"), (b"cookie", b"sid=sk-secret-1")],)),
        ("< Authorization: Bearer sk-secret-1", ()),
        ("%s", ({"Cookie": "sid=sk-secret-1", "authorization": "Basic sk-secret-1"},)),
    ],
)
def test_redaction_removes_header_secrets_in_any_shape(msg: str, args: tuple[object, ...]) -> None:
    record = _record("websockets.server", msg, *args)
    assert RedactSecrets().filter(record)
    assert "sk-secret-1" not in record.getMessage() and REDACTED in record.getMessage()


def test_redaction_covers_extra_fields() -> None:
    record = _record("glassbox.access", "request")
    record.headers = {"authorization": "Bearer sk-secret-2"}
    RedactSecrets().filter(record)
    assert "sk-secret-2" not in str(record.headers)


def test_unsupported_upgrade_warnings_are_dropped_and_nothing_else() -> None:
    quiet = QuietUnsupportedUpgrade()
    assert not quiet.filter(_record("uvicorn.error", "Unsupported upgrade request."))
    assert quiet.filter(_record("uvicorn.error", "Exception in ASGI application"))
    assert quiet.filter(_record("glassbox", "Unsupported upgrade request."))
