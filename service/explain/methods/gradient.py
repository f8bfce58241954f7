"""Saliency and input × gradient: reductions of the same gradients, so they share one set of passes."""

from __future__ import annotations

from typing import Any

from service.explain.context import Context
from service.explain.cost import Cost, ModelDims, Shape
from service.explain.methods.base import SIGN_MAGNITUDE, SIGN_SUPPORTS, Method, MethodOutput, register


def shared_gradient_cost(shape: Shape, dims: ModelDims, *, eager: bool) -> Cost:
    """Counted once however many gradient methods ask: one backward per row, one (or two) for the span."""
    work = 0
    if shape.tokens_scope:
        work += shape.rows * shape.seq_len
    if shape.sequence_scope:
        work += shape.seq_len + 2 * shape.contrast_seq_len * bool(shape.contrast_len)
    graph = dims.graph_bytes(1, shape.seq_len, shape.answer_len, eager)
    return Cost(work=work, memory=graph + dims.backward_bytes(1, 1, shape.seq_len, shape.answer_len, eager))


class _GradientMethod(Method):
    needs_gradients = True

    def cost(self, shape: Shape, dims: ModelDims, options: Any) -> Cost:
        return Cost()  # the shared passes are charged once by the planner


@register
class Saliency(_GradientMethod):
    """L2 norm over the embedding dimension of the gradient of the attributed function (unsigned)."""

    name = "saliency"
    sign = SIGN_MAGNITUDE

    def run(self, ctx: Context, options: Any) -> MethodOutput:
        rows = ctx.gradient_rows
        return MethodOutput(
            tokens=None if rows.saliency is None else rows.saliency.numpy(),
            sequence=None if rows.sequence_saliency is None else rows.sequence_saliency.numpy(),
            params={"layer": "input embeddings", "norm": "l2"},
        )


@register
class InputXGradient(_GradientMethod):
    """Gradient · embedding, summed over the embedding dimension (signed; first-order contribution)."""

    name = "input_x_gradient"
    sign = SIGN_SUPPORTS

    def run(self, ctx: Context, options: Any) -> MethodOutput:
        rows = ctx.gradient_rows
        return MethodOutput(
            tokens=None if rows.input_x_gradient is None else rows.input_x_gradient.numpy(),
            sequence=None if rows.sequence_input_x_gradient is None else rows.sequence_input_x_gradient.numpy(),
            params={"layer": "input embeddings"},
        )
