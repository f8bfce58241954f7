"""Turn a (name, source) pair from settings into a warm ``LoadedModel`` on the right device and dtype."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils.hub import cached_file

from service.models.calibrate import calibrate
from service.models.facts import facts_of
from service.models.loaded import LoadedModel
from service.models.sources import BUILTIN_ALIASES, convert_gguf_cached, weights_digest
from service.settings import Settings

log = logging.getLogger(__name__)

#: transformers builds models under a process-global "meta device" context, so two loads running at once in
#: different threads corrupt each other (seen as "Cannot copy out of meta tensor"); loads take turns.
_LOAD_LOCK = threading.Lock()

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(setting: str) -> torch.device:
    """``auto`` means CUDA when present, else CPU; an explicit CUDA request without CUDA fails loudly."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"GLASSBOX_DEVICE={setting} but CUDA is not available on this machine")
    return device


def pick_dtype(setting: str, device: torch.device) -> torch.dtype:
    if setting == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[setting]


def _resolve(source: str, settings: Settings) -> tuple[str, str | None]:
    """Return (path or hub id to load from, known revision)."""
    alias = BUILTIN_ALIASES.get(source)
    if alias is not None:
        converted = convert_gguf_cached(alias, settings.cache_dir)
        return str(converted.folder), converted.revision
    return source, None


def _local_folder(location: str) -> Path:
    """The folder the weights were read from: the path itself, or the hub cache snapshot of an id."""
    folder = Path(location)
    if folder.is_dir():
        return folder
    config = cached_file(location, "config.json", local_files_only=True)  # already downloaded by now
    if config is None:
        raise FileNotFoundError(f"no local snapshot of {location}")
    return Path(config).parent


def load_model(name: str, source: str, settings: Settings) -> LoadedModel:
    """Load weights and tokenizer, move to the device, freeze parameters, and warm up."""
    started = time.perf_counter()
    device = pick_device(settings.device)
    dtype = pick_dtype(settings.dtype, device)
    with _LOAD_LOCK:
        location, revision = _resolve(source, settings)
    offline = settings.offline or os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false")
    common = {"local_files_only": offline, "trust_remote_code": settings.trust_remote_code}
    with _LOAD_LOCK:
        tokenizer = AutoTokenizer.from_pretrained(location, **common)
        model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype, **common)
    model.to(device)  # type: ignore[arg-type]
    model.eval()
    model.requires_grad_(False)  # attributions need input gradients only
    if revision is None:
        revision = weights_digest(_local_folder(location))
    facts = facts_of(model)
    limit = facts.context or 2048  # from the text config (a composite's own config names none)
    lm = LoadedModel(
        name=name,
        source=source,
        model=model,
        tokenizer=tokenizer,
        device=device,
        dtype=dtype,
        revision=revision,
        max_context=settings.max_context or limit,
    )
    lm.facts = facts
    if settings.warmup:
        warm_up(lm)
    lm.speed = calibrate(model, device, max_context=lm.max_context)
    log.info(
        "model %s ready on %s (%s) in %.2f s; %.0f token passes/s with gradients, %.0f without, %.1f ms a decode step",
        name,
        device,
        str(dtype).removeprefix("torch."),
        time.perf_counter() - started,
        lm.speed.passes_per_s,
        lm.speed.forward_per_s,
        lm.speed.decode_step_s * 1000,
    )
    return lm


def warm_up(lm: LoadedModel) -> None:
    """One small forward pass so the first request doesn't pay for lazy initialisation."""
    ids = lm.tokenizer("Hello, warm-up.", add_special_tokens=True, return_tensors="pt").input_ids
    with torch.inference_mode():
        lm.model(input_ids=ids.to(lm.device))
