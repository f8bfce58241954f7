"""One dependency for the model-serving routes: the app's long-lived objects, the request's deadline and
its Cache-Control header, as a :class:`~service.usecases.request_context.RequestContext`."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header

from service.api.deadline import RequestDeadline, get_serving
from service.api.deps import get_cache, get_registry, get_settings
from service.cache import ResponseCache
from service.models.registry import ModelRegistry
from service.serving import Serving
from service.settings import Settings
from service.usecases.request_context import RequestContext


def request_context(
    registry: Annotated[ModelRegistry, Depends(get_registry)],
    settings: Annotated[Settings, Depends(get_settings)],
    cache: Annotated[ResponseCache, Depends(get_cache)],
    serving: Annotated[Serving, Depends(get_serving)],
    deadline: RequestDeadline,
    cache_control: Annotated[str | None, Header(description="`no-cache` skips the read, `no-store` the write.")] = None,
) -> RequestContext:
    return RequestContext(registry, settings, cache, serving, deadline, cache_control)


#: Route parameter type: ``ctx: Ctx``.
Ctx = Annotated[RequestContext, Depends(request_context)]
