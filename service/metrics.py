"""Prometheus metrics of the service (the cache keeps its own in service/cache/metrics.py).

Names are a contract: the HPA scales on ``glassbox_queue_depth`` and dashboards read the rest.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

REQUESTS = Counter("glassbox_requests_total", "HTTP requests by route and status.", ["endpoint", "status"])
LATENCY = Histogram(
    "glassbox_request_duration_seconds",
    "Request latency by route and status (streams: until the last byte).",
    ["endpoint", "status"],
    buckets=_SECONDS,
)
FAILURES = Counter(
    "glassbox_request_failures_total",
    "Failed requests by reason: validation, unauthorized, overloaded, timeout, cancelled, oom, not_ready, "
    "shutting_down, slow_client, internal. Includes errors sent inside a 200 stream.",
    ["endpoint", "reason"],
)
QUEUE_DEPTH = Gauge("glassbox_queue_depth", "Requests waiting for a model slot (the autoscaling signal).", ["model"])
INFLIGHT = Gauge("glassbox_inflight_requests", "Requests holding a model slot.", ["model"])
QUEUE_WAIT = Histogram("glassbox_queue_wait_seconds", "Time waiting for a model slot.", ["model"], buckets=_SECONDS)
TIME_TO_FIRST_TOKEN = Histogram(
    "glassbox_time_to_first_token_seconds",
    "From the request's arrival to its first generated token.",
    ["model"],
    buckets=_SECONDS,
)
TIME_PER_OUTPUT_TOKEN = Histogram(
    "glassbox_time_per_output_token_seconds",
    "Decode time per generated token after the first.",
    ["model"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
BATCH_SIZE = Histogram(
    "glassbox_batch_size", "Sequences per decode step.", ["model"], buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
)
MODEL_BATCHING = Gauge(
    "glassbox_model_batching",
    "1 when the model's concurrent generations share one decode batch, 0 when they decode one at a time.",
    ["model"],
)
SERIAL_DECODES = Counter(
    "glassbox_serial_decodes_total",
    "Generations decoded one sequence at a time, by reason (cache_class, cache_layer, recurrent_state, no_cache, "
    "merge_failed, ...: why the model's cache is not merged into the batch).",
    ["model", "reason"],
)
TOKENS = Counter("glassbox_tokens_total", "Tokens processed (kind: prompt, completion).", ["model", "kind"])
WORK_STOPPED = Counter(
    "glassbox_work_stopped_total",
    "Model work (explanations) stopped before finishing, by reason: timeout, cancelled (client left), shutdown.",
    ["model", "kind", "reason"],
)
ESTIMATE_ERROR = Histogram(
    "glassbox_explain_estimate_ratio",
    "Actual over estimated seconds of each finished explanation (1 = exact; the cost model errs high).",
    ["model"],
    buckets=(0.1, 0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2, 3, 5, 10),
)
MODEL_INFO = Gauge("glassbox_model_info", "Loaded models (value 1).", ["model", "revision", "device", "dtype"])

#: Error ``type`` (the body's ``error.type``) → failure reason label.
_REASONS = {
    "malformed_request": "validation",
    "invalid_request": "validation",
    "budget_exceeded": "validation",
    "payload_too_large": "validation",
    "model_not_found": "validation",
    "not_found": "validation",
    "method_not_allowed": "validation",
    "unauthorized": "unauthorized",
    "overloaded": "overloaded",
    "timeout": "timeout",
    "cancelled": "cancelled",
    "out_of_memory": "oom",
    "not_ready": "not_ready",
    "shutting_down": "shutting_down",
    "request_timeout": "slow_client",
}


def failure_reason(error_type: str | None) -> str:
    return _REASONS.get(error_type or "", "internal")


def record_failure(endpoint: str, error_type: str | None) -> None:
    FAILURES.labels(endpoint=endpoint, reason=failure_reason(error_type)).inc()
