"""Why integrated gradients holds the first token: f along the path, densely, with and without it moving.

On the default model (fp32) and one plain prompt, for each baseline: f(α) = log p(answer | path point) at
``--nodes`` evenly spaced α in [0, 1] (the prompt's positions moving from the baseline to the input, the
answer fixed), its derivative by autograd (Σ ∇f · (x − b), what IG integrates) next to central finite
differences of f, the trapezoid over those nodes against f(1) − f(0), and the steepest point. Run once with
the first position held (the service's default, ``keep_first``) and once with it moving. A rough integrand
shows as a large max |f′| where autograd and finite differences still agree (not a gradient bug); a smooth
one as a trapezoid gap near 0.

    PYTHONPATH=. .venv/bin/python bench/ig_path_profile.py [--prompt ...] [--answer ...] [--nodes 257]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np
import torch

from service.explain.baselines import baseline_vector
from service.models import loader
from service.models.calibrate import Speed
from service.settings import Settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt", default="The capital of France is")
    parser.add_argument("--answer", default=" Paris")
    parser.add_argument("--nodes", type=int, default=257)
    args = parser.parse_args()
    settings = Settings(device="cpu", dtype="float32", warmup=False)
    name, source = settings.model_specs()[0]
    loader.calibrate = lambda *_, **__: Speed(1e9, 1e9, 0.0, 0.0, 128)  # type: ignore[attr-defined]
    lm = loader.load_model(name, source, settings)
    model, tokenizer = lm.model, lm.tokenizer
    prompt = tokenizer(args.prompt, add_special_tokens=False).input_ids
    answer = tokenizer(args.answer, add_special_tokens=False).input_ids
    ids = torch.tensor([prompt + answer])
    x = model.get_input_embeddings()(ids)[0].detach()
    target = torch.tensor(answer).view(1, -1, 1)
    span = slice(len(prompt) - 1, len(prompt) - 1 + len(answer))

    def f(points: torch.Tensor) -> torch.Tensor:
        logprobs = model(inputs_embeds=points).logits[:, span].float().log_softmax(-1)
        return logprobs.gather(-1, target.expand(points.shape[0], -1, 1)).squeeze(-1).sum(-1)

    alphas = torch.linspace(0, 1, args.nodes)
    print(f"prompt {args.prompt!r} ({len(prompt)} tokens), answer {args.answer!r}; {args.nodes} nodes\n")
    print("| baseline | first token | f(x) − f(b) | trapezoid gap | max abs f′ (at α) | autograd vs finite diff |")
    print("|---|---|---|---|---|---|")
    for baseline in ("zero", "pad", "mean"):
        b = baseline_vector(model, baseline, lm.tokenizer.pad_token_id or 0).float()
        for held in (True, False):
            mask = torch.zeros(len(ids[0]), 1)
            mask[int(held) : len(prompt)] = 1
            delta = (x - b) * mask
            start = x - delta
            fa, slope = profile(f, start, delta, alphas)
            change = fa[-1] - fa[0]
            gap = abs(np.trapezoid(slope, alphas.numpy()) - change) / max(abs(change), 1e-3)
            ok = np.isfinite(slope)
            steep = float(alphas[int(np.argmax(np.where(ok, np.abs(slope), -1)))])
            # zoom on the steepest point: 129 nodes over ±0.005, where finite differences resolve it
            zoom = torch.linspace(max(0.0, steep - 0.005), min(1.0, steep + 0.005), 129)
            fz, sz = profile(f, start, delta, zoom)
            finite = np.gradient(fz, zoom.numpy())
            good = np.isfinite(sz)
            r = np.corrcoef(finite[good], sz[good])[0, 1]
            print(
                f"| `{baseline}` | {'held' if held else 'moving'} | {change:.2f} | {gap:.1%} | "
                f"{np.abs(slope[ok]).max():.0f} ({steep:.3f}) | Pearson r {r:.3f} on ±0.005 around it |"
            )


def profile(
    f: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor, delta: torch.Tensor, alphas: torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """f and its autograd derivative along α (Σ ∇f · delta), 32 path points a forward."""
    values, slopes = [], []
    for i in range(0, len(alphas), 32):
        points = (start + alphas[i : i + 32].view(-1, 1, 1) * delta).requires_grad_(True)
        out = f(points)
        (grad,) = torch.autograd.grad(out.sum(), points)
        values.append(out.detach())
        slopes.append((grad * delta).sum((-1, -2)))
    return torch.cat(values).double().numpy(), torch.cat(slopes).double().numpy()


if __name__ == "__main__":
    with torch.inference_mode(False):
        main()
