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


@dataclass(frozen=True)
class IntegratedGradientsParams:
    n_steps: int = 16
    # `pad` and Gauss–Legendre by `make bench-ig` (SmolLM2-135M, 3 prompts, 8 steps, whole-answer median
    # completeness gap): pad 125% / mean 154% / zero 216% with Gauss–Legendre, the trapezoid worse for each
    # (pad 200%, mean 238%, zero non-finite: it evaluates RMSNorm's gradient at the zero input).
    baseline: str = "pad"
    rule: str = "gausslegendre"


@dataclass(frozen=True)
class LogitLensParams:
    top_k: int = 5


@dataclass(frozen=True)
class ShapleyParams:
    n_samples: int = 32
    masking: str = "delete"
    seed: int = 0
    exact: bool = True  # enumerate every coalition when that costs no more than sampling
