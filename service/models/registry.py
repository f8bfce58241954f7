"""The set of models this process serves, loaded in the background so probes answer while weights load."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from service.errors import ModelNotFound, ModelNotReady
from service.models.loaded import LoadedModel
from service.models.loader import load_model
from service.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class ModelSlot:
    name: str
    source: str
    model: LoadedModel | None = None
    error: str | None = None


class ModelRegistry:
    """Names → models. ``get`` is what use cases call; it never blocks on loading."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._slots = {name: ModelSlot(name, source) for name, source in settings.model_specs()}
        self.default_name = settings.model_specs()[0][0]
        self._loaded = asyncio.Event()

    @property
    def ready(self) -> bool:
        return all(slot.model is not None for slot in self._slots.values())

    @property
    def slots(self) -> list[ModelSlot]:
        return list(self._slots.values())

    async def load_all(self) -> None:
        """Load every model in order, each in a worker thread; a failure is recorded and logged."""
        for slot in self._slots.values():
            try:
                slot.model = await asyncio.to_thread(load_model, slot.name, slot.source, self._settings)
            except Exception as exc:  # reported by /readyz and /models, never crashes the server
                slot.error = f"{type(exc).__name__}: {exc}"
                log.exception("failed to load model %s from %s", slot.name, slot.source)
        self._loaded.set()

    async def wait_loaded(self) -> None:
        await self._loaded.wait()

    def get(self, name: str | None) -> LoadedModel:
        slot = self._slots.get(name or self.default_name)
        if slot is None:
            known = ", ".join(sorted(self._slots))
            raise ModelNotFound(f"unknown model {name!r}; this server serves: {known}", param="model")
        if slot.model is None:
            detail = f"failed to load: {slot.error}" if slot.error else "still loading; retry shortly"
            raise ModelNotReady(f"model {slot.name!r} is not ready ({detail})", headers={"Retry-After": "5"})
        return slot.model
