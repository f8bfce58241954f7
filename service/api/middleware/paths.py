"""Routes that bypass authentication and the drain gate: probes and the metrics scrape."""

from __future__ import annotations

#: Kubernetes probes carry no credentials, and Prometheus scrapes by pod annotation without them;
#: neither exposes request data. Every other route, /docs and /openapi.json included, needs a key.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})

#: The /ui page and its static files hold no data (the page's API calls carry the key), so a browser can load
#: them before the user has typed a key.
PUBLIC_PREFIXES = ("/ui/",)


def is_public(path: str) -> bool:
    """Whether ``path`` needs no API key."""
    return path in PUBLIC_PATHS or path == "/ui" or path.startswith(PUBLIC_PREFIXES)
