"""Routes that bypass authentication and the drain gate: probes and the metrics scrape."""

from __future__ import annotations

#: Kubernetes probes carry no credentials, and Prometheus scrapes by pod annotation without them;
#: neither exposes request data. Every other route, /docs and /openapi.json included, needs a key.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
