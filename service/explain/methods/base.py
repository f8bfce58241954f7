"""The method contract and the registry: adding a method means adding one module that registers itself."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import numpy as np

from service.errors import InvalidRequest
from service.explain.attention_rows import AttentionMode, rows_supported
from service.explain.context import Context
from service.explain.cost import Cost, ModelDims, Shape
from service.explain.task import Task
from service.models.facts import ModelFacts


@dataclass
class MethodOutput:
    """Scores over positions (or over units when ``over_units``), with named leading axes."""

    tokens: np.ndarray | None  # [*lead, rows, positions|units]
    sequence: np.ndarray | None  # [*lead, sequence positions|units]
    lead_dims: tuple[str, ...] = ()
    over_units: bool = False
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Sign:
    """How to read a method's scores: signed (support vs. against) or magnitudes, and which way is support."""

    signed: bool
    meaning: str


SIGN_SUPPORTS = Sign(True, "positive supports the answer (raises the attributed function), negative weighs against it")
SIGN_MAGNITUDE = Sign(False, "magnitude only: larger means more influence, in no stated direction")
SIGN_RELEVANCE = Sign(
    False,
    "magnitude only (non-negative relevance); with a sequence-scope contrast, the difference: positive favours "
    "the answer over the contrast",
)
SIGN_NOT_SOURCES = Sign(False, "not source scores: per-layer ranks and log-probabilities of the target")


class Method(ABC):
    name: ClassVar[str]
    #: Every method states it (a test checks the registry); the response carries it as `signed`/`sign_meaning`.
    sign: ClassVar[Sign]
    #: Needs attention weights from the shared forward (eager attention).
    needs_attention: ClassVar[bool] = False
    #: Reads attention only at the explained targets' query rows: with every such method, the shared forward runs
    #: on the model's memory-efficient kernel and recomputes just those rows (``attention_rows``).
    attention_rows_only: ClassVar[bool] = False
    #: Needs gradients of the shared forward (saliency and input × gradient share them).
    needs_gradients: ClassVar[bool] = False
    #: Combines attention through every layer (rollout, gradient-weighted attention): on a hybrid, whose
    #: other layers mix tokens without attention weights, the result would silently leave them out.
    needs_attention_at_every_layer: ClassVar[bool] = False

    def refusal(self, facts: ModelFacts) -> str | None:
        """Why this method cannot run on the model described by ``facts`` (None: it can). The planner turns
        it into a 422 before any model time is spent; ``/models`` lists it."""
        if (self.needs_attention or self.needs_attention_at_every_layer) and facts.attention is None:
            return f"{facts.attention_reason}: {self.name} is not available"
        if self.needs_attention_at_every_layer and facts.hybrid:
            others = ", ".join(f"{i} ({facts.layer_kinds[i]})" for i in facts.other_layers)
            return (
                f"{facts.model_type} has attention weights only at layers {list(facts.attention_layers)}; layers "
                f"{others} mix tokens without them, and {self.name} combines attention through every layer, "
                "so it would leave them out: not available on this hybrid (use attention with its layers, or "
                "a gradient or perturbation method)"
            )
        return None

    def validate(self, facts: ModelFacts, options: Any) -> None:  # noqa: B027 (an optional hook)
        """Check options against the model (e.g. layer indices); raise InvalidRequest."""

    def units(self, task: Task) -> int:
        """Units of work this method runs itself (beyond the shared forward and gradients), for progress."""
        return 0

    @abstractmethod
    def cost(self, shape: Shape, dims: ModelDims, options: Any) -> Cost:
        """Work and memory beyond the shared forward, before anything runs."""

    @abstractmethod
    def run(self, ctx: Context, options: Any) -> MethodOutput: ...


_REGISTRY: dict[str, Method] = {}
M = TypeVar("M", bound=type[Method])


def register(cls: M) -> M:
    _REGISTRY[cls.name] = cls()
    return cls


def names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def get(name: str) -> Method:
    try:
        return _REGISTRY[name]
    except KeyError:
        valid = ", ".join(sorted(_REGISTRY))
        raise InvalidRequest(f"unknown method {name!r}; valid methods: {valid}", param="methods") from None


def attention_mode(methods: Sequence[Method], facts: ModelFacts) -> AttentionMode:
    """How the shared forward of ``methods`` gets attention: not at all, only the explained rows (when every
    method that needs attention reads only those and the family allows it), or every full matrix (eager)."""
    needing = [m for m in methods if m.needs_attention]
    if not needing:
        return "none"
    return "rows" if all(m.attention_rows_only for m in needing) and rows_supported(facts) else "full"
