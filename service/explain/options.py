"""Each method's options as the engine sees them (the use case translates the wire options once)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AttentionParams:
    layers: tuple[int, ...] | None = None
    heads: tuple[int, ...] | None = None
    reduce_heads: str = "mean"
    reduce_layers: str = "mean"


@dataclass(frozen=True)
class RolloutParams:
    residual: float = 0.5
    layers: tuple[int, ...] | None = None  # layer indices rolled through (negative from the end); all if None


@dataclass(frozen=True)
class IntegratedGradientsParams:
    n_steps: int = 16
    # `pad` and Gauss–Legendre by `make bench-ig` (SmolLM2-135M, 4 prompts, first token held, whole-answer
    # median completeness gap at 16 / 32 steps): pad 12% / 4%, mean 20% / 3%, zero 24% / 7%.
    baseline: str = "pad"
    rule: str = "gausslegendre"
    # The first position is every causal LM's attention sink: moving its embedding off the token manifold
    # makes f jump (6 nats within 1/1000 of the path on SmolLM2, make bench-ig), so it is held by default.
    keep_first: bool = True


@dataclass(frozen=True)
class OcclusionParams:
    mode: str = "delete"  # "delete" removes the unit's tokens, "replace" keeps the positions
    replace_with: str = "pad"  # replace mode: "pad" or "mean" embedding


@dataclass(frozen=True)
class LogitLensParams:
    top_k: int = 5


@dataclass(frozen=True)
class ShapleyParams:
    n_samples: int = 32
    masking: str = "delete"
    seed: int = 0
    exact: bool = True  # enumerate every coalition when that costs no more than sampling


@dataclass(frozen=True)
class ContextAttributionParams:
    mode: str = "lasso"  # or "leave_one_out"
    n_ablations: int = 32
    held_out: int = 8
    keep_probability: float = 0.5
    alpha: float = 0.01
    seed: int = 0
    citation_threshold: float = 0.25
    citation_relative: float = 0.5
    #: answer sentences as [start, end) positions (filled by the planner; scored for citations)
    sentences: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class CounterfactualParams:
    rank_by: str = "input_x_gradient"  # or "leave_one_out"
    max_runs: int = 8  # re-generations the search may spend (the reference generation included)
    max_units: int = 8  # the largest set tried
    compare_tokens: int | None = None  # the first k answer tokens decide "changed" (None: the whole answer)
