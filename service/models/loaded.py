"""A warm model: weights, tokenizer and what the service knows about them. Its model work runs on the thread
of its scheduler (``service/serving/scheduler.py``)."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from service.errors import OutOfMemory
from service.models.calibrate import Speed
from service.models.facts import ModelFacts, facts_of

#: Substrings of allocator errors that torch raises as plain RuntimeError (CPU, MPS, older CUDA paths).
_OOM_MESSAGES = ("out of memory", "can't allocate memory", "cannot allocate memory", "failed to allocate")


def is_oom(exc: BaseException) -> bool:
    """Device or host out-of-memory, whichever way torch or Python reported it."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in _OOM_MESSAGES)


def as_oom_error(exc: BaseException, lm: LoadedModel) -> OutOfMemory:
    """The client-facing error for ``exc``, after giving cached device memory back for the next request."""
    if lm.device.type == "cuda":
        torch.cuda.empty_cache()
    where = "device" if lm.device.type != "cpu" and not isinstance(exc, MemoryError) else "host"
    return OutOfMemory(
        f"model {lm.name!r} ran out of {where} memory on this request; try a shorter prompt or fewer tokens",
        headers={"Retry-After": "1"},
    )


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
    #: Measured at load (the cost model's seconds); None only for models built by hand in tests.
    speed: Speed | None = None

    @functools.cached_property
    def facts(self) -> ModelFacts:
        """The architecture as the service uses it (computed at load by the loader)."""
        return facts_of(self.model)

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
