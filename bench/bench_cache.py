"""Issue 4 figures: response-cache hit vs miss latency through HTTP, and stored size vs JSON size.

Against a running server (``glassbox serve``, with or without ``GLASSBOX_REDIS_URL``):

    .venv/bin/python bench/bench_cache.py --url http://127.0.0.1:8000 --path /explain \\
        --body '{"prompt": "The capital of France is", "max_new_tokens": 16}' [--misses 10 --hits 20]
    .venv/bin/python bench/bench_cache.py --path /generate --body @request.json --redis-url redis://127.0.0.1:6379/0

Each of ``--misses`` rounds sends the body with a fresh value in ``--vary`` (default ``seed``: with
``temperature`` 0 it changes the cache key but not the answer), which must be a miss, then repeats it
``--hits`` times, which must be hits. Latencies are grouped by the ``X-Cache`` response header (by
position if the server sends none). Sizes: the response's JSON bytes next to the bytes the cache
codec stores for the same body; with ``--redis-url``, also the sizes of the values actually in Redis.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere in the checkout

from service.cache.codec import encode
from service.cache.keys import KEY_PREFIX


def load_body(text: str) -> dict[str, Any]:
    raw = Path(text[1:]).read_text() if text.startswith("@") else text
    body = json.loads(raw)
    if not isinstance(body, dict):
        raise SystemExit("--body must be a JSON object")
    return body


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summarize(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50_ms": 1000 * percentile(values, 50),
        "p90_ms": 1000 * percentile(values, 90),
        "p99_ms": 1000 * percentile(values, 99),
        "mean_ms": 1000 * statistics.fmean(values),
    }


def redis_value_sizes(url: str) -> list[int]:
    """Byte sizes of the cache values in Redis (single server; locks excluded)."""
    import redis

    with redis.Redis.from_url(url, socket_timeout=5) as client:
        return [
            int(client.strlen(key))
            for key in client.scan_iter(match=f"{KEY_PREFIX}:*", count=1000)
            if not key.endswith(b":lock")
        ]


def run(args: argparse.Namespace) -> dict[str, Any]:
    body = load_body(args.body)
    latencies: dict[str, list[float]] = defaultdict(list)
    json_sizes: list[int] = []
    stored_sizes: list[int] = []
    unexpected: list[str] = []
    base = random.randrange(2**40)  # fresh keys on every run, even against a long-lived Redis

    with httpx.Client(base_url=args.url, timeout=args.timeout) as client:

        def send(payload: dict[str, Any], position: str) -> str:
            start = time.perf_counter()
            response = client.post(args.path, json=payload)
            elapsed = time.perf_counter() - start
            if response.status_code != 200:
                raise SystemExit(f"{args.path} answered {response.status_code}: {response.text[:500]}")
            outcome = response.headers.get("x-cache") or position
            latencies[outcome].append(elapsed)
            if position == "first":
                json_sizes.append(len(response.content))
                stored_sizes.append(len(encode(response.json())))
            expected = {"first": "miss", "repeat": "hit"}[position]
            if response.headers.get("x-cache") not in (None, expected):
                unexpected.append(f"{position}: X-Cache {response.headers['x-cache']}")
            return outcome

        send({**body, args.vary: base - 1}, "first")  # warm-up: load paths, JIT, connections
        latencies.clear()
        json_sizes.clear()
        stored_sizes.clear()
        for round_ in range(args.misses):
            payload = {**body, args.vary: base + round_}
            send(payload, "first")
            for _ in range(args.hits):
                send(payload, "repeat")

    report: dict[str, Any] = {
        "url": args.url + args.path,
        "body": body,
        "latency": {outcome: summarize(values) for outcome, values in sorted(latencies.items())},
        "json_bytes_mean": statistics.fmean(json_sizes),
        "stored_bytes_mean": statistics.fmean(stored_sizes),
        "stored_over_json": statistics.fmean(stored_sizes) / statistics.fmean(json_sizes),
        "unexpected_outcomes": unexpected,
    }
    if "hit" in latencies and "miss" in latencies:
        report["speedup_p50"] = percentile(latencies["miss"], 50) / percentile(latencies["hit"], 50)
    if args.redis_url:
        sizes = redis_value_sizes(args.redis_url)
        report["redis_values"] = {"count": len(sizes), "bytes_mean": statistics.fmean(sizes) if sizes else 0}
    return report


def print_report(report: dict[str, Any]) -> None:
    print(f"{report['url']}")
    print(f"{'outcome':>8} {'n':>5} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'mean ms':>9}")
    for outcome, stats in report["latency"].items():
        print(
            f"{outcome:>8} {stats['n']:>5} {stats['p50_ms']:>9.2f} {stats['p90_ms']:>9.2f} "
            f"{stats['p99_ms']:>9.2f} {stats['mean_ms']:>9.2f}"
        )
    if "speedup_p50" in report:
        print(f"hit is {report['speedup_p50']:.0f}x faster than miss (p50)")
    print(
        f"size: JSON {report['json_bytes_mean']:.0f} B, stored {report['stored_bytes_mean']:.0f} B "
        f"({100 * report['stored_over_json']:.1f}% of JSON)"
    )
    if "redis_values" in report:
        values = report["redis_values"]
        print(f"redis: {values['count']} values, {values['bytes_mean']:.0f} B mean")
    if report["unexpected_outcomes"]:
        print(f"UNEXPECTED: {len(report['unexpected_outcomes'])} responses, e.g. {report['unexpected_outcomes'][:3]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="Base URL of the server.")
    parser.add_argument("--path", default="/explain", help="Endpoint, e.g. /explain or /generate.")
    parser.add_argument(
        "--body",
        default='{"prompt": "The capital of France is", "max_new_tokens": 16, "temperature": 0}',
        help="Request body: JSON text, or @file.",
    )
    parser.add_argument("--vary", default="seed", help="Field given a fresh value per round to force a miss.")
    parser.add_argument("--misses", type=int, default=10, help="Rounds, each one miss.")
    parser.add_argument("--hits", type=int, default=20, help="Repeats (hits) per round.")
    parser.add_argument("--redis-url", help="Also report the sizes of the values stored in this Redis.")
    parser.add_argument("--timeout", type=float, default=600.0, help="Per-request timeout in seconds.")
    parser.add_argument("--out", type=Path, help="Also write the report as JSON here (e.g. bench/results/).")
    args = parser.parse_args(argv)

    report = run(args)
    print_report(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 1 if report["unexpected_outcomes"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
