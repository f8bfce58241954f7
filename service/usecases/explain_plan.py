"""Request → engine task, once: positions, rows, span, contrast, units, each method's options, chunk sizes
(bounded by memory and by time per unit), and the cost check that refuses over-budget work (in token
passes, activation memory and seconds) before any model time is spent."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from schemas.explain import ExplainOptions
from service.engine.continuation import Answer
from service.engine.prompt import PromptTokens
from service.errors import BudgetExceeded, InvalidRequest
from service.explain import cost as costs
from service.explain import methods as registry
from service.explain.engine import total_units
from service.explain.faithfulness import FaithfulnessParams, planned_inputs
from service.explain.methods.attention import attention_layers, resolve
from service.explain.methods.base import attention_mode
from service.explain.methods.gradient import shared_gradient_cost
from service.explain.options import (
    AttentionParams,
    ContextAttributionParams,
    CounterfactualParams,
    IntegratedGradientsParams,
    LogitLensParams,
    OcclusionParams,
    RolloutParams,
    ShapleyParams,
)
from service.explain.stability import StabilityParams
from service.explain.task import Chunks, Task
from service.explain.units import SourceToken, Unit, build_units, resolve_segments, sentence_spans
from service.models.calibrate import Speed
from service.models.facts import ModelFacts
from service.settings import Settings
from service.usecases.explain_contrast import contrast_rows

#: Aim of one unit of explanation work (the scheduler also checks in at every layer inside it).
UNIT_SECONDS = 0.25


@dataclass
class Plan:
    task: Task
    units: list[Unit]
    sequence_units: int
    rows: list[int]  # answer token indices of the rows
    span: tuple[int, int]  # answer token indices
    work: int
    values: int
    estimate_s: float  # seconds the calibrated cost model expects the engine to take


def engine_options(options: ExplainOptions, name: str) -> Any:
    """The engine's own parameters of one method (no wire types below the use case)."""
    if name == "attention":
        att = options.attention
        layers = tuple(att.layers) if att.layers is not None else None
        heads = tuple(att.heads) if att.heads is not None else None
        return AttentionParams(layers, heads, att.reduce_heads, att.reduce_layers)
    if name == "attention_rollout":
        ro = options.attention_rollout
        return RolloutParams(ro.residual, tuple(ro.layers) if ro.layers is not None else None)
    if name == "integrated_gradients":
        ig = options.integrated_gradients
        return IntegratedGradientsParams(ig.n_steps, ig.baseline, ig.rule, ig.keep_first)
    if name == "logit_lens":
        return LogitLensParams(options.logit_lens.top_k)
    if name == "occlusion":
        return OcclusionParams(options.occlusion.mode, options.occlusion.replace_with)
    if name == "shapley":
        sv = options.shapley
        return ShapleyParams(sv.n_samples, sv.masking, sv.seed, sv.exact)
    if name == "context_attribution":
        ca = options.context_attribution
        return ContextAttributionParams(
            ca.mode,
            ca.n_ablations,
            ca.held_out,
            ca.keep_probability,
            ca.alpha,
            ca.seed,
            ca.citation_threshold,
            ca.citation_relative,
        )
    if name == "counterfactual":
        cf = options.counterfactual
        return CounterfactualParams(cf.rank_by, cf.max_runs, cf.max_units, cf.compare_tokens)
    return None


def answer_sentences(answer: Answer, span: tuple[int, int]) -> list[tuple[int, int]]:
    """The answer's sentences inside the span, as answer token indices [start, end): a token belongs to the
    sentence its first non-space character is in (whitespace-only tokens to the sentence before)."""
    bounds = sentence_spans(answer.text)
    owner: list[int] = []
    for j in range(*span):
        start, end = answer.offsets[j]
        text = answer.text[start:end]
        anchor = start + (len(text) - len(text.lstrip())) if text.strip() else None
        found = next((i for i, (s, e) in enumerate(bounds) if anchor is not None and s <= anchor < e), None)
        owner.append(found if found is not None else (owner[-1] if owner else -1))
    out: list[tuple[int, int]] = []
    for offset, key in enumerate(owner):
        j = span[0] + offset
        if out and owner[offset - 1] == key:
            out[-1] = (out[-1][0], j + 1)
        else:
            out.append((j, j + 1))
    return out


def _time_chunks(chunks: Chunks, shape: costs.Shape, speed: Speed | None) -> Chunks:
    """Cap chunk sizes so one unit takes about ``UNIT_SECONDS`` on this device (at least one item each)."""
    if speed is None:
        return chunks
    passes = max(UNIT_SECONDS - speed.call_s, UNIT_SECONDS / 4) * speed.passes_per_s  # token passes of a unit
    seq = max(1, shape.seq_len)
    targets = max(1, int(passes // seq))
    steps = max(1, int(passes // (2 * seq)))
    ig_targets = max(1, int(passes // (steps * seq)))
    sequences = max(1, int(UNIT_SECONDS * speed.forward_per_s // seq))
    return Chunks(
        targets=min(chunks.targets, targets),
        steps=min(chunks.steps, steps),
        sequences=min(chunks.sequences, sequences),
        ig_targets=min(chunks.ig_targets, ig_targets),
    )


def estimate_seconds(work: int, units: int, speed: Speed | None) -> float:
    """Token passes at the calibrated marginal rate, plus the fixed cost of each unit's passes."""
    return work / speed.passes_per_s + units * speed.call_s if speed is not None else 0.0


def check_seconds(estimate_s: float, limit_s: float, *, what: str, code: str) -> None:
    """Refuse before running what would exceed the time the request has (estimate and limit in the message)."""
    if estimate_s > limit_s:
        raise BudgetExceeded(
            f"this explanation is estimated at {estimate_s:,.1f} s on this server, over {what} of {limit_s:,.1f} s; "
            "explain fewer tokens, use fewer steps or methods, coarser units, or a longer deadline",
            param="methods",
            code=code,
        )


def _span(options: ExplainOptions, answer_len: int) -> tuple[int, int]:
    if options.target_span is None:
        return 0, answer_len
    start, end = options.target_span.start, options.target_span.end or answer_len
    if start >= answer_len or end > answer_len:
        raise InvalidRequest(
            f"target_span [{start}, {end}) is outside the answer's {answer_len} tokens", param="target_span"
        )
    return start, end


def _source_tokens(prompt: PromptTokens, answer: Answer, options: ExplainOptions) -> list[SourceToken]:
    def scored(special: bool, template: bool) -> bool:
        return (options.include_special or not special) and (options.include_template or not template)

    tokens = []
    for i in range(len(prompt)):
        template = bool(prompt.template[i]) if prompt.is_chat else False
        tokens.append(
            SourceToken(
                position=i,
                kind="prompt",
                index=i,
                start=prompt.offsets[i][0],
                end=prompt.offsets[i][1],
                included=scored(prompt.special[i], template),
                message_index=prompt.message_index[i] if prompt.is_chat else None,
                role=prompt.role[i] if prompt.is_chat else None,
            )
        )
    for j in range(len(answer.ids)):
        start, end = answer.offsets[j]
        tokens.append(SourceToken(len(prompt) + j, "answer", j, start, end, scored(answer.special[j], False)))
    return tokens


def refuse_unsupported(methods: Sequence[str], facts: ModelFacts) -> None:
    """A method the model cannot serve is a 422 naming the method and the model's reason, before anything
    runs (never a 500 from inside the model, never a result that leaves layers out)."""
    for name in methods:
        reason = registry.get(name).refusal(facts)
        if reason is not None:
            raise InvalidRequest(
                f"method {name!r} is not available for this model: {reason}", param="methods", code="unsupported_method"
            )


def _values(options: ExplainOptions, facts: ModelFacts, rows: int, units: int, seq_units: int) -> int:
    """Numbers the response will carry (for the output-size limit)."""
    total = 0
    for name in options.methods:
        lead = 1
        if name == "attention":
            att = options.attention
            if att.reduce_layers == "none":
                lead *= len(attention_layers(att.layers, facts, "attention.layers"))
            if att.reduce_heads == "none":
                lead *= len(resolve(att.heads, facts.heads or 0, "attention.heads"))
        width = min(units, options.row_top_k) if options.row_top_k else units
        seq_width = min(seq_units, options.row_top_k) if options.row_top_k else seq_units
        if "tokens" in options.scope:
            total += lead * rows * width * (2 if options.row_top_k else 1)
        if "sequence" in options.scope:
            total += lead * seq_width * (2 if options.row_top_k else 1)
    return total


def make_plan(
    *,
    prompt: PromptTokens,
    answer: Answer,
    contrast: Answer | None,
    options: ExplainOptions,
    facts: ModelFacts,
    settings: Settings,
    prompt_token_text: Callable[[int], str],
    pad_id: int | None,
    max_context: int,
    speed: Speed | None = None,
    estimate_only: bool = False,
) -> Plan:
    """Validate against the model and the server's limits, estimate the cost, choose chunk sizes.

    ``estimate_only``: the answer is a placeholder (costed before generating), so the contrast's rows are
    costed at their most and not checked against it."""
    refuse_unsupported(options.methods, facts)
    length = len(prompt) + len(answer.ids)
    if length > max_context:
        raise InvalidRequest(
            f"prompt ({len(prompt)}) + answer ({len(answer.ids)}) tokens = {length} exceed the model's context "
            f"of {max_context}",
            param="target",
        )
    if length > settings.explain_max_tokens:
        raise BudgetExceeded(
            f"prompt + answer is {length} tokens, {length - settings.explain_max_tokens} over the explain limit "
            f"of {settings.explain_max_tokens} (explain_max_tokens)",
            param="prompt",
            code="explain_max_tokens",
        )
    span = _span(options, len(answer.ids))
    if span[1] - span[0] > settings.explain_max_targets:
        raise BudgetExceeded(
            f"{span[1] - span[0]} target tokens to explain, {span[1] - span[0] - settings.explain_max_targets} "
            f"over the limit of {settings.explain_max_targets} (explain_max_targets); use target_span",
            param="target_span",
            code="explain_max_targets",
        )
    ig = options.integrated_gradients
    if "integrated_gradients" in options.methods and ig.n_steps > settings.explain_max_steps:
        raise BudgetExceeded(
            f"integrated_gradients.n_steps={ig.n_steps} is over the limit of {settings.explain_max_steps} "
            "(explain_max_steps)",
            param="integrated_gradients.n_steps",
            code="explain_max_steps",
        )
    if options.granularity == "message" and not prompt.is_chat:
        raise InvalidRequest("granularity `message` needs chat input (`messages`)", param="granularity")
    segments = []
    if options.segments is not None:
        segments = resolve_segments(
            options.segments, prompt_text=prompt.text, is_chat=prompt.is_chat, message_spans=prompt.messages
        )
    rows = list(range(*span))
    foils = None
    contrast_ids = None
    if contrast is not None:
        if "tokens" in options.scope and estimate_only:
            foils = tuple((list(contrast.ids) + [0] * len(rows))[: len(rows)])
        elif "tokens" in options.scope:
            per_row = contrast_rows(answer, contrast, span, explicit_span=options.target_span is not None)
            rows, foils = per_row.rows, per_row.foils
        contrast_ids = tuple(contrast.ids)
    tokens = _source_tokens(prompt, answer, options)
    p = len(prompt)

    def token_text(tok: SourceToken) -> str:
        return prompt_token_text(tok.index) if tok.kind == "prompt" else answer.token_text(tok.index)

    units = build_units(
        options.granularity,
        tokens,
        prompt_text=prompt.text,
        answer_text=answer.text,
        token_text=token_text,
        span_start=p + span[0],
        segments=segments,
    )
    if (options.methods or options.evaluate is not None) and not any(u.kind == "prompt" for u in units):
        raise InvalidRequest(
            "nothing in the prompt to attribute to: every token is excluded (template or special tokens; "
            "see include_template and include_special) or outside the segments",
            param="granularity" if options.granularity == "segments" else "include_template",
        )
    sequence_units = sum(1 for u in units if max(u.positions) < p + span[0])
    methods: dict[str, Any] = {name: engine_options(options, name) for name in options.methods}
    if "context_attribution" in methods:
        sentences = tuple((p + a, p + b) for a, b in answer_sentences(answer, span))
        methods["context_attribution"] = dataclasses.replace(methods["context_attribution"], sentences=sentences)
    for name in options.methods:
        registry.get(name).validate(facts, methods[name])
    gradients = any(registry.get(n).needs_gradients for n in options.methods)
    shape = costs.Shape(
        seq_len=length,
        answer_len=len(answer.ids),
        rows=len(rows),
        span_len=span[1] - span[0],
        sequence_sources=p + span[0],
        units=len(units),
        sequence_units=sequence_units,
        contrast_len=len(contrast.ids) if contrast is not None and "sequence" in options.scope else 0,
        tokens_scope="tokens" in options.scope,
        sequence_scope="sequence" in options.scope,
        gradients=gradients,
    )
    dims = costs.ModelDims.of(facts)
    eager = attention_mode([registry.get(n) for n in options.methods], facts) == "full"
    evaluate = None
    if options.evaluate is not None and options.evaluate.faithfulness is not None:
        f = options.evaluate.faithfulness
        evaluate = FaithfulnessParams(tuple(f.k), f.random, f.seed, options.aggregation)
    stable = None
    if options.evaluate is not None and options.evaluate.stability is not None:
        st = options.evaluate.stability
        stable = StabilityParams(
            st.perturbations, st.kind, st.fraction, st.k, st.seed, st.regenerate, options.aggregation
        )

    budget = settings.explain_memory_mb * 2**20

    def estimate(dims: costs.ModelDims) -> tuple[costs.Cost, Chunks]:
        total = costs.forward_cost(shape, dims, eager=eager)
        if gradients:
            total = total + shared_gradient_cost(shape, dims, eager=eager)
        for name in options.methods:
            total = total + registry.get(name).cost(shape, dims, methods[name])
        if evaluate is not None:
            total = total + costs.faithfulness_cost(shape, dims, planned_inputs(evaluate, methods, sequence_units))
        if stable is not None:
            # every method again per perturbation, and a greedy generation of the answer's length per input
            regenerate = (stable.perturbations + 1) * (p + 2 * len(answer.ids)) if stable.regenerate else 0
            total = costs.Cost(work=total.work * (1 + stable.perturbations) + regenerate, memory=total.memory)
        chunks = costs.plan_chunks(shape, dims, budget, eager=eager, ig="integrated_gradients" in options.methods)
        chunks = Chunks(*(max(1, size) for size in dataclasses.astuple(chunks)))
        if dims.recompute:  # every backward pass runs the layers' forward again
            total = costs.Cost(total.work + costs.recompute_work(shape, chunks), total.memory)
        return total, chunks

    total, chunks = estimate(dims)
    recompute = False
    if gradients and total.memory > budget:  # gradient checkpointing, when only it brings the peak under budget
        lighter, lighter_chunks = estimate(dataclasses.replace(dims, recompute=True))
        if lighter.memory <= budget:
            total, chunks, recompute = lighter, lighter_chunks, True
    chunks = _time_chunks(chunks, shape, speed)
    costs.check(total, costs.Limits(settings.explain_max_work, budget))
    values = _values(options, facts, len(rows), len(units), sequence_units)
    if values > settings.explain_max_values:
        raise BudgetExceeded(
            f"the response would carry {values:,} numbers, {values / settings.explain_max_values:.1f}× the limit "
            f"of {settings.explain_max_values:,} (explain_max_values); reduce attention over heads/layers, "
            "use row_top_k or a coarser granularity",
            param="methods",
            code="explain_max_values",
        )
    task = Task(
        ids=tuple(prompt.ids) + tuple(answer.ids),
        prompt_len=p,
        rows=tuple(p + r for r in rows),
        span=(p + span[0], p + span[1]),
        scopes=frozenset(options.scope),
        function=options.function,
        included=tuple(t.included for t in tokens),
        units=tuple(u.positions for u in units),
        foils=foils,
        contrast_ids=contrast_ids if "sequence" in options.scope else None,
        pad_id=pad_id,
        methods=methods,
        chunks=chunks,
        recompute=recompute,
        evaluate=evaluate,
        stability=stable,
    )
    estimate_s = estimate_seconds(total.work, total_units(task), speed)
    limit = "the server's limit (explain_max_seconds)"
    check_seconds(estimate_s, settings.explain_max_seconds, what=limit, code="explain_max_seconds")
    return Plan(task, units, sequence_units, rows, span, total.work, values, estimate_s)
