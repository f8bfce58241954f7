"""FastAPI dependencies: the app's long-lived objects, reached through ``request.app.state``."""

from __future__ import annotations

from fastapi import Request

from service.cache import ResponseCache
from service.models.registry import ModelRegistry
from service.settings import Settings


def get_registry(request: Request) -> ModelRegistry:
    registry: ModelRegistry = request.app.state.registry
    return registry


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_cache(request: Request) -> ResponseCache:
    cache: ResponseCache = request.app.state.cache
    return cache
