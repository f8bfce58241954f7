"""A typed client for the Glassbox API: needs ``schemas``, ``httpx`` and NumPy only (never torch).

from service.client import Client
ex = Client("http://127.0.0.1:8000").explain(messages=[{"role": "user", "content": "Capital of France?"}])
ex.top_sources(3); ex.methods["saliency"].tokens.to_numpy(); ex  # a heatmap in Jupyter
"""

from service.client.aio import AsyncClient
from service.client.core import DEFAULT_URL, RetryPolicy
from service.client.errors import APIError, DeadlineExceeded, GlassboxError, Unreachable
from service.client.models import (
    Array,
    ExplainProgress,
    ExplainRow,
    Explanation,
    Generation,
    Method,
    ScoredSource,
    TokenEvent,
)
from service.client.sync import Client

__all__ = [
    "DEFAULT_URL",
    "APIError",
    "Array",
    "AsyncClient",
    "Client",
    "DeadlineExceeded",
    "ExplainProgress",
    "ExplainRow",
    "Explanation",
    "Generation",
    "GlassboxError",
    "Method",
    "RetryPolicy",
    "ScoredSource",
    "TokenEvent",
    "Unreachable",
]
