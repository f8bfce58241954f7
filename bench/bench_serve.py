"""Serving throughput: `/generate` on the default model at 1, 4, 8 and 16 concurrent clients, next to the
same requests run one at a time through plain `model.generate`, in one run.

    .venv/bin/python bench/bench_serve.py [--max-new-tokens 64] [--levels 1,4,8,16]

The baseline runs in this process before and after the server runs (the faster of the two is the
reference); `glassbox serve` runs in a subprocess on loopback (cache off, so every request reaches the
model) and clients send greedy chat requests with httpx, each client's requests back to back. Tokens/s
counts generated tokens; latency is per request, client side.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import torch

from schemas.common import ChatMessage
from service.engine.prompt import build_prompt
from service.models.loaded import LoadedModel
from service.models.loader import load_model
from service.settings import DEFAULT_MODEL, Settings

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.ready import wait_until_ready  # noqa: E402
from tests.support.redis_server import free_port  # noqa: E402

TOPICS = [
    "a lighthouse keeper and a storm", "a robot learning to paint", "a city under the sea", "the last train home",
    "a cat who runs a bakery", "two rival chess players", "a map that changes overnight", "a forgotten library",
    "a river that flows uphill", "a violin with a secret", "the first day on Mars", "a garden in winter",
    "a detective who cannot lie", "a clock that runs backwards", "a dragon afraid of fire", "an empty stadium",
]  # fmt: skip


def messages(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Write a short story about {TOPICS[i % len(TOPICS)]}."}]


@dataclass
class Level:
    clients: int
    requests: int
    tokens: int
    wall_s: float
    latencies: list[float]
    outputs: dict[int, list[int]]

    def row(self, baseline_tps: float) -> str:
        tps = self.tokens / self.wall_s
        p50 = statistics.median(self.latencies)
        p95 = statistics.quantiles(self.latencies, n=20)[-1] if len(self.latencies) > 1 else p50
        return (
            f"| {self.clients:>7} | {self.requests:>8} | {tps:>8.1f} | {self.requests / self.wall_s:>6.2f} "
            f"| {p50:>7.2f} | {p95:>7.2f} | {tps / baseline_tps:>6.2f}x |"
        )


@dataclass
class Baseline:
    tokens_per_s: float
    requests_per_s: float
    outputs: dict[int, list[int]]
    latencies: list[float]


def baseline(lm: LoadedModel, max_new_tokens: int, count: int) -> Baseline:
    """Plain `model.generate`, greedy, one request at a time."""
    eos = list(lm.eos_ids)
    outputs: dict[int, list[int]] = {}
    latencies = []
    tokens = 0
    started = time.perf_counter()
    for i in range(count):
        chat = [ChatMessage(**m) for m in messages(i)]  # type: ignore[arg-type]
        ids = torch.tensor([build_prompt(lm.tokenizer, messages=chat).ids])
        began = time.perf_counter()
        with torch.inference_mode():
            out = lm.model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=eos[0],
            )
        latencies.append(time.perf_counter() - began)
        new = [t for t in out[0, ids.shape[1] :].tolist() if t not in eos]
        outputs[i] = new
        tokens += len(new)
    wall = time.perf_counter() - started
    return Baseline(tokens / wall, count / wall, outputs, latencies)


async def run_level(url: str, clients: int, per_client: int, max_new_tokens: int) -> Level:
    latencies: list[float] = []
    outputs: dict[int, list[int]] = {}
    tokens = 0

    async def client(k: int, http: httpx.AsyncClient) -> None:
        nonlocal tokens
        for j in range(per_client):
            i = k * per_client + j
            body = {"messages": messages(i), "max_new_tokens": max_new_tokens, "temperature": 0, "logprobs": False}
            began = time.perf_counter()
            response = await http.post(f"{url}/generate", json=body)
            latencies.append(time.perf_counter() - began)
            response.raise_for_status()
            result = response.json()
            outputs[i] = [t["id"] for t in result["tokens"]]
            tokens += result["usage"]["completion_tokens"]

    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(k, http) for k in range(clients)))
        wall = time.perf_counter() - started
    return Level(clients, clients * per_client, tokens, wall, latencies, outputs)


async def during_explanation(url: str, max_new_tokens: int) -> tuple[float, float, bool]:
    """Time per output token of one /generate alone, then while an integrated-gradients explanation runs on
    the same model; and whether the explanation was still running when that generation ended."""
    body = {"messages": messages(0), "max_new_tokens": max_new_tokens, "temperature": 0, "logprobs": False}

    def tpot(result: dict[str, Any]) -> float:
        return float(result["timings"]["decode_ms"]) / 1000 / max(1, result["usage"]["completion_tokens"] - 1)

    explain = {
        "messages": messages(1),
        "target": "Paris is the capital of France, and it is known for the Eiffel Tower and the Louvre museum.",
        "methods": ["integrated_gradients"],
        "integrated_gradients": {"n_steps": 16},
    }
    async with httpx.AsyncClient(timeout=900) as http:
        alone = tpot((await http.post(f"{url}/generate", json=body)).raise_for_status().json())
        explaining = asyncio.create_task(http.post(f"{url}/explain", json=explain))
        await asyncio.sleep(2.0)
        during = tpot((await http.post(f"{url}/generate", json=body)).raise_for_status().json())
        still_running = not explaining.done()
        (await explaining).raise_for_status()
    return alone, during, still_running


def start_server(port: int, extra_env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "GLASSBOX_HOST": "127.0.0.1",
        "GLASSBOX_PORT": str(port),
        "GLASSBOX_DEVICE": "cpu",
        "GLASSBOX_CACHE_ENABLED": "false",
        "GLASSBOX_LOG_LEVEL": "warning",
        **extra_env,
    }
    with log.open("wb") as sink:
        return subprocess.Popen([sys.executable, "-m", "service", "serve"], cwd=REPO, env=env, stdout=sink, stderr=sink)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--levels", default="1,4,8,16", help="concurrent clients, comma-separated")
    parser.add_argument("--per-client", type=int, default=2, help="requests each client sends in a row")
    parser.add_argument("--baseline-requests", type=int, default=6)
    parser.add_argument("--env", action="append", default=[], help="server setting, e.g. GLASSBOX_MAX_BATCH_SIZE=16")
    args = parser.parse_args()
    levels = [int(v) for v in args.levels.split(",")]

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {DEFAULT_MODEL}, greedy, "
          f"{args.max_new_tokens} new tokens, chat prompts")  # fmt: skip
    lm = load_model(DEFAULT_MODEL, DEFAULT_MODEL, Settings(device="cpu"))
    baseline(lm, 4, 1)  # warm the baseline's paths too, as the server's are warmed below
    before = baseline(lm, args.max_new_tokens, args.baseline_requests)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = Path(tempfile.mkdtemp(prefix="glassbox-bench-")) / "server.log"
    server = start_server(port, dict(item.split("=", 1) for item in args.env), log)
    try:
        wait_until_ready(url, server, timeout=300)
        asyncio.run(run_level(url, 1, 1, 4))  # warm the server's paths
        results = [asyncio.run(run_level(url, c, args.per_client, args.max_new_tokens)) for c in levels]
        alone, during, overlapped = asyncio.run(during_explanation(url, 32))
    finally:
        server.terminate()
        server.wait(60)
    # The machine is shared and noisy: the baseline runs before and after, and the faster run is the
    # reference, so the speed-ups below are the conservative ones.
    after = baseline(lm, args.max_new_tokens, args.baseline_requests)
    best = max(before, after, key=lambda b: b.tokens_per_s)

    print()
    print("| clients | requests | tokens/s | req/s  | p50 s   | p95 s   | vs seq  |")
    print("|--------:|---------:|---------:|-------:|--------:|--------:|--------:|")
    for name, run in (("before", before), ("after", after)):
        b50 = statistics.median(run.latencies)
        b95 = statistics.quantiles(run.latencies, n=20)[-1] if len(run.latencies) > 1 else b50
        print(
            f"| seq. `model.generate` ({name}) | {args.baseline_requests:>3} | {run.tokens_per_s:>8.1f} "
            f"| {run.requests_per_s:>6.2f} | {b50:>7.2f} | {b95:>7.2f} "
            f"| {run.tokens_per_s / best.tokens_per_s:>6.2f}x |"
        )
    for level in results:
        print(level.row(best.tokens_per_s))
    reference = best.outputs
    same = sum(level.outputs[i] == reference[i] for level in results for i in level.outputs if i in reference)
    compared = sum(1 for level in results for i in level.outputs if i in reference)
    print(f"\ngreedy outputs identical to sequential `model.generate`: {same}/{compared} compared requests")
    print()
    print("| /generate, 32 tokens | time per output token | vs alone |")
    print("|---|---:|---:|")
    print(f"| alone | {alone * 1000:.1f} ms | 1.00x |")
    print(
        f"| while an integrated-gradients explanation runs{'' if overlapped else ' (it ended first!)'} "
        f"| {during * 1000:.1f} ms | {during / alone:.2f}x |"
    )


if __name__ == "__main__":
    main()
