"""`POST /explain` (and `/generate`'s `explain` field): which input tokens drove the answer, and how much.

Pydantic only, no torch: a client can validate requests and read responses without the model stack.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

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
    "context_attribution",
    "counterfactual",
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
    layers: list[int] | None = Field(
        None,
        min_length=1,
        max_length=1024,
        description="Layers rolled through, in model order (negative counts from the end); all if omitted.",
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
    keep_first: bool = Field(
        True,
        description="Hold the sequence's first token at its embedding along the path (its score is then 0): "
        "it is the model's attention sink, and moving it makes the path too rough to converge (README).",
    )

    @model_validator(mode="after")
    def _trapezoid_needs_two(self) -> IntegratedGradientsOptions:
        if self.rule == "riemann_trapezoid" and self.n_steps < 2:
            raise ValueError("`riemann_trapezoid` needs n_steps >= 2")
        return self


class OcclusionOptions(_Strict):
    mode: Literal["delete", "replace"] = Field(
        "delete",
        description="`delete` removes the unit's tokens (later positions shift); `replace` keeps every position and "
        "puts the `replace_with` embedding in the unit's place.",
    )
    replace_with: Literal["pad", "mean"] = Field(
        "pad", description="`replace` mode: the pad token's embedding, or the vocabulary's mean embedding."
    )


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


class ContextAttributionOptions(_Strict):
    """ContextCite: random ablations of the sources, and a sparse linear surrogate fitted to their effect."""

    mode: Literal["lasso", "leave_one_out"] = Field(
        "lasso",
        description="`lasso`: `n_ablations` random keep/drop masks and a Lasso surrogate (ContextCite); "
        "`leave_one_out`: exact effect of removing each source alone (one forward per source).",
    )
    n_ablations: int = Field(32, ge=4, le=4096, description="Random ablations the surrogate is fitted on.")
    held_out: int = Field(8, ge=0, le=1024, description="Extra ablations kept out of the fit to score the surrogate.")
    keep_probability: float = Field(0.5, gt=0.0, lt=1.0, description="Chance that a source stays in an ablation.")
    alpha: float = Field(0.01, ge=0.0, le=10.0, description="Lasso penalty (0: ordinary least squares).")
    seed: int = Field(0, ge=0, description="Seed of the ablation sampler (same seed, same scores).")
    citation_threshold: float = Field(
        0.25,
        ge=0.0,
        description="A source is cited for an answer sentence when removing it lowers the sentence's "
        "log-probability by at least this much (nats, by the surrogate) ...",
    )
    citation_relative: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="... and by at least this share of the strongest source's effect on that sentence.",
    )


class CounterfactualOptions(_Strict):
    """The smallest set of units, in ranked order, whose removal changes the greedy answer (re-generated)."""

    rank_by: Literal["input_x_gradient", "leave_one_out"] = Field(
        "input_x_gradient",
        description="How units are ranked: input × gradient (one backward) or leave-one-out (a forward per unit).",
    )
    max_runs: int = Field(8, ge=1, le=256, description="Re-generations the search may spend (the reference included).")
    max_units: int = Field(8, ge=1, le=1000, description="The largest set of units tried.")
    compare_tokens: int | None = Field(
        None, ge=1, le=10_000, description="The first k answer tokens decide whether it changed (all if omitted)."
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


def _default_k() -> list[float]:
    return [0.1, 0.2, 0.5]


class FaithfulnessOptions(_Strict):
    """Deletion test of each method's ranking: remove (or keep only) its top-k fraction of units, re-score."""

    k: list[Annotated[float, Field(gt=0.0, le=1.0)]] = Field(
        default_factory=_default_k,
        min_length=1,
        max_length=20,
        description="Fractions of the source units (0 < k <= 1) removed (comprehensiveness) or kept (sufficiency).",
    )
    random: int = Field(3, ge=0, le=32, description="Seeded random unit sets per k, the baseline (their mean).")
    seed: int = Field(0, ge=0, description="Seed of the random unit sets (same seed, same sets).")

    @model_validator(mode="after")
    def _distinct(self) -> FaithfulnessOptions:
        if len(set(self.k)) != len(self.k):
            raise ValueError("`k` lists a fraction twice")
        return self


class StabilityOptions(_Strict):
    """Re-explain under small seeded perturbations; compare each method's scores over the units left."""

    perturbations: int = Field(3, ge=1, le=32, description="Perturbed inputs (each re-runs every method).")
    kind: Literal["drop", "replace"] = Field(
        "drop", description="Low-importance units are deleted, or replaced by the pad token (positions kept)."
    )
    fraction: float = Field(0.1, ge=0.0, le=0.5, description="Share of the source units each perturbation touches.")
    k: int = Field(5, ge=1, le=100, description="Top-k overlap: the k strongest units before and after.")
    seed: int = Field(0, ge=0, description="Same seed, same perturbations.")
    regenerate: bool = Field(True, description="Re-generate the greedy answer on each perturbed input.")


class EvaluateOptions(_Strict):
    """Opt-in checks of the explanations themselves (extra forward passes, counted in the cost model)."""

    faithfulness: FaithfulnessOptions | None = None
    stability: StabilityOptions | None = None


def _default_methods() -> list[MethodName]:
    """Saliency: of the methods that cost one backward pass, the most faithful by `make bench-faithfulness`
    (beats random deletion on 10 of 12 prompts; input × gradient, from the same pass, on 6)."""
    return ["saliency"]


def _default_scope() -> list[Scope]:
    return ["tokens", "sequence"]


class ExplainOptions(_Strict):
    """What to compute and how to shape it; valid in `/explain` and in `/generate`'s `explain` field."""

    methods: list[MethodName] = Field(
        default_factory=_default_methods,
        max_length=len(METHOD_NAMES),
        description="Attribution methods; `[]` only scores the target (one forward pass: its log-probabilities).",
    )
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
    occlusion: OcclusionOptions = Field(default_factory=OcclusionOptions)
    shapley: ShapleyOptions = Field(default_factory=ShapleyOptions)
    evaluate: EvaluateOptions | None = Field(
        None, description='`{"faithfulness": {...}}`: measure each method\'s faithfulness by deleting units.'
    )
    context_attribution: ContextAttributionOptions = Field(default_factory=ContextAttributionOptions)
    counterfactual: CounterfactualOptions = Field(default_factory=CounterfactualOptions)
    self_explanation: bool = Field(
        False,
        description="Ask the model, in a follow-up turn, why it gave its answer, and check that account against "
        "the attributions (`self_explanation` in the response).",
    )
    self_explanation_tokens: int = Field(64, ge=1, le=1024, description="Longest self-explanation generated.")
    document_units: Literal["document", "sentence"] = Field(
        "document", description="With `documents`: each document is a unit, or each of its sentences."
    )

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


class ExcludedMass(BaseModel):
    """Share of a method's raw absolute attribution on positions that are not shown (template and special
    tokens, text outside the segments). Shown scores are not rescaled: they are what the method gave."""

    tokens: list[float] | None = Field(None, description="Per row, of the row's sources' absolute mass.")
    sequence: float | None = Field(None, description="Of the sequence vector's sources' absolute mass.")
    excluded: str = Field(description="Which positions were excluded, in words.")


class FaithfulnessResult(BaseModel):
    """How much the answer's log-probability depends on the units a method ranks highest (nats).

    Comprehensiveness at k: log p(span | input) − log p(span | input without the top-k fraction of units);
    sufficiency at k: the same with only the top-k kept. Higher comprehensiveness and lower sufficiency
    mean a more faithful ranking. The random figures are the mean over seeded random unit sets.
    """

    k: list[float]
    units: int = Field(description="Source units ranked (the `sequence` sources).")
    removed: list[int] = Field(description="Units removed (or kept) at each k: ceil(k × units).")
    removal: Literal["delete"] = Field(description="Removed units' tokens are deleted (later positions shift).")
    ranking: str = Field(description="Which scores ranked the units, highest first.")
    base_logprob: float = Field(description="log p(span) with the whole input.")
    comprehensiveness: list[float]
    sufficiency: list[float]
    random_comprehensiveness: list[float]
    random_sufficiency: list[float]
    aopc: float = Field(description="Mean comprehensiveness over k (area over the perturbation curve).")
    aopc_sufficiency: float
    random_aopc: float | None = None
    beats_random: bool | None = Field(
        None, description="The method's AOPC is larger than the random sets' (null without random sets)."
    )
    forwards: int = Field(description="Masked inputs this method's figures rest on (each one forward).")
    random: int
    seed: int


class StabilityResult(BaseModel):
    """How much the explanation moves under small input changes (1.0: not at all)."""

    rho: list[float] = Field(description="Spearman's rank correlation over the units left, per perturbation.")
    top_k_overlap: list[float] = Field(description="Shared share of the k strongest units, per perturbation.")
    mean_rho: float
    mean_top_k_overlap: float
    k: int
    kind: str
    fraction: float
    perturbations: int
    seed: int
    touched_units: list[list[int]] = Field(description="Indices into `sources` each perturbation touched.")
    answer_changed: list[bool] | None = Field(None, description="The greedy answer differs, per perturbation.")
    stable: bool = Field(description="Mean rank correlation at least 0.5.")


class Evaluation(BaseModel):
    faithfulness: FaithfulnessResult | None = None
    stability: StabilityResult | None = None
    skipped: str | None = Field(None, description="Why a requested evaluation could not run for this method.")


class MethodResult(BaseModel):
    tokens: ArrayData | None = Field(None, description="[..., target, source]")
    sequence: ArrayData | None = Field(None, description="[..., source] over the first `sequence_sources` sources.")
    params: dict[str, Any]
    time_ms: float
    signed: bool = Field(description="Scores are signed (support vs. against) rather than magnitudes.")
    sign_meaning: str = Field(description="How to read a score's sign, e.g. 'positive supports the answer'.")
    excluded_mass: ExcludedMass | None = Field(
        None, description="Present when sources were excluded and the method scores positions (not units)."
    )
    evaluation: Evaluation | None = Field(None, description="With `evaluate`: how faithful this result is.")


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


class CitedSource(BaseModel):
    source: int = Field(description="Index into `sources`.")
    label: str | None = None
    score: float = Field(description="Drop in the sentence's log-probability without this source (nats).")


class Citation(BaseModel):
    """One answer sentence and the sources that support it (`context_attribution`)."""

    text: str
    start: int = Field(description="Character offsets in the answer text.")
    end: int
    tokens: list[int] = Field(description="Target token indices [start, end) of the sentence.")
    sources: list[CitedSource] = Field(description="Sources at or above the threshold, strongest first.")
    supported: bool = Field(description='False when no source reaches the threshold ("unsupported").')


class SelfExplanation(BaseModel):
    """The model's own account of its answer, held against the evidence (the summary's method)."""

    text: str = Field(description="What the model said when asked why (greedy, in a follow-up turn).")
    question: str = Field(description="The follow-up question it was asked.")
    method: str = Field(description="The attribution method the account is checked against.")
    mentioned: list[int] = Field(description="Indices into `sources` of the sources the account names.")
    mentioned_share: float = Field(description="Their share of the method's absolute attribution mass.")
    top_sources: list[int] = Field(description="The three strongest sources by |score|.")
    top_mentioned: list[bool] = Field(description="Whether the account names each of them.")
    agrees: bool = Field(description="It names the strongest source, or sources holding half the mass or more.")
    verdict: str = Field(description="The finding in one plain sentence.")


class ContrastSize(BaseModel):
    """How much more likely the answer is than the contrast: log-probability differences, in nats."""

    rows: list[float] | None = Field(
        None, description="`tokens` scope: log p(target) − log p(foil) at each row (0 where the two are the same)."
    )
    total: float | None = Field(None, description="`tokens` scope: the sum over the rows.")
    sequence: float | None = Field(
        None, description="`sequence` scope: log p(the span) − log p(the contrast) after the same prefix."
    )
    divergence: int | None = Field(
        None, description="The answer token where target and contrast first differ (rows stop there in `tokens` scope)."
    )


class Attributed(BaseModel):
    function: AttributedFunction
    description: str
    contrast: str | None = Field(None, description="The alternative text when the function is a difference.")
    contrast_tokens: list[Token] | None = None
    contrast_size: ContrastSize | None = None


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
    answer_logprob: float | None = Field(None, description="Sum of the answer tokens' log-probabilities.")
    rows: list[int] = Field(description="`tokens` scope: the target token index of each row.")
    span: list[int] = Field(description="Target tokens [start, end) explained in `sequence` scope.")
    sources: list[SourceUnit]
    sequence_sources: int = Field(description="The first n sources are those of the `sequence` vectors.")
    granularity: Granularity
    aggregation: str
    attributed: Attributed
    methods: dict[str, MethodResult]
    summary: str
    self_explanation: SelfExplanation | None = Field(None, description="With `self_explanation: true`.")
    citations: list[Citation] | None = Field(
        None, description="Per answer sentence, the sources that support it (with `context_attribution`)."
    )
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
