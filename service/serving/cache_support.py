"""What a loaded model carries from one decode step to the next, and whether its rows can share a batch.

Decided once per model, by a probe at load (three short forward passes, run from calibration), and read by
the batcher when it is built, never per request:

- ``decode_mode``: ``cache`` (the output's ``.cache`` is a transformers :class:`Cache`, fed back as
  ``cache=``), ``state`` (RWKV: the output's ``.state`` is fed back as ``state=``) or ``recompute`` (no
  usable cache, as RecurrentGemma's, which keeps its state inside its modules: each step re-runs the whole
  sequence without a cache; correct, but each step costs a forward over the whole sequence);
- batching: only a :class:`DynamicCache` whose every layer is exactly a :class:`DynamicLayer` or a
  :class:`DynamicSlidingWindowLayer` is merged into the shared batch (:func:`is_mergeable`); anything else
  (subclasses included: MiniMax's cache, linear-attention layers of state-space and hybrid models) decodes
  one sequence at a time, with a short reason label for ``/models`` and the metrics;
- a generation refusal, when not even a plain forward pass works on a short prompt.

:class:`SerialRow` is the one-sequence decode of every mode; the batcher and calibration both use it.
"""

from __future__ import annotations

import inspect
import logging
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Literal

import torch
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import Cache, DynamicLayer, DynamicSlidingWindowLayer

log = logging.getLogger(__name__)

DecodeMode = Literal["cache", "state", "recompute"]

#: Cache layer classes the batch knows how to merge (exact types: a subclass may store anything).
MERGEABLE_LAYERS: tuple[type, ...] = (DynamicLayer, DynamicSlidingWindowLayer)


@dataclass(frozen=True)
class CacheSupport:
    """How one model decodes. ``reason`` is a short label (metrics, logs); ``detail`` says it in words."""

    decode_mode: DecodeMode
    batching: bool
    reason: str | None = None
    detail: str | None = None
    refusal: str | None = None


def unmergeable_reason(cache: object) -> tuple[str, str] | None:
    """Why ``cache`` cannot join the shared batch (label, words), or None when it can.

    Strict on purpose: exact classes only, every layer holding 4-d key and value tensors of one row, and
    sliding layers that do not keep past states (``record_past``)."""
    if type(cache) is not DynamicCache:
        name = type(cache).__name__
        return "cache_class", f"cache class {name} is not a plain DynamicCache"
    layers = list(getattr(cache, "layers", None) or [])
    if not layers:
        return "empty_cache", "the cache has no layers"
    for layer in layers:
        if type(layer) not in MERGEABLE_LAYERS:
            name = type(layer).__name__
            return "cache_layer", f"cache layer {name} (not a key/value attention layer) cannot be merged"
        keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
        if not isinstance(keys, torch.Tensor) or not isinstance(values, torch.Tensor) or keys.ndim != 4:
            return "cache_layer", "a cache layer holds no key/value tensors"
        if keys.shape[0] != 1 or keys.shape[:3] != values.shape[:3]:
            return "cache_layer", "a cache layer's keys and values do not hold one row"
        if getattr(layer, "record_past", False):
            return "cache_layer", "a sliding-window layer records past states"
    return None


def is_mergeable(cache: object) -> bool:
    """True for a one-row dynamic cache of plain full-attention and sliding-window layers."""
    return unmergeable_reason(cache) is None


def _accepts(model: PreTrainedModel, name: str) -> bool:
    parameters = inspect.signature(model.forward).parameters
    return name in parameters


def carried_of(mode: DecodeMode, output: Any) -> Any:
    """What the next step needs from this step's output: its cache, its state, or nothing."""
    if mode == "cache":
        return output.cache
    if mode == "state":
        return output.state
    return None


class SerialRow:
    """One sequence decoding alone, with what its model carries between steps (cache, state or nothing).

    ``length`` counts the sequence's tokens so far (the next token's position)."""

    def __init__(self, mode: DecodeMode, output: Any, prompt_ids: list[int], device: torch.device) -> None:
        self.mode = mode
        self.device = device
        self.carried = carried_of(mode, output)
        self.length = len(prompt_ids)
        self._ids = list(prompt_ids) if mode == "recompute" else []

    def step_inputs(self, last_id: int) -> dict[str, Any]:
        """Model kwargs for the step that feeds ``last_id`` (the sequence grows by it)."""
        self.length += 1
        if self.mode == "recompute":
            self._ids.append(last_id)
            return {"input_ids": torch.tensor([self._ids], device=self.device), "use_cache": False}
        token = torch.tensor([[last_id]], device=self.device)
        if self.mode == "state":
            return {"input_ids": token, "state": self.carried, "use_cache": True}
        # Alone, no padding: no attention mask, positions from the cache, as transformers decodes one sequence
        # (Mamba's mixer multiplies its input by a mask it expects to be the step's own, not the sequence's).
        return {"input_ids": token, "cache": self.carried, "use_cache": True}

    def after(self, output: Any) -> None:
        """Take what the step returned (a cache updated in place is returned again; a state may be new)."""
        carried = carried_of(self.mode, output)
        if carried is not None:
            self.carried = carried


def prefill_inputs(mode: DecodeMode, ids: torch.Tensor) -> dict[str, Any]:
    """Model kwargs for a solo prefill: with the model's cache or state, or (recompute) without any."""
    return {"input_ids": ids, "use_cache": mode != "recompute"}


def _probe_ids(model: PreTrainedModel, device: torch.device, n: int) -> torch.Tensor:
    vocab = int(getattr(model.config.get_text_config(), "vocab_size", 0) or 2)
    return (torch.arange(n, device=device).unsqueeze(0) * 7 + 3) % vocab


def _device_of(model: PreTrainedModel) -> torch.device:
    return next(model.parameters()).device


def _merge_trial(model: PreTrainedModel, device: torch.device) -> tuple[str, str] | None:
    """Merge two real caches of different lengths into one batch, step once, and compare each row with the
    same step decoded alone. A class may look mergeable and still fail (or differ); this finds it at load."""
    from service.serving.kv_batch import KVBatch  # kv_batch imports this module

    prompts = [_probe_ids(model, device, 5), _probe_ids(model, device, 3)]
    solo: list[torch.Tensor] = []
    batch = KVBatch(device)
    for ids in prompts:
        out = model(**prefill_inputs("cache", ids))
        reason = unmergeable_reason(out.cache)
        if reason is not None:
            return reason
        alone = SerialRow("cache", out, ids[0].tolist(), device)
        solo.append(model(**alone.step_inputs(int(ids[0, -1]))).logits[0, -1].float())
        out = model(**prefill_inputs("cache", ids))  # a fresh cache: the solo step extended the first
        batch.add(out.cache, ids.shape[1])
    merged = model(**batch.step_inputs([int(ids[0, -1]) for ids in prompts])).logits[:, -1].float()
    # Padding changes the order of floating-point sums, not the result: allow rounding, never a wrong key.
    tolerance = 1e-2 if model.dtype == torch.float32 else 5e-2
    for i, reference in enumerate(solo):
        scale = float(reference.abs().max()) or 1.0
        if float((merged[i] - reference).abs().max()) > tolerance * scale:
            return "merge_mismatch", "a merged decode step differs from the same step decoded alone"
    return None


def probe(model: PreTrainedModel) -> CacheSupport:
    """Find the model's decode mode and whether it batches (a few forward passes on a short prompt)."""
    device = _device_of(model)
    ids = _probe_ids(model, device, 3)
    with torch.inference_mode():
        try:
            out = model(**prefill_inputs("cache", ids))
        except Exception as exc:
            log.info("model %s: a forward pass with a cache failed (%r); decoding by recompute", type(model), exc)
            out = None
        if out is not None and isinstance(getattr(out, "cache", None), Cache):
            mode: DecodeMode = "cache"
        elif out is not None and getattr(out, "state", None) is not None:
            mode = "state"
        else:
            mode = "recompute"
        try:
            out = model(**prefill_inputs(mode, ids))
            row = SerialRow(mode, out, ids[0].tolist(), device)
            model(**row.step_inputs(int(ids[0, -1])))
        except Exception as exc:
            words = f"{type(exc).__name__}: {exc}"
            return CacheSupport("recompute", False, "no_forward", words, f"the model cannot generate ({words})")
        if mode == "state":
            return CacheSupport(mode, False, "recurrent_state", "a recurrent state (RWKV) decodes one row at a time")
        if mode == "recompute":
            return CacheSupport(
                mode, False, "no_cache", "the model returns no usable cache: each step re-runs the whole sequence"
            )
        reason = unmergeable_reason(out.cache)
        if reason is None and not _accepts(model, "attention_mask"):
            reason = "no_padding", "the model takes no attention mask, so rows of different lengths cannot share"
        if reason is None:
            try:
                reason = _merge_trial(model, device)
            except Exception as exc:
                reason = "merge_failed", f"merging two caches failed ({type(exc).__name__}: {exc})"
    if reason is not None:
        return CacheSupport(mode, False, reason[0], reason[1])
    return CacheSupport(mode, True)


_SUPPORT: weakref.WeakKeyDictionary[PreTrainedModel, CacheSupport] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def cache_support(model: PreTrainedModel) -> CacheSupport:
    """The model's :class:`CacheSupport`, probed on first use (calibration at load does it) and kept."""
    with _LOCK:
        found = _SUPPORT.get(model)
        if found is None:
            found = _SUPPORT[model] = probe(model)
            if not found.batching:
                log.info("model %s: decodes one sequence at a time (%s)", type(model).__name__, found.detail)
        return found


def batching_support(model: PreTrainedModel) -> tuple[bool, str | None]:
    """Whether concurrent generations of ``model`` share a batch, and if not, why (in words)."""
    support = cache_support(model)
    return support.batching, support.detail


def generation_refusal(model: PreTrainedModel) -> str | None:
    """Why ``model`` cannot generate at all (a 422 for generation requests), or None."""
    return cache_support(model).refusal


def decode_mode(model: PreTrainedModel) -> DecodeMode:
    return cache_support(model).decode_mode
