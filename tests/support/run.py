"""Run the production paths from synchronous tests: generation in a model's batch, /explain's use case."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from schemas.explain import ExplainRequest, ExplainResponse
from service.engine.generation import GeneratedToken, GenerationOutput
from service.engine.prompt import PromptTokens
from service.engine.sampling import SamplingParams
from service.models.loaded import LoadedModel
from service.serving import Deadline, Scheduler, Serving
from service.settings import Settings
from service.usecases import explain as usecase


def generate(
    lm: LoadedModel,
    prompt: PromptTokens,
    params: SamplingParams,
    *,
    on_token: Callable[[GeneratedToken], None] | None = None,
    deadline: Deadline | None = None,
) -> GenerationOutput:
    """One generation through a fresh scheduler's batch (the only decode loop)."""

    async def go() -> GenerationOutput:
        scheduler = Scheduler(lm, max_batch_size=4)
        try:
            return (await scheduler.batcher.generate(prompt.ids, params, deadline=deadline, on_token=on_token))[0]
        finally:
            await scheduler.close()

    return asyncio.run(go())


def explain(registry: Any, settings: Settings, req: ExplainRequest, **kwargs: Any) -> ExplainResponse:
    """The /explain use case with a serving stack of its own (admission, scheduler), closed afterwards."""

    async def go() -> ExplainResponse:
        serving = Serving(settings)
        try:
            return await usecase.explain(registry, settings, req, serving=serving, **kwargs)
        finally:
            await serving.close()

    return asyncio.run(go())


def explain_answer(
    lm: LoadedModel, settings: Settings, prompt: PromptTokens, answer: Any, options: Any
) -> ExplainResponse:
    """The engine path of /explain for a given answer, on a serving stack of its own (closed afterwards)."""

    async def go() -> ExplainResponse:
        serving = Serving(settings)
        try:
            return await usecase.explain_answer(
                lm, settings, serving, prompt, answer, options, deadline=serving.deadline()
            )
        finally:
            await serving.close()

    return asyncio.run(go())
