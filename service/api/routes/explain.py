"""`POST /explain`: thin: decode, call the use case (through the response cache), return."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header

from schemas.explain import ExplainRequest, ExplainResponse
from service.api.deadline import RequestDeadline, get_serving
from service.api.deps import get_cache, get_registry, get_settings
from service.api.errors import ERROR_RESPONSES
from service.api.json_body import OrjsonResponse
from service.cache import ResponseCache
from service.models.registry import ModelRegistry
from service.serving import Serving
from service.settings import Settings
from service.usecases.explain_cached import explain_cached

router = APIRouter(tags=["explain"])


@router.post("/explain", response_model=ExplainResponse, response_model_exclude_none=True, responses=ERROR_RESPONSES)
async def explain(
    req: ExplainRequest,
    registry: Annotated[ModelRegistry, Depends(get_registry)],
    settings: Annotated[Settings, Depends(get_settings)],
    cache: Annotated[ResponseCache, Depends(get_cache)],
    serving: Annotated[Serving, Depends(get_serving)],
    deadline: RequestDeadline,
    cache_control: Annotated[str | None, Header(description="`no-cache` skips the read, `no-store` the write.")] = None,
) -> Any:
    """Which input tokens drove each answer token, and the answer as a whole, by the requested methods."""
    body, outcome = await explain_cached(
        registry, settings, cache, req, serving=serving, deadline=deadline, cache_control=cache_control
    )
    return OrjsonResponse(body, headers={"X-Cache": outcome.value})
