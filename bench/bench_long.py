"""Issue 17 figures: long prompts, memory and time, next to a bare forward + backward on SDPA (the floor).

A retrieval-style chat on the default model (fp32): a system message, then a user message holding a long
made-up document (varied, seeded sentences with one planted fact) and a question about it, cut to exactly
``--lengths`` prompt tokens (default 1024 2048 4096 8192, capped at the model's context minus the answer).
The answer is a fixed 64-token text, tokenized after the prompt by the model's tokenizer and given as the
target, so no generation time is in any figure. Rows (``--rows``):

- ``ixg-seq``: ``input_x_gradient``, ``sequence`` scope (the whole answer's log-probability);
- ``ixg-tok``: ``input_x_gradient``, ``tokens`` scope, one row per answer token (64);
- ``ig-seq``: ``integrated_gradients``, 16 steps (its default pad baseline, Gauss-Legendre), ``sequence`` scope;
- ``att-tok``: ``attention`` (mean over heads and layers), ``tokens`` scope, 64 answer tokens.

Each (length, row) runs in a fresh subprocess that loads the model (not timed), explains once through the
/explain engine path (``tests.support.run.explain_answer``; scores and template tokens included, base64
float32 arrays) and reports:

- seconds of the explanation alone (after a short warm-up explanation of the same kind);
- peak RSS of the explanation: ``VmHWM`` from /proc/self/status, reset after loading by writing 5 to
  /proc/self/clear_refs (said in the output when the kernel does not allow it: then the peak is the
  process's, loading included), the RSS right after loading, and their difference (the activation peak);
- the cost model's prediction for the request: its memory (the ``Cost`` the planner checks against
  ``explain_memory_mb``, read by wrapping ``service.explain.cost.check`` for that one planning call) and
  work (token passes), its seconds and chunk sizes; on CUDA ``torch.cuda.max_memory_allocated`` too.

The floor, one subprocess per length: the same passes by hand on the model's default (SDPA) attention, on
``inputs_embeds`` with ``requires_grad``, logits only at the answer positions (``logits_to_keep``), a
log-softmax gather, then: one backward (sequence scope); vector-Jacobian products over the 64 targets in
chunks of 16 with ``torch.autograd.grad(..., is_grads_batched=True)`` (tokens scope); the 16 interpolation
steps batched, as many a forward as ``--floor-memory-mb`` allows from the sequence floor's measured
activations (integrated gradients); a forward without a graph and the 64 target rows of attention
recomputed from each layer's queries and keys (attention). Its time and peak RSS per kind, the ratio of
each Glassbox row to it, and the largest difference between the two results over the prompt's columns.

``--captum`` (up to ``--captum-max-len``): Captum's ``LLMGradientAttribution(LayerGradientXActivation)``
(one run serves both input × gradient rows) and ``LayerIntegratedGradients`` (16 steps, pad baseline) on
the same tokens, each in its own subprocess; out of memory, a crash or a time-out is written as such.

The explain limits are raised by flags so that a refusal can only come from the memory model (a refusal is
shown as "refused: <message>"). ``--max-seconds`` guards each row: one the cost model or an extrapolation
from the shorter lengths puts over it is "skipped (est. N s)"; one that runs past it is killed ("timed
out"); a process whose RSS passes ``--memory-limit-mb`` is killed ("out of memory").

    PYTHONPATH=. .venv/bin/python bench/bench_long.py [--lengths 1024 2048 4096 8192] [--rows ...]
        [--captum] [--json out.json] [--device cpu] [--max-seconds 900]
"""

from __future__ import annotations

import argparse
import base64
import gc
import json
import math
import os
import queue
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from schemas.common import ChatMessage
from schemas.explain import ExplainOptions, ExplainResponse
from service.engine.continuation import Answer, tokenize_continuation
from service.engine.prompt import PromptTokens, build_prompt
from service.errors import BudgetExceeded, GlassboxError
from service.explain import cost as cost_model
from service.models.loaded import LoadedModel
from service.models.loader import load_model
from service.settings import Settings
from service.usecases.explain import plan_for
from tests.support.run import explain_answer

ANSWER_TOKENS = 64
IG_STEPS = 16
TARGET_CHUNK = 16
MARK = "@@bench-long "


@dataclass(frozen=True)
class Row:
    label: str
    method: str
    scope: str
    floor: str  # the floor kind it is compared with
    captum: str | None  # the Captum run it is compared with


ROWS: dict[str, Row] = {
    "ixg-seq": Row("input × gradient, sequence scope", "input_x_gradient", "sequence", "sequence", "ixg"),
    "ixg-tok": Row(f"input × gradient, {ANSWER_TOKENS} answer tokens", "input_x_gradient", "tokens", "tokens", "ixg"),
    "ig-seq": Row(
        f"integrated gradients ({IG_STEPS} steps), sequence scope", "integrated_gradients", "sequence", "ig", "ig"
    ),
    "att-tok": Row(f"attention, {ANSWER_TOKENS} answer tokens", "attention", "tokens", "attention", None),
}

# --- the input: a long made-up document, a question, a fixed answer -------------------------------------

SYSTEM = (
    "You are a research assistant. Answer only from the document the user gives you, quote names and dates "
    "exactly as they appear in it, and say so when the document does not contain the answer."
)
NEEDLE = (
    "The keeper of the Ostrava Point lighthouse from 1871 to 1904 was Ilse Marwen, who kept the lamp lit "
    "through the great storm of 1889 and wrote the station's only surviving logbook."
)
QUESTION = "Question: who kept the Ostrava Point lighthouse through the great storm, and what did she leave behind?"
ANSWER = (
    "According to the document, the Ostrava Point lighthouse was kept by Ilse Marwen from 1871 to 1904. She "
    "kept the lamp lit through the great storm of 1889, and she left behind the station's only surviving "
    "logbook, which is the main record of those years. The document says nothing else about her family, "
    "her later life or where the logbook is kept today, so I cannot answer those parts."
)
_PLACES = ["Velmora", "Kestrin Bay", "the Harlow valley", "Dunmere", "Oskar's Ford", "the Brannock hills", "Tellwick"]
_ACTORS = [
    "the harbour council",
    "a guild of rope makers",
    "the county surveyor",
    "two brothers from the coast",
    "the abbey's treasurer",
    "a travelling physician",
    "the salt merchants",
    "the school's first teacher",
]
_ACTS = [
    "approved a new granary near",
    "drew the first reliable map of",
    "opened a toll road through",
    "recorded a poor harvest in",
    "rebuilt the stone bridge at",
    "paid for a clock tower in",
    "complained about the tax on wool in",
    "founded a small library in",
]
_AFTER = [
    "after a long dispute over the cost",
    "although few people expected it to last",
    "and the work took almost four years",
    "which doubled the number of visitors",
    "with money raised at the autumn fair",
    "despite objections from the neighbouring farms",
    "as the minutes of the meeting record",
    "and a copy of the plan survives",
]


def document_sentences(seed: int = 17) -> Iterator[str]:
    """An endless, deterministic stream of varied sentences (never the same one twice in a row)."""
    rng = random.Random(seed)
    while True:
        year = rng.randrange(1702, 1899)
        yield f"In {year}, {rng.choice(_ACTORS)} {rng.choice(_ACTS)} {rng.choice(_PLACES)}, {rng.choice(_AFTER)}."


def build_inputs(lm: LoadedModel, length: int, answer_tokens: int = ANSWER_TOKENS) -> tuple[PromptTokens, Answer]:
    """The chat prompt of ``length`` tokens (or the nearest the tokenizer allows) and the fixed answer."""
    tok = lm.tokenizer

    def chat(document: str) -> PromptTokens:
        user = f"Document:\n{document}\n\n{QUESTION}"
        return build_prompt(
            tok, messages=[ChatMessage(role="system", content=SYSTEM), ChatMessage(role="user", content=user)]
        )

    overhead = len(chat("").ids)
    sentences: list[str] = []
    stream = document_sentences()
    while len(tok(" ".join(sentences), add_special_tokens=False).input_ids) < length - overhead + 8:
        sentences.append(next(stream))
        if len(sentences) % 12 == 0:
            sentences.append("")  # paragraph break
    sentences.insert(len(sentences) // 2, NEEDLE)  # the planted fact, in the middle
    doc_ids = tok("\n".join(s for s in sentences), add_special_tokens=False).input_ids
    keep = max(0, length - overhead)
    best = chat(tok.decode(doc_ids[:keep]))
    for _ in range(8):  # decoding a cut and re-tokenizing can merge differently: adjust until exact
        if len(best.ids) == length or keep <= 0:
            break
        keep += length - len(best.ids)
        best = chat(tok.decode(doc_ids[: max(0, keep)]))
    text = ANSWER
    while True:
        answer = tokenize_continuation(tok, text, "answer", after=best.text)
        if len(answer.ids) >= answer_tokens:
            break
        text = text + " " + ANSWER
    end = answer.offsets[answer_tokens - 1][1]
    cut = Answer(answer.ids[:answer_tokens], text[:end], answer.offsets[:answer_tokens], answer.special[:answer_tokens])
    return best, cut


# --- measurements inside a child -------------------------------------------------------------------------


def status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0); False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class Meter:
    """Peak RSS (and CUDA memory) of one measured phase."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset_ok = True

    def start(self) -> None:
        gc.collect()
        self.reset_ok = reset_peak()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.started = time.perf_counter()

    def stop(self) -> dict[str, Any]:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        out: dict[str, Any] = {
            "seconds": time.perf_counter() - self.started,
            "peak_mib": status_mib("VmHWM"),
            "peak_reset": self.reset_ok,
        }
        if self.device.type == "cuda":
            out["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
        return out


def emit(kind: str, payload: dict[str, Any]) -> None:
    print(MARK + json.dumps({"kind": kind, **payload}), flush=True)


def child_settings(spec: dict[str, Any]) -> Settings:
    return Settings(
        device=spec["device"],
        dtype=spec["dtype"],
        explain_max_tokens=spec["max_tokens"] or 2048,
        explain_max_work=spec["max_work"],
        explain_max_seconds=spec["max_explain_seconds"],
        request_timeout_s=spec["request_timeout_s"],
        explain_memory_mb=spec["memory_mb"],
    )


def child_load(spec: dict[str, Any]) -> tuple[LoadedModel, Settings, dict[str, Any]]:
    settings = child_settings(spec)
    name, source = settings.model_specs()[0]
    lm = load_model(name, source, settings)
    if not spec["max_tokens"]:  # the model's whole context
        settings = settings.model_copy(update={"explain_max_tokens": lm.max_context})
    if spec.get("no_calibration"):
        lm.speed = None
    gc.collect()
    loaded: dict[str, Any] = {"rss_loaded_mib": status_mib("VmRSS"), "load_peak_mib": status_mib("VmHWM")}
    if lm.device.type == "cuda":
        loaded["cuda_loaded_mib"] = torch.cuda.memory_allocated() / 2**20
    return lm, settings, loaded


def save(path: str | None, array: np.ndarray) -> None:
    if path:
        np.save(path, np.asarray(array, dtype=np.float64))


def decode(response: ExplainResponse, method: str, scope: str) -> np.ndarray:
    result = response.methods[method]
    data = result.sequence if scope == "sequence" else result.tokens
    assert data is not None, f"no {scope} result for {method}"
    values = np.frombuffer(base64.b64decode(data.data), dtype="<f4") if data.encoding == "base64" else data.data
    return np.asarray(values, dtype=np.float64).reshape(data.shape)


def options_of(row: Row) -> ExplainOptions:
    body: dict[str, Any] = {
        "methods": [row.method],
        "scope": [row.scope],
        "include_template": True,
        "include_special": True,
        "precision": None,
        "encoding": "base64",
    }
    if row.method == "integrated_gradients":
        body["integrated_gradients"] = {"n_steps": IG_STEPS}
    return ExplainOptions.model_validate(body)


@contextmanager
def predicted_cost(out: list[cost_model.Cost]) -> Iterator[None]:
    """Collect the ``Cost`` the planner checks against the limits (its predicted memory and work)."""
    original = cost_model.check

    def spy(cost: cost_model.Cost, limits: cost_model.Limits) -> None:
        out.append(cost)
        original(cost, limits)

    cost_model.check = spy  # type: ignore[assignment]
    try:
        yield
    finally:
        cost_model.check = original  # type: ignore[assignment]


def child_glassbox(spec: dict[str, Any]) -> None:
    lm, settings, loaded = child_load(spec)
    row = ROWS[spec["row"]]
    options = options_of(row)
    prompt, answer = build_inputs(lm, spec["length"])
    info: dict[str, Any] = {**loaded, "prompt_tokens": len(prompt.ids), "answer_tokens": len(answer.ids)}
    costs: list[cost_model.Cost] = []
    try:
        with predicted_cost(costs):
            plan = plan_for(lm, settings, prompt, answer, None, options)
    except BudgetExceeded as exc:
        if costs:
            info["predicted_mib"] = costs[-1].memory / 2**20
            info["predicted_work"] = costs[-1].work
        emit("result", {**info, "status": f"refused: {exc.message}"})
        return
    memory = getattr(plan, "memory", None) or (costs[-1].memory if costs else None)
    info.update(
        predicted_mib=memory / 2**20 if memory is not None else None,
        predicted_work=plan.work,
        predicted_s=plan.estimate_s,
        plan_chunks=dict(vars(plan.task.chunks)) if hasattr(plan.task.chunks, "__dict__") else str(plan.task.chunks),
    )
    if plan.estimate_s > spec["max_seconds"]:
        emit("result", {**info, "status": f"skipped (est. {plan.estimate_s:,.0f} s, cost model)"})
        return
    # warm-up: the same kind of explanation on a short prompt (lazy initialisation out of the figures)
    warm_prompt, warm_answer = build_inputs(lm, min(160, spec["length"]), 4)
    explain_answer(lm, settings, warm_prompt, warm_answer, options)
    emit("ready", info)
    meter = Meter(lm.device)
    meter.start()
    try:
        response = explain_answer(lm, settings, prompt, answer, options)
    except BudgetExceeded as exc:
        emit("result", {**info, "status": f"refused: {exc.message}"})
        return
    except torch.OutOfMemoryError as exc:
        emit("result", {**info, **meter.stop(), "status": f"out of memory: {str(exc)[:200]}"})
        return
    except MemoryError:
        emit("result", {**info, **meter.stop(), "status": "out of memory (MemoryError)"})
        return
    except GlassboxError as exc:
        emit("result", {**info, **meter.stop(), "status": f"error {exc.status}: {exc.message}"})
        return
    measured = meter.stop()
    save(spec.get("array"), decode(response, row.method, row.scope))
    prov = response.provenance
    emit(
        "result",
        {
            **info,
            **measured,
            "status": "ok",
            "engine_chunks": prov.chunks,
            "engine_units": prov.units,
            "engine_estimated_s": prov.estimated_s,
        },
    )


# --- the floor: the same passes by hand -------------------------------------------------------------------


def floor_tensors(lm: LoadedModel, prompt: PromptTokens, answer: Answer) -> tuple[torch.Tensor, torch.Tensor]:
    """Input embeddings of prompt + answer (the last answer token is never an input to a target) and targets."""
    ids = torch.tensor([prompt.ids + answer.ids[:-1]], device=lm.device)
    x = lm.model.get_input_embeddings()(ids).detach()
    return x, torch.tensor(answer.ids, device=lm.device)


def answer_logprobs(lm: LoadedModel, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[batch, answer] log-probabilities of the targets, the head run only at the answer positions."""
    logits = lm.model(inputs_embeds=x, use_cache=False, logits_to_keep=len(targets)).logits
    index = targets.expand(x.shape[0], -1)[..., None]
    return torch.log_softmax(logits.float(), -1).gather(-1, index)[..., 0]


def floor_sequence(lm: LoadedModel, x: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(answer_logprobs(lm, xg, targets).sum(), xg)
    return (grad[0] * x[0]).sum(-1).double().cpu().numpy()


def floor_tokens(lm: LoadedModel, x: torch.Tensor, targets: torch.Tensor, chunk: int) -> np.ndarray:
    xg = x.clone().requires_grad_(True)
    lp = answer_logprobs(lm, xg, targets)  # [1, R]
    eye = torch.eye(len(targets), device=x.device, dtype=lp.dtype)
    rows = []
    for start in range(0, len(targets), chunk):
        vectors = eye[start : start + chunk, None, :]  # [c, 1, R]
        last = start + chunk >= len(targets)
        (grad,) = torch.autograd.grad(lp, xg, grad_outputs=vectors, is_grads_batched=True, retain_graph=not last)
        rows.append((grad[:, 0] * x[0]).sum(-1).double().cpu())
    return torch.cat(rows).numpy()


def floor_ig(
    lm: LoadedModel, x: torch.Tensor, targets: torch.Tensor, pad_id: int, prompt_len: int, chunk: int
) -> np.ndarray:
    """Sequence-scope IG as Glassbox defines it: the prompt moves from the pad embedding, the answer stays."""
    embed = lm.model.get_input_embeddings()
    baseline = embed(torch.tensor([pad_id], device=x.device))[0].detach()
    delta = torch.zeros_like(x)
    delta[:, :prompt_len] = x[:, :prompt_len] - baseline
    start = x - delta
    nodes, weights = np.polynomial.legendre.leggauss(IG_STEPS)
    alphas, ws = (nodes + 1) / 2, weights / 2
    total = torch.zeros_like(x[0])
    for i in range(0, IG_STEPS, chunk):
        a = torch.tensor(alphas[i : i + chunk], dtype=x.dtype, device=x.device)
        w = torch.tensor(ws[i : i + chunk], dtype=torch.float32, device=x.device)
        xa = (start + a[:, None, None] * delta).requires_grad_(True)  # [c, T, D]
        (grad,) = torch.autograd.grad((answer_logprobs(lm, xa, targets).sum(-1) * w).sum(), xa)
        total += grad.sum(0)
    return (total * delta[0]).sum(-1).double().cpu().numpy()


def floor_attention(lm: LoadedModel, x: torch.Tensor, prompt_len: int, rows: int) -> np.ndarray:
    """Mean over layers and heads of the attention of the positions predicting the answer tokens, from each
    layer's queries and keys (a forward without a graph on SDPA; Llama-style attention modules)."""
    from transformers.models.llama.modeling_llama import rotate_half

    positions = torch.arange(prompt_len - 1, prompt_len - 1 + rows, device=x.device)
    seq = x.shape[1]
    total = torch.zeros(rows, seq, dtype=torch.float64, device=x.device)
    attns = [m for m in lm.model.modules() if hasattr(m, "q_proj") and hasattr(m, "k_proj")]

    def hook(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        nonlocal total
        h = kwargs.get("hidden_states", args[0] if args else None)
        cos, sin = kwargs["position_embeddings"]
        d = int(module.head_dim)  # type: ignore[arg-type]
        q = module.q_proj(h[:, positions]).view(1, rows, -1, d).transpose(1, 2)  # type: ignore[operator]
        k = module.k_proj(h).view(1, seq, -1, d).transpose(1, 2)  # type: ignore[operator]
        cq, sq = cos[:, positions].unsqueeze(1), sin[:, positions].unsqueeze(1)
        q = q * cq + rotate_half(q) * sq
        k = k * cos.unsqueeze(1) + rotate_half(k) * sin.unsqueeze(1)
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        scores = (q @ k.transpose(-1, -2)).float() * float(module.scaling)  # type: ignore[arg-type]
        future = torch.arange(seq, device=x.device)[None, :] > positions[:, None]
        probs = torch.softmax(scores.masked_fill(future, float("-inf")), -1)  # [1, H, rows, T]
        total += probs[0].mean(0).double()

    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in attns]
    try:
        with torch.no_grad():
            lm.model(inputs_embeds=x, use_cache=False, logits_to_keep=1)
    finally:
        for handle in handles:
            handle.remove()
    return (total / len(attns)).cpu().numpy()


def child_floor(spec: dict[str, Any]) -> None:
    lm, _settings, loaded = child_load(spec)
    prompt, answer = build_inputs(lm, spec["length"])
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else lm.tokenizer.eos_token_id
    p = len(prompt.ids)
    info = {**loaded, "prompt_tokens": p, "attention": lm.model.config._attn_implementation}
    emit("ready", info)
    ig_chunk = spec["floor_ig_chunk"]
    with torch.inference_mode(False), torch.enable_grad():
        warm_prompt, warm_answer = build_inputs(lm, min(160, spec["length"]), 4)
        wx, wt = floor_tensors(lm, warm_prompt, warm_answer)
        floor_sequence(lm, wx, wt)
        x, targets = floor_tensors(lm, prompt, answer)
        for kind in spec["kinds"]:
            emit("start", {"item": kind})
            meter = Meter(lm.device)
            meter.start()
            extra: dict[str, Any] = {}
            try:
                if kind == "sequence":
                    result = floor_sequence(lm, x, targets)
                elif kind == "tokens":
                    result = floor_tokens(lm, x, targets, spec["floor_target_chunk"])
                    extra["chunk"] = spec["floor_target_chunk"]
                elif kind == "ig":
                    chunk = ig_chunk or IG_STEPS
                    result = floor_ig(lm, x, targets, int(pad or 0), p, chunk)
                    extra["chunk"] = chunk
                else:
                    result = floor_attention(lm, x.detach(), p, len(answer.ids))
            except (torch.OutOfMemoryError, MemoryError) as exc:
                emit("result", {"item": kind, **info, **meter.stop(), "status": f"out of memory: {str(exc)[:200]}"})
                continue
            measured = meter.stop()
            save(spec["arrays"].get(kind), result)
            emit("result", {"item": kind, **info, **measured, **extra, "status": "ok"})
            if kind == "sequence" and not ig_chunk:
                # as many interpolated sequences a forward as the floor's budget holds, from this measurement
                activation = max(1.0, measured["peak_mib"] - loaded["rss_loaded_mib"])
                ig_chunk = max(1, min(IG_STEPS, int(spec["floor_memory_mb"] // activation)))
            gc.collect()


# --- Captum -----------------------------------------------------------------------------------------------


def child_captum(spec: dict[str, Any]) -> None:
    from captum.attr import LayerGradientXActivation, LayerIntegratedGradients, LLMGradientAttribution, TextTokenInput

    from service.explain.state import input_gradients

    lm, _settings, loaded = child_load(spec)
    prompt, answer = build_inputs(lm, spec["length"])
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else lm.tokenizer.eos_token_id
    method = spec["captum"]
    layer = lm.model.get_input_embeddings()
    inner = LayerGradientXActivation(lm.model, layer) if method == "ixg" else LayerIntegratedGradients(lm.model, layer)
    attr = LLMGradientAttribution(inner, lm.tokenizer)
    inp = TextTokenInput(prompt.text, lm.tokenizer, baselines=int(pad or 0))
    if inp.inp_tensor[0].tolist() != prompt.ids:
        emit("result", {**loaded, "status": "error: Captum's tokens differ from the prompt's"})
        return
    target = torch.tensor(answer.ids, device=lm.device)
    kwargs = {"n_steps": IG_STEPS} if method == "ig" else {}
    emit("ready", {**loaded, "prompt_tokens": len(prompt.ids)})
    meter = Meter(lm.device)
    meter.start()
    try:
        with input_gradients(lm.model):
            attr.attribute(inp, target=target, **kwargs)
    except (torch.OutOfMemoryError, MemoryError) as exc:
        emit("result", {**loaded, **meter.stop(), "status": f"out of memory: {str(exc)[:200]}"})
        return
    except Exception as exc:  # a failing library is a result here
        emit("result", {**loaded, **meter.stop(), "status": f"error: {type(exc).__name__}: {str(exc)[:200]}"})
        return
    emit("result", {**loaded, **meter.stop(), "status": "ok"})


def child_probe(spec: dict[str, Any]) -> None:
    lm, _settings, loaded = child_load(spec)
    emit(
        "result",
        {
            **loaded,
            "model": lm.name,
            "dtype": str(lm.dtype).removeprefix("torch."),
            "device": str(lm.device),
            "context": lm.max_context,
            "threads": torch.get_num_threads(),
            "attention": lm.model.config._attn_implementation,
            "status": "ok",
        },
    )


CHILDREN: dict[str, Callable[[dict[str, Any]], None]] = {
    "probe": child_probe,
    "glassbox": child_glassbox,
    "floor": child_floor,
    "captum": child_captum,
}

# --- the parent: one subprocess per measurement, guarded by time and memory ----------------------------------


def log(message: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def proc_rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


@dataclass
class Outcome:
    ready: dict[str, Any] | None
    results: list[dict[str, Any]]
    failure: str | None  # why the process ended without all its results (None: it finished)
    item: str | None  # the item running when it was stopped


def run_child(
    spec: dict[str, Any], *, load_timeout: float, item_timeout: float, memory_mib: float, verbose: bool
) -> Outcome:
    """Run this script as a child on ``spec``; kill it past a deadline (loading, then each item) or a memory limit."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
    lines: queue.Queue[str | None] = queue.Queue()
    tail: list[str] = []

    def read_out() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    def read_err() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            tail.append(line.rstrip())
            del tail[:-20]
            if verbose:
                print(f"    | {line.rstrip()}", file=sys.stderr, flush=True)

    readers = [threading.Thread(target=read_out, daemon=True), threading.Thread(target=read_err, daemon=True)]
    for reader in readers:
        reader.start()
    out = Outcome(None, [], None, None)
    deadline = time.monotonic() + load_timeout
    while True:
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            line = ""
        if line is None:
            break
        if line.startswith(MARK):
            payload = json.loads(line[len(MARK) :])
            kind = payload.pop("kind")
            if kind == "ready":
                out.ready = payload
            elif kind == "start":
                out.item = payload["item"]
            else:
                out.results.append(payload)
                out.item = None
            deadline = time.monotonic() + item_timeout
        rss = proc_rss_mib(proc.pid)
        if rss > memory_mib:
            out.failure = f"out of memory (RSS {rss:,.0f} MiB passed --memory-limit-mb {memory_mib:,.0f}; killed)"
        elif time.monotonic() > deadline:
            out.failure = "timed out" if out.ready is not None else "timed out before starting (loading)"
        if out.failure:
            proc.kill()
            break
    proc.wait()
    for reader in readers:
        reader.join(timeout=5)
    if out.failure is None and proc.returncode != 0:
        last = next((t for t in reversed(tail) if t.strip()), "")
        if proc.returncode == -9:
            out.failure = "killed (SIGKILL: out of memory?)"
        else:
            out.failure = f"crashed (exit {proc.returncode}): {last[:200]}"
    return out


def extrapolate(history: list[tuple[int, float]], length: int) -> float | None:
    """Seconds at ``length`` from the shorter lengths: the growth exponent of the last two (1 to 2), else linear."""
    if not history:
        return None
    last_len, last_s = history[-1]
    exponent = 1.0
    if len(history) >= 2:
        prev_len, prev_s = history[-2]
        if prev_s > 0 and last_len > prev_len:
            exponent = min(2.0, max(1.0, math.log(last_s / prev_s) / math.log(last_len / prev_len)))
    return last_s * (length / last_len) ** exponent


def rel_diff(ours: np.ndarray | None, floor: np.ndarray | None, prompt_len: int) -> float | None:
    if ours is None or floor is None:
        return None
    a, b = ours[..., :prompt_len], floor[..., :prompt_len]
    if a.shape != b.shape:
        return None
    scale = float(np.abs(b).max())
    return float(np.abs(a - b).max() / scale) if scale > 0 else None


def load_array(path: str | None) -> np.ndarray | None:
    return np.load(path) if path and os.path.exists(path) else None


def activation(rec: dict[str, Any]) -> float | None:
    """Measured activation peak: CUDA's max allocated over the loaded model there, else peak − loaded RSS."""
    if "cuda_max_allocated_mib" in rec:
        return float(rec["cuda_max_allocated_mib"] - rec.get("cuda_loaded_mib", 0.0))
    if "peak_mib" in rec and "rss_loaded_mib" in rec:
        return float(rec["peak_mib"] - rec["rss_loaded_mib"])
    return None


def fmt(value: float | None, spec: str = ",.0f", suffix: str = "") -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:{spec}}{suffix}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192], help="prompt tokens")
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--captum", action="store_true", help="also Captum's attributions (up to --captum-max-len)")
    parser.add_argument("--captum-max-len", type=int, default=2048)
    parser.add_argument("--max-seconds", type=float, default=900.0, help="per row: skip or kill past it")
    parser.add_argument("--load-timeout", type=float, default=600.0, help="per subprocess: loading and planning")
    parser.add_argument(
        "--memory-limit-mb", type=float, default=None, help="kill a child past this RSS (default: 80%% of MemAvailable)"
    )
    parser.add_argument(
        "--max-tokens", type=int, default=None, help="explain_max_tokens (default: the model's context)"
    )
    parser.add_argument("--max-work", type=int, default=10**12, help="explain_max_work")
    parser.add_argument("--max-explain-seconds", type=float, default=1e7, help="explain_max_seconds")
    parser.add_argument("--request-timeout", type=float, default=1e7, help="request_timeout_s")
    parser.add_argument(
        "--memory-mb", type=int, default=6144, help="explain_memory_mb: the activation budget (8 GB goal − the model)"
    )
    parser.add_argument("--floor-memory-mb", type=int, default=6144, help="the floor's budget for batched IG steps")
    parser.add_argument(
        "--floor-ig-chunk", type=int, default=0, help="IG steps a forward in the floor (0: from --floor-memory-mb)"
    )
    parser.add_argument(
        "--floor-target-chunk", type=int, default=TARGET_CHUNK, help="targets a batched backward in the floor"
    )
    parser.add_argument(
        "--no-calibration", action="store_true", help="lm.speed = None: chunks from memory alone, no time estimate"
    )
    parser.add_argument("--json", type=Path, help="write the raw numbers here")
    parser.add_argument("--verbose", action="store_true", help="relay the children's stderr")
    args = parser.parse_args()

    if args.child:
        spec = json.loads(args.child)
        CHILDREN[spec["child"]](spec)
        return

    available = status_mib("MemTotal")
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            available = int(line.split()[1]) / 1024
    memory_limit = args.memory_limit_mb or 0.8 * available
    base = {
        "device": args.device,
        "dtype": args.dtype,
        "max_tokens": args.max_tokens,
        "max_work": args.max_work,
        "max_explain_seconds": args.max_explain_seconds,
        "request_timeout_s": args.request_timeout,
        "memory_mb": args.memory_mb,
        "no_calibration": args.no_calibration,
        "max_seconds": args.max_seconds,
    }

    def run(spec: dict[str, Any]) -> Outcome:
        return run_child(
            {**base, **spec},
            load_timeout=args.load_timeout,
            item_timeout=args.max_seconds,
            memory_mib=memory_limit,
            verbose=args.verbose,
        )

    log("probe: loading the model once for its context")
    probe = run({"child": "probe"})
    if not probe.results:
        sys.exit(f"the probe failed: {probe.failure}")
    info = probe.results[0]
    cap = info["context"] - ANSWER_TOKENS
    lengths = sorted({min(length, cap) for length in args.lengths})
    tmp = tempfile.mkdtemp(prefix="bench-long-")
    records: list[dict[str, Any]] = []
    floor_times: dict[str, list[tuple[int, float]]] = {}
    row_times: dict[str, list[tuple[int, float]]] = {}
    captum_times: dict[str, list[tuple[int, float]]] = {}
    kinds_needed = []
    for name in args.rows:
        if ROWS[name].floor == "ig" and "sequence" not in kinds_needed:
            kinds_needed.insert(0, "sequence")  # its activations size the IG floor's step batches
        if ROWS[name].floor not in kinds_needed:
            kinds_needed.append(ROWS[name].floor)
    kinds_needed.sort(key=lambda k: k != "sequence")

    for length in lengths:
        # the floor: one process for every kind this run compares with
        kinds, skipped = [], []
        for kind in kinds_needed:
            est = extrapolate(floor_times.get(kind, []), length)
            (skipped if est is not None and est > args.max_seconds else kinds).append((kind, est))
        for kind, est in skipped:
            records.append({"what": "floor", "item": kind, "length": length, "status": f"skipped (est. {est:,.0f} s)"})
        pending = [k for k, _ in kinds]
        while pending:
            log(f"{length} tokens: floor ({', '.join(pending)})")
            arrays = {k: os.path.join(tmp, f"floor-{length}-{k}.npy") for k in pending}
            out = run(
                {
                    "child": "floor",
                    "length": length,
                    "kinds": pending,
                    "arrays": arrays,
                    "floor_memory_mb": args.floor_memory_mb,
                    "floor_ig_chunk": args.floor_ig_chunk,
                    "floor_target_chunk": args.floor_target_chunk,
                }
            )
            for res in out.results:
                kind = res.pop("item")
                records.append({"what": "floor", "item": kind, "length": length, "array": arrays[kind], **res})
                if res["status"] == "ok":
                    floor_times.setdefault(kind, []).append((length, res["seconds"]))
                pending.remove(kind)
            if out.failure is not None and pending:
                stopped = out.item or pending[0]
                records.append({"what": "floor", "item": stopped, "length": length, "status": out.failure})
                pending.remove(stopped)
            elif out.failure is None:
                for kind in pending:
                    records.append({"what": "floor", "item": kind, "length": length, "status": "no result"})
                pending = []
        # the Glassbox rows, each in its own process
        for name in args.rows:
            est = extrapolate(row_times.get(name, []), length)
            if est is not None and est > args.max_seconds:
                records.append(
                    {"what": "glassbox", "item": name, "length": length, "status": f"skipped (est. {est:,.0f} s)"}
                )
                continue
            log(f"{length} tokens: glassbox {name}")
            array = os.path.join(tmp, f"glassbox-{length}-{name}.npy")
            out = run({"child": "glassbox", "row": name, "length": length, "array": array})
            res = out.results[0] if out.results else {**(out.ready or {}), "status": out.failure or "no result"}
            records.append({"what": "glassbox", "item": name, "length": length, "array": array, **res})
            if res["status"] == "ok":
                row_times.setdefault(name, []).append((length, res["seconds"]))
        # Captum, where asked and not too long
        if args.captum and length <= args.captum_max_len:
            for method in dict.fromkeys(ROWS[n].captum for n in args.rows if ROWS[n].captum):
                assert method is not None
                est = extrapolate(captum_times.get(method, []), length)
                if est is not None and est > args.max_seconds:
                    records.append(
                        {"what": "captum", "item": method, "length": length, "status": f"skipped (est. {est:,.0f} s)"}
                    )
                    continue
                log(f"{length} tokens: captum {method}")
                out = run({"child": "captum", "captum": method, "length": length})
                res = out.results[0] if out.results else {**(out.ready or {}), "status": out.failure or "no result"}
                records.append({"what": "captum", "item": method, "length": length, **res})
                if res["status"] == "ok":
                    captum_times.setdefault(method, []).append((length, res["seconds"]))

    report(args, info, lengths, records, memory_limit)
    if args.json:
        args.json.write_text(
            json.dumps(
                {"args": {k: str(v) for k, v in vars(args).items()}, "probe": info, "records": records}, indent=2
            )
        )
        print(f"\nraw numbers: {args.json}")


def report(
    args: argparse.Namespace,
    info: dict[str, Any],
    lengths: list[int],
    records: list[dict[str, Any]],
    memory_limit: float,
) -> None:
    def find(what: str, item: str | None, length: int) -> dict[str, Any] | None:
        return next((r for r in records if r["what"] == what and r["item"] == item and r["length"] == length), None)

    print(
        f"model {info['model']} ({info['dtype']}, {info['device']}, {info['attention']} attention), context "
        f"{info['context']}; torch threads {info['threads']}; answer {ANSWER_TOKENS} tokens (given, not generated)"
    )
    print(
        f"settings: explain_memory_mb {args.memory_mb}, explain_max_work {args.max_work:,}, explain_max_seconds "
        f"{args.max_explain_seconds:,.0f}, request_timeout_s {args.request_timeout:,.0f}, explain_max_tokens "
        f"{args.max_tokens or 'the context'}; guards: {args.max_seconds:,.0f} s a row, {memory_limit:,.0f} MiB RSS "
        "a process" + ("; lm.speed = None" if args.no_calibration else "")
    )
    if any(r.get("peak_reset") is False for r in records):
        print("note: /proc/self/clear_refs refused: peaks are the whole process's, loading included")
    cuda = args.device.startswith("cuda")
    for name in args.rows:
        row = ROWS[name]
        print(f"\n### {row.label} (`{name}`)\n")
        header = [
            "prompt tokens", "s", "floor s", "× floor", "peak RSS MiB", "floor peak MiB", "activation MiB",
            "predicted MiB", "predicted / measured", "Captum s", "max rel. diff to floor",
        ]  # fmt: skip
        if cuda:
            header.insert(5, "CUDA max MiB")
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for length in lengths:
            g = find("glassbox", name, length) or {"status": "not run"}
            f = find("floor", row.floor, length) or {"status": "not run"}
            c = find("captum", row.captum, length) if row.captum else None
            ok, f_ok = g["status"] == "ok", f["status"] == "ok"
            act = activation(g) if ok else None
            pred = g.get("predicted_mib")
            diff = None
            if ok and f_ok:
                diff = rel_diff(load_array(g.get("array")), load_array(f.get("array")), int(g["prompt_tokens"]))
            cells = [
                str(g.get("prompt_tokens", length)),
                fmt(g.get("seconds"), ".1f") if ok else g["status"],
                fmt(f.get("seconds"), ".1f") if f_ok else f["status"],
                fmt(g["seconds"] / f["seconds"], ".2f", "×") if ok and f_ok and f["seconds"] > 0 else "—",
                fmt(g.get("peak_mib")) if ok else "—",
                fmt(f.get("peak_mib")) if f_ok else "—",
                fmt(act),
                fmt(pred),
                fmt(pred / act, ".2f") if pred is not None and act is not None and act > 0 else "—",
                (fmt(c.get("seconds"), ".1f") if c["status"] == "ok" else c["status"]) if c else "—",
                fmt(diff, ".1e"),
            ]
            if cuda:
                cells.insert(5, fmt(g.get("cuda_max_allocated_mib")) if ok else "—")
            print("| " + " | ".join(cells) + " |")
        notes = {
            str(r.get("engine_chunks"))
            for r in records
            if r["what"] == "glassbox" and r["item"] == name and r.get("engine_chunks")
        }
        if notes:
            print(f"\nengine chunks: {'; '.join(sorted(notes))}")
    summary(args, lengths, records, find)


def summary(
    args: argparse.Namespace,
    lengths: list[int],
    records: list[dict[str, Any]],
    find: Callable[[str, str | None, int], dict[str, Any] | None],
) -> None:
    big = lengths[-1]
    small = big // 4 if big // 4 in lengths else None
    rows = [find("glassbox", name, big) or {"status": "not run"} for name in args.rows]
    done = sum(r["status"] == "ok" for r in rows)
    parts = [f"{big}-token rows completed {done}/{len(rows)} {'✓' if done == len(rows) else '✗'}"]
    if small is not None:
        growth = []
        for name in args.rows:
            a, b = find("glassbox", name, big), find("glassbox", name, small)
            if a and b and a["status"] == b["status"] == "ok":
                growth.append(a["peak_mib"] / b["peak_mib"])
        if growth:
            worst = max(growth)
            parts.append(f"peak RSS {big}/{small} at most {worst:.2f}× (goal ≤ 4.5×) {'✓' if worst <= 4.5 else '✗'}")
    else:
        parts.append(f"memory growth: needs {big // 4} among the lengths")
    peaks = [r["peak_mib"] for r in rows if r["status"] == "ok"]
    if peaks:
        parts.append(
            f"peak RSS at {big} at most {max(peaks):,.0f} MiB (goal < 8,192) {'✓' if max(peaks) < 8192 else '✗'}"
        )
    ratios = []
    for name in args.rows:
        for length in lengths:
            g, f = find("glassbox", name, length), find("floor", ROWS[name].floor, length)
            if g and f and g["status"] == f["status"] == "ok" and f["seconds"] > 0:
                ratios.append(g["seconds"] / f["seconds"])
    if ratios:
        parts.append(f"time at most {max(ratios):.2f}× the floor (goal ≤ 1.5×) {'✓' if max(ratios) <= 1.5 else '✗'}")
    print("\nsummary: " + "; ".join(parts))


if __name__ == "__main__":
    main()
