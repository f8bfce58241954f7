"""Issue 12 figures: how far integrated gradients is from completeness on the default model, per baseline,
quadrature rule and step count; the measurement behind the default baseline and rule.

For each short prompt the greedy answer is explained through the /explain engine path (the plan the
service makes, then the engine) with ``integrated_gradients`` alone, and the method's own convergence report
is read back: the relative completeness gap |Σ scores − (f(x) − f(b))| / max(|f(x) − f(b)|, 1e-3) of the
whole answer (sequence scope, log-probability of the span) and, with ``--rows``, of every answer token's row.
The table gives the median gap over the prompts (and over their rows) and how many would warn (gap > 5%).
Every baseline runs twice: with the first position held at its embedding (the default, ``keep_first``) and
with it moving too (``+first``): the first token is the model's attention sink, and moving it is what makes
the path rough.

    PYTHONPATH=. .venv/bin/python bench/bench_ig_convergence.py [--prompts 4] [--steps 8 16] [--rows]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from typing import Any

import torch

from schemas.explain import ExplainOptions
from service.engine.prompt import build_prompt
from service.engine.sampling import SamplingParams
from service.explain.engine import explain
from service.explain.options import IntegratedGradientsParams
from service.models import loader
from service.models.calibrate import Speed
from service.settings import Settings
from service.usecases.explain import answer_of, plan_for
from tests.support.run import generate

#: Short plain-text prompts (factual, arithmetic, sentiment, completion, translation, document), greedy
#: answers of a few tokens: on 2 busy cores one path point (forward + backward) of a ~12-token sequence
#: takes ~1 s, and the grid below is 6 × (sum of the step counts) points per prompt.
PROMPTS = [
    "The capital of France is",
    "Seven plus five equals",
    "Review: I loved every minute. Sentiment:",
    "The early bird catches the",
    "In Spanish, thank you is",
    "Ada Lovelace wrote the first program. The first program was written by",
    "The largest planet in the solar system is",
    "Hamlet was written by",
]
BASELINES = ("zero", "pad", "mean")
#: Each baseline with the first position held (the default, `keep_first`) and moved too (`+first`).
PATHS = [b + suffix for b in BASELINES for suffix in ("", "+first")]
RULES = ("riemann_trapezoid", "gausslegendre")


def log(message: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--steps", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--answer-tokens", type=int, default=3)
    parser.add_argument("--rows", action="store_true", help="also every answer token's row (tokens scope)")
    args = parser.parse_args()

    settings = Settings(
        device=args.device, dtype="float32", warmup=False, explain_max_work=10**9, explain_max_seconds=1e6
    )
    name, source = settings.model_specs()[0]
    # The speed calibration only sizes chunks (results do not depend on them) and takes minutes on busy cores.
    loader.calibrate = lambda *_, **__: Speed(1e9, 1e9, 0.0, 0.0, 128)  # type: ignore[attr-defined]
    lm = loader.load_model(name, source, settings)
    lm.speed = None
    log("loaded")
    print(f"model {lm.name} ({lm.dtype}, {lm.device}); torch threads {torch.get_num_threads()}")
    scope = ["tokens", "sequence"] if args.rows else ["sequence"]
    options = ExplainOptions.model_validate({"methods": ["integrated_gradients"], "scope": scope})
    tasks = []
    for text in PROMPTS[: args.prompts]:
        prompt = build_prompt(lm.tokenizer, prompt=text)
        output = generate(lm, prompt, SamplingParams(max_new_tokens=args.answer_tokens))
        answer = answer_of(output, lm.special_ids)
        task = plan_for(lm, settings, prompt, answer, None, options).task
        sources = sum(task.included[: task.prompt_len])
        tasks.append(task)
        print(f"prompt {len(prompt.ids)} tokens ({sources} sources), answer {answer.text!r}", flush=True)

    # (baseline, rule, steps) -> per prompt the span's gap, and every row's gap
    span_gaps: dict[tuple[str, str, int], list[float]] = {}
    row_gaps: dict[tuple[str, str, int], list[float]] = {}
    seconds: dict[tuple[str, str, int], float] = {}
    started = time.perf_counter()
    for baseline, keep_first in [(b, k) for b in BASELINES for k in (True, False)]:
        for rule in RULES:
            for steps in args.steps:
                key = (baseline + ("" if keep_first else "+first"), rule, steps)
                span_gaps[key], row_gaps[key] = [], []
                began = time.perf_counter()
                for task in tasks:
                    params = IntegratedGradientsParams(steps, baseline, rule, keep_first)
                    run = dataclasses.replace(task, methods={"integrated_gradients": params})
                    report: dict[str, Any] = (
                        explain(lm.model, run).outputs["integrated_gradients"].params["convergence"]
                    )
                    span_gaps[key].append(_gap(report["sequence"]["gap"]))
                    row_gaps[key].extend(_gap(r["gap"]) for r in report["rows"])
                seconds[key] = time.perf_counter() - began
                log(f"{key[0]:11} {rule:17} {steps:3} steps: median gap {statistics.median(span_gaps[key]):.3f}")
    print(f"\n{len(tasks)} prompts, {time.perf_counter() - started:.0f} s in all\n")
    header = "| baseline | rule | " + " | ".join(f"{s} steps" for s in args.steps) + " |"
    print("Median relative completeness gap of the whole answer (sequence scope); in brackets, prompts over 5%:\n")
    print(header)
    print("|" + "---|" * (2 + len(args.steps)))
    for baseline in PATHS:
        for rule in RULES:
            cells = []
            for steps in args.steps:
                gaps = span_gaps[(baseline, rule, steps)]
                cells.append(f"{statistics.median(gaps):.1%} ({sum(g > 0.05 for g in gaps)}/{len(gaps)})")
            print(f"| `{baseline}` | `{rule}` | " + " | ".join(cells) + " |")
    if args.rows:
        print("\nMedian relative completeness gap over every answer token's row (tokens scope):\n")
        print(header)
        print("|" + "---|" * (2 + len(args.steps)))
        for baseline in PATHS:
            for rule in RULES:
                cells = [f"{statistics.median(row_gaps[(baseline, rule, s)]):.1%}" for s in args.steps]
                print(f"| `{baseline}` | `{rule}` | " + " | ".join(cells) + " |")
    print("\nSeconds per configuration (all prompts), as a ratio to `zero`/`gausslegendre` at the same steps:")
    for steps in args.steps:
        base = seconds[("zero", "gausslegendre", steps)]
        ratios = ", ".join(f"{b}/{r}: {seconds[(b, r, steps)] / base:.2f}" for b in PATHS for r in RULES)
        print(f"  {steps} steps ({base:.1f} s): {ratios}")


def _gap(value: float | None) -> float:
    return float("inf") if value is None else float(value)


if __name__ == "__main__":
    main()
