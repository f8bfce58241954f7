"""OpenAI request → native ``GenerateRequest``: the one hand-over point between the two protocols.

Fields that would change the answer but that the engine cannot honour are refused (422) rather than
silently dropped; unknown fields are logged and otherwise ignored, as vLLM does.
"""

from __future__ import annotations

import logging

from schemas.common import ChatMessage
from schemas.explain import ExplainOptions, Segment
from schemas.generate import GenerateRequest
from schemas.openai import ChatCompletionRequest, CompletionRequest, Document, _Common
from service.errors import InvalidRequest

log = logging.getLogger(__name__)

#: Without `max_tokens`: OpenAI's legacy default, and a chat default that fits a short answer.
DEFAULT_COMPLETION_TOKENS = 16
DEFAULT_CHAT_TOKENS = 256
#: OpenAI's default temperature when the request gives none.
DEFAULT_TEMPERATURE = 1.0

#: `documents` become one system message, first in the chat: this header, then `[i] title` and the text.
DOCUMENTS_HEADER = "Use these documents to answer."


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


def documents_message(documents: list[Document]) -> tuple[str, list[tuple[str, int, int]]]:
    """The system message the documents become, and each text's label and character span in it."""
    text = DOCUMENTS_HEADER
    spans = []
    for i, doc in enumerate(documents, start=1):
        text += f"\n\n[{i}] {doc.title}\n" if doc.title else f"\n\n[{i}]\n"
        spans.append((doc.title or f"document {i}", len(text), len(text) + len(doc.text)))
        text += doc.text
    return text, spans


def _with_document_segments(options: ExplainOptions, spans: list[tuple[str, int, int]]) -> ExplainOptions:
    """Documents are the natural units of an explanation, unless the client chose its own."""
    if options.segments is not None or "granularity" in options.model_fields_set:
        return options
    segments = [Segment(label=label, start=start, end=end, message=0) for label, start, end in spans]
    return options.model_copy(update={"granularity": "segments", "segments": segments})


def chat_to_native(req: ChatCompletionRequest, *, seed_offset: int = 0) -> GenerateRequest:
    _refuse_unsupported(req)
    if req.chat_template_kwargs:
        raise InvalidRequest("`chat_template_kwargs` is not supported; omit it", param="chat_template_kwargs")
    if req.tools:
        raise InvalidRequest("tools and function calling are not supported", param="tools")
    if req.response_format and req.response_format.get("type", "text") != "text":
        raise InvalidRequest('only `response_format: {"type": "text"}` is supported', param="response_format")
    messages = [ChatMessage(role="system" if m.role == "developer" else m.role, content=m.text()) for m in req.messages]
    explain = req.explain
    if req.documents:
        text, spans = documents_message(req.documents)
        messages.insert(0, ChatMessage(role="system", content=text))
        explain = _with_document_segments(explain, spans) if explain is not None else None
    tokens = req.max_completion_tokens or req.max_tokens or DEFAULT_CHAT_TOKENS
    return GenerateRequest.model_validate(
        {
            **_sampling(req, tokens, seed_offset),
            "messages": messages,
            "logprobs": req.logprobs,
            "top_logprobs": (req.top_logprobs or 0) if req.logprobs else 0,
            "explain": explain,
        }
    )


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
