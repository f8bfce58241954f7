"""The default model (SmolLM2-135M): greedy and seeded outputs alone vs inside a batch of different lengths."""

from __future__ import annotations

import asyncio

import pytest

from schemas.common import ChatMessage
from service.engine.generation import GenerationOutput
from service.engine.prompt import build_prompt
from service.engine.sampling import SamplingParams
from service.models.loaded import LoadedModel
from service.serving.scheduler import Scheduler

pytestmark = pytest.mark.integration

QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three uses of a paperclip, with one sentence each.",
    "Who designed the Eiffel Tower?",
]
PARAMS = [
    SamplingParams(max_new_tokens=24),
    SamplingParams(max_new_tokens=24, temperature=0.7, top_p=0.9, seed=11),
    SamplingParams(max_new_tokens=24),
    SamplingParams(max_new_tokens=16, temperature=1.0, seed=3, stop=(".",)),
]


def test_default_model_outputs_are_the_same_alone_and_batched(default_lm: LoadedModel) -> None:
    prompts = [build_prompt(default_lm.tokenizer, messages=[ChatMessage(role="user", content=q)]) for q in QUESTIONS]

    async def scenario() -> tuple[list[GenerationOutput], list[GenerationOutput]]:
        scheduler = Scheduler(default_lm, max_batch_size=8)
        batcher = scheduler.batcher
        alone = [(await batcher.generate(p.ids, sp))[0] for p, sp in zip(prompts, PARAMS, strict=True)]
        together = await asyncio.gather(*(batcher.generate(p.ids, sp) for p, sp in zip(prompts, PARAMS, strict=True)))
        await scheduler.close()
        return alone, [out for out, _ in together]

    alone, together = asyncio.run(scenario())
    for a, b in zip(alone, together, strict=True):
        assert a.ids == b.ids and a.text == b.text and a.finish_reason == b.finish_reason
        assert max((abs(x.logprob - y.logprob) for x, y in zip(a.tokens, b.tokens, strict=True)), default=0) < 1e-3
    assert any(len(out.tokens) > 10 for out in alone)
