"""What one explanation computes, in token positions: the engine's whole input (no tokenizer, no text)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Function = Literal["logprob", "prob", "logit"]


@dataclass(frozen=True)
class Chunks:
    """How work is split to bound peak memory: all results are independent of these sizes."""

    targets: int = 8  # targets per batched backward pass
    steps: int = 8  # integrated-gradients steps per forward pass
    sequences: int = 8  # occluded sequences per forward pass
    ig_targets: int = 8  # targets per batched backward over a batch of integrated-gradients steps


@dataclass(frozen=True)
class Task:
    """A teacher-forced sequence (prompt + answer) and what to attribute in it.

    Positions index ``ids``. The target token at position ``t`` is predicted from position ``t - 1`` and
    its sources are positions ``0 .. t-1``.
    """

    ids: tuple[int, ...]
    prompt_len: int
    rows: tuple[int, ...]  # positions of the target tokens that get a row (tokens scope)
    span: tuple[int, int]  # positions [start, end) attributed together (sequence scope)
    scopes: frozenset[str]
    function: Function = "logprob"
    included: tuple[bool, ...] = ()  # per position: scored as a source (template/special excluded)
    units: tuple[tuple[int, ...], ...] = ()  # source units in positions; occlusion removes one at a time
    foils: tuple[int, ...] | None = None  # tokens-scope contrast: one alternative token id per row
    contrast_ids: tuple[int, ...] | None = None  # sequence-scope contrast: tokens that replace the span
    pad_id: int | None = None  # for the `pad` integrated-gradients baseline
    methods: dict[str, Any] = field(default_factory=dict)  # method name -> its options (pydantic model)
    chunks: Chunks = field(default_factory=Chunks)
    #: Recompute decoder layers in backward passes (gradient checkpointing): chosen by the planner when only
    #: that brings the estimated peak under the memory budget; results are the same.
    recompute: bool = False
    evaluate: Any = None  # faithfulness.FaithfulnessParams: re-score the answer with units deleted
    stability: Any = None  # stability.StabilityParams: re-explain under small perturbations

    def __post_init__(self) -> None:
        if not self.included:
            object.__setattr__(self, "included", (True,) * len(self.ids))
        if not 0 < self.prompt_len < len(self.ids):
            raise ValueError("the task needs a prompt and at least one answer token")
        if any(not self.prompt_len <= r < len(self.ids) for r in self.rows):
            raise ValueError("rows must be answer positions")
        if self.foils is not None and len(self.foils) != len(self.rows):
            raise ValueError("one foil per row")

    @property
    def seq_len(self) -> int:
        return len(self.ids)

    @property
    def answer_positions(self) -> range:
        return range(self.prompt_len, len(self.ids))

    @property
    def sequence_sources(self) -> int:
        """Sequence scope attributes to positions before the span."""
        return self.span[0]

    @property
    def contrast_sequence(self) -> tuple[int, ...] | None:
        if self.contrast_ids is None:
            return None
        return self.ids[: self.span[0]] + self.contrast_ids
