"""Request fields shared by /generate and /explain: the input, and how to generate."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.common import ChatMessage


class Document(BaseModel):
    """A retrieved source: placed into the prompt by the documented template, and explained as one unit."""

    model_config = ConfigDict(extra="forbid")

    title: str = Field("", max_length=1000)
    text: str = Field(min_length=1, max_length=1_000_000)


class InputFields(BaseModel):
    """The input shared by /generate and /explain: exactly one of ``prompt`` or ``messages``."""

    model_config = ConfigDict(extra="forbid")

    prompt: str | None = Field(None, min_length=1, max_length=2_000_000, description="Raw prompt text.")
    messages: list[ChatMessage] | None = Field(
        None, min_length=1, max_length=1000, description="OpenAI-style chat, formatted by the chat template."
    )
    model: str | None = Field(None, description="Model id from `GET /models`; the default model if omitted.")
    documents: list[Document] | None = Field(
        None,
        min_length=1,
        max_length=100,
        description="Retrieved sources (RAG): they become one system message first in the chat (or a block "
        "before the prompt), `Use these documents to answer.` then `[i] title` and the text of each; "
        "explanations then score each document (or its sentences) as a unit.",
    )

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
