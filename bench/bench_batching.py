"""Issue 11 figures: 8 concurrent greedy generations on Mistral (sliding-window cache, its default 4,096
window) against Llama on identical weights, through Glassbox's batcher, in one run; and Mistral decoded one
sequence at a time (how it was served before its sliding-window layers merged) for comparison.

Mistral and Llama share their architecture, so one random state dict serves both; the windows are never
reached, and both must give the same tokens. Figures are ratios to Llama's time in the same run.

    PYTHONPATH=. .venv/bin/python bench/bench_batching.py [--hidden 256 --layers 4 --new-tokens 32]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from unittest import mock

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from service.engine.sampling import SamplingParams
from service.models.loaded import LoadedModel
from service.serving import batcher as batcher_module
from service.serving.cache_support import CacheSupport, cache_support
from service.serving.scheduler import Scheduler
from tests.support.tiny_model import build_tokenizer

PROMPTS = [[1, *range(10 + i, 20 + 2 * i)] for i in range(8)]  # 10 to 17 tokens


def models(hidden: int, layers: int) -> tuple[PreTrainedModel, PreTrainedModel]:
    tokenizer = build_tokenizer()
    common = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden,
        "intermediate_size": hidden * 4,
        "num_hidden_layers": layers,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "max_position_embeddings": 4096,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.bos_token_id,
    }
    torch.manual_seed(0)
    llama = AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", **common)).eval()
    mistral = AutoModelForCausalLM.from_config(AutoConfig.for_model("mistral", **common)).eval()
    mistral.load_state_dict(llama.state_dict())
    assert mistral.config.sliding_window == 4096
    return llama, mistral


def timed(lm: LoadedModel, new_tokens: int) -> tuple[float, list[list[int]]]:
    """Seconds for 8 concurrent generations (no end-of-sequence stop: each makes ``new_tokens``)."""

    async def go() -> tuple[float, list[list[int]]]:
        scheduler = Scheduler(lm, max_batch_size=8)
        params = SamplingParams(max_new_tokens=new_tokens)
        started = time.perf_counter()
        outs = await asyncio.gather(*(scheduler.batcher.generate(p, params) for p in PROMPTS))
        elapsed = time.perf_counter() - started
        await scheduler.close()
        return elapsed, [out.ids for out, _ in outs]

    return asyncio.run(go())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    llama, mistral = models(args.hidden, args.layers)
    tokenizer = build_tokenizer()
    lms = {
        name: LoadedModel(name, name, model, tokenizer, torch.device("cpu"), torch.float32, "bench", 4096)
        for name, model in (("llama", llama), ("mistral", mistral))
    }
    for lm in lms.values():
        lm.__dict__["eos_ids"] = frozenset()  # every row makes exactly --new-tokens tokens
        print(f"{lm.name}: batching {cache_support(lm.model).batching}")
    times: dict[str, list[float]] = {"llama": [], "mistral": [], "mistral serial": []}
    serial = CacheSupport("cache", False, "bench", "forced serial for comparison")
    ids: dict[str, list[list[int]]] = {}
    for _ in range(args.repeats):
        for name in ("llama", "mistral"):
            elapsed, ids[name] = timed(lms[name], args.new_tokens)
            times[name].append(elapsed)
        with mock.patch.object(batcher_module, "cache_support", lambda model: serial):
            elapsed, ids["mistral serial"] = timed(lms["mistral"], args.new_tokens)
        times["mistral serial"].append(elapsed)
    assert ids["llama"] == ids["mistral"] == ids["mistral serial"], "identical weights must give identical tokens"
    base = statistics.median(times["llama"])
    print(f"8 concurrent greedy requests x {args.new_tokens} tokens, hidden {args.hidden}, {args.layers} layers")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:15s} {median:7.3f} s  ({median / base:.2f}x llama)")


if __name__ == "__main__":
    main()
