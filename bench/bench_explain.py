"""Issue 3 figures: Glassbox's explain engine next to Captum and a per-token loop, on the same tokens.

A ~150-token chat (prompt + a 32-token greedy answer) on the default model, in one process and one run:

- input × gradient: Glassbox vs Captum ``LLMGradientAttribution(LayerGradientXActivation)`` vs a loop
  (re-run the prefix, backward, per target token);
- saliency + input × gradient + attention together vs the loop running the three one by one;
- integrated gradients, 16 steps: Glassbox vs Captum ``LLMGradientAttribution(LayerIntegratedGradients)``;
- the whole-answer (sequence) attribution next to the time it took to generate the answer.

Same weights and dtype on both sides of every comparison.

    .venv/bin/python bench/bench_explain.py [--device cuda] [--answer-tokens 32] [--steps 16]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from schemas.common import ChatMessage
from schemas.explain import ExplainOptions, ExplainResponse
from service.engine.continuation import Answer
from service.engine.prompt import PromptTokens, build_prompt
from service.engine.sampling import SamplingParams
from service.explain.state import attention_capture, eager_attention, input_gradients
from service.models.loaded import LoadedModel
from service.models.loader import load_model
from service.settings import Settings
from service.usecases.explain import answer_of
from tests.support.run import explain_answer, generate

SYSTEM = (
    "You are a careful assistant for a travel magazine. Answer in plain sentences, cite the facts you are "
    "given, and do not invent dates or names that are not in the notes."
)
USER = (
    "Notes: The Eiffel Tower stands on the Champ de Mars in Paris. It was designed by the engineering "
    "company of Gustave Eiffel, built between 1887 and 1889 as the entrance arch of the 1889 World's Fair, "
    "and was at first criticised by artists. It is 330 metres tall and was the tallest man-made structure "
    "in the world until 1930. Question: who designed the Eiffel Tower, when was it built, and why?"
)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# --- Glassbox ------------------------------------------------------------------------------------------


def glassbox(
    lm: LoadedModel, settings: Settings, prompt: PromptTokens, answer: Answer, **options: Any
) -> tuple[ExplainResponse, float]:
    opts = ExplainOptions.model_validate(
        {"include_template": True, "include_special": True, "precision": None, **options}
    )
    started = time.perf_counter()
    response = explain_answer(lm, settings, prompt, answer, opts)
    sync(lm.device)
    return response, time.perf_counter() - started


def matrix(response: ExplainResponse, method: str) -> np.ndarray:
    array = response.methods[method].tokens
    assert array is not None
    return np.asarray(array.data, dtype=np.float64)


# --- Captum ---------------------------------------------------------------------------------------------


def captum_attr(
    lm: LoadedModel, prompt: PromptTokens, answer: Answer, method: str, steps: int, baseline_id: int = 0
) -> tuple[np.ndarray, float]:
    from captum.attr import LayerGradientXActivation, LayerIntegratedGradients, LLMGradientAttribution, TextTokenInput

    layer = lm.model.get_input_embeddings()
    inner = LayerGradientXActivation(lm.model, layer) if method == "ixg" else LayerIntegratedGradients(lm.model, layer)
    attr = LLMGradientAttribution(inner, lm.tokenizer)
    inp = TextTokenInput(prompt.text, lm.tokenizer, baselines=baseline_id)
    assert inp.inp_tensor[0].tolist() == prompt.ids, "Captum must see the same prompt tokens"
    target = torch.tensor(answer.ids, device=lm.device)
    kwargs = {"n_steps": steps} if method == "ig" else {}
    started = time.perf_counter()
    with input_gradients(lm.model):
        result = attr.attribute(inp, target=target, **kwargs)
    sync(lm.device)
    return result.token_attr.detach().double().cpu().numpy(), time.perf_counter() - started


# --- the straightforward loop: re-run the prefix for each target -----------------------------------------


def loop(lm: LoadedModel, ids: list[int], prompt_len: int, method: str) -> tuple[np.ndarray, float]:
    model = lm.model
    rows = []
    started = time.perf_counter()
    with eager_attention(model, method == "attention"), input_gradients(model):
        embeddings = model.get_input_embeddings()(torch.tensor([ids], device=lm.device)).detach()
        for t in range(prompt_len, len(ids)):
            x = embeddings[:, :t].clone().requires_grad_(method != "attention")
            if method == "attention":
                with torch.no_grad(), attention_capture(model) as captured:
                    model(inputs_embeds=x, use_cache=False)
                rows.append(torch.stack([a[0, :, -1] for a in captured]).mean((0, 1)).double().cpu())
                continue
            logits = model(inputs_embeds=x, use_cache=False, logits_to_keep=1).logits[0, -1]
            value = torch.log_softmax(logits.float(), -1)[ids[t]]
            (grad,) = torch.autograd.grad(value, x)
            row = grad[0].norm(dim=-1) if method == "saliency" else (grad[0] * x[0].detach()).sum(-1)
            rows.append(row.double().cpu())
    sync(lm.device)
    seconds = time.perf_counter() - started
    out = np.zeros((len(rows), len(ids)))
    for i, row in enumerate(rows):
        out[i, : len(row)] = row.numpy()
    return out, seconds


def ig_completeness(
    lm: LoadedModel, ids: list[int], prompt_len: int, rows: np.ndarray, baseline_id: int
) -> tuple[float, float, float]:
    """Row sums against f(input) − f(baseline) (every position at the baseline): the median relative gap,
    the largest absolute gap and the median |f(input) − f(baseline)|, in nats."""
    with torch.no_grad():
        embed = lm.model.get_input_embeddings()
        x = embed(torch.tensor([ids], device=lm.device))
        base = embed(torch.tensor([[baseline_id] * len(ids)], device=lm.device))
        targets = torch.tensor(ids[prompt_len:], device=lm.device)
        values = []
        for inputs in (x, base):
            logits = lm.model(inputs_embeds=inputs, use_cache=False).logits[0, prompt_len - 1 : -1].float()
            values.append(torch.log_softmax(logits, -1).gather(-1, targets[:, None])[:, 0].double().cpu().numpy())
    expected = values[0] - values[1]
    gaps = np.abs(rows.sum(1) - expected)
    return float(np.median(gaps / np.abs(expected))), float(gaps.max()), float(np.median(np.abs(expected)))


def log(message: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- main ------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--answer-tokens", type=int, default=32)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument(
        "--repeats", type=int, default=2, help="runs of each gradient case, interleaved; the best counts (noisy CPUs)"
    )
    args = parser.parse_args()

    settings = Settings(device=args.device, dtype="float32", explain_max_work=10_000_000)
    name, source = settings.model_specs()[0]
    lm, load_s = timed(lambda: load_model(name, source, settings))
    messages = [ChatMessage(role="system", content=SYSTEM), ChatMessage(role="user", content=USER)]
    prompt = build_prompt(lm.tokenizer, messages=messages)
    params = SamplingParams(max_new_tokens=args.answer_tokens)
    generate(lm, prompt, SamplingParams(max_new_tokens=2))  # warm-up
    answer = answer_of(generate(lm, prompt, params), lm.special_ids)
    ids = prompt.ids + answer.ids
    p = len(prompt.ids)
    log("warm-up: one short explanation and one short loop")
    short = Answer(answer.ids[:2], answer.text, answer.offsets[:2], answer.special[:2])
    glassbox(lm, settings, prompt, short, methods=["saliency", "attention", "integrated_gradients"], scope=["tokens"])
    loop(lm, ids[: p + 2], p, "saliency")
    threads = torch.get_num_threads()
    print(f"model {lm.name} ({lm.dtype}, {lm.device}), loaded in {load_s:.1f} s; torch threads {threads}")
    print(f"prompt {p} tokens (chat), answer {len(answer.ids)} tokens: {answer.text!r}\n")

    rows: list[tuple[str, float, float | None, float | None, str]] = []
    log(f"input × gradient: glassbox, captum, loop (best of {args.repeats})")
    runs = [
        (
            glassbox(lm, settings, prompt, answer, methods=["input_x_gradient"], scope=["tokens"]),
            captum_attr(lm, prompt, answer, "ixg", args.steps),
            loop(lm, ids, p, "input_x_gradient"),
        )
        for _ in range(args.repeats)
    ]
    ixg, c_ixg, l_ixg = runs[0][0][0], runs[0][1][0], runs[0][2][0]
    g_ixg, c_ixg_s, l_ixg_s = (min(run[k][1] for run in runs) for k in range(3))
    ours = matrix(ixg, "input_x_gradient")
    diff_captum = np.abs(ours[:, :p] - c_ixg).max() / np.abs(c_ixg).max()
    diff_loop = np.abs(ours - l_ixg).max() / np.abs(l_ixg).max()
    rows.append(("input × gradient", g_ixg, c_ixg_s, l_ixg_s, "≥ 1.5× Captum"))

    log(f"saliency + input × gradient + attention: glassbox, loops for the other two (best of {args.repeats})")
    trio = ["saliency", "input_x_gradient", "attention"]
    runs3 = [
        (
            glassbox(lm, settings, prompt, answer, methods=trio, scope=["tokens"])[1],
            loop(lm, ids, p, "saliency")[1],
            loop(lm, ids, p, "attention")[1],
        )
        for _ in range(args.repeats)
    ]
    g_trio, l_sal_s, l_att_s = (min(run[k] for run in runs3) for k in range(3))
    rows.append(("saliency + input × gradient + attention", g_trio, None, l_sal_s + l_ixg_s + l_att_s, "≥ 3× loop"))

    log(f"integrated gradients ({args.steps} steps): glassbox, captum")
    pad = int(lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0)
    ig_options = {"integrated_gradients": {"n_steps": args.steps, "baseline": "pad"}}
    ig, g_ig = glassbox(lm, settings, prompt, answer, methods=["integrated_gradients"], scope=["tokens"], **ig_options)
    c_ig, c_ig_s = captum_attr(lm, prompt, answer, "ig", args.steps, baseline_id=pad)
    ours_ig = matrix(ig, "integrated_gradients")
    first_row = np.abs(ours_ig[0, :p] - c_ig[0]).max() / np.abs(c_ig[0]).max()
    median_gap, worst_gap, typical = ig_completeness(lm, ids, p, ours_ig, pad)
    rows.append((f"integrated gradients ({args.steps} steps)", g_ig, c_ig_s, None, "≥ 1.3× Captum"))

    log("whole-answer attribution next to generation, 3 interleaved runs (medians)")
    gen_times, seq_times = [], []
    for _ in range(3):
        gen_times.append(timed(lambda: generate(lm, prompt, params))[1])
        seq_times.append(glassbox(lm, settings, prompt, answer, methods=["input_x_gradient"], scope=["sequence"])[1])
    g_seq, generate_s = statistics.median(seq_times), statistics.median(gen_times)

    header = f"explaining {len(answer.ids)} answer tokens"
    print(f"{header:<42}{'glassbox':>10}{'captum':>10}{'loop':>10}{'vs captum':>11}{'vs loop':>9}   goal")
    for label, g, c, loop_s, goal in rows:
        c_txt = f"{c:9.2f}s" if c is not None else f"{'—':>10}"
        l_txt = f"{loop_s:9.2f}s" if loop_s is not None else f"{'—':>10}"
        rc = f"{c / g:10.2f}×" if c is not None else f"{'':>11}"
        rl = f"{loop_s / g:8.2f}×" if loop_s is not None else f"{'':>9}"
        print(f"{label:<42}{g:9.2f}s{c_txt}{l_txt}{rc}{rl}   {goal}")
    print(
        f"{'whole-answer attribution (sequence)':<42}{g_seq:9.2f}s   generating the answer took {generate_s:.2f}s: "
        f"{g_seq / generate_s:.2f}× (goal ≤ 0.5×)"
    )
    print("\nchecks (same tokens, same dtype):")
    print(f"  input × gradient: max |glassbox − captum| / max |captum| = {diff_captum:.1e} (prompt columns)")
    print(f"  input × gradient: max |glassbox − loop| / max |loop| = {diff_loop:.1e} (all columns)")
    print(f"  integrated gradients, first row (the same sources on both sides): max rel. gap to Captum {first_row:.1e}")
    print("  (later rows differ by design: Captum keeps earlier answer tokens fixed, Glassbox interpolates them)")
    print(
        f"  integrated gradients completeness at {args.steps} steps: row sums vs f(x) − f(baseline): "
        f"median relative gap {median_gap:.1%}, worst {worst_gap:.2f} nats "
        f"(median |f(x) − f(baseline)| {typical:.2f} nats)"
    )
    print("  (the gap is the quadrature along this model's path: Captum's IG on the same rows gives the same sums)")
    print(f"  loops: saliency {l_sal_s:.2f}s, input × gradient {l_ixg_s:.2f}s, attention {l_att_s:.2f}s")
    print(f"  runs: generate {[round(t, 2) for t in gen_times]}, sequence {[round(t, 2) for t in seq_times]}")
    print(f"  chunks: gradients {ixg.provenance.chunks}, IG {ig.provenance.chunks}")


if __name__ == "__main__":
    main()
