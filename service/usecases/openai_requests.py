"""OpenAI request → native ``GenerateRequest``: the one hand-over point between the two protocols.

Fields that would change the answer but that the engine cannot honour are refused (422) rather than
silently dropped; unknown fields are logged and otherwise ignored, as vLLM does.
"""

from __future__ import annotations

import logging

from schemas.common import ChatMessage
from schemas.generate import GenerateRequest
from schemas.openai import ChatCompletionRequest, CompletionRequest, _Common
from service.errors import InvalidRequest
from service.usecases.documents import place_documents

log = logging.getLogger(__name__)

#: Without `max_tokens`: OpenAI's legacy default, and a chat default that fits a short answer.
DEFAULT_COMPLETION_TOKENS = 16
DEFAULT_CHAT_TOKENS = 256
#: OpenAI's default temperature when the request gives none.
DEFAULT_TEMPERATURE = 1.0


def log_unknown_fields(route: str, req: _Common) -> None:
    extra = sorted((req.model_extra or {}).keys())
    if extra:
        log.info("%s: ignoring unknown request fields %s", route, ", ".join(extra))


def _refuse_unsupported(req: _Common) -> None:
    if req.presence_penalty or req.frequency_penalty:
        raise InvalidRequest(
            "presence and frequency penalties are not supported; omit them or send 0",
            param=("presence_penalty" if req.presence_penalty else "frequency_penalty"),
        )
    if req.logit_bias:
        raise InvalidRequest("`logit_bias` is not supported", param="logit_bias")
    if req.prompt_logprobs is not None:
        raise InvalidRequest(
            "`prompt_logprobs` is not supported; use `/explain` for per-prompt-token scores", param="prompt_logprobs"
        )
    if len(req.stops()) > 16:
        raise InvalidRequest("at most 16 stop strings", param="stop")


def _sampling(req: _Common, default_tokens: int, seed_offset: int) -> dict[str, object]:
    temperature = DEFAULT_TEMPERATURE if req.temperature is None else req.temperature
    return {
        "model": req.model,
        "temperature": temperature,
        "top_p": 1.0 if req.top_p is None else req.top_p,
        "top_k": max(req.top_k or 0, 0),
        "seed": None if req.seed is None else (req.seed + seed_offset) % 2**63,
        "stop": req.stops(),
        "max_new_tokens": default_tokens,
    }


def chat_to_native(req: ChatCompletionRequest, *, seed_offset: int = 0) -> GenerateRequest:
    _refuse_unsupported(req)
    if req.chat_template_kwargs:
        raise InvalidRequest("`chat_template_kwargs` is not supported; omit it", param="chat_template_kwargs")
    if req.tools:
        raise InvalidRequest("tools and function calling are not supported", param="tools")
    if req.response_format and req.response_format.get("type", "text") != "text":
        raise InvalidRequest('only `response_format: {"type": "text"}` is supported', param="response_format")
    messages = [ChatMessage(role="system" if m.role == "developer" else m.role, content=m.text()) for m in req.messages]
    tokens = req.max_completion_tokens or req.max_tokens or DEFAULT_CHAT_TOKENS
    native = GenerateRequest.model_validate(
        {
            **_sampling(req, tokens, seed_offset),
            "messages": messages,
            "logprobs": req.logprobs,
            "top_logprobs": (req.top_logprobs or 0) if req.logprobs else 0,
            "explain": req.explain,
            "documents": [{"title": d.title, "text": d.text} for d in req.documents] if req.documents else None,
        }
    )
    return place_documents(native)


def completion_prompts(req: CompletionRequest) -> list[str]:
    prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
    if not prompts or not all(isinstance(p, str) and p for p in prompts):
        raise InvalidRequest("`prompt` must be a non-empty string or a list of them", param="prompt")
    return prompts


def completion_to_native(req: CompletionRequest, prompt: str, *, seed_offset: int = 0) -> GenerateRequest:
    _refuse_unsupported(req)
    if req.suffix:
        raise InvalidRequest("`suffix` (insertion) is not supported", param="suffix")
    if req.best_of is not None and req.best_of != req.n:
        raise InvalidRequest("`best_of` other than `n` is not supported", param="best_of")
    tokens = req.max_tokens or DEFAULT_COMPLETION_TOKENS
    return GenerateRequest.model_validate(
        {
            **_sampling(req, tokens, seed_offset),
            "prompt": prompt,
            "logprobs": req.logprobs is not None,
            "top_logprobs": req.logprobs or 0,
            "explain": req.explain,
        }
    )
