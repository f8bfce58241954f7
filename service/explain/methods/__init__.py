"""Attribution methods, one module each; importing this package registers them all."""

from service.explain.methods import attention, gradient, integrated_gradients, occlusion, rollout
from service.explain.methods.base import Method, MethodOutput, get, names

__all__ = [
    "Method",
    "MethodOutput",
    "attention",
    "get",
    "gradient",
    "integrated_gradients",
    "names",
    "occlusion",
    "rollout",
]
