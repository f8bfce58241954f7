"""Issue 16 figures: the new methods' timings next to input × gradient in the same run, and the convergence
of Shapley permutation sampling that sets its default sample count.

The ~150-token chat of ``bench_explain.py`` (prompt + a greedy answer) on the default model, one process:

- input × gradient, logit lens, gradient-weighted attention (tokens + sequence scope, token units) and
  Shapley values (sentence units, default samples), each through the /explain engine path, best of
  ``--repeats`` interleaved runs, with the ratio to input × gradient;
- Shapley convergence: every coalition of the sentence units is scored once (exact values by enumeration),
  then permutation sampling is replayed on those values for several sample counts and seeds: the error
  against the exact values (relative L2) and the reported standard error.

    .venv/bin/python bench/bench_methods.py [--device cuda] [--answer-tokens 32] [--repeats 2]
"""

from __future__ import annotations

import argparse
import itertools
import math
import re
import statistics
import sys
import time
from typing import Any

import numpy as np
import torch

from schemas.common import ChatMessage
from schemas.explain import ExplainOptions
from service.engine.prompt import build_prompt
from service.engine.sampling import SamplingParams
from service.explain.checkpoint import NO_CHECKPOINT
from service.explain.context import Context
from service.explain.methods import shapley
from service.explain.objective import sequence_score
from service.explain.state import explaining
from service.models.loader import load_model
from service.settings import Settings
from service.usecases.explain import answer_of, plan_for
from tests.support.run import explain_answer, generate

sys.path.insert(0, "bench")
from bench_explain import SYSTEM, USER, timed


def log(message: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def pieces(count: int) -> list[dict[str, str]]:
    """``count`` segments of the user message: its clauses (split at , . ? :), the first ``count``."""
    parts = [p.strip() for p in re.split(r"[,.?:]", USER) if len(p.strip()) > 3]
    return [{"text": p, "label": p[:20]} for p in parts[:count]]


def convergence(
    lm: Any, settings: Settings, prompt: Any, answer: Any, samples: list[int], seeds: int, segments: int
) -> None:
    units: dict[str, Any] = {"granularity": "sentence"}
    if segments:
        units = {"granularity": "segments", "segments": pieces(segments)}
    opts = ExplainOptions.model_validate({"methods": ["shapley"], "scope": ["sequence"], **units})
    plan = plan_for(lm, settings, prompt, answer, None, opts)
    task = plan.task
    players = [u for u in task.units if u and max(u) < task.sequence_sources]
    n = len(players)
    every = [frozenset(c) for k in range(n + 1) for c in itertools.combinations(range(n), k)]
    span = list(range(*task.span))
    kind = f"{n} {units['granularity']}"
    log(f"shapley convergence: {kind} units, all {len(every)} coalitions")
    with explaining(lm.model, attention="none", checkpoint=NO_CHECKPOINT):
        ctx = Context(lm.model, task, attentions=False, gradients=False)

        def score(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
            return sequence_score(logits, ids, task.function).unsqueeze(-1)

        (values, seconds) = timed(
            lambda: shapley.coalition_values(ctx, task.ids, span, players, every, score, "delete")
        )
    exact = np.zeros(n)
    for player in range(n):
        for coalition in every:
            if player in coalition:
                continue
            w = math.factorial(len(coalition)) * math.factorial(n - len(coalition) - 1) / math.factorial(n)
            exact[player] += w * float(values[coalition | {player}][0] - values[coalition][0])
    print(f"\nShapley convergence ({kind} units, delete masking, {len(every)} coalitions in {seconds:.1f} s)")
    print(f"exact values: {np.round(exact, 3).tolist()}  (f(all) − f(none) = {exact.sum():.3f})")
    print(f"{'samples':>8} {'coalitions':>10} {'rel. L2 error':>14} {'max |err|':>10} {'mean reported SE':>17}")
    for m in samples:
        errors, worst, reported, distinct = [], [], [], []
        for seed in range(seeds):
            orders = shapley.permutations(n, m, seed)
            phi, se = shapley.estimate(orders, values)
            diff = phi[0].numpy() - exact
            errors.append(np.linalg.norm(diff) / np.linalg.norm(exact))
            worst.append(np.abs(diff).max())
            reported.append(float(se[0].mean()) if m > 1 else math.nan)
            distinct.append(len(shapley.coalitions(orders, n)))
        print(
            f"{m:>8} {statistics.mean(distinct):>10.0f} {statistics.mean(errors):>14.3f} "
            f"{statistics.mean(worst):>10.3f} {statistics.mean(reported):>17.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--answer-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--skip-timings", action="store_true")
    parser.add_argument(
        "--segments", type=int, default=0, help="convergence over this many clause segments instead of sentences"
    )
    args = parser.parse_args()

    settings = Settings(device=args.device, dtype="float32", explain_max_work=100_000_000, explain_max_seconds=1e6)
    name, source = settings.model_specs()[0]
    lm, load_s = timed(lambda: load_model(name, source, settings))
    messages = [ChatMessage(role="system", content=SYSTEM), ChatMessage(role="user", content=USER)]
    prompt = build_prompt(lm.tokenizer, messages=messages)
    generate(lm, prompt, SamplingParams(max_new_tokens=2))  # warm-up
    answer = answer_of(generate(lm, prompt, SamplingParams(max_new_tokens=args.answer_tokens)), lm.special_ids)
    print(
        f"model {lm.name} ({lm.dtype}, {lm.device}), loaded in {load_s:.1f} s; torch threads {torch.get_num_threads()}"
    )
    print(f"prompt {len(prompt.ids)} tokens (chat), answer {len(answer.ids)} tokens: {answer.text!r}")

    if not args.skip_timings:
        cases: dict[str, dict[str, Any]] = {
            "input_x_gradient": {"methods": ["input_x_gradient"]},
            "logit_lens": {"methods": ["logit_lens"]},
            "attention_gradient": {"methods": ["attention_gradient"]},
            "shapley (sentence units)": {"methods": ["shapley"], "granularity": "sentence"},
        }
        best: dict[str, float] = {}
        extra: dict[str, str] = {}
        for repeat in range(args.repeats):
            for label, body in cases.items():
                log(f"{label} (run {repeat + 1})")
                opts = ExplainOptions.model_validate({"precision": None, **body})
                response, seconds = timed(lambda opts=opts: explain_answer(lm, settings, prompt, answer, opts))
                best[label] = min(best.get(label, math.inf), seconds)
                params = response.methods[body["methods"][0]].params
                if "coalitions" in params:
                    extra[label] = (
                        f"{params['players']} units, {params['n_samples']} samples, {params['coalitions']} "
                        f"coalitions, efficiency gap {params['efficiency']['gap']:.1e}"
                    )
        base = best["input_x_gradient"]
        print(f"\n{'method':<28} {'best s':>8} {'× input×gradient':>17}")
        for label, seconds in best.items():
            print(f"{label:<28} {seconds:>8.2f} {seconds / base:>17.1f}  {extra.get(label, '')}")
    convergence(lm, settings, prompt, answer, [4, 8, 16, 32, 64, 128], args.seeds, args.segments)


if __name__ == "__main__":
    main()
