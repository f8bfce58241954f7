"""Issue 12 figures: which way of taking a unit out makes occlusion's ranking most faithful.

Eight short chat prompts on the default model (greedy answers). For each occlusion mode (``delete``,
``replace`` by the pad embedding, ``replace`` by the mean embedding), the prompt's words are ranked by that
mode's sequence-scope scores, the top 20% are taken out, and the drop in the answer's log-probability
(nats) is measured, next to the same for a seeded random 20% of the words (mean over ``--seeds`` draws).
The drop is measured twice: with one common removal operator (deletion) for every ranking, so the rankings
are compared on equal terms, and with each mode's own operator. Timings are ratios to ``delete`` in the run.

    PYTHONPATH=. .venv/bin/python bench/bench_occlusion_modes.py [--device cpu] [--answer-tokens 12]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
import time

import numpy as np
import torch

from schemas.common import ChatMessage
from schemas.explain import ExplainOptions
from service.engine.prompt import build_prompt
from service.engine.sampling import SamplingParams
from service.explain import engine
from service.explain.checkpoint import NO_CHECKPOINT
from service.explain.context import Context
from service.explain.methods import occlusion
from service.explain.options import OcclusionParams
from service.explain.state import explaining
from service.explain.task import Chunks
from service.models.loader import load_model
from service.settings import Settings
from service.usecases.explain import answer_of, plan_for
from tests.support.run import generate

PROMPTS = [
    "What is the capital of France?",
    "Who wrote the play Romeo and Juliet?",
    "What is 12 plus 7? Answer with a number.",
    "Is this review positive or negative? 'The food was cold and the waiter was rude.'",
    "Translate to French: The cat sleeps on the red chair.",
    "Complete the sentence: The early bird catches the",
    "Document: The Amazon river flows through Brazil and Peru. Question: Which countries does the Amazon flow through?",
    "Which planet is known as the Red Planet?",
]
MODES = {
    "delete": OcclusionParams("delete"),
    "replace pad": OcclusionParams("replace", "pad"),
    "replace mean": OcclusionParams("replace", "mean"),
}


def log(message: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def removal_drops(ctx: Context, removals: list[list[tuple[int, ...]]], stand_in: torch.Tensor | None) -> list[float]:
    """log p(answer) − log p(answer with each removal's units taken out), in nats (batched forwards)."""
    task = ctx.task
    span = list(range(*task.span))
    merged = [tuple(sorted({p for u in units for p in u})) for units in removals]
    values = occlusion._occluded(ctx, task.ids, [(), *merged], span, span=True, stand_in=stand_in)
    return [float(values[0] - v) for v in values[1:]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--answer-tokens", type=int, default=10)
    parser.add_argument("--fraction", type=float, default=0.2)
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()

    settings = Settings(device=args.device, dtype="float32", explain_max_work=100_000_000, explain_max_seconds=1e6)
    name, source = settings.model_specs()[0]
    lm = load_model(name, source, settings)
    print(f"model {lm.name} ({lm.dtype}, {lm.device}); torch threads {torch.get_num_threads()}")
    drops: dict[str, dict[str, list[float]]] = {m: {"common": [], "own": []} for m in MODES}
    randoms: dict[str, list[float]] = {"delete": [], "replace pad": [], "replace mean": []}
    seconds: dict[str, float] = dict.fromkeys(MODES, 0.0)
    for p, text in enumerate(PROMPTS):
        prompt = build_prompt(lm.tokenizer, messages=[ChatMessage(role="user", content=text)])
        out = generate(lm, prompt, SamplingParams(max_new_tokens=args.answer_tokens))
        log(f"prompt {p + 1}: generated")
        answer = answer_of(out, lm.special_ids)
        base = {"methods": ["occlusion"], "scope": ["sequence"], "granularity": "word", "precision": None}
        plan = plan_for(lm, settings, prompt, answer, None, ExplainOptions.model_validate(base))
        # every occluded sequence of a prompt in one batched forward (chunks only bound memory and time per unit)
        plan.task = dataclasses.replace(plan.task, chunks=Chunks(sequences=64))
        units = [u for u in plan.task.units[: plan.sequence_units]]
        k = max(1, math.ceil(args.fraction * len(units)))
        rng = np.random.default_rng(p)
        draws = [sorted(rng.choice(len(units), size=k, replace=False).tolist()) for _ in range(args.seeds)]
        tops: dict[str, list[tuple[int, ...]]] = {}
        for mode, opts in MODES.items():
            task = dataclasses.replace(plan.task, methods={"occlusion": opts})
            started = time.perf_counter()
            result = engine.explain(lm.model, task).outputs["occlusion"]
            seconds[mode] += time.perf_counter() - started
            assert result.params["mode"] == opts.mode and result.sequence is not None
            scores = result.sequence[: len(units)]
            tops[mode] = [units[i] for i in np.argsort(-scores, kind="stable")[:k]]
        log(f"prompt {p + 1}: occlusion by every mode done")
        random_sets = [[units[i] for i in d] for d in draws]
        with explaining(lm.model, attention="none", checkpoint=NO_CHECKPOINT):
            ctx = Context(lm.model, plan.task, attentions=False, gradients=False)
            stand_ins = {m: occlusion.replacement(ctx, o) if o.mode == "replace" else None for m, o in MODES.items()}
            common = removal_drops(ctx, [*tops.values(), *random_sets], None)
            randoms["delete"].append(statistics.mean(common[len(MODES) :]))
            for i, mode in enumerate(MODES):
                drops[mode]["common"].append(common[i])
                if stand_ins[mode] is None:
                    drops[mode]["own"].append(common[i])
                    continue
                own = removal_drops(ctx, [tops[mode], *random_sets], stand_ins[mode])
                drops[mode]["own"].append(own[0])
                randoms[mode].append(statistics.mean(own[1:]))
        log(f"prompt {p + 1}/{len(PROMPTS)}: {len(units)} words, k={k}, answer {answer.text!r}")

    n = len(PROMPTS)
    print(f"\n{n} prompts, top {args.fraction:.0%} of the prompt's words by each mode's occlusion scores vs a random")
    print(
        f"{args.fraction:.0%} (mean of {args.seeds} seeded draws); drop in the answer's log-probability, nats (mean)\n"
    )
    print(f"{'ranking by':<14} {'removed by':<14} {'top drop':>9} {'random drop':>12} {'beats random':>13} {'time':>6}")
    for mode in MODES:
        t = seconds[mode] / seconds["delete"]
        for label, removal, rand in (("common", "delete", randoms["delete"]), ("own", mode, randoms[mode])):
            got = drops[mode][label]
            wins = sum(a > b for a, b in zip(got, rand, strict=True))
            print(
                f"{mode:<14} {removal:<14} {statistics.mean(got):>9.2f} {statistics.mean(rand):>12.2f} "
                f"{wins:>10}/{n} {t:>5.2f}×"
            )


if __name__ == "__main__":
    main()
