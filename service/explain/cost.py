"""Cost of a request, estimated before any model time is spent, and chunk sizes that fit the memory budget.

Work is counted in token passes (one token through the model, forward or backward: the two cost about the
same when only input gradients are computed). Memory is a coarse activation model, calibrated on
SmolLM2-135M on CPU; it errs high.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PretrainedConfig

from service.errors import BudgetExceeded
from service.explain.attention_rows import rows_supported
from service.explain.task import Chunks
from service.models.facts import ModelFacts, text_config

MAX_CHUNK = 16


@dataclass(frozen=True)
class ModelDims:
    layers: int
    heads: int
    hidden: int
    intermediate: int
    vocab: int
    elem: int  # bytes per activation element
    #: Layers with attention weights ([H, T, T] each); None means every layer.
    attention_layers: int | None = None
    #: Attention rows can be recomputed beside the model's kernel (``attention_rows``), without T×T matrices.
    attention_rows: bool = False
    #: Decoder layers are recomputed in the backward pass (gradient checkpointing): a forward keeps only each
    #: layer's input, and one layer's activations at a time are live again during the backward.
    recompute: bool = False

    @property
    def attending(self) -> int:
        """Layers that hold attention weights."""
        return self.layers if self.attention_layers is None else self.attention_layers

    @classmethod
    def of(cls, source: ModelFacts | PretrainedConfig, elem: int = 4) -> ModelDims:
        """From the model's facts (a config still works: its text config's fields, every layer attention)."""
        if isinstance(source, ModelFacts):
            return cls(
                layers=source.layers,
                heads=source.heads or 0,
                hidden=source.hidden,
                intermediate=source.intermediate,
                vocab=source.vocab,
                elem=elem,
                attention_layers=len(source.attention_layers),
                attention_rows=rows_supported(source),
            )
        config = text_config(source)
        hidden = int(getattr(config, "hidden_size", 768))
        return cls(
            layers=int(getattr(config, "num_hidden_layers", 12)),
            heads=int(getattr(config, "num_attention_heads", None) or 0),
            hidden=hidden,
            intermediate=int(getattr(config, "intermediate_size", None) or 4 * hidden),
            vocab=int(getattr(config, "vocab_size", 32_000)),
            elem=elem,
        )

    def attention_bytes(self, seq: int) -> int:
        """One set of attention weights (float32) over every attention layer."""
        return self.attending * self.heads * seq * seq * 4

    def token_pass_flops(self) -> int:
        """Multiply-adds of one token through the model's matrices (attention scores left out): the unit of work."""
        return self.layers * (4 * self.hidden * self.hidden + 3 * self.hidden * self.intermediate)

    def token_passes(self, flops: int) -> int:
        """Work in token passes of a computation of ``flops`` multiply-adds outside the model (rounded up)."""
        per = max(1, self.token_pass_flops())
        return -(-flops // per)

    def graph_bytes(self, batch: int, seq: int, kept: int, eager: bool) -> int:
        """Activations a forward keeps for backward, plus the kept logits (float32, with softmax). Eager
        attention keeps every layer's T×T scores and probabilities; SDPA's kernels keep O(T) per layer."""
        layer = (8 * self.hidden + 3 * self.intermediate) * self.elem
        per_token = self.layers * layer
        attending = self.attending
        if self.recompute:
            per_token = self.layers * 2 * self.hidden * self.elem + layer
            attending = min(1, attending)
        attention = attending * self.heads * seq * seq * self.elem * 3 if eager else 0
        return batch * (seq * per_token + attention + kept * self.vocab * 4 * 3)

    def backward_bytes(self, vectors: int, batch: int, seq: int, kept: int, eager: bool = False) -> int:
        """Transient memory of one batched backward pass over ``vectors`` output weightings (one layer's
        gradients at a time; eager attention's are T×T per head)."""
        per_token = (8 * self.hidden + 3 * self.intermediate) * self.elem
        attention = 2 * self.heads * seq * seq * self.elem if eager else 0
        return vectors * batch * (seq * per_token + attention + kept * self.vocab * 4 * 2 + seq * self.hidden * 4)


@dataclass(frozen=True)
class Shape:
    """Sizes known before running."""

    seq_len: int
    answer_len: int
    rows: int
    span_len: int
    sequence_sources: int
    units: int
    sequence_units: int
    contrast_len: int  # 0 without a sequence-scope contrast
    tokens_scope: bool
    sequence_scope: bool
    gradients: bool = True  # some method needs a backward pass, so the shared forward keeps its graph

    @property
    def contrast_seq_len(self) -> int:
        return self.sequence_sources + self.contrast_len


@dataclass
class Cost:
    work: int = 0
    memory: int = 0

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.work + other.work, max(self.memory, other.memory))


@dataclass(frozen=True)
class Limits:
    max_work: int
    memory_bytes: int


def _fit(budget: int, fixed: int, per_item: int, cap: int) -> int:
    if per_item <= 0:
        return cap
    return max(0, min(cap, (budget - fixed) // per_item))


def plan_chunks(shape: Shape, dims: ModelDims, memory_bytes: int, *, eager: bool, ig: bool) -> Chunks:
    """The largest chunks (up to 16) that keep the estimated peak under the budget; 0 means nothing fits."""
    seq, kept = shape.seq_len, shape.answer_len
    graph = dims.graph_bytes(1, seq, kept, eager)
    targets = _fit(memory_bytes, graph, dims.backward_bytes(1, 1, seq, kept, eager), MAX_CHUNK)
    steps = ig_targets = MAX_CHUNK
    if ig:
        # half the budget to the interpolated batch, half to the batched backward passes over it
        step_graph = dims.graph_bytes(1, seq, shape.rows, False)
        step_backward = dims.backward_bytes(1, 1, seq, shape.rows)
        steps = _fit(memory_bytes // 2, 0, step_graph, MAX_CHUNK)
        ig_targets = _fit(memory_bytes, steps * step_graph, max(1, steps) * step_backward, MAX_CHUNK)
    sequences = _fit(memory_bytes, 0, dims.graph_bytes(1, seq, kept, False) // 4, MAX_CHUNK)
    return Chunks(targets=targets, steps=steps, sequences=sequences, ig_targets=ig_targets)


def forward_cost(shape: Shape, dims: ModelDims, *, eager: bool) -> Cost:
    """The shared forward: its graph is kept only when gradients are needed; with a sequence-scope contrast, one
    more forward (no graph) over the contrast sequence gives the contrast's size."""
    contrast = shape.contrast_seq_len if shape.contrast_len else 0
    return Cost(work=shape.seq_len + contrast, memory=forward_bytes(shape, dims, eager=eager))


def forward_bytes(shape: Shape, dims: ModelDims, *, eager: bool) -> int:
    """Peak of the shared forward: its whole graph when a backward pass follows, else about a quarter of it
    (no graph: a few layers' transients, the kept logits)."""
    graph = dims.graph_bytes(1, shape.seq_len, shape.answer_len, eager)
    return graph if shape.gradients else graph // 4


def recompute_work(shape: Shape, chunks: Chunks) -> int:
    """The extra forward work of gradient checkpointing: the layers run again in every backward pass (one per
    chunk of targets, one for the span)."""
    passes = 0
    if shape.tokens_scope:
        passes += -(-shape.rows // max(1, chunks.targets))
    if shape.sequence_scope:
        passes += 1
    return passes * shape.seq_len


def check(cost: Cost, limits: Limits) -> None:
    """Refuse before running: the message names the limit and by how much the request is over it."""
    if cost.work > limits.max_work:
        raise BudgetExceeded(
            f"this explanation is estimated at {cost.work:,} token passes, {cost.work / limits.max_work:.1f}× "
            f"the server's limit of {limits.max_work:,} (explain_max_work); explain fewer tokens, use fewer "
            "steps or methods, or coarser occlusion units",
            param="methods",
            code="explain_max_work",
        )
    if cost.memory > limits.memory_bytes:
        raise BudgetExceeded(
            f"this explanation needs about {cost.memory / 2**20:,.0f} MiB of activations even in the smallest "
            f"chunks, {cost.memory / limits.memory_bytes:.1f}× the server's budget of "
            f"{limits.memory_bytes / 2**20:,.0f} MiB (explain_memory_mb); use a shorter prompt or answer",
            param="prompt",
            code="explain_memory_mb",
        )


def faithfulness_inputs(units: int, removed: list[int], rankings: int) -> int:
    """Distinct masked inputs of a faithfulness evaluation: the whole input, every unit deleted (shared by
    all rankings when some k removes every unit), and per ranking and distinct count below ``units`` one
    input without its top units and one with only them."""
    if units == 0 or rankings == 0:
        return 0
    distinct = set(removed)
    return 1 + (units in distinct) + 2 * len(distinct - {units}) * rankings


def faithfulness_cost(shape: Shape, dims: ModelDims, inputs: int) -> Cost:
    """Each masked input is one forward no longer than the whole sequence (no graph kept: no backward)."""
    return Cost(work=inputs * shape.seq_len, memory=dims.graph_bytes(1, shape.seq_len, shape.span_len, False) // 4)
