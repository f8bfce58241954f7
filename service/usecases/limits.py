"""Request → engine inputs and the limits checked before model work (shared by /generate and /explain)."""

from __future__ import annotations

from schemas.inputs import InputFields, SamplingFields
from service.engine.generation import GenerationOutput
from service.engine.prompt import PromptTokens, max_token_bytes, render_chat, tokens_over
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


def _over_tokens(settings: Settings, count: str, is_chat: bool) -> BudgetExceeded:
    return BudgetExceeded(
        f"the prompt has {count} tokens, over this server's limit of {settings.max_prompt_tokens}",
        param="messages" if is_chat else "prompt",
    )


def check_input_size(lm: LoadedModel, settings: Settings, req: InputFields) -> None:
    """Refusals that cost microseconds, before a slot is taken or anything is tokenized: more messages than
    the token limit (every message adds template tokens), or more UTF-8 bytes than the token limit's worth
    of the longest tokens."""
    limit = settings.max_prompt_tokens
    if req.messages is not None and len(req.messages) > limit:
        raise BudgetExceeded(
            f"{len(req.messages)} messages cannot fit in this server's limit of {limit} prompt tokens",
            param="messages",
        )
    texts = [req.prompt] if req.prompt is not None else [m.content for m in req.messages or ()]
    size = sum(len(t) for t in texts)  # characters ≤ bytes: only encode when it could matter
    widest = max_token_bytes(lm.tokenizer)
    if size > limit and sum(len(t.encode()) for t in texts) > limit * widest:
        raise _over_tokens(settings, f"more than {limit}", req.messages is not None)


def check_prompt_tokens_bounded(lm: LoadedModel, settings: Settings, req: InputFields) -> None:
    """Before full tokenization (offsets and all): a prompt whose first part alone is over the limit is
    refused after tokenizing only that part (see :func:`service.engine.prompt.tokens_over`)."""
    text = req.prompt if req.prompt is not None else render_chat(lm.tokenizer, req.messages or [])
    count = tokens_over(lm.tokenizer, text, settings.max_prompt_tokens)
    if count is not None:
        raise _over_tokens(settings, f"more than {count}", req.messages is not None)
