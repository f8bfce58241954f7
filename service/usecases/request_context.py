"""What every model-serving use case needs from the HTTP layer: built once per request by one dependency."""

from __future__ import annotations

from dataclasses import dataclass

from service.cache import ResponseCache
from service.models.registry import ModelRegistry
from service.serving import Serving
from service.serving.deadline import Deadline
from service.settings import Settings


@dataclass(frozen=True)
class RequestContext:
    registry: ModelRegistry
    settings: Settings
    cache: ResponseCache
    serving: Serving
    deadline: Deadline
    cache_control: str | None  # the request's Cache-Control header (`no-cache`, `no-store`)
