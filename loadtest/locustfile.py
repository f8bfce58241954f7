"""Locust users for the Glassbox load test (run by loadtest/run.py, headless, against 127.0.0.1 only).

Each class is one scenario; the runner picks it by name. Pass/fail is judged by the runner from the
server's own /metrics (status counts, cache hits), so shed load (429) is counted exactly.
"""

from __future__ import annotations

import random

from locust import HttpUser, between, constant, task

PROMPTS = [
    "What is the capital of France?",
    "Write one sentence about a lighthouse.",
    "Glassbox explains why a language model said what it said.",
    "Name three colours.",
    "The Eiffel Tower was built in",
    "Summarise: attention and gradients, over HTTP.",
]
MAX_NEW_TOKENS = 16
#: A client deadline well above normal latency: a timeout here would be a failure, not load shedding.
HEADERS = {"X-Request-Timeout-Ms": "120000"}


def sampled(stream: bool = False) -> dict[str, object]:
    """A fresh seeded request: never a cache hit, so it always reaches the model."""
    return {
        "messages": [{"role": "user", "content": random.choice(PROMPTS)}],
        "max_new_tokens": MAX_NEW_TOKENS,
        "temperature": 0.8,
        "top_p": 0.95,
        "seed": random.randrange(2**31),
        "stream": stream,
    }


class _GlassboxUser(HttpUser):
    abstract = True
    #: Statuses that count as handled (anything else, 5xx above all, is a failure).
    accepted: frozenset[int] = frozenset({200})

    def post(self, body: dict[str, object], name: str) -> None:
        with self.client.post("/generate", json=body, headers=HEADERS, name=name, catch_response=True) as response:
            if response.status_code not in self.accepted:
                response.failure(f"status {response.status_code}: {response.text[:200]}")
            elif response.status_code == 200 and body.get("stream") and "event: done" not in response.text:
                response.failure("stream ended without a done event")
            else:
                response.success()


class SteadyUser(_GlassboxUser):
    """Chat-like traffic under capacity: every request must succeed."""

    wait_time = between(0.5, 1.5)

    @task(3)
    def generate(self) -> None:
        self.post(sampled(), "generate")

    @task(1)
    def stream(self) -> None:
        self.post(sampled(stream=True), "generate (stream)")


class OverloadUser(_GlassboxUser):
    """Far more clients than slots and queue: the server must shed with 429, never fail with 5xx."""

    wait_time = constant(0)
    accepted = frozenset({200, 429})

    @task
    def generate(self) -> None:
        self.post(sampled(), "generate")


class HotCacheUser(_GlassboxUser):
    """A few popular greedy requests repeated: served from the cache."""

    wait_time = constant(0.05)

    @task
    def generate(self) -> None:
        body = {"prompt": random.choice(PROMPTS[:3]), "max_new_tokens": MAX_NEW_TOKENS, "temperature": 0}
        self.post(body, "generate (hot)")


class CacheChaosUser(_GlassboxUser):
    """Cacheable and uncacheable requests while Redis goes away mid-run: answers keep coming, no 5xx."""

    wait_time = between(0.1, 0.3)

    @task(2)
    def cacheable(self) -> None:
        body = {"prompt": random.choice(PROMPTS), "max_new_tokens": MAX_NEW_TOKENS, "temperature": 0}
        self.post(body, "generate (cacheable)")

    @task(1)
    def uncacheable(self) -> None:
        self.post(sampled(), "generate")
