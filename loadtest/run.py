"""Load test: Redis and a Glassbox server on loopback, four locust scenarios (headless, bounded time),
each judged from the server's own /metrics.

    python loadtest/run.py            # the default model; a few minutes
    python loadtest/run.py --short    # CI: the tiny test model slowed to CPU-model speed; about a minute

Scenarios: steady load (every request succeeds), overload (429s, no 5xx), hot cache (hits), and Redis
killed mid-run (answers keep coming, no 5xx). Exit status 1 if any scenario fails its criteria.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.ready import wait_until_ready  # noqa: E402
from tests.support.redis_server import RedisServer, free_port  # noqa: E402
from tests.support.tiny_model import build_tiny_model  # noqa: E402

LOCUSTFILE = REPO / "loadtest" / "locustfile.py"
HOT_KEYS = 3  # distinct requests HotCacheUser sends (locustfile.py)
MAX_NEW_TOKENS = 16


@dataclass
class Snapshot:
    """Server counters at one moment (from /metrics)."""

    statuses: Counter[str] = field(default_factory=Counter)
    cache_hits: float = 0.0  # per computation shared, not per request (coalesced requests count once)
    cache_errors: float = 0.0
    generated: float = 0.0  # tokens the model generated

    def minus(self, before: Snapshot) -> Snapshot:
        return Snapshot(
            statuses=self.statuses - before.statuses,
            cache_hits=self.cache_hits - before.cache_hits,
            cache_errors=self.cache_errors - before.cache_errors,
            generated=self.generated - before.generated,
        )


def snapshot(url: str) -> Snapshot:
    shot = Snapshot()
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text):
        for sample in family.samples:
            if sample.name == "glassbox_requests_total" and sample.labels.get("endpoint") == "/generate":
                shot.statuses[sample.labels["status"]] += int(sample.value)
            elif sample.name == "glassbox_cache_hits_total":
                shot.cache_hits += sample.value
            elif sample.name == "glassbox_cache_errors_total":
                shot.cache_errors += sample.value
            elif sample.name == "glassbox_tokens_total" and sample.labels.get("kind") == "completion":
                shot.generated += sample.value
    return shot


@dataclass
class Scenario:
    name: str
    user: str
    users: int
    seconds: int
    check: Callable[[Snapshot], list[str]]  # problems found (empty: passed)
    during: Callable[[], None] | None = None  # fault injection, run at mid-time


def server_errors(shot: Snapshot) -> int:
    return sum(n for status, n in shot.statuses.items() if status.startswith("5"))


def only_ok(shot: Snapshot) -> list[str]:
    total = sum(shot.statuses.values())
    bad = {s: n for s, n in shot.statuses.items() if s != "200"}
    return ["no requests were served"] * (total == 0) + [f"non-200 answers: {bad}"] * bool(bad)


def shed_not_failed(shot: Snapshot) -> list[str]:
    problems = [f"{server_errors(shot)} server errors"] * (server_errors(shot) > 0)
    problems += ["no 429: the server was never overloaded"] * (shot.statuses["429"] == 0)
    problems += ["nothing was served under overload"] * (shot.statuses["200"] == 0)
    others = {s: n for s, n in shot.statuses.items() if s not in ("200", "429")}
    return problems + [f"unexpected statuses: {others}"] * bool(others)


def mostly_hits(shot: Snapshot) -> list[str]:
    """Three distinct requests, each computed once at most: the model generates almost nothing."""
    problems = only_ok(shot)
    if shot.generated > HOT_KEYS * MAX_NEW_TOKENS:
        problems.append(f"the model generated {shot.generated:.0f} tokens for {HOT_KEYS} distinct requests")
    return problems


def survives_redis_loss(shot: Snapshot) -> list[str]:
    problems = only_ok(shot)
    if shot.cache_errors == 0:
        problems.append("no cache errors were counted: Redis did not go away during the run")
    return problems


def run_locust(url: str, scenario: Scenario, out: Path) -> dict[str, str]:
    """Run one scenario headless; returns locust's aggregated stats row."""
    prefix = out / scenario.name.replace(" ", "-")
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary",
        "-u", str(scenario.users), "-r", str(scenario.users), "-t", f"{scenario.seconds}s",
        "--stop-timeout", "30", "--host", url, "--csv", str(prefix), "--loglevel", "WARNING", scenario.user,
    ]  # fmt: skip
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if scenario.during is not None:
        timer = threading.Timer(scenario.seconds / 2, scenario.during)
        timer.start()
    _, stderr = process.communicate(timeout=scenario.seconds + 120)
    if process.returncode not in (0, 1):  # 1: some requests failed, judged below
        raise RuntimeError(f"locust exited {process.returncode}:\n{stderr[-2000:]}")
    with open(f"{prefix}_stats.csv", newline="") as stats:
        rows = list(csv.DictReader(stats))
    return next(row for row in rows if row["Name"] == "Aggregated")


def start_server(env: dict[str, str], module: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", module, "serve"], cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", action="store_true", help="CI form: tiny model, short runs")
    args = parser.parse_args()
    scale = 1 if args.short else 4
    work = Path(tempfile.mkdtemp(prefix="glassbox-load-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "GLASSBOX_HOST": "127.0.0.1",
        "GLASSBOX_PORT": str(port),
        "GLASSBOX_DEVICE": "cpu",
        "GLASSBOX_MAX_CONCURRENCY": "4",
        "GLASSBOX_MAX_QUEUE": "8",
        "GLASSBOX_MAX_BATCH_SIZE": "4",
        "GLASSBOX_LOG_LEVEL": "warning",
        "GLASSBOX_REDIS_TIMEOUT_S": "0.2",
        "PYTHONPATH": str(REPO),
    }
    module = "service"
    if args.short:  # the tiny model, each forward pass slowed to the default model's order of magnitude
        env |= {
            "GLASSBOX_MODELS": f"tiny={build_tiny_model(work / 'tiny-model')}",
            "GLASSBOX_CACHE_DIR": str(work / "cache"),
            "GLASSBOX_OFFLINE": "1",
            "GLASSBOX_TEST_STEP_DELAY_S": "0.01",
        }
        module = "tests.serving.slow_serve"
    with RedisServer() as redis:
        env["GLASSBOX_REDIS_URL"] = redis.url
        log = work / "server.log"
        server = start_server(env, module, log)
        try:
            try:
                wait_until_ready(url, server, timeout=300)
            except RuntimeError:
                print(log.read_text()[-3000:], file=sys.stderr)
                raise
            scenarios = [
                Scenario("steady", "SteadyUser", 4, 12 * scale, only_ok),
                Scenario("overload", "OverloadUser", 24, 10 * scale, shed_not_failed),
                Scenario("hot cache", "HotCacheUser", 8, 8 * scale, mostly_hits),
                Scenario("redis stopped", "CacheChaosUser", 6, 12 * scale, survives_redis_loss, during=redis.kill),
            ]
            failed = False
            print(f"{'scenario':<14} {'requests':>8} {'req/s':>7} {'p50 ms':>7} {'p95 ms':>7}  statuses / result")
            for scenario in scenarios:
                before = snapshot(url)
                stats = run_locust(url, scenario, work)
                delta = snapshot(url).minus(before)
                problems = scenario.check(delta)
                failed |= bool(problems)
                statuses = ", ".join(f"{s}: {n}" for s, n in sorted(delta.statuses.items()))
                verdict = "ok" if not problems else "FAIL: " + "; ".join(problems)
                print(
                    f"{scenario.name:<14} {stats['Request Count']:>8} {float(stats['Requests/s']):>7.1f} "
                    f"{stats['50%']:>7} {stats['95%']:>7}  {statuses}"
                    + f", model tokens {delta.generated:.0f}"
                    + (f", cache hits {delta.cache_hits:.0f}" if delta.cache_hits else "")
                    + (f", cache errors {delta.cache_errors:.0f}" if delta.cache_errors else "")
                    + f" → {verdict}"
                )
        finally:
            server.terminate()
            server.wait(60)
    print(f"logs and locust CSVs: {work}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
