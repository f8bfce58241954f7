"""Probes and model listing. ``/healthz`` never touches a model; ``/readyz`` is 200 only when warm."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from schemas.common import ErrorBody, ModelInfo
from service.api.deadline import get_serving
from service.api.deps import get_registry
from service.api.errors import ERROR_RESPONSES
from service.errors import ModelNotReady, ShuttingDown
from service.models.registry import ModelRegistry
from service.serving import Serving
from service.usecases.model_info import model_info

router = APIRouter()


class Status(BaseModel):
    status: str


@router.get("/healthz", response_model=Status, tags=["probes"])
async def healthz() -> Status:
    """Liveness: the process answers."""
    return Status(status="ok")


@router.get(
    "/readyz",
    response_model=Status,
    tags=["probes"],
    responses={503: {"model": ErrorBody, "description": "Loading, failed to load, or draining."}},
)
async def readyz(
    registry: Annotated[ModelRegistry, Depends(get_registry)], serving: Annotated[Serving, Depends(get_serving)]
) -> Status:
    """Readiness: every configured model is loaded and warmed up, and the server is not draining."""
    if serving.drain.draining:  # first, so load balancers stop sending work at once
        raise ShuttingDown("this server is shutting down", headers={"Retry-After": "1"})
    for slot in registry.slots:
        if slot.model is None:
            registry.get(slot.name)  # raises the precise not-ready error
    if not registry.ready:
        raise ModelNotReady("models are not ready")
    return Status(status="ready")


@router.get("/models", response_model=list[ModelInfo], tags=["models"], responses={401: ERROR_RESPONSES[401]})
async def models(registry: Annotated[ModelRegistry, Depends(get_registry)]) -> list[ModelInfo]:
    """Loaded models: their config, architecture facts, and which methods, generation and batching each
    supports (with the reason when not)."""
    return [
        model_info(slot.model, default=slot.name == registry.default_name)
        for slot in registry.slots
        if slot.model is not None
    ]


@router.get("/metrics", tags=["probes"], response_class=Response)
async def metrics() -> Response:
    """Prometheus text exposition."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
