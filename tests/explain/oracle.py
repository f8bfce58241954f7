"""Reference computations for the tests: Captum on the same tokens, and plain re-runs of the model."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from captum.attr import InputXGradient, IntegratedGradients, Saliency

Forward = Callable[[torch.Tensor], torch.Tensor]


def eager_attentions(model: torch.nn.Module, ids: Sequence[int]) -> list[torch.Tensor]:
    """Per layer [H, T, T] from an eager forward with transformers' own ``output_attentions``."""
    model.set_attn_implementation("eager")  # type: ignore[operator]
    try:
        with torch.no_grad():
            out = model(input_ids=torch.tensor([list(ids)]), output_attentions=True)
    finally:
        model.set_attn_implementation("sdpa")  # type: ignore[operator]
    return [a[0] for a in out.attentions]


def embeds(model: torch.nn.Module, ids: Sequence[int]) -> torch.Tensor:
    with torch.no_grad():
        return model.get_input_embeddings()(torch.tensor([list(ids)])).detach()  # type: ignore[operator,no-any-return]


def _value(logits: torch.Tensor, token: int, function: str) -> torch.Tensor:
    if function == "logit":
        return logits[..., token]
    lp = torch.log_softmax(logits, -1)[..., token]
    return lp.exp() if function == "prob" else lp


def token_fn(
    model: torch.nn.Module, ids: Sequence[int], t: int, function: str = "logprob", foil: int | None = None
) -> Forward:
    """f(embeddings) = function of the token at position t (minus the foil's), per batch row."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        logits = model(inputs_embeds=x, use_cache=False).logits[:, t - 1]
        value = _value(logits, ids[t], function)
        return value - _value(logits, foil, function) if foil is not None else value

    return forward


def span_fn(model: torch.nn.Module, ids: Sequence[int], span: tuple[int, int], function: str = "logprob") -> Forward:
    def forward(x: torch.Tensor) -> torch.Tensor:
        logits = model(inputs_embeds=x, use_cache=False).logits
        total = sum(
            _value(logits[:, t - 1], ids[t], "logit" if function == "logit" else "logprob") for t in range(*span)
        )
        assert isinstance(total, torch.Tensor)
        return total.exp() if function == "prob" else total

    return forward


def saliency(fn: Forward, x: torch.Tensor) -> torch.Tensor:
    """Captum's |gradient|, reduced to the L2 norm over the embedding dimension: [T]."""
    return Saliency(fn).attribute(x, abs=True)[0].norm(dim=-1).detach()


def input_x_gradient(fn: Forward, x: torch.Tensor) -> torch.Tensor:
    return InputXGradient(fn).attribute(x)[0].sum(-1).detach()


def integrated_gradients(fn: Forward, x: torch.Tensor, baseline: torch.Tensor, n_steps: int, rule: str) -> torch.Tensor:
    return IntegratedGradients(fn).attribute(x, baselines=baseline, n_steps=n_steps, method=rule)[0].sum(-1).detach()


def value(fn: Forward, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float(fn(x)[0])
