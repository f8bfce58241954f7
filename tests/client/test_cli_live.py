"""The command line against a live `glassbox serve` (uvicorn, subprocess) on the real default model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.client import Client
from tests.support.ready import wait_until_ready
from tests.support.redis_server import free_port

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration
QUESTION = "What is the capital of France?"
COUNTRIES = ["France", "Italy", "Spain", "Germany", "Japan", "Egypt", "Peru", "Canada", "Kenya", "Norway"]
COUNTRIES += ["Chile", "India", "Greece", "Poland", "Cuba", "Iran", "Mali", "Fiji", "Oman", "Laos"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("live") / "server.log"
    env = {**os.environ, "GLASSBOX_DEVICE": "cpu", "GLASSBOX_LOG_LEVEL": "warning", "PYTHONPATH": str(REPO)}
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, process, timeout=300)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def glassbox(*args: str, url: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GLASSBOX_URL": url, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "service", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    if check:
        assert done.returncode == 0, done.stderr
    return done


def requests_count(url: str, endpoint: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    prefix = f'glassbox_requests_total{{endpoint="{endpoint}",status="200"}} '
    return sum(float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix))


def test_cli_explain_prints_the_answer_and_the_strongest_source(server: str, tmp_path: Path) -> None:
    svg = tmp_path / "heatmap.svg"
    out = glassbox("explain", QUESTION, "--max-new-tokens", "12", "--svg", str(svg), url=server).stdout
    ex = Client(server).explain(messages=[{"role": "user", "content": QUESTION}], max_new_tokens=12, granularity="word")
    assert ex.cache == "hit"  # the same request the CLI made
    strongest = ex.top_sources(1)[0]
    assert f"answer: {ex.text}" in out and "Paris" in ex.text
    assert f"1. {strongest.text.strip()}  {strongest.score:+.4g}" in out

    root = ET.parse(svg).getroot()
    ns = {"s": "http://www.w3.org/2000/svg"}
    targets = [t.text for t in root.iterfind(".//s:g[@class='y-axis']/s:text", ns)]
    sources = [t.text for t in root.iterfind(".//s:g[@class='x-axis']/s:text", ns)]
    labels = " ".join(t.text or "" for t in root.iterfind(".//s:text[@class='axis-label']", ns))
    assert len(targets) == len(ex.rows) and len(sources) == len(ex.sources)
    assert "Paris" in "".join(targets) and "France" in sources and "target" in labels and "source" in labels
    assert len(root.findall(".//s:rect", ns)) == len(ex.rows) * len(ex.sources)


def test_cli_explain_json_is_the_response(server: str) -> None:
    out = glassbox("explain", QUESTION, "--max-new-tokens", "12", "--json", url=server).stdout
    body = json.loads(out)  # the default method: saliency
    assert "Paris" in body["text"] and body["methods"]["saliency"]["sequence"]["dims"] == ["source"]


def test_cli_generate(server: str) -> None:
    assert "Paris" in glassbox("generate", QUESTION, "--max-new-tokens", "12", url=server).stdout
    assert "Paris" in glassbox("generate", QUESTION, "--max-new-tokens", "12", "--stream", url=server).stdout


def _dataset(path: Path) -> None:
    with path.open("w") as f:
        for i, country in enumerate(COUNTRIES):
            if i == 7:
                f.write('{"id": "bad", "prompt": "x", "messages": []}\n')
            else:
                f.write(json.dumps({"id": f"q{i}", "prompt": f"The capital of {country} is", "target": " a city"}))
                f.write("\n")


def _lines(path: Path) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_cli_explain_batch_records_errors_and_resumes_without_redoing_rows(server: str, tmp_path: Path) -> None:
    data, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _dataset(data)
    command = ["explain-batch", str(data), "--out", str(out), "--concurrency", "2", "--json-summary", "--quiet"]
    command += ["--options", '{"scope": ["sequence"]}']
    before = requests_count(server, "/explain")

    # First run: stopped (SIGTERM, as a preempted pod is) once a few rows are written.
    env = {**os.environ, "GLASSBOX_URL": server, "PYTHONPATH": str(REPO)}
    first = subprocess.Popen([sys.executable, "-m", "service", *command], cwd=REPO, env=env, stdout=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while len(_lines(out)) < 5 and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.05)
    first.send_signal(signal.SIGTERM)
    stdout, _ = first.communicate(timeout=60)
    assert first.returncode == 130, stdout
    written = _lines(out)
    assert 5 <= len(written) < 20
    sent_first = requests_count(server, "/explain") - before

    second = json.loads(glassbox(*command, url=server).stdout.strip().splitlines()[-1])
    rows = _lines(out)
    assert second["rows"] == 20 and second["already_done"] == len(written)
    assert second["explained"] + second["failed"] == 20 - len(written)
    assert sorted(r["id"] for r in rows) == sorted([f"q{i}" for i in range(20) if i != 7] + ["bad"])
    [bad] = [r for r in rows if not r["ok"]]
    assert bad["id"] == "bad" and bad["error"]["param"] == "messages" and bad["error"]["message"]
    assert all(r["ok"] and r["response"]["methods"]["saliency"]["sequence"] for r in rows if r["id"] != "bad")
    # Each of the 19 good rows was explained once; the only repeats are rows in flight when the first run
    # stopped (at most --concurrency = 2), which the server finished (then a cache hit, or joined in flight).
    sent_total = requests_count(server, "/explain") - before
    repeats = sent_total - 19
    assert 0 <= repeats <= 2 and second["cache_hits"] <= repeats, (sent_first, sent_total, second, len(written))
    assert sent_first <= len(written) + 2

    third = json.loads(glassbox(*command, url=server).stdout.strip().splitlines()[-1])
    assert third["already_done"] == 20 and third["explained"] == third["failed"] == 0
    assert requests_count(server, "/explain") - before == sent_total
