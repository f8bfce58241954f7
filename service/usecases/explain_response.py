"""Engine result → the /explain response: arrays per unit, the summary, provenance; and streamed rows that
equal the matching rows of that response."""

from __future__ import annotations

from typing import Any

import numpy as np

from schemas.common import ModelRef, Token
from schemas.explain import (
    ArrayData,
    Attributed,
    ContrastSize,
    Evaluation,
    ExcludedMass,
    ExplainOptions,
    ExplainResponse,
    ExplainRowEvent,
    FaithfulnessResult,
    MethodResult,
    Provenance,
    SourceUnit,
    StabilityResult,
)
from service.engine.continuation import Answer
from service.engine.prompt import PromptTokens
from service.errors import GlassboxError
from service.explain import engine, summary
from service.explain import methods as registry
from service.explain.mass import excluded_mass
from service.explain.methods.base import MethodOutput, Sign
from service.explain.objective import DESCRIPTIONS
from service.models.loaded import LoadedModel
from service.usecases import explain_present as present
from service.usecases.citations import citations
from service.usecases.explain_contrast import first_divergence
from service.usecases.explain_plan import Plan
from service.usecases.self_explanation import check as self_check
from service.usecases.tokens import prompt_tokens


def encoding_options(options: ExplainOptions) -> dict[str, Any]:
    return {
        "normalization": options.normalize,
        "k": options.row_top_k,
        "precision": options.precision,
        "encoding": options.encoding,
        "dtype": options.binary_dtype,
    }


def row_events(
    method: str, rows: list[int], values: np.ndarray, over_units: bool, plan: Plan, options: ExplainOptions
) -> list[ExplainRowEvent]:
    """Final rows of one method ([*lead, len(rows), positions|units]) as wire events, shaped exactly as the
    matching rows of the response's ``tokens`` array."""
    check_finite(method, MethodOutput(tokens=values, sequence=None), "this dtype")
    units = plan.units
    scores = values if over_units else present.aggregate(values, units, options.aggregation)
    scores = present.causal_mask(scores, units, [plan.task.rows[r] for r in rows])
    dims = [*_lead_dims(method, plan), "source"]
    events = []
    for i, row in enumerate(rows):
        array: ArrayData = present.encode(scores[..., i, :], dims, **encoding_options(options))
        events.append(ExplainRowEvent(method=method, row=row, target=plan.rows[row], scores=array))
    return events


def _lead_dims(method: str, plan: Plan) -> list[str]:
    opts = plan.task.methods.get(method)
    if method != "attention" or opts is None:
        return []
    return (["layer"] if opts.reduce_layers == "none" else []) + (["head"] if opts.reduce_heads == "none" else [])


def _unit_arrays(out: MethodOutput, plan: Plan, aggregation: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Method output → [..., rows, units] and [..., sequence units], causal mask applied."""
    units = plan.units
    seq_units = units[: plan.sequence_units]
    tokens = sequence = None
    if out.tokens is not None:
        tokens = out.tokens if out.over_units else present.aggregate(out.tokens, units, aggregation)
        tokens = present.causal_mask(tokens, units, plan.task.rows)
    if out.sequence is not None:
        sequence = (
            out.sequence[..., : len(seq_units)]
            if out.over_units
            else present.aggregate(out.sequence, seq_units, aggregation)
        )
    return tokens, sequence


def _with_token_texts(lm: LoadedModel, params: dict[str, Any]) -> dict[str, Any]:
    """Token ids a method reports in its params (logit lens's top-k, a counterfactual's answers) gain their
    texts: a client has no vocabulary."""
    out = dict(params)
    ids = params.get("top_k_ids")
    if ids:
        decode = lm.tokenizer.convert_ids_to_tokens
        out["top_k_tokens"] = [
            [[lm.tokenizer.convert_tokens_to_string([t]) for t in decode(cell)] for cell in row] for row in ids
        ]
    for key, text in (("new_answer_ids", "new_answer"), ("reference_ids", "reference_answer")):
        if key in params:
            out[text] = lm.tokenizer.decode(params[key], skip_special_tokens=True)
    return out


def counterfactual_sentence(params: dict[str, Any], units: list[Any]) -> str:
    """ "Without 'France', the answer is 'Berlin ...'." — or the honest "not found"."""
    if not params.get("found"):
        return (
            f"No counterfactual within {params.get('runs', 0)} generations: removing up to "
            f"{min(params.get('max_units', 0), params.get('players', 0))} top-ranked units did not change the answer."
        )
    names = ", ".join(f"'{units[i].text}'" for i in params["removed_units"])
    if "new_answer" not in params:
        return f"Without {names}, the contrast becomes more likely than the answer."
    return f"Without {names}, the answer is '{params['new_answer'].strip()}'."


def sign_of(method: str, contrast: bool) -> Sign:
    """The method's sign convention; with a contrast a signed score is about the difference."""
    sign = registry.get(method).sign
    if contrast and sign.signed:
        return Sign(True, "positive favours the answer over the contrast, negative favours the contrast")
    return sign


def _evaluation(figures: dict[str, Any] | None, stable: dict[str, Any] | None = None) -> Evaluation | None:
    if figures is None and stable is None:
        return None
    skipped = [f["skipped"] for f in (figures, stable) if f is not None and "skipped" in f]
    return Evaluation(
        faithfulness=FaithfulnessResult(**figures) if figures is not None and "skipped" not in figures else None,
        stability=StabilityResult(**stable) if stable is not None and "skipped" not in stable else None,
        skipped="; ".join(skipped) or None,
    )


def _stability_sentence(evaluation: Evaluation) -> str:
    s = evaluation.stability
    if s is None:
        return ""
    changed = sum(s.answer_changed or [])
    answer = f"; the answer changed under {changed} of {s.perturbations}" if changed else ""
    if s.stable:
        held = f"mean rank correlation {s.mean_rho:.2f}"
        return f"Under {s.perturbations} small perturbations the ranking holds ({held}){answer}."
    return (
        f"Warning: this explanation is unstable: {s.perturbations} small perturbations of unimportant words move "
        f"it (mean rank correlation {s.mean_rho:.2f}, top-{s.k} overlap {s.mean_top_k_overlap:.0%}){answer}."
    )


def _faithfulness_sentence(evaluation: Evaluation) -> str:
    """The measured deletion effect at the k nearest 20%, next to random deletion's."""
    f = evaluation.faithfulness
    if f is None:
        return ""
    i = min(range(len(f.k)), key=lambda j: abs(f.k[j] - 0.2))
    units = "unit" if f.removed[i] == 1 else "units"
    sentence = (
        f"Deleting its top {f.k[i]:.0%} ({f.removed[i]} {units}) changes the answer's log-probability by "
        f"{-f.comprehensiveness[i]:+.3g} nats"
    )
    if f.random_comprehensiveness:
        sentence += f", deleting as many random units by {-f.random_comprehensiveness[i]:+.3g}"
    return sentence + "."


def _no_vector_summary(options: ExplainOptions, logprobs: list[float]) -> str:
    if options.methods:
        return "No single-vector method ran; see the arrays."
    total = sum(logprobs)
    return (
        f"Scored only (no attribution method): the answer's log-probability is {total:.4g} over "
        f"{len(logprobs)} tokens ({total / len(logprobs):.4g} per token), from one forward pass."
    )


def _contrast_token_logprobs(contrast: Answer, plan: Plan, result: engine.EngineResult) -> list[float | None]:
    """Each contrast token's log-probability after the same prefix: from the contrast's own forward (sequence
    scope), else from the row whose foil it is (tokens scope: only the rows up to the first divergence)."""
    if result.contrast_logprobs is not None:
        return list(result.contrast_logprobs)
    out: list[float | None] = [None] * len(contrast.ids)
    for row, lp in zip(plan.rows, result.foil_logprobs or [], strict=False):
        out[row - plan.span[0]] = lp
    return out


def contrast_size(
    answer: Answer, contrast: Answer | None, plan: Plan, result: engine.EngineResult
) -> ContrastSize | None:
    """log p(target) − log p(contrast), per row and in total (tokens scope) and over the span (sequence scope)."""
    if contrast is None:
        return None
    rows = total = sequence = None
    if result.foil_logprobs is not None:
        diffs = [result.answer_logprobs[r] - lp for r, lp in zip(plan.rows, result.foil_logprobs, strict=True)]
        rows, total = [round(d, 6) for d in diffs], round(float(sum(diffs)), 6)
    if result.contrast_logprobs is not None:
        start, end = plan.span
        sequence = round(float(sum(result.answer_logprobs[start:end]) - sum(result.contrast_logprobs)), 6)
    diverge = first_divergence(answer, contrast, plan.span[0])
    return ContrastSize(
        rows=rows, total=total, sequence=sequence, divergence=None if diverge is None else plan.span[0] + diverge
    )


def _summary_size(size: ContrastSize | None, plan: Plan) -> float | None:
    """The size that matches the summary's vector: the span's (sequence scope) or the rows' total."""
    if size is None:
        return None
    if "sequence" in plan.task.scopes and size.sequence is not None:
        return size.sequence
    return size.total


def check_finite(name: str, out: MethodOutput, dtype: str) -> None:
    """Refuse to answer with non-finite scores: JSON has no NaN or infinity (they would arrive as nulls)."""
    for scope, values in (("tokens", out.tokens), ("sequence", out.sequence)):
        if values is None:
            continue
        bad = int(np.size(values) - np.isfinite(values).sum())
        if bad:
            raise GlassboxError(
                f"{name} produced {bad} non-finite {scope}-scope scores (NaN or infinity) on this input in {dtype}; "
                "no response is sent rather than one with nulls in it: try float32, another method, or shorter input",
                param="methods",
                code="non_finite_scores",
            )


def build_response(
    lm: LoadedModel,
    prompt: PromptTokens,
    answer: Answer,
    contrast: Answer | None,
    options: ExplainOptions,
    plan: Plan,
    result: engine.EngineResult,
    account: str | None = None,
) -> ExplainResponse:
    """``account``: the model's self-explanation, checked here against the summary's method."""
    encode = encoding_options(options)
    methods: dict[str, MethodResult] = {}
    summary_vectors: dict[str, np.ndarray] = {}
    summary_excluded: dict[str, tuple[float, str]] = {}
    for name, out in result.outputs.items():
        check_finite(name, out, str(lm.dtype).removeprefix("torch."))
        tokens, sequence = _unit_arrays(out, plan, options.aggregation)
        lead = list(out.lead_dims)
        sign = sign_of(name, contrast is not None)
        mass = None if out.over_units else excluded_mass(plan.task, plan.task.units, out.tokens, out.sequence)
        methods[name] = MethodResult(
            tokens=None if tokens is None else present.encode(tokens, [*lead, "target", "source"], **encode),
            sequence=None if sequence is None else present.encode(sequence, [*lead, "source"], **encode),
            params=_with_token_texts(lm, out.params),
            time_ms=round(result.timings.get(name, 0.0) * 1000, 2),
            signed=sign.signed,
            sign_meaning=sign.meaning,
            excluded_mass=None
            if mass is None
            else ExcludedMass(
                tokens=None if mass.tokens is None else [round(v, 4) for v in mass.tokens],
                sequence=None if mass.sequence is None else round(mass.sequence, 4),
                excluded=mass.what,
            ),
            evaluation=_evaluation(result.evaluations.get(name), result.stability.get(name)),
        )
        if not lead:
            if sequence is not None:
                summary_vectors[name] = sequence
                if mass is not None and mass.sequence is not None:
                    summary_excluded[name] = (mass.sequence, mass.what)
            elif tokens is not None:
                rows_summed = tokens.sum(0) if sign.signed else np.abs(tokens).sum(0)
                summary_vectors[name] = rows_summed[: plan.sequence_units]
                if mass is not None and mass.pooled is not None:
                    summary_excluded[name] = (mass.pooled, mass.what)
    size = contrast_size(answer, contrast, plan, result)
    texts = {"prompt": prompt.text, "answer": answer.text}
    chosen = next((m for m in summary.PREFERENCE if m in summary_vectors), None)
    what = "The answer" if plan.span == (0, len(answer.ids)) else "This part of the answer"
    note = None
    if contrast is not None:
        start, end = plan.span
        target_text = answer.text[answer.offsets[start][0] : answer.offsets[end - 1][1]]
        note = summary.ContrastNote(target_text, contrast.text, _summary_size(size, plan))
    text = (
        summary.summarize(
            chosen,
            summary_vectors[chosen],
            plan.units[: plan.sequence_units],
            texts=texts,
            chat=prompt.is_chat,
            what=what,
            excluded=summary_excluded.get(chosen, (0.0, ""))[0],
            excluded_what=summary_excluded.get(chosen, (0.0, ""))[1],
            signed=sign_of(chosen, contrast is not None).signed,
            contrast=note,
            params=result.outputs[chosen].params,
        )
        if chosen is not None
        else _no_vector_summary(options, result.answer_logprobs)
    )
    if "counterfactual" in methods:
        found = counterfactual_sentence(methods["counterfactual"].params, plan.units)
        text = found if chosen is None else f"{text} {found}"
    if chosen is not None and (evaluation := methods[chosen].evaluation) is not None:
        text = f"{text} {_faithfulness_sentence(evaluation)}".rstrip()
        text = f"{text} {_stability_sentence(evaluation)}".rstrip()
    target_tokens = [
        Token(
            id=answer.ids[j],
            text=answer.token_text(j),
            offset=answer.offsets[j][0],
            special=answer.special[j],
            logprob=result.answer_logprobs[j],
        )
        for j in range(len(answer.ids))
    ]
    contrast_tokens = None
    if contrast is not None:
        contrast_tokens = [
            Token(id=contrast.ids[j], text=contrast.token_text(j), offset=contrast.offsets[j][0], logprob=lp)
            for j, lp in enumerate(_contrast_token_logprobs(contrast, plan, result))
        ]
    description = DESCRIPTIONS[options.function]
    if contrast is not None:
        description = f"difference: {description}, minus the same for the contrast"
    return ExplainResponse(
        text=answer.text,
        prompt_text=prompt.text,
        prompt_tokens=prompt_tokens(lm, prompt),
        target_tokens=target_tokens,
        answer_logprob=float(sum(result.answer_logprobs)),
        rows=plan.rows,
        span=list(plan.span),
        sources=[
            SourceUnit(
                text=u.text,
                kind=u.kind,  # type: ignore[arg-type]
                start=u.start,
                end=u.end,
                tokens=list(u.indices),
                message_index=u.message_index,
                role=u.role,
                label=u.label,
            )
            for u in plan.units
        ],
        sequence_sources=plan.sequence_units,
        granularity=options.granularity,
        aggregation=options.aggregation,
        attributed=Attributed(
            function=options.function,
            description=description,
            contrast=contrast.text if contrast is not None else None,
            contrast_tokens=contrast_tokens,
            contrast_size=size,
        ),
        methods=methods,
        summary=text,
        self_explanation=(
            self_check(account, plan.units[: plan.sequence_units], summary_vectors[chosen], chosen)
            if account is not None and chosen is not None
            else None
        ),
        citations=(
            citations(answer, plan.units, len(prompt), result.outputs["context_attribution"].params)
            if "context_attribution" in result.outputs
            else None
        ),
        provenance=Provenance(
            model=ModelRef(id=lm.name, revision=lm.revision),
            dtype=str(lm.dtype).removeprefix("torch."),
            device=str(lm.device),
            methods={name: out.params for name, out in result.outputs.items()},
            chunks={
                "targets_per_backward": plan.task.chunks.targets,
                "steps_per_forward": plan.task.chunks.steps,
                "sequences_per_forward": plan.task.chunks.sequences,
                "ig_targets_per_backward": plan.task.chunks.ig_targets,
            },
            estimated_work=plan.work,
            estimated_s=round(plan.estimate_s, 3),
            engine_s=round(result.timings.get("total", 0.0), 3),
            units=result.units,
            timings_ms={},
        ),
    )
