"""Debian's Chromium driven by Playwright (its own browser download is not reachable), and a page recorder that
keeps console errors, page errors and failed requests so a test can assert there were none."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field

from playwright.sync_api import Browser, ConsoleMessage, Page, Playwright, Request, Response

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium_path() -> str:
    """``$GLASSBOX_TEST_CHROMIUM``, else Debian's ``/usr/bin/chromium`` (scripts/install-browser.sh installs it)."""
    path = os.environ.get("GLASSBOX_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"no Chromium at {path}: run scripts/install-browser.sh (apt-get install chromium)")
    return path


def launch(playwright: Playwright) -> Browser:
    return playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)


@dataclass
class Recorder:
    """What went wrong on a page: console errors, uncaught exceptions, failed or 4xx/5xx requests."""

    problems: list[str] = field(default_factory=list)
    streams: list[Request] = field(default_factory=list)

    def attach(self, page: Page) -> Page:
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc}"))
        page.on("requestfailed", self._failed)
        page.on("response", self._response)
        return page

    def _response(self, response: Response) -> None:
        if response.status >= 400:
            self.problems.append(f"{response.status} {response.url}")
        elif "text/event-stream" in (response.headers.get("content-type") or ""):
            self.streams.append(response.request)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.problems.append(f"console: {message.text}")

    def _failed(self, request: Request) -> None:
        # Chromium reports a `Cache-Control: no-store` fetch stream read to its end as net::ERR_ABORTED
        # (microsoft/playwright#42742); a 200 event stream that ends so is not a failure (the tests check
        # that the page got its `done` event by what it shows).
        if request in self.streams and request.failure == "net::ERR_ABORTED":
            return
        self.problems.append(f"request failed: {request.url} {request.failure}")
