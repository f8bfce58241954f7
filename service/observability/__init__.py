"""Logs with request ids, and OpenTelemetry tracing."""
