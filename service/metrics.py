"""Prometheus metrics of the service (the cache keeps its own in service/cache/metrics.py)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("glassbox_requests_total", "HTTP requests by route and status.", ["endpoint", "status"])
LATENCY = Histogram(
    "glassbox_request_duration_seconds",
    "Request latency by route and status.",
    ["endpoint", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
QUEUE_DEPTH = Gauge("glassbox_queue_depth", "Requests waiting for a model (the autoscaling signal).", ["model"])
INFLIGHT = Gauge("glassbox_inflight_requests", "Requests being processed by a model.", ["model"])
TOKENS = Counter("glassbox_tokens_total", "Tokens processed.", ["model", "kind"])
MODEL_INFO = Gauge("glassbox_model_info", "Loaded models (value 1).", ["model", "revision", "device", "dtype"])
