"""<glassbox-explanation> on saved responses, in Chromium, with no Glassbox server: colouring, selection, scales,
the wire's array encodings (dense, sparse, base64 float32/float16), export, keyboard, and a 2,000-token prompt."""

from __future__ import annotations

import base64
import functools
import http.server
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from playwright.sync_api import Page

from service.api.routes.ui import STATIC
from tests.ui.browser import Recorder

DATA = Path(__file__).parent / "data"

HARNESS = """<!doctype html><meta charset="utf-8"><link rel="icon" href="data:,">
<glassbox-explanation id="view"></glassbox-explanation>
<script type="module">
import * as gb from "./glassbox-explanation.js";
window.gb = gb;
window.show = (r, attrs = {}) => {
  const el = document.getElementById("view");
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  el.response = r;
};
window.harnessReady = true;
</script>"""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A tiny static server over the component's files and the saved responses (ES modules need http)."""
    root = tmp_path_factory.mktemp("ui-site")
    shutil.copytree(STATIC, root, dirs_exist_ok=True)
    shutil.copy(DATA / "france.json", root / "france.json")
    (root / "harness.html").write_text(HARNESS)
    handler = functools.partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def harness(page: Page, site: str) -> Page:
    page.goto(f"{site}/harness.html")
    page.wait_for_function("window.harnessReady === true")
    return page


def saved() -> dict[str, Any]:
    return json.loads((DATA / "france.json").read_text())


def prompt_scores(page: Page) -> dict[str, float]:
    pairs = page.eval_on_selector_all(
        "glassbox-explanation .src", "els => els.map(e => [e.textContent, Number(e.dataset.score)])"
    )
    return dict(pairs)


def strongest(page: Page) -> str:
    """The prompt source with the highest colour intensity (data-alpha, set from the same value as the colour)."""
    alphas = page.eval_on_selector_all(
        "glassbox-explanation .src", "els => els.map(e => [e.textContent, Number(e.dataset.alpha)])"
    )
    return max(alphas, key=lambda pair: pair[1])[0]


def test_component_renders_the_sequence_vector_and_summary(harness: Page, recorder: Recorder) -> None:
    response = saved()
    harness.evaluate("r => show(r, {method: 'input_x_gradient'})", response)
    summary = harness.locator("glassbox-explanation .summary")
    assert summary.text_content() == response["summary"]
    expected = response["methods"]["input_x_gradient"]["sequence"]["data"]
    texts = [s["text"] for s in response["sources"][: response["sequence_sources"]]]
    assert prompt_scores(harness) == pytest.approx(dict(zip(texts, expected, strict=True)), rel=1e-6)
    top = texts[int(np.argmax(np.abs(expected)))]
    assert strongest(harness) == top
    assert harness.locator("glassbox-explanation .tok").count() == len(response["target_tokens"])
    assert recorder.problems == []


def test_clicking_an_answer_token_colours_the_prompt_by_its_row(harness: Page) -> None:
    response = saved()
    harness.evaluate("r => show(r, {method: 'input_x_gradient'})", response)
    harness.click("glassbox-explanation .tok:has-text('Paris')")
    row = response["methods"]["input_x_gradient"]["tokens"]["data"][response["rows"].index(5)]
    scores = prompt_scores(harness)
    assert list(scores.values()) == pytest.approx(row[: len(scores)], rel=1e-6)
    assert strongest(harness) == "France"  # with the saved contrast "… is London": why Paris rather than London
    assert harness.locator("glassbox-explanation .tok.sel").count() == 1
    # shift-click extends the selection to a span: the sum of its rows
    harness.click("glassbox-explanation .tok:has-text('is')", modifiers=["Shift"])
    assert harness.locator("glassbox-explanation .tok.sel").count() == 2
    data = response["methods"]["input_x_gradient"]["tokens"]["data"]
    summed = [a + b for a, b in zip(data[4], data[5], strict=True)]
    assert list(prompt_scores(harness).values()) == pytest.approx(summed[: len(scores)], rel=1e-5)


def hue(css: str) -> tuple[int, ...]:
    """The rgb of an `rgb()`/`rgba()` colour, without its alpha."""
    return tuple(int(float(x)) for x in css[css.index("(") + 1 : -1].split(",")[:3])


def test_signed_methods_get_a_diverging_scale_and_magnitudes_a_sequential_one(harness: Page) -> None:
    harness.evaluate("r => show(r, {method: 'input_x_gradient'})", saved())
    colours = harness.eval_on_selector_all(
        "glassbox-explanation .src", "els => els.map(e => [Number(e.dataset.score), e.style.backgroundColor])"
    )
    positive = {hue(c) for v, c in colours if v > 0}
    negative = {hue(c) for v, c in colours if v < 0}
    assert positive and negative and positive.isdisjoint(negative)
    harness.evaluate("() => document.getElementById('view').setAttribute('method', 'saliency')")
    hues = harness.eval_on_selector_all("glassbox-explanation .src", "els => els.map(e => e.style.backgroundColor)")
    assert len({hue(c) for c in hues}) == 1  # one hue, intensity by magnitude
    assert "magnitude" in (harness.locator("glassbox-explanation .legend").text_content() or "")
    # a response's own `signed` field wins over the built-in table
    response = saved()
    response["methods"]["saliency"]["signed"] = True
    harness.evaluate("r => show(r, {method: 'saliency'})", response)
    assert "signed" in (harness.locator("glassbox-explanation .legend").text_content() or "")


def test_intensity_and_cutoff_change_the_colouring(harness: Page) -> None:
    harness.evaluate("r => show(r, {method: 'input_x_gradient'})", saved())

    def alphas() -> list[float]:
        return harness.eval_on_selector_all("glassbox-explanation .src", "els => els.map(e => Number(e.dataset.alpha))")

    before = alphas()
    harness.evaluate("() => document.getElementById('view').setAttribute('intensity', '3')")
    brighter = alphas()
    assert all(b >= a for a, b in zip(before, brighter, strict=True)) and sum(brighter) > sum(before)
    harness.evaluate("() => document.getElementById('view').setAttribute('cutoff', '0.2')")
    shares = harness.eval_on_selector_all("glassbox-explanation .src", "els => els.map(e => Number(e.dataset.share))")
    assert [a == 0 for a in alphas()] == [s < 0.2 for s in shares]
    assert any(s < 0.2 for s in shares)


def test_the_wire_encodings_decode_to_the_same_values(harness: Page) -> None:
    values = np.array([[0.5, -1.25, 3.0, 0.0], [2.0, 0.25, -0.5, 1.0]], dtype=np.float32)

    def b64(array: np.ndarray, dtype: str) -> str:
        return base64.b64encode(array.astype(np.dtype(dtype).newbyteorder("<")).tobytes()).decode()

    dims, shape = ["target", "source"], [2, 4]
    dense = {"dims": dims, "shape": shape, "encoding": "json", "data": values.tolist()}
    f32 = {"dims": dims, "shape": shape, "encoding": "base64", "dtype": "float32", "data": b64(values, "float32")}
    f16 = {"dims": dims, "shape": shape, "encoding": "base64", "dtype": "float16", "data": b64(values, "float16")}
    order = np.argsort(-np.abs(values), axis=-1)[:, :2].astype(np.int32)
    kept = np.take_along_axis(values, order, -1)
    sparse_json = {"dims": dims, "shape": shape, "encoding": "json", "data": kept.tolist(), "indices": order.tolist()}
    sparse_b64 = {**f32, "data": b64(kept, "float32"), "indices": b64(order, "int32")}
    expected_sparse = np.zeros_like(values)
    np.put_along_axis(expected_sparse, order, kept, -1)
    for array, expected in (
        (dense, values),
        (f32, values),
        (f16, values),
        (sparse_json, expected_sparse),
        (sparse_b64, expected_sparse),
    ):
        got = harness.evaluate("a => Array.from(gb.decodeArray(a).values)", array)
        assert got == pytest.approx(expected.ravel().tolist()), array["encoding"]


def test_keyboard_moves_between_answer_tokens_and_enter_selects(harness: Page) -> None:
    harness.evaluate("r => show(r, {method: 'input_x_gradient'})", saved())
    harness.locator("glassbox-explanation .tok").first.focus()
    for _ in range(5):
        harness.keyboard.press("ArrowRight")
    focused = harness.evaluate("() => document.getElementById('view').shadowRoot.activeElement.dataset.t")
    assert focused == "5"
    harness.keyboard.press("Enter")
    assert harness.locator("glassbox-explanation .tok.sel").text_content() == " Paris"
    harness.keyboard.press("Escape")
    assert harness.locator("glassbox-explanation .tok.sel").count() == 0
    labels = harness.eval_on_selector_all(
        "glassbox-explanation .src", "els => els.map(e => e.getAttribute('aria-label'))"
    )
    assert all("score" in label for label in labels)


def test_attention_view_draws_the_chosen_layer_and_head(harness: Page) -> None:
    harness.evaluate("r => show(r, {method: 'attention', view: 'attention', layer: '29', head: '2'})", saved())
    heatmap = harness.locator("glassbox-explanation canvas.map")
    assert heatmap.get_attribute("data-drawn") == "1"
    assert (heatmap.get_attribute("data-layer"), heatmap.get_attribute("data-head")) == ("29", "2")
    assert harness.locator("glassbox-explanation .grid canvas").count() == 2 * 3
    harness.click("glassbox-explanation .grid canvas[data-layer='0'][data-head='1']")
    heatmap = harness.locator("glassbox-explanation canvas.map")
    assert (heatmap.get_attribute("data-layer"), heatmap.get_attribute("data-head")) == ("0", "1")
    assert float(heatmap.get_attribute("data-max") or 0) > 0


def test_export_gives_an_svg_and_a_png(harness: Page, tmp_path: Path) -> None:
    harness.evaluate("r => show(r, {method: 'input_x_gradient'})", saved())
    svg = harness.evaluate("() => document.getElementById('view').toSVG()")
    assert svg.startswith("<svg") and "France" in svg and "rgba(" in svg
    png = harness.evaluate(
        """async () => {
        const blob = await document.getElementById('view').toPNG();
        return Array.from(new Uint8Array(await blob.arrayBuffer()).slice(0, 8));
    }"""
    )
    assert bytes(png) == b"\x89PNG\r\n\x1a\n"
    harness.screenshot(path=str(tmp_path / "component.png"))


def long_response(n: int = 2000, answer: int = 6) -> dict[str, Any]:
    """A synthetic 2,000-word prompt with base64 rows: the size a RAG prompt reaches."""
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(n)]
    text = " ".join(words)
    sources, at = [], 0
    for i, word in enumerate(words):
        sources.append({"text": word, "kind": "prompt", "start": at, "end": at + len(word), "tokens": [i]})
        at += len(word) + 1
    sources += [{"text": f"a{j}", "kind": "answer", "start": 0, "end": 2, "tokens": [j]} for j in range(answer)]
    rows = rng.normal(size=(answer, n + answer)).astype("<f4")
    tokens = [{"id": j, "text": f" a{j}", "offset": 3 * j, "logprob": -0.1} for j in range(answer)]
    return {
        "text": "".join(t["text"] for t in tokens),
        "prompt_text": text,
        "prompt_tokens": [],
        "target_tokens": tokens,
        "rows": list(range(answer)),
        "span": [0, answer],
        "sources": sources,
        "sequence_sources": n,
        "granularity": "word",
        "aggregation": "sum",
        "attributed": {"function": "logprob", "description": ""},
        "summary": "synthetic",
        "provenance": {"timings_ms": {"engine": 1.0}},
        "methods": {
            "input_x_gradient": {
                "params": {},
                "time_ms": 1.0,
                "tokens": {
                    "dims": ["target", "source"],
                    "shape": list(rows.shape),
                    "encoding": "base64",
                    "dtype": "float32",
                    "data": base64.b64encode(rows.tobytes()).decode(),
                },
                "sequence": {"dims": ["source"], "shape": [n], "encoding": "json", "data": rows.sum(0)[:n].tolist()},
            }
        },
    }


def test_a_2000_token_prompt_renders_and_the_page_stays_responsive(harness: Page, recorder: Recorder) -> None:
    response = long_response()
    harness.evaluate("r => show(r, {method: 'input_x_gradient'})", response)
    assert harness.locator("glassbox-explanation .src").count() == 2000
    # Selecting a token recolours all 2,000 sources; the page then still answers a frame and a click.
    harness.click("glassbox-explanation .tok >> nth=3")
    frame = harness.evaluate("() => new Promise(ok => requestAnimationFrame(() => ok(true)))")
    assert frame is True
    last = harness.locator("glassbox-explanation .src").nth(1999)
    assert float(last.get_attribute("data-score") or "nan") == pytest.approx(float(response_row(response, 3)[1999]))
    assert recorder.problems == []


def response_row(response: dict[str, Any], row: int) -> np.ndarray:
    tokens = response["methods"]["input_x_gradient"]["tokens"]
    values = np.frombuffer(base64.b64decode(tokens["data"]), dtype="<f4").reshape(tokens["shape"])
    return values[row]


def test_a_faithfulness_field_shows_a_badge_and_timings_show(harness: Page) -> None:
    response = saved()
    harness.evaluate("r => show(r, {method: 'input_x_gradient'})", response)
    assert harness.locator("glassbox-explanation [data-faithfulness]").count() == 0
    assert " s" in (harness.locator("glassbox-explanation .meta").text_content() or "")  # provenance timings
    response["faithfulness"] = {"deletion_auc": 0.42}
    harness.evaluate("r => show(r, {method: 'input_x_gradient'})", response)
    badge = harness.locator("glassbox-explanation [data-faithfulness]").text_content() or ""
    assert "deletion_auc 0.42" in badge


def test_logit_lens_view_shows_layers_by_answer_tokens(harness: Page, recorder: Recorder) -> None:
    """Cells are (layer, answer token): text = that layer's top token, bold where the target already ranks first,
    colour deeper as p(target) grows; the top row is the last layer."""
    response = saved()
    n = len(response["target_tokens"])
    layers = 3  # embeddings + 2 decoder layers
    logprob = [[float(np.log(0.02 + 0.3 * layer + 0.01 * j)) for j in range(n)] for layer in range(layers)]
    rank = [[1 if layer == layers - 1 else 5 + j for j in range(n)] for layer in range(layers)]
    tops = [[[f"L{layer}t{j}", "x"] for j in range(n)] for layer in range(layers)]
    response["methods"] = {
        "logit_lens": {
            "params": {
                "targets": list(range(n)),
                "target_logprob": logprob,
                "rank_of_target": rank,
                "top_k_tokens": tops,
                "top_k_logprobs": [[[-1.0, -2.0] for _ in range(n)] for _ in range(layers)],
            }
        }
    }
    harness.evaluate("r => show(r, {view: 'lens'})", response)
    cells = harness.eval_on_selector_all(
        "glassbox-explanation .lens td",
        "els => els.map(e => [e.textContent, Number(e.dataset.layer), Number(e.dataset.target), e.className,"
        " Number(e.dataset.logprob), e.style.backgroundColor])",
    )
    assert len(cells) == layers * n
    assert [c[1] for c in cells[:n]] == [layers - 1] * n  # the last layer on top
    for text, layer, target, cls, lp, _ in cells:
        assert text == f"L{layer}t{target}"
        assert ("hit" in cls.split()) == (layer == layers - 1)
        assert lp == pytest.approx(logprob[layer][target])
    # deeper colour (lower green channel) for a higher p(target): compare one column across layers
    column = sorted((c[4], hue(c[5])[1]) for c in cells if c[2] == 0)
    assert [g for _, g in column] == sorted((g for _, g in column), reverse=True)
    assert recorder.problems == []
