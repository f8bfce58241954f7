"""`POST /explain` (and `/generate`'s `explain` field): which input tokens drove the answer, and how much.

Pydantic only, no torch: a client can validate requests and read responses without the model stack.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.common import ModelRef, Token
from schemas.inputs import InputFields, SamplingFields

#: Attribution methods, each one small module in ``service/explain/methods`` (a test keeps both in step).
MethodName = Literal[
    "attention",
    "attention_rollout",
    "saliency",
    "input_x_gradient",
    "integrated_gradients",
    "occlusion",
    "logit_lens",
    "attention_gradient",
    "shapley",
]
METHOD_NAMES: tuple[str, ...] = MethodName.__args__  # type: ignore[attr-defined]

Scope = Literal["tokens", "sequence"]
Granularity = Literal["token", "word", "sentence", "message", "segments"]
AttributedFunction = Literal["logprob", "prob", "logit"]
Reduction = Literal["mean", "max", "none"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AttentionOptions(_Strict):
    """Which attention weights to return, and how to reduce them (full arrays only when asked for)."""

    layers: list[int] | None = Field(
        None, min_length=1, max_length=1024, description="Layer indices (negative counts from the end); all if omitted."
    )
    heads: list[int] | None = Field(
        None, min_length=1, max_length=1024, description="Head indices (negative counts from the end); all if omitted."
    )
    reduce_heads: Reduction = Field("mean", description="`none` keeps a `head` axis.")
    reduce_layers: Reduction = Field("mean", description="`none` keeps a `layer` axis.")


class RolloutOptions(_Strict):
    residual: float = Field(
        0.5, ge=0.0, le=1.0, description="Weight of the identity (residual connection) mixed into each layer."
    )


class IntegratedGradientsOptions(_Strict):
    n_steps: int = Field(16, ge=1, le=512, description="Interpolation steps between the baseline and the input.")
    baseline: Literal["zero", "pad", "mean"] = Field(
        "pad",  # the closest to completeness on the default model (make bench-ig; README)
        description="Baseline embedding: zeros, the pad (or end-of-sequence) token's, or the vocabulary mean.",
    )
    rule: Literal["gausslegendre", "riemann_trapezoid", "riemann_middle"] = Field(
        "gausslegendre", description="Quadrature rule over the path (Captum's names)."
    )

    @model_validator(mode="after")
    def _trapezoid_needs_two(self) -> IntegratedGradientsOptions:
        if self.rule == "riemann_trapezoid" and self.n_steps < 2:
            raise ValueError("`riemann_trapezoid` needs n_steps >= 2")
        return self


class LogitLensOptions(_Strict):
    top_k: int = Field(5, ge=0, le=100, description="Top tokens (ids and log-probabilities) per layer and target.")


class ShapleyOptions(_Strict):
    n_samples: int = Field(32, ge=1, le=4096, description="Sampled permutations of the units (the cost grows with it).")
    masking: Literal["delete", "replace"] = Field(
        "delete", description="A unit outside the coalition: removed (`delete`) or replaced by the pad token."
    )
    seed: int = Field(0, ge=0, description="Seed of the permutation sampler (same seed, same values).")
    exact: bool = Field(
        True,
        description="Enumerate every coalition (exact values) when there are no more of them than sampling "
        "could run, i.e. 2^units <= n_samples x (units - 1) + 2.",
    )


class Segment(_Strict):
    """A caller-given source unit: a labelled substring, or a character span (in `prompt` or in one message)."""

    label: str | None = Field(None, max_length=200)
    text: str | None = Field(None, min_length=1, description="Found (first occurrence) in the prompt text.")
    start: int | None = Field(None, ge=0, description="Character span start, in `prompt` or `messages[message]`.")
    end: int | None = Field(None, ge=1)
    message: int | None = Field(None, ge=0, description="Chat input: the message the span refers to.")

    @model_validator(mode="after")
    def _text_or_span(self) -> Segment:
        has_span = self.start is not None or self.end is not None
        if (self.text is None) == (not has_span):
            raise ValueError("give either `text` or `start` and `end`")
        if has_span and (self.start is None or self.end is None or self.end <= self.start):
            raise ValueError("a span needs `start` < `end`")
        return self


class TargetSpan(_Strict):
    """Answer tokens [start, end) explained together in `sequence` scope and given rows in `tokens` scope."""

    start: int = Field(0, ge=0)
    end: int | None = Field(None, ge=1, description="Exclusive; the end of the answer if omitted.")

    @model_validator(mode="after")
    def _ordered(self) -> TargetSpan:
        if self.end is not None and self.end <= self.start:
            raise ValueError("`end` must be greater than `start`")
        return self


def _default_methods() -> list[MethodName]:
    return ["input_x_gradient"]


def _default_scope() -> list[Scope]:
    return ["tokens", "sequence"]


class ExplainOptions(_Strict):
    """What to compute and how to shape it; valid in `/explain` and in `/generate`'s `explain` field."""

    methods: list[MethodName] = Field(default_factory=_default_methods, min_length=1, max_length=len(METHOD_NAMES))
    scope: list[Scope] = Field(
        default_factory=_default_scope,
        min_length=1,
        max_length=2,
        description="`tokens`: a target × source matrix; `sequence`: one vector for the whole answer (or span).",
    )
    function: AttributedFunction = Field("logprob", description="What is attributed, per target token.")
    target_span: TargetSpan | None = None
    contrast: str | None = Field(
        None,
        min_length=1,
        max_length=10_000,
        description="Alternative answer: explains 'why the target rather than this' (difference of the function).",
    )
    granularity: Granularity = "token"
    segments: list[Segment] | None = Field(None, min_length=1, max_length=1000)
    aggregation: Literal["sum", "mean", "max", "absmax"] = Field(
        "sum", description="How token scores combine into a word, sentence, message or segment."
    )
    include_template: bool = Field(False, description="Score chat-template tokens too.")
    include_special: bool = Field(False, description="Score special tokens too.")
    normalize: Literal["none", "l1", "max"] = Field(
        "none", description="Per row: divide by the sum of absolute values (`l1`) or the largest one (`max`)."
    )
    row_top_k: int | None = Field(
        None, ge=1, le=100_000, description="Sparse output: keep the k largest |scores| of each row."
    )
    precision: int | None = Field(4, ge=1, le=9, description="Significant digits in JSON; null keeps all.")
    encoding: Literal["json", "base64"] = Field("json", description="`base64`: little-endian packed values.")
    binary_dtype: Literal["float32", "float16"] = "float32"
    attention: AttentionOptions = Field(default_factory=AttentionOptions)
    attention_rollout: RolloutOptions = Field(default_factory=RolloutOptions)
    integrated_gradients: IntegratedGradientsOptions = Field(default_factory=IntegratedGradientsOptions)
    logit_lens: LogitLensOptions = Field(default_factory=LogitLensOptions)
    shapley: ShapleyOptions = Field(default_factory=ShapleyOptions)

    @model_validator(mode="after")
    def _consistent(self) -> ExplainOptions:
        if len(set(self.methods)) != len(self.methods):
            raise ValueError("`methods` lists a method twice")
        if len(set(self.scope)) != len(self.scope):
            raise ValueError("`scope` lists a scope twice")
        if (self.granularity == "segments") != (self.segments is not None):
            raise ValueError("`segments` is given exactly when `granularity` is `segments`")
        return self


class ExplainRequest(InputFields, SamplingFields, ExplainOptions):
    """Explain `target` (forced decoding) or, without one, the answer generated with the sampling fields."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "messages": [{"role": "user", "content": "What is the capital of France?"}],
                    "target": "Paris",
                    "methods": ["input_x_gradient", "attention"],
                    "granularity": "word",
                }
            ]
        },
    )

    target: str | None = Field(None, min_length=1, max_length=100_000, description="Answer text to explain.")
    stream: bool = Field(
        False,
        description="Server-Sent Events: `progress` and `row` events while the explanation runs, then `done` "
        "with the response (or `error` with the error body).",
    )


class ArrayData(BaseModel):
    """An n-dimensional array that names its axes. Sparse (`top_k`) arrays keep the last axis's k largest."""

    dims: list[str]
    shape: list[int] = Field(description="Dense shape (before `top_k`).")
    encoding: Literal["json", "base64"]
    dtype: Literal["float32", "float16"] | None = Field(None, description="Base64 only.")
    data: Any = Field(description="Nested lists, or base64 of the row-major little-endian values.")
    indices: Any | None = Field(
        None, description="`top_k` only: positions along the last axis (nested lists, or base64 int32)."
    )


class MethodResult(BaseModel):
    tokens: ArrayData | None = Field(None, description="[..., target, source]")
    sequence: ArrayData | None = Field(None, description="[..., source] over the first `sequence_sources` sources.")
    params: dict[str, Any]
    time_ms: float


class SourceUnit(BaseModel):
    """One column: a token, word, sentence, message or segment of the prompt (or of the earlier answer)."""

    text: str
    kind: Literal["prompt", "answer"]
    start: int = Field(description="Character offset in the prompt text or the answer text.")
    end: int
    tokens: list[int] = Field(description="Indices into `prompt_tokens` (prompt) or `target_tokens` (answer).")
    message_index: int | None = None
    role: str | None = None
    label: str | None = None


class Attributed(BaseModel):
    function: AttributedFunction
    description: str
    contrast: str | None = Field(None, description="The alternative text when the function is a difference.")
    contrast_tokens: list[Token] | None = None


class Provenance(BaseModel):
    model: ModelRef
    dtype: str
    device: str
    methods: dict[str, dict[str, Any]]
    chunks: dict[str, int] = Field(description="Targets per backward pass, steps per forward, sequences per batch.")
    estimated_work: int = Field(description="Token passes the cost estimate charged this request.")
    estimated_s: float = Field(description="Seconds the calibrated cost model expected the engine to take.")
    engine_s: float = Field(description="Seconds the engine actually took (including interleaved decode steps).")
    units: int = Field(description="Units of work run (the scheduler could interleave or stop between any two).")
    timings_ms: dict[str, float]


class ExplainResponse(BaseModel):
    text: str = Field(description="The explained answer.")
    prompt_text: str
    prompt_tokens: list[Token]
    target_tokens: list[Token] = Field(description="The answer's tokens with their log-probabilities.")
    rows: list[int] = Field(description="`tokens` scope: the target token index of each row.")
    span: list[int] = Field(description="Target tokens [start, end) explained in `sequence` scope.")
    sources: list[SourceUnit]
    sequence_sources: int = Field(description="The first n sources are those of the `sequence` vectors.")
    granularity: Granularity
    aggregation: str
    attributed: Attributed
    methods: dict[str, MethodResult]
    summary: str
    provenance: Provenance
    cache: Literal["hit", "miss", "bypass", "error"] | None = Field(
        None, description="What the response cache did (also in the `X-Cache` header); timings are the original's."
    )


class ExplainProgressEvent(BaseModel):
    """Streaming (`event: progress`): units of model work done so far, for a progress bar."""

    done: int = Field(description="Units of work finished.")
    total: int = Field(description="Units of work planned (may grow by a few when a phase is re-planned).")
    elapsed_s: float
    eta_s: float = Field(description="Estimated seconds left (from the calibrated cost model).")
    phase: str = Field(description="What is running, e.g. `forward`, `gradients`, `integrated_gradients`.")


class ExplainRowEvent(BaseModel):
    """Streaming (`event: row`): one final row of a `tokens`-scope method, equal to that row of the `done`
    response (same units, normalization, top-k, precision and encoding)."""

    method: str
    row: int = Field(description="Index into the response's `rows` (and `methods[m].tokens` target axis).")
    target: int = Field(description="The target token index (`rows[row]`).")
    scores: ArrayData = Field(description="[..., source]: the row's scores.")
