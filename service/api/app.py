"""The app factory. The lifespan owns the heavy things: it starts model loading and closes it all."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

from service.api.errors import install_error_handlers
from service.api.middleware import install_middleware
from service.api.routes import explain, generate, health, openai
from service.api.routes.ui import install_ui
from service.cache import build_cache
from service.models.registry import ModelRegistry
from service.observability.tracing import EXPORT_TIMEOUT_S, build_tracer_provider
from service.serving import Serving
from service.serving.runtime import publish_model_info
from service.settings import Settings

log = logging.getLogger(__name__)

DESCRIPTION = """
Generation with per-token logprobs, and explanations (attention, attributions) of what the model said.
Every error has the body `{"error": {"message", "type", "param", "code"}}`.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app. Nothing heavy happens here: models load in the lifespan, in the background."""
    settings = settings or Settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        registry = ModelRegistry(settings)
        app.state.registry = registry
        app.state.cache = build_cache(settings)
        loading = asyncio.create_task(registry.load_all(), name="load-models")
        loading.add_done_callback(lambda _: publish_model_info(registry))
        try:
            yield
        finally:
            loading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loading
            await serving.close()
            if tracer_provider is not None:  # a last flush, bounded: an unreachable collector can't hold exit
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.to_thread(tracer_provider.shutdown), EXPORT_TIMEOUT_S + 1)
            await app.state.cache.close()

    # redirect_slashes=False: `/generate/` is a 404 (documented), not a 307 to a path the client did not ask for.
    app = FastAPI(title="Glassbox", version="0.1.0", description=DESCRIPTION, lifespan=lifespan, redirect_slashes=False)
    app.state.settings = settings
    serving = app.state.serving = Serving(settings)
    tracer_provider = build_tracer_provider(settings)
    install_middleware(app, settings, serving, tracer_provider)
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(generate.router)
    app.include_router(explain.router)
    app.include_router(openai.router)
    install_ui(app)
    return app
