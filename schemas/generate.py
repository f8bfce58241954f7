"""`POST /generate`: request and response."""

from __future__ import annotations

from typing import Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.common import ChatMessage, ModelRef, Token

_EXAMPLE_CHAT: dict[str, Any] = {
    "messages": [{"role": "user", "content": "What is the capital of France?"}],
    "max_new_tokens": 16,
    "temperature": 0,
    "top_logprobs": 3,
}
_EXAMPLE_PROMPT: dict[str, Any] = {
    "prompt": "The Eiffel Tower is in",
    "max_new_tokens": 8,
    "temperature": 0.7,
    "seed": 42,
}


class InputFields(BaseModel):
    """The input shared by /generate and /explain: exactly one of ``prompt`` or ``messages``."""

    model_config = ConfigDict(extra="forbid")

    prompt: str | None = Field(None, min_length=1, max_length=2_000_000, description="Raw prompt text.")
    messages: list[ChatMessage] | None = Field(
        None, min_length=1, max_length=1000, description="OpenAI-style chat, formatted by the chat template."
    )
    model: str | None = Field(None, description="Model id from `GET /models`; the default model if omitted.")

    @model_validator(mode="after")
    def _one_input(self) -> InputFields:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of `prompt` or `messages`")
        return self


class SamplingFields(BaseModel):
    """How to generate. ``temperature`` 0 is greedy; a ``seed`` makes sampling reproducible."""

    max_new_tokens: int = Field(64, ge=1, le=100_000, description="Upper bound on generated tokens.")
    temperature: float = Field(0.0, ge=0.0, le=10.0, description="0 = greedy decoding.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    top_k: int = Field(0, ge=0, le=100_000, description="Sample among the k most likely tokens; 0 = all.")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="Seed for sampling.")
    stop: list[str] = Field(
        default_factory=list, max_length=16, description="Stop strings; the text ends before the first one."
    )

    @model_validator(mode="after")
    def _stops_not_empty(self) -> SamplingFields:
        for stop in self.stop:
            if not stop or len(stop) > 256:
                raise ValueError("each stop string must be 1 to 256 characters")
        return self


class GenerateRequest(InputFields, SamplingFields):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": cast(Any, [_EXAMPLE_CHAT, _EXAMPLE_PROMPT])}
    )

    logprobs: bool = Field(True, description="Return each generated token's log-probability.")
    top_logprobs: int = Field(0, ge=0, le=20, description="Alternatives per generated token (needs logprobs).")
    stream: bool = Field(False, description="Server-Sent Events: one `token` event each, then `done`.")

    @model_validator(mode="after")
    def _top_needs_logprobs(self) -> GenerateRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("`top_logprobs` needs `logprobs: true`")
        return self


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Timings(BaseModel):
    queue_ms: float = Field(description="Waiting for the model.")
    tokenize_ms: float
    prefill_ms: float = Field(description="Forward pass over the prompt (time to first token).")
    decode_ms: float
    total_ms: float
    tokens_per_s: float


class GenerateResponse(BaseModel):
    text: str
    finish_reason: Literal["stop", "length", "stop_sequence"]
    prompt_tokens: list[Token]
    tokens: list[Token] = Field(description="The generated tokens (the end-of-sequence token excluded).")
    usage: Usage
    model: ModelRef
    seed: int | None = Field(
        None, description="The seed used (drawn at random for unseeded sampling); absent when greedy."
    )
    timings: Timings
    cache: Literal["hit", "miss", "bypass", "error"] | None = Field(
        None, description="What the response cache did (also in the `X-Cache` header); timings are the original's."
    )


class TokenEvent(BaseModel):
    """Streaming: one generated token."""

    index: int
    token: Token
