"""`POST /explain`: thin: decode, call the use case, return."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from schemas.explain import ExplainRequest, ExplainResponse
from service.api.deadline import RequestDeadline, get_serving
from service.api.deps import get_registry, get_settings
from service.api.errors import ERROR_RESPONSES
from service.models.registry import ModelRegistry
from service.serving import Serving
from service.settings import Settings
from service.usecases import explain as usecase

router = APIRouter(tags=["explain"])


@router.post("/explain", response_model=ExplainResponse, response_model_exclude_none=True, responses=ERROR_RESPONSES)
async def explain(
    req: ExplainRequest,
    registry: Annotated[ModelRegistry, Depends(get_registry)],
    settings: Annotated[Settings, Depends(get_settings)],
    serving: Annotated[Serving, Depends(get_serving)],
    deadline: RequestDeadline,
) -> ExplainResponse:
    """Which input tokens drove each answer token, and the answer as a whole, by the requested methods."""
    return await usecase.explain(registry, settings, req, serving=serving, deadline=deadline)
