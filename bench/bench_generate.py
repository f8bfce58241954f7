"""Issue 2 figures: cold and warm start of `glassbox serve`, and a 64-token greedy generation through
Glassbox's decode loop next to plain `model.generate` on the same model, in one run.

    .venv/bin/python bench/bench_generate.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

from schemas.common import ChatMessage
from service.engine.prompt import build_prompt
from service.engine.sampling import SamplingParams
from service.models.loader import load_model
from service.settings import Settings
from tests.support.run import generate

PROMPT = [ChatMessage(role="user", content="Write a short story about a lighthouse keeper and a storm.")]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def time_to_ready(cache_dir: Path) -> float:
    port = free_port()
    env = {**os.environ, "GLASSBOX_CACHE_DIR": str(cache_dir), "GLASSBOX_PORT": str(port)}
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "serve", "--log-level", "warning"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    return time.perf_counter() - started
            except httpx.TransportError:
                pass
            if proc.poll() is not None:
                raise RuntimeError("server exited before becoming ready")
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-startup", action="store_true")
    args = parser.parse_args()
    if not args.skip_startup:
        with tempfile.TemporaryDirectory() as tmp:
            cold = time_to_ready(Path(tmp))
            warm = time_to_ready(Path(tmp))
        print(f"start to /readyz 200: cold (converts GGUF) {cold:.1f} s, warm (cached safetensors) {warm:.1f} s")

    lm = load_model("smollm2-135m-instruct", "smollm2-135m-instruct", Settings(device="cpu"))
    prompt = build_prompt(lm.tokenizer, messages=PROMPT)
    ids = torch.tensor([prompt.ids])
    ours, plain = [], []
    n_ours = n_plain = 0
    for _ in range(args.repeats):
        started = time.perf_counter()
        out = generate(lm, prompt, SamplingParams(max_new_tokens=64, top_logprobs=5))
        ours.append(time.perf_counter() - started)
        n_ours = len(out.tokens)
        started = time.perf_counter()
        with torch.inference_mode():
            ref = lm.model.generate(ids, max_new_tokens=64, do_sample=False)
        plain.append(time.perf_counter() - started)
        n_plain = ref.shape[1] - ids.shape[1]
    a, b = statistics.median(ours), statistics.median(plain)
    print(f"prompt {len(prompt)} tokens, greedy, median of {args.repeats}")
    print(f"{'engine':<42}{'tokens':>8}{'seconds':>10}{'tokens/s':>10}")
    print(f"{'glassbox decode loop (+logprobs, top 5)':<42}{n_ours:>8}{a:>10.2f}{n_ours / a:>10.1f}")
    print(f"{'transformers model.generate':<42}{n_plain:>8}{b:>10.2f}{n_plain / b:>10.1f}")
    print(f"ratio (glassbox time / generate time, per token): {(a / n_ours) / (b / n_plain):.2f}")


if __name__ == "__main__":
    main()
