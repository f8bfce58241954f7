"""OpenTelemetry tracing, on when an OTLP endpoint is configured.

Spans are exported by a background thread in batches with a short timeout, so an unreachable collector
costs a dropped batch, never request latency. Child spans find the app's tracer in a context variable
(set by the tracing middleware), so there is no process-global provider to fight over in tests.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, Tracer

from service.settings import Settings

#: How long one export attempt (and shutdown's final flush) may take.
EXPORT_TIMEOUT_S = 2.0

tracer_var: contextvars.ContextVar[Tracer | None] = contextvars.ContextVar("glassbox_tracer", default=None)


def build_tracer_provider(settings: Settings) -> Any | None:
    """An SDK ``TracerProvider`` exporting to ``settings.otlp_endpoint`` over OTLP/HTTP, or None."""
    if not settings.otlp_endpoint:
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": "glassbox"}))
    exporter = OTLPSpanExporter(endpoint=settings.otlp_endpoint, timeout=EXPORT_TIMEOUT_S)
    provider.add_span_processor(
        BatchSpanProcessor(exporter, export_timeout_millis=int(EXPORT_TIMEOUT_S * 1000), schedule_delay_millis=1000)
    )
    return provider


@contextlib.contextmanager
def traced(name: str, **attributes: Any) -> Iterator[Span]:
    """A child span of the current request's span; a no-op span when tracing is off."""
    tracer = tracer_var.get()
    if tracer is None:
        yield trace.INVALID_SPAN
        return
    with tracer.start_as_current_span(name, attributes=attributes or None) as span:
        yield span
