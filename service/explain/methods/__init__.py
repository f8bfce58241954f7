"""Attribution methods, one module each; importing this package registers them all."""

from service.explain.methods import (
    attention,
    attention_gradient,
    context_attribution,
    counterfactual,
    gradient,
    integrated_gradients,
    logit_lens,
    occlusion,
    rollout,
    shapley,
)
from service.explain.methods.base import Method, MethodOutput, get, names

__all__ = [
    "Method",
    "MethodOutput",
    "attention",
    "attention_gradient",
    "context_attribution",
    "counterfactual",
    "get",
    "gradient",
    "integrated_gradients",
    "logit_lens",
    "names",
    "occlusion",
    "rollout",
    "shapley",
]
