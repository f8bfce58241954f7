"""The /ui page in Chromium against a real `glassbox serve` on the default model, used as a person would.

The 135M default model's attributions are what they are, and the tests pick the questions that show them:
- For the "Paris" row alone, no method puts "France" first among the prompt's words (the answer's own earlier
  "capital of France" carries it). Asked "why Paris rather than London?" (the contrast box), input × gradient
  and saliency both put "France" first: that is the test.
- With two documents, the model's attribution favours the first document; the supporting one is put after a
  distractor so that position alone cannot make the test pass.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page

from tests.support.ready import wait_until_ready
from tests.support.redis_server import free_port
from tests.ui.browser import Recorder

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
QUESTION = "What is the capital of France?"
NILE = "The Nile is a long river in Africa."
PARIS = "Paris is the capital of France."


@contextlib.contextmanager
def serve(tmp: Path, **env: str) -> Iterator[str]:
    """`glassbox serve` (uvicorn) on a free loopback port with the default model, stopped on exit."""
    port = free_port()
    log = tmp / f"server-{port}.log"
    environ = {**os.environ, "GLASSBOX_HOST": "127.0.0.1", "GLASSBOX_PORT": str(port), "GLASSBOX_DEVICE": "cpu"}
    environ |= {"GLASSBOX_CACHE_ENABLED": "false", "GLASSBOX_LOG_FORMAT": "text", **env}
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "serve"], cwd=REPO, env=environ, stdout=sink, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, process, timeout=300)
        yield url
    except RuntimeError as exc:
        raise AssertionError(f"{exc}:\n{log.read_text(errors='replace')}") from exc
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve(tmp_path_factory.mktemp("ui-server")) as url:
        yield url


def idle(page: Page) -> None:
    """Wait until the page has no request in flight (the app keeps a count on <body data-busy>)."""
    page.wait_for_function("document.body.dataset.busy === '0'", timeout=180_000)
    assert "error" not in (page.get_attribute("#status", "class") or ""), page.text_content("#status")


def open_page(page: Page, server: str) -> Page:
    page.goto(f"{server}/ui")
    idle(page)
    page.uncheck("#stream-explain")  # the non-streamed /explain path
    return page


def ask(page: Page, question: str) -> None:
    page.fill("#input", question)
    page.click("#send")
    idle(page)


def prompt_sources(page: Page) -> list[dict[str, float | str]]:
    return page.eval_on_selector_all(
        "glassbox-explanation .src",
        "els => els.map(e => ({text: e.textContent, score: Number(e.dataset.score), alpha: Number(e.dataset.alpha)}))",
    )


def strongest(page: Page) -> str:
    return str(max(prompt_sources(page), key=lambda s: s["alpha"])["text"])


def test_france_drives_paris_then_granularity_method_attention_keyboard(
    page: Page, server: str, recorder: Recorder, tmp_path: Path
) -> None:
    open_page(page, server)
    ask(page, QUESTION)
    assert "Paris" in (page.text_content("#log li.assistant") or "")
    page.screenshot(path=str(tmp_path / "1-answer.png"), full_page=True)

    # hovering an answer token shows its probability and alternatives (merged from /generate's top_logprobs)
    page.hover("glassbox-explanation .tok:has-text('Paris')")
    tip = page.locator("glassbox-explanation .tip").text_content() or ""
    assert "p = " in tip and tip.count("%") >= 3

    page.click("glassbox-explanation .tok:has-text('Paris')")
    assert page.text_content("#contrast-target") == "“Paris”"
    page.fill("#contrast", "London")
    page.click("#contrast-form button")
    idle(page)
    assert strongest(page) == "France", prompt_sources(page)
    assert "London" in (page.text_content("glassbox-explanation .meta") or "")
    page.screenshot(path=str(tmp_path / "2-why-paris.png"), full_page=True)

    before = prompt_sources(page)
    assert all(float(s["score"]) >= 0 for s in before)  # the default method, saliency: a magnitude
    assert "magnitude" in (page.text_content("glassbox-explanation .legend") or "")
    page.select_option("#granularity", "sentence")
    idle(page)
    sentence = prompt_sources(page)
    assert [s["text"] for s in sentence] == [QUESTION]
    page.select_option("#granularity", "word")
    page.select_option("#method", "input_x_gradient")
    idle(page)
    after = prompt_sources(page)
    assert [s["text"] for s in after] == [s["text"] for s in before]
    assert [s["score"] for s in after] != [s["score"] for s in before]
    assert "magnitude" not in (page.text_content("glassbox-explanation .legend") or "")  # signed now
    page.screenshot(path=str(tmp_path / "3-input-x-gradient.png"), full_page=True)

    # keyboard: Tab reaches the answer tokens (one tab stop), arrows move, Enter selects
    page.fill("#contrast", "")
    page.focus("#tab-text")
    for _ in range(40):
        page.keyboard.press("Tab")
        if page.evaluate("() => document.getElementById('view').shadowRoot.activeElement?.classList.contains('tok')"):
            break
    else:
        raise AssertionError("Tab never reached an answer token")
    for _ in range(5):
        page.keyboard.press("ArrowRight")
    page.keyboard.press("Enter")
    assert page.text_content("glassbox-explanation .tok.sel") == " Paris"

    # attention: the heatmap for the chosen layer and head, the grid, the rollout
    page.click("#tab-attention")
    idle(page)
    page.fill("#layer", "3")
    page.dispatch_event("#layer", "change")
    page.fill("#head", "2")
    page.dispatch_event("#head", "change")
    idle(page)
    heatmap = page.locator("glassbox-explanation canvas.map")
    assert heatmap.get_attribute("data-drawn") == "1"
    assert (heatmap.get_attribute("data-layer"), heatmap.get_attribute("data-head")) == ("3", "2")
    assert float(heatmap.get_attribute("data-max") or 0) > 0
    assert page.locator("glassbox-explanation canvas.rollout[data-drawn='1']").count() == 1
    assert page.locator("glassbox-explanation .grid canvas").count() >= 9
    page.screenshot(path=str(tmp_path / "4-attention.png"), full_page=True)

    # Layers tab: the logit lens. The answer is greedy, so at the last layer (the top row) every answer token is
    # the model's own top token: each cell is bold and shows that token's text.
    page.click("#tab-lens")
    idle(page)
    rows = page.locator("glassbox-explanation .lens tbody tr")
    assert rows.count() == 30 + 1  # the embeddings and SmolLM2's 30 decoder layers
    answer = page.eval_on_selector_all("glassbox-explanation .lens thead th[data-target]", "els => els.length")
    top = page.eval_on_selector_all(
        "glassbox-explanation .lens tbody tr:first-child td", "els => els.map(e => [e.className, e.dataset.rank])"
    )
    assert len(top) == answer > 0
    assert all("hit" in cls.split() and rank == "1" for cls, rank in top)
    page.screenshot(path=str(tmp_path / "5-lens.png"), full_page=True)

    with page.expect_download() as download:
        page.click("#dl-json")
    assert download.value.suggested_filename == "explanation.json"
    assert recorder.problems == []


def test_documents_panel_highlights_the_supporting_document(
    page: Page, server: str, recorder: Recorder, tmp_path: Path
) -> None:
    open_page(page, server)
    page.click("#docs-box summary")
    page.click("#add-doc")
    page.click("#add-doc")
    page.locator(".doc-text").nth(0).fill(NILE)
    page.locator(".doc-text").nth(1).fill(PARIS)
    page.select_option("#method", "saliency")
    page.select_option("#granularity", "segments")
    idle(page)
    ask(page, QUESTION)
    assert "Paris" in (page.text_content("#log li.assistant") or "")
    sources = prompt_sources(page)
    assert [s["text"] for s in sources] == [NILE, PARIS]
    assert page.locator(".doc.support .doc-text").input_value() == PARIS
    shares = page.eval_on_selector_all(".doc-shares .share", "els => els.map(e => [e.dataset.label, +e.dataset.share])")
    assert max(shares, key=lambda s: s[1])[0] == "doc 2"
    page.click("#log li.assistant .sent")  # an answer sentence: its documents
    assert page.locator("glassbox-explanation .tok.sel").count() >= 5
    assert page.locator(".doc.support").count() == 1
    page.screenshot(path=str(tmp_path / "5-documents.png"), full_page=True)
    assert recorder.problems == []


@pytest.fixture
def narrow(browser: Browser, recorder: Recorder) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 320, "height": 640})
    yield recorder.attach(context.new_page())
    context.close()


def test_the_page_is_readable_at_320_px_wide(narrow: Page, server: str, recorder: Recorder, tmp_path: Path) -> None:
    open_page(narrow, server)
    narrow.fill("#max-tokens", "8")
    ask(narrow, QUESTION)
    overflow = narrow.evaluate("() => document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0
    narrow.screenshot(path=str(tmp_path / "6-320px.png"), full_page=True)
    assert recorder.problems == []


def test_the_page_works_with_api_keys_on(page: Page, recorder: Recorder, tmp_path: Path) -> None:
    """The page loads without a key; the API answers 401 until the key is typed, then every call carries it."""
    key = "ui-live-key"
    with serve(tmp_path, GLASSBOX_API_KEYS=hashlib.sha256(key.encode()).hexdigest()) as url:
        page.goto(f"{url}/ui")
        page.wait_for_function("document.body.dataset.busy === '0'", timeout=60_000)
        assert "API key" in (page.text_content("#status") or "")  # /models said 401
        assert [p for p in recorder.problems if "401" not in p] == []
        recorder.problems.clear()
        page.fill("#key", key)
        page.dispatch_event("#key", "change")
        idle(page)
        assert page.eval_on_selector_all("#model option", "os => os.length") >= 1
        assert page.evaluate("() => sessionStorage.getItem('glassbox-key')") == key
        page.uncheck("#stream-explain")
        page.fill("#max-tokens", "8")
        ask(page, QUESTION)
        assert page.locator("glassbox-explanation .tok").count() >= 1
        assert recorder.problems == []
