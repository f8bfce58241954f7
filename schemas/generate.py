"""`POST /generate`: request and response."""

from __future__ import annotations

from typing import Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.common import ModelRef, Token
from schemas.explain import ExplainOptions, ExplainResponse
from schemas.inputs import InputFields, SamplingFields

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


class GenerateRequest(InputFields, SamplingFields):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": cast(Any, [_EXAMPLE_CHAT, _EXAMPLE_PROMPT])}
    )

    logprobs: bool = Field(True, description="Return each generated token's log-probability.")
    top_logprobs: int = Field(0, ge=0, le=20, description="Alternatives per generated token (needs logprobs).")
    stream: bool = Field(False, description="Server-Sent Events: one `token` event each, then `done`.")
    explain: ExplainOptions | None = Field(
        None, description="Also explain the generated answer (the same options as `/explain`), in `explanation`."
    )

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
    explanation: ExplainResponse | None = Field(None, description="With `explain`: why the model said this.")
    cache: Literal["hit", "miss", "bypass", "error"] | None = Field(
        None, description="What the response cache did (also in the `X-Cache` header); timings are the original's."
    )


class TokenEvent(BaseModel):
    """Streaming: one generated token."""

    index: int
    token: Token
