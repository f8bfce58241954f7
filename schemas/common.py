"""Shapes shared by several endpoints: errors, tokens, chat messages, model info."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ErrorDetail(BaseModel):
    message: str = Field(description="What went wrong and what to do about it.")
    type: str = Field(description="Machine-readable error class, e.g. `invalid_request`.")
    param: str | None = Field(None, description="The request field at fault, dotted, when there is one.")
    code: str | None = Field(None, description="A finer machine-readable reason, when there is one.")


class ErrorBody(BaseModel):
    """The body of every non-2xx response."""

    error: ErrorDetail


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant", "tool"]
    content: str = Field(max_length=1_000_000)


class TopLogprob(BaseModel):
    token: str
    id: int
    logprob: float


class Token(BaseModel):
    """One token of the prompt or of the answer."""

    id: int
    text: str = Field(description="The token's text as it appears in the decoded string.")
    offset: int = Field(description="Character offset of the token in the prompt text or the answer text.")
    special: bool = Field(False, description="A special token of the tokenizer (e.g. `<|im_end|>`).")
    message_index: int | None = Field(None, description="Chat input: index of the message it belongs to.")
    role: str | None = Field(None, description="Chat input: role of that message.")
    template: bool | None = Field(None, description="Chat input: text added by the chat template.")
    logprob: float | None = Field(None, description="Generated tokens: log-probability under the model.")
    top_logprobs: list[TopLogprob] | None = Field(
        None, description="Generated tokens: the most likely alternatives, most likely first."
    )


class ModelRef(BaseModel):
    id: str
    revision: str = Field(description="SHA-256 (hex) identifying the loaded weights.")


class Support(BaseModel):
    """Whether the model can do something, and if not, why (the same reason a request gets in its 422)."""

    supported: bool
    reason: str | None = None


class ModelFactsInfo(BaseModel):
    """The model's architecture as the service reads it (``service/models/facts.py``)."""

    model_class: str
    model_type: str = Field(description="Of the text config (a composite config's decoder).")
    layers: int = Field(description="Decoder layers.")
    layer_kinds: list[str] = Field(
        description="Per decoder layer: attention, sliding_attention, linear_attention, mamba, recurrent, rwkv, ..."
    )
    attention_layers: list[int] = Field(description="Decoder-layer indices whose attention weights are captured.")
    attention_capture: str | None = Field(description="How attention weights are captured; null when they are not.")
    heads: int | None = Field(description="Attention heads; null for a model without attention.")
    kv_heads: int | None
    hidden_size: int
    vocab: int
    context: int | None = Field(description="Context length the config names (null: none; max_context applies).")
    embedding_scale: float = Field(description="Embedding module output over the raw weight row (√d for Gemma).")


class ModelInfo(BaseModel):
    id: str
    source: str
    revision: str
    device: str
    dtype: str
    max_context: int
    vocab_size: int
    num_layers: int
    num_heads: int | None = Field(description="Attention heads; null for a model without attention (mamba, rwkv).")
    chat_template: bool
    ready: bool
    default: bool
    facts: ModelFactsInfo
    supports: dict[str, Support] = Field(description="Per explain method: whether this model can run it, and why not.")
    generation: Support
    batching: Support = Field(description="Whether concurrent requests decode in one batch (else one at a time).")
