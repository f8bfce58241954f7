"""Request → engine inputs and the limits checked before model work (shared by /generate and /explain)."""

from __future__ import annotations

from schemas.inputs import SamplingFields
from service.engine.generation import GenerationOutput
from service.engine.prompt import PromptTokens
from service.engine.sampling import SamplingParams
from service.errors import BudgetExceeded, ClientClosedRequest, DeadlineExceeded, InvalidRequest
from service.models.loaded import LoadedModel
from service.serving.deadline import Deadline
from service.settings import Settings


def sampling_params(req: SamplingFields) -> SamplingParams:
    """The engine's sampling parameters from a request's sampling fields (alternatives only for /generate)."""
    return SamplingParams(
        max_new_tokens=req.max_new_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=req.top_k,
        seed=req.seed,
        stop=tuple(req.stop),
        top_logprobs=getattr(req, "top_logprobs", 0),
    )


def check_new_tokens(settings: Settings, max_new_tokens: int) -> None:
    """The part of the limits that needs no tokenizer: checked before a slot is taken."""
    if max_new_tokens > settings.max_new_tokens_limit:
        raise InvalidRequest(
            f"max_new_tokens={max_new_tokens} is over this server's limit of {settings.max_new_tokens_limit}",
            param="max_new_tokens",
        )


def check_limits(lm: LoadedModel, settings: Settings, prompt: PromptTokens, max_new_tokens: int) -> None:
    """Refuse work the model cannot do before any model time is spent; messages give both numbers."""
    check_new_tokens(settings, max_new_tokens)
    if len(prompt) > settings.max_prompt_tokens:
        raise BudgetExceeded(
            f"the prompt has {len(prompt)} tokens, over this server's limit of {settings.max_prompt_tokens}",
            param="prompt" if not prompt.is_chat else "messages",
        )
    if len(prompt) + max_new_tokens > lm.max_context:
        raise InvalidRequest(
            f"prompt tokens ({len(prompt)}) + max_new_tokens ({max_new_tokens}) = "
            f"{len(prompt) + max_new_tokens} exceeds the model's context limit of {lm.max_context}",
            param="max_new_tokens",
        )


def raise_if_stopped(output: GenerationOutput, deadline: Deadline) -> None:
    """A generation the deadline or the client cut short is an error, not a short answer."""
    if output.finish_reason == "timeout":
        raise DeadlineExceeded(
            f"the request's deadline of {deadline.timeout_s:g} s passed after {len(output.tokens)} generated "
            "tokens; ask for fewer tokens or a longer X-Request-Timeout-Ms (up to the server's limit)"
        )
    if output.finish_reason == "cancelled":
        raise ClientClosedRequest("the client disconnected")
