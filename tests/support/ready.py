"""Waiting for a Glassbox server to answer ``/readyz`` 200 (tests, the load test and the benchmark)."""

from __future__ import annotations

import subprocess
import time

import httpx


def wait_until_ready(url: str, process: subprocess.Popen[bytes] | None = None, timeout: float = 60) -> None:
    """Poll ``url``/readyz; fail early if ``process`` exits, and after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode} before it was ready")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout:.0f} s")
