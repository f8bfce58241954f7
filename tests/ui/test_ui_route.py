"""`/ui` is served from the package, with the right content types, and needs no key (its API calls do)."""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path

from fastapi.testclient import TestClient

from service.api.app import create_app
from service.api.routes.ui import STATIC
from service.settings import Settings


def test_ui_redirects_to_the_page_and_serves_its_files(app_client: TestClient) -> None:
    redirect = app_client.get("/ui", follow_redirects=False)
    assert redirect.status_code == 307 and redirect.headers["location"] == "ui/"
    page = app_client.get("/ui/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<glassbox-explanation" in page.text
    for name, kind in (("glassbox-explanation.js", "javascript"), ("app.js", "javascript"), ("ui.css", "text/css")):
        response = app_client.get(f"/ui/{name}")
        assert response.status_code == 200 and kind in response.headers["content-type"], name
        assert response.content == (STATIC / name).read_bytes()
    assert app_client.get("/ui/nope.js").status_code == 404


def test_ui_needs_no_key_but_the_api_does(tiny_settings: Settings) -> None:
    key = "ui-test-key"
    settings = tiny_settings.model_copy(update={"api_keys": hashlib.sha256(key.encode()).hexdigest()})
    with TestClient(create_app(settings)) as client:
        check_keys(client, key)


def check_keys(client: TestClient, key: str) -> None:
    assert client.get("/ui/").status_code == 200
    assert client.get("/ui/glassbox-explanation.js").status_code == 200
    assert client.get("/ui", follow_redirects=False).status_code == 307
    assert client.get("/uix").status_code == 401  # only /ui and what is under it
    assert client.get("/models").status_code == 401
    assert client.get("/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200


def test_the_static_files_ship_as_package_data() -> None:
    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    assert pyproject["tool"]["setuptools"]["package-data"]["service.ui"] == ["static/*"]
    assert {p.name for p in STATIC.iterdir()} >= {"index.html", "glassbox-explanation.js", "app.js", "ui.css"}
