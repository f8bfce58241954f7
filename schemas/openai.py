"""`/v1/*`: the OpenAI API's request and response shapes (the official client's types are the reference).

Requests accept unknown fields (real clients send extra keys; the routes log them), unlike the native
schemas. Fields Glassbox cannot honour are refused when set to anything but their no-op value, so nothing
is silently ignored. vLLM's extension names are accepted where they exist (`top_k`, `documents`,
`chat_template_kwargs`, `return_token_ids`, `prompt_logprobs`). Pydantic only, no torch, no `openai`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.explain import ExplainOptions


class _Open(BaseModel):
    """Requests: unknown fields are kept (and logged by the route), never refused."""

    model_config = ConfigDict(extra="allow")


class TextPart(_Open):
    type: Literal["text"]
    text: str


class OpenAIMessage(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = Field(None, description="Text, or a list of `text` parts.")
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class Document(_Open):
    """vLLM's retrieved source: put into the prompt, and into the explanation as one labelled segment."""

    title: str = Field("", max_length=1000)
    text: str = Field(min_length=1, max_length=1_000_000)


class StreamOptions(_Open):
    include_usage: bool = False


class _Common(_Open):
    """Fields shared by chat and legacy completions."""

    model: str | None = Field(None, description="A model id from `GET /v1/models`; the default model if omitted.")
    max_tokens: int | None = Field(None, ge=1, le=100_000)
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="Defaults to 1, as in OpenAI's API.")
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=-1, le=100_000, description="vLLM extension; -1 or 0 disables it.")
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stop: str | list[str] | None = Field(None, description="Up to 16 stop strings.")
    n: int = Field(1, ge=1, le=16, description="Independent choices (seed + i each, when seeded).")
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = Field(None, description="Only 0 is supported.")
    frequency_penalty: float | None = Field(None, description="Only 0 is supported.")
    logit_bias: dict[str, float] | None = Field(None, description="Only empty is supported.")
    user: str | None = None
    return_token_ids: bool = Field(False, description="vLLM extension: also return the token ids.")
    prompt_logprobs: int | None = Field(None, description="vLLM extension; not supported (422 when set).")
    explain: ExplainOptions | None = Field(
        None, description="Glassbox extension (`extra_body`): explain each choice, as `/explain` does."
    )

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class ChatCompletionRequest(_Common):
    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "model": "smollm2-135m",
                    "messages": [{"role": "user", "content": "What is the capital of France?"}],
                    "max_tokens": 16,
                    "temperature": 0,
                    "logprobs": True,
                    "top_logprobs": 3,
                }
            ]
        },
    )

    messages: list[OpenAIMessage] = Field(min_length=1, max_length=1000)
    max_completion_tokens: int | None = Field(None, ge=1, le=100_000, description="Preferred over `max_tokens`.")
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    documents: list[Document] | None = Field(None, max_length=100, description="vLLM extension: retrieved sources.")
    chat_template_kwargs: dict[str, Any] | None = Field(None, description="vLLM extension; only empty is supported.")
    tools: list[dict[str, Any]] | None = Field(None, description="Not supported (422 when non-empty).")
    response_format: dict[str, Any] | None = Field(None, description='Only `{"type": "text"}` is supported.')

    @model_validator(mode="after")
    def _top_needs_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("`top_logprobs` needs `logprobs: true`")
        return self


class CompletionRequest(_Common):
    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={"examples": [{"prompt": "The Eiffel Tower is in", "max_tokens": 8, "logprobs": 2}]},
    )

    prompt: str | list[str] = Field(description="A prompt, or a list of prompts (token-id prompts are not supported).")
    logprobs: int | None = Field(None, ge=0, le=5, description="Alternatives per token (0-5).")
    echo: bool = Field(False, description="Prepend the prompt (and its tokens) to each choice.")
    suffix: str | None = Field(None, description="Not supported (422 when set).")
    best_of: int | None = Field(None, ge=1, le=16, description="Only equal to `n` is supported.")


# --- responses -------------------------------------------------------------------------------------------------


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = Field(None, description="The token's own UTF-8 bytes (a partial character's part).")


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None = None
    refusal: list[TokenLogprob] | None = None


FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "function_call"]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: ChoiceLogprobs | None = None
    token_ids: list[int] | None = Field(None, description="With `return_token_ids`.")
    explanation: dict[str, Any] | None = Field(
        None, description="With `explain`: the `/explain` response of this choice (its `text` is the message)."
    )


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str
    prompt_token_ids: list[int] | None = Field(None, description="With `return_token_ids`.")


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: Delta
    finish_reason: FinishReason | None = None
    logprobs: ChoiceLogprobs | None = None
    token_ids: list[int] | None = None
    explanation_row: dict[str, Any] | None = Field(None, description="One finished row of the explanation.")
    explanation: dict[str, Any] | None = Field(None, description="The complete explanation, in its own chunk.")


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    system_fingerprint: str
    usage: Usage | None = None


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None] = Field(description="Echoed prompt tokens: null (not computed).")
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length", "content_filter"]
    logprobs: CompletionLogprobs | None = None
    prompt_token_ids: list[int] | None = None
    token_ids: list[int] | None = None
    explanation: dict[str, Any] | None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    system_fingerprint: str


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "glassbox"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]
