"""A warm model: weights, tokenizer and the one worker thread that every piece of model work runs on."""

from __future__ import annotations

import asyncio
import functools
import hashlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

T = TypeVar("T")


@dataclass
class LoadedModel:
    """Model + tokenizer, loaded once. Model work is serialised on ``run`` so requests never race on it."""

    name: str
    source: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    dtype: torch.dtype
    revision: str
    max_context: int
    _executor: ThreadPoolExecutor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"model-{self.name}")

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` on this model's worker thread, off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    @functools.cached_property
    def eos_ids(self) -> frozenset[int]:
        """Token ids that end generation (generation config and tokenizer together)."""
        ids: set[int] = set()
        eos = getattr(self.model.generation_config, "eos_token_id", None)
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, list):
            ids.update(int(i) for i in eos)
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        return frozenset(ids)

    @functools.cached_property
    def special_ids(self) -> frozenset[int]:
        return frozenset(int(i) for i in self.tokenizer.all_special_ids)

    @functools.cached_property
    def tokenizer_fingerprint(self) -> str:
        """Hash of the vocabulary and chat template: part of every cache key."""
        digest = hashlib.sha256()
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        digest.update(backend.to_str().encode() if backend is not None else repr(self.tokenizer).encode())
        digest.update((getattr(self.tokenizer, "chat_template", None) or "").encode())
        return digest.hexdigest()

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    @property
    def device_class(self) -> str:
        return self.device.type
