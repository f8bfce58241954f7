"""Shared work for one explanation: the teacher-forced forward and the gradients several methods reuse."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedModel

from service.explain import forward as fw
from service.explain.attention_rows import AttentionMode, queries_of
from service.explain.checkpoint import NO_CHECKPOINT, Checkpoint, RowsCallback
from service.explain.objective import logprobs, sequence_score, token_scores
from service.explain.task import Task


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Where gradient × input products are summed: float32, or float64 for a float64 model. A bfloat16
    model's products reduced in bfloat16 lose about three significant digits over the hidden dimension."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@dataclass
class Forward:
    """One forward over prompt + answer with teacher forcing: every target's output at once."""

    leaf: torch.Tensor  # [1, T, d] input embeddings (requires grad when gradients are needed)
    row_scores: torch.Tensor | None  # [1, R] attributed function per row, contrast applied (tokens scope)
    span_score: torch.Tensor | None  # [1] attributed function of the span (sequence scope)
    answer_logprobs: list[float]  # every answer token's log-probability
    foil_logprobs: list[float] | None
    attentions: fw.Attentions | None  # per decoder layer, None where a layer has no attention weights
    #: The query positions the attention tensors hold (``rows`` mode: [B, H, Q, T]); None: every row ([B, H, T, T]).
    attention_queries: tuple[int, ...] | None = None

    def attention_rows(self, layer: torch.Tensor, queries: Sequence[int]) -> torch.Tensor:
        """One layer's weights at ``queries`` ([..., len(queries), T]), whichever rows the forward kept."""
        return fw.query_rows(layer, queries, self.attention_queries)


@dataclass
class GradientRows:
    """Gradient reductions shared by saliency and input × gradient (one backward pass set for both)."""

    saliency: torch.Tensor | None  # [R, T] gradient L2 norm per row
    input_x_gradient: torch.Tensor | None  # [R, T]
    sequence_saliency: torch.Tensor | None  # [S]
    sequence_input_x_gradient: torch.Tensor | None  # [S]


class Context:
    """Lazily computed, cached pieces; methods ask for what they need and share what others computed."""

    def __init__(
        self,
        model: PreTrainedModel,
        task: Task,
        *,
        attentions: AttentionMode,
        gradients: bool,
        checkpoint: Checkpoint = NO_CHECKPOINT,
        on_rows: RowsCallback | None = None,
        total_units: int = 0,
    ) -> None:
        self.model = model
        self.task = task
        self.checkpoint = checkpoint
        self.on_rows = on_rows
        self.streamed: set[str] = set()  # methods whose rows were already sent as they became final
        self.done_units = 0
        self.total_units = total_units
        self.device = fw.embedding_weight(model).device
        self.embeddings = fw.embed(model, task.ids)  # [T, d]
        self._attentions = attentions
        self._gradients = gradients
        self.targets = torch.tensor(task.ids, device=self.device)

    # --- units of work ---------------------------------------------------------------------------
    def unit(self, phase: str) -> None:
        """One unit of work is done: report progress, then let the scheduler interleave or stop us."""
        self.done_units += 1
        self.total_units = max(self.total_units, self.done_units)
        self.checkpoint.progress(self.done_units, self.total_units, phase)
        self.checkpoint()

    def emit_rows(self, method: str, rows: range, values: np.ndarray, *, over_units: bool = False) -> None:
        """Rows of ``method`` that are final ([len(rows), positions]), for streaming."""
        if self.on_rows is not None and method in self.task.methods:
            self.on_rows(method, list(rows), values, over_units)
            self.streamed.add(method)

    # --- positions and objectives -------------------------------------------------------------
    def row_index(self) -> torch.Tensor:
        """Index of each row's target among the answer positions."""
        return torch.tensor([r - self.task.prompt_len for r in self.task.rows], device=self.device)

    def span_index(self) -> torch.Tensor:
        start, end = self.task.span
        return torch.arange(start - self.task.prompt_len, end - self.task.prompt_len, device=self.device)

    def foils(self) -> torch.Tensor | None:
        if self.task.foils is None:
            return None
        return torch.tensor(self.task.foils, device=self.device)

    def answer_logits_positions(self) -> torch.Tensor:
        return fw.predicting(self.task.answer_positions, self.device)

    def row_scores(self, logits: torch.Tensor) -> torch.Tensor:
        """[B, R, V] logits predicting the rows' targets -> attributed function [B, R]."""
        ids = self.targets[list(self.task.rows)]
        return token_scores(logits, ids, self.task.function, self.foils())

    def span_score(self, logits: torch.Tensor) -> torch.Tensor:
        """[B, n, V] logits predicting the span's targets -> attributed function of the span [B]."""
        start, end = self.task.span
        return sequence_score(logits, self.targets[start:end], self.task.function)

    # --- the shared forward ---------------------------------------------------------------------
    @functools.cached_property
    def forward(self) -> Forward:
        leaf = self.embeddings.unsqueeze(0).clone().requires_grad_(self._gradients)
        task = self.task
        queries = queries_of(task.rows, task.span, task.scopes) if self._attentions == "rows" else None
        with torch.set_grad_enabled(self._gradients):
            out = fw.run(
                self.model,
                leaf,
                self.answer_logits_positions(),
                attentions=self._attentions != "none",
                queries=queries,
            )
            scopes = self.task.scopes
            row_scores = self.row_scores(out.logits[:, self.row_index()]) if "tokens" in scopes else None
            span_score = self.span_score(out.logits[:, self.span_index()]) if "sequence" in scopes else None
            answer_ids = self.targets[self.task.prompt_len :]
            lps = logprobs(out.logits.detach(), answer_ids)[0].tolist()
            foils = self.foils()
            foil_lps = None
            if foils is not None:
                foil_lps = logprobs(out.logits.detach()[:, self.row_index()], foils)[0].tolist()
        self.unit("forward")
        return Forward(leaf, row_scores, span_score, lps, foil_lps, out.attentions, queries)

    # --- gradients shared by saliency and input x gradient ---------------------------------------
    @functools.cached_property
    def gradient_rows(self) -> GradientRows:
        task = self.task
        fwd = self.forward
        saliency = ixg = seq_saliency = seq_ixg = None
        acc = accumulation_dtype(self.embeddings.dtype)
        x = self.embeddings.to(acc)
        if fwd.row_scores is not None and task.rows:
            count = len(task.rows)
            saliency = torch.zeros(count, task.seq_len)
            ixg = torch.zeros(count, task.seq_len)
            for start in range(0, count, task.chunks.targets):
                chunk = range(start, min(count, start + task.chunks.targets))
                vectors = fw.one_hot_rows(chunk, count, 1, None, fwd.row_scores)
                keep = chunk.stop < count or fwd.span_score is not None  # free the graph after its last use
                grads = fw.batched_input_grads(fwd.row_scores, fwd.leaf, vectors, keep_graph=keep)[:, 0].to(acc)
                saliency[chunk.start : chunk.stop] = grads.norm(dim=-1).float().cpu()
                ixg[chunk.start : chunk.stop] = (grads * x).sum(-1).float().cpu()
                self.emit_rows("saliency", chunk, saliency[chunk.start : chunk.stop].numpy())
                self.emit_rows("input_x_gradient", chunk, ixg[chunk.start : chunk.stop].numpy())
                self.unit("gradients")
        if "sequence" in task.scopes:
            grad = self.sequence_gradient().to(acc)
            seq_saliency = grad.norm(dim=-1).float().cpu()
            seq_ixg = (grad * x[: task.sequence_sources]).sum(-1).float().cpu()
            self.unit("gradients")
        return GradientRows(saliency, ixg, seq_saliency, seq_ixg)

    def sequence_gradient(self) -> torch.Tensor:
        """d(span function)/d(embeddings) over the span's sources [S, d]; minus the contrast's if any (in the
        accumulation dtype)."""
        fwd = self.forward
        assert fwd.span_score is not None
        sources = self.task.sequence_sources
        (grad,) = torch.autograd.grad(fwd.span_score.sum(), fwd.leaf)  # the last pass over this graph
        acc = accumulation_dtype(grad.dtype)
        grad = grad[0, :sources].to(acc)
        contrast = self.task.contrast_sequence
        if contrast is not None:
            leaf = fw.embed(self.model, contrast).unsqueeze(0).requires_grad_(True)
            score = self.contrast_score(leaf)
            (other,) = torch.autograd.grad(score.sum(), leaf)
            grad = grad - other[0, :sources].to(acc)
        return grad

    # --- the contrast sequence (sequence scope) --------------------------------------------------
    def contrast_positions(self) -> range:
        seq = self.task.contrast_sequence
        assert seq is not None
        return range(self.task.sequence_sources, len(seq))

    @functools.cached_property
    def contrast_logprobs(self) -> list[float] | None:
        """Each contrast token's log-probability given the prompt, the answer before the span and the contrast
        before it (one forward, no graph): the size of a sequence-scope contrast."""
        seq = self.task.contrast_sequence
        if seq is None:
            return None
        positions = self.contrast_positions()
        with torch.no_grad():
            embeds = fw.embed(self.model, seq).unsqueeze(0)
            out = fw.run(self.model, embeds, fw.predicting(positions, self.device))
            ids = torch.tensor([seq[p] for p in positions], device=self.device)
            return [float(v) for v in logprobs(out.logits, ids)[0].tolist()]

    def contrast_score(self, embeds: torch.Tensor) -> torch.Tensor:
        """Span function of the contrast continuation, per batch row [B]."""
        seq = self.task.contrast_sequence
        assert seq is not None
        positions = self.contrast_positions()
        out = fw.run(self.model, embeds, fw.predicting(positions, self.device))
        ids = torch.tensor([seq[p] for p in positions], device=self.device)
        return sequence_score(out.logits, ids, self.task.function)
