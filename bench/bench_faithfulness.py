"""How faithful, how costly: every method's ranking of prompt words tested by deletion, on the default model.

Twelve held-out chat prompts (factual questions, answers from a given document, arithmetic, sentiment,
completion, translation), each answered greedily by the model itself. For every method with unit scores
(sequence scope, word units, message content only), through the /explain engine path with
``evaluate.faithfulness`` (k = 10/20/50 %, 3 seeded random word sets, deletion):

- beats random: the share of prompts where deleting the method's top 20 % of words lowers the answer's
  log-probability more than deleting 20 % random words (mean of the 3 sets, the same sets for every method);
- comprehensiveness (nats the answer's log-probability drops) and sufficiency (drop with only those words
  kept) at 20 %, and AOPC (mean comprehensiveness over k), averaged over the prompts;
- cost per explanation: seconds (the method's own phase plus the shared forward, and for saliency and
  input × gradient the shared backward pass) and token passes as the cost model charges the method alone,
  each with its ratio to input × gradient.

All methods run in one request per prompt, so the whole input and the random sets are scored once.

``logit_lens`` scores layers, not words: it has nothing to rank and is skipped (said in the output).

    PYTHONPATH=. .venv/bin/python bench/bench_faithfulness.py [--prompts 12] [--ig-steps 16] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import torch

from schemas.common import ChatMessage
from schemas.explain import METHOD_NAMES, ExplainOptions
from service.engine.prompt import build_prompt
from service.engine.sampling import SamplingParams
from service.models.loader import load_model
from service.settings import Settings
from service.usecases.explain import answer_of, plan_for
from tests.support.run import explain_answer, generate

#: (category, user message): none of these is in the tests or the README examples.
PROMPTS: list[tuple[str, str]] = [
    ("factual", "What is the capital of Japan?"),
    ("factual", "Who wrote the play Romeo and Juliet?"),
    (
        "document",
        "Document: The Amazon river flows through Peru, Colombia and Brazil and is about 6,400 km long.\n"
        "Question: How long is the Amazon river?",
    ),
    (
        "document",
        "Document: Marie Curie won the Nobel Prize in Physics in 1903 and the Nobel Prize in Chemistry in 1911.\n"
        "Question: In which year did Marie Curie win the Nobel Prize in Chemistry?",
    ),
    ("arithmetic", "What is 12 plus 7?"),
    ("arithmetic", "I have 5 apples and I eat 2 of them. How many apples are left?"),
    ("sentiment", "Is this review positive or negative? 'The food was cold and the waiter was rude.'"),
    ("sentiment", "Is this review positive or negative? 'I loved this film, the acting was wonderful.'"),
    ("completion", "Complete the sentence: The early bird catches the"),
    ("completion", "Finish the proverb: Actions speak louder than"),
    ("translation", "Translate into French: Good morning, my friend."),
    ("translation", "Translate into Spanish: The cat is sleeping on the sofa."),
]

K = [0.1, 0.2, 0.5]
GRADIENT_SHARED = ("saliency", "input_x_gradient")
AT = K.index(0.2)


def log(message: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def pick(prompts: list[tuple[str, str]], count: int) -> list[tuple[str, str]]:
    """``count`` prompts, taking the categories in turn (so a short run still covers them all)."""
    by_category: dict[str, list[tuple[str, str]]] = {}
    for item in prompts:
        by_category.setdefault(item[0], []).append(item)
    out: list[tuple[str, str]] = []
    while len(out) < min(count, len(prompts)):
        for items in by_category.values():
            if items and len(out) < count:
                out.append(items.pop(0))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--prompts", type=int, default=len(PROMPTS))
    parser.add_argument("--answer-tokens", type=int, default=16)
    parser.add_argument("--ig-steps", type=int, default=16, help="integrated-gradients steps (its default: 16)")
    parser.add_argument("--shapley-samples", type=int, default=32, help="Shapley permutations (its default: 32)")
    parser.add_argument("--methods", nargs="*", default=list(METHOD_NAMES))
    parser.add_argument("--random", type=int, default=3)
    parser.add_argument("--verbose", action="store_true", help="a line per prompt and method")
    args = parser.parse_args()

    settings = Settings(
        device=args.device, dtype="float32", explain_max_work=10**9, explain_max_seconds=1e6, request_timeout_s=1e6
    )
    name, source = settings.model_specs()[0]
    lm = load_model(name, source, settings)
    # chunk sizes from the memory budget alone (up to 16 sequences or steps a forward): the time-per-unit cap
    # follows the load-time calibration, which on a shared, busy CPU shrinks every batch to one sequence
    lm.speed = None
    print(f"model {lm.name} ({lm.dtype}, {lm.device}); torch threads {torch.get_num_threads()}")
    evaluate = {"faithfulness": {"k": K, "random": args.random, "seed": 0}}
    rows: dict[str, list[dict[str, Any]]] = {m: [] for m in args.methods}
    skipped: dict[str, str] = {}
    chosen = pick(PROMPTS, args.prompts)
    generate(lm, build_prompt(lm.tokenizer, prompt="Hi"), SamplingParams(max_new_tokens=2))  # warm-up
    shared = {
        "scope": ["sequence"],
        "granularity": "word",
        "precision": None,
        "integrated_gradients": {"n_steps": args.ig_steps},
        "shapley": {"n_samples": args.shapley_samples},
    }
    for p, (category, user) in enumerate(chosen):
        prompt = build_prompt(lm.tokenizer, messages=[ChatMessage(role="user", content=user)])
        output = generate(lm, prompt, SamplingParams(max_new_tokens=args.answer_tokens))
        answer = answer_of(output, lm.special_ids)
        log(f"prompt {p + 1}/{len(chosen)} ({category}): {output.text!r}")
        # one request with every method: the random sets and the whole input are scored once for all
        opts = ExplainOptions.model_validate({**shared, "methods": args.methods, "evaluate": evaluate})
        response = explain_answer(lm, settings, prompt, answer, opts)
        timings = response.provenance.timings_ms
        for method in args.methods:
            # seconds: the method's own phase + the shared forward (+ the shared backward of the gradient methods)
            seconds = (timings[f"engine.{method}"] + timings["engine.forward"]) / 1000
            if method in GRADIENT_SHARED:
                seconds += timings.get("engine.gradients", 0.0) / 1000
            alone = ExplainOptions.model_validate({**shared, "methods": [method]})
            work = plan_for(lm, settings, prompt, answer, None, alone).work
            evaluation = response.methods[method].evaluation
            if evaluation is None or evaluation.faithfulness is None:
                skipped[method] = evaluation.skipped or "" if evaluation is not None else "no evaluation"
                continue
            f = evaluation.faithfulness
            rows[method].append(
                {
                    "beats": f.comprehensiveness[AT] > f.random_comprehensiveness[AT],
                    "comp": f.comprehensiveness[AT],
                    "random": f.random_comprehensiveness[AT],
                    "suff": f.sufficiency[AT],
                    "aopc": f.aopc,
                    "seconds": seconds,
                    "work": work,
                }
            )
            if args.verbose:
                comp, rand, suff = f.comprehensiveness[AT], f.random_comprehensiveness[AT], f.sufficiency[AT]
                log(f"  {method:<20} comp@20 {comp:+.3f} random {rand:+.3f} suff@20 {suff:+.3f} ({seconds:.2f} s)")
        evaluation_s = timings.get("engine.faithfulness", 0) / 1000
        log(f"  evaluation: {evaluation_s:.1f} s, engine {timings['engine'] / 1000:.1f} s")
    base = rows.get("input_x_gradient") or None
    base_s = statistics.mean(r["seconds"] for r in base) if base else None
    base_w = statistics.mean(r["work"] for r in base) if base else None
    n = len(chosen)
    print(
        f"\n{n} prompts, word units, k = 20 % (AOPC over {', '.join(f'{k:.0%}' for k in K)}), deletion, "
        f"{args.random} seeded random sets; integrated gradients {args.ig_steps} steps, Shapley "
        f"{args.shapley_samples} samples; answers of up to {args.answer_tokens} greedy tokens; sequence scope\n"
    )
    print(
        "| method | beats random at 20 % | comprehensiveness at 20 % (nats) | random at 20 % | "
        "sufficiency at 20 % | AOPC | s / explanation | token passes (cost model) | × input × gradient |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    keys = ("comp", "random", "suff", "aopc", "seconds", "work")
    for method, results in rows.items():
        if not results:
            continue
        mean = {key: statistics.mean(r[key] for r in results) for key in keys}
        wins = sum(r["beats"] for r in results)
        ratio = f"{mean['seconds'] / base_s:.2f} s, {mean['work'] / base_w:.1f} passes" if base_s and base_w else "—"
        print(
            f"| `{method}` | {wins}/{len(results)} ({wins / len(results):.0%}) | {mean['comp']:.2f} | "
            f"{mean['random']:.2f} | {mean['suff']:.2f} | {mean['aopc']:.2f} | {mean['seconds']:.2f} | "
            f"{mean['work']:,.0f} | {ratio} |"
        )
    for method, why in skipped.items():
        print(f"\nskipped `{method}`: {why}")


if __name__ == "__main__":
    main()
