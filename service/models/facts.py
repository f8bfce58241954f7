"""What the service knows about a model's architecture, found once at load and read everywhere else.

``/models``, the planner (method refusals), the cost model, the loader (context limit) and attention capture
read these facts instead of each reading config attributes that not every family has (a state-space model
has no ``num_attention_heads``; a composite Gemma 3 config keeps its text fields in ``text_config``).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Literal

import torch
from transformers import PretrainedConfig, PreTrainedModel

#: Layer kinds whose mixer is softmax attention (attention weights exist).
ATTENTION_KINDS = frozenset({"attention", "sliding_attention", "chunked_attention"})

#: Families whose every layer is a recurrent or state-space mixer, whatever ``layer_types`` says.
_RECURRENT_TYPES = {"mamba": "mamba", "mamba2": "mamba", "falcon_mamba": "mamba", "rwkv": "rwkv"}

#: ``layer_types`` values, in our names.
_LAYER_TYPES = {
    "full_attention": "attention",
    "attention": "attention",
    "global": "attention",
    "local": "sliding_attention",
}

#: Families without transformers' output-recording declaration whose ``output_attentions=True`` returns one
#: [B, H, T, T] tensor per decoder layer (checked against the zoo in tests/families).
FLAG_FAMILIES = frozenset({"bloom", "falcon", "gpt_neo", "mpt"})

#: Names of the norm before the output head, on the base model.
FINAL_NORMS = ("norm", "ln_f", "final_layernorm", "norm_f", "final_layer_norm", "final_norm", "ln_out")

_CONTEXT_FIELDS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "context_length", "n_ctx")


@dataclass(frozen=True)
class AttentionCapture:
    """Where attention weights come from: ``record`` = forward hooks on the modules transformers declares in
    ``_can_record_outputs["attentions"]`` (``modules``, one per captured layer, weights at ``indices``);
    ``flag`` = the ``output_attentions=True`` argument, one tensor per decoder layer."""

    how: Literal["record", "flag"]
    layers: tuple[int, ...]  # decoder-layer indices whose attention weights are captured
    modules: tuple[str, ...] = ()  # qualified module names ("record")
    indices: tuple[int, ...] = ()  # index of the weights in each module's output tuple ("record")

    def describe(self) -> str:
        if self.how == "flag":
            return "output_attentions=True"
        return "hooks on the modules in _can_record_outputs"


@dataclass(frozen=True)
class ModelFacts:
    """A model's architecture, as the service uses it."""

    model_class: str
    model_type: str  # of the text config
    layers: int  # decoder layers
    layer_kinds: tuple[str, ...]  # per decoder layer: attention, sliding_attention, mamba, recurrent, rwkv, ...
    heads: int | None  # attention heads; None when no layer is attention
    kv_heads: int | None
    hidden: int
    intermediate: int
    vocab: int
    context: int | None  # from the text config; None when it names none
    embedding_scale: float  # embedding module output / raw weight row (√d for Gemma)
    attention: AttentionCapture | None
    attention_reason: str | None  # why ``attention`` is None
    #: Attention weights can be recomputed for a few query rows beside the SDPA kernel (no T×T matrix): the
    #: attention modules go through transformers' attention interface and the family supports SDPA (Gemma 2's
    #: logit soft-capping does not).
    attention_rows: bool
    final_norm: str | None  # attribute of the base model applied before the output head
    has_output_head: bool

    @property
    def attention_layers(self) -> tuple[int, ...]:
        return self.attention.layers if self.attention is not None else ()

    @property
    def other_layers(self) -> tuple[int, ...]:
        """Decoder layers without captured attention weights."""
        captured = set(self.attention_layers)
        return tuple(i for i in range(self.layers) if i not in captured)

    @property
    def hybrid(self) -> bool:
        """Attention weights at some decoder layers only (the others are other mixers)."""
        return bool(self.attention_layers) and bool(self.other_layers)

    def other_kinds(self) -> str:
        kinds = sorted({self.layer_kinds[i] for i in self.other_layers})
        return ", ".join(kinds)


def text_config(config: PretrainedConfig) -> PretrainedConfig:
    """The decoder's config (``text_config`` of a composite config such as Gemma 3's)."""
    get = getattr(config, "get_text_config", None)
    text = get() if callable(get) else config
    return text if isinstance(text, PretrainedConfig) else config


def _int(config: PretrainedConfig, *names: str) -> int | None:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def layer_kinds(text: PretrainedConfig, count: int) -> tuple[str, ...]:
    """Per decoder layer, what mixes tokens there, from whichever field the family uses."""
    model_type = str(getattr(text, "model_type", ""))
    if model_type in _RECURRENT_TYPES:
        return (_RECURRENT_TYPES[model_type],) * count
    blocks = getattr(text, "block_types", None)  # recurrent_gemma: a pattern repeated over the layers
    if isinstance(blocks, (list, tuple)) and blocks:
        windowed = getattr(text, "attention_window_size", None) is not None
        names = {"recurrent": "recurrent", "attention": "sliding_attention" if windowed else "attention"}
        return tuple(names.get(str(blocks[i % len(blocks)]), str(blocks[i % len(blocks)])) for i in range(count))
    period = getattr(text, "attn_layer_period", None)  # jamba
    if isinstance(period, int) and period > 0:
        offset = int(getattr(text, "attn_layer_offset", 0) or 0)
        return tuple("attention" if i % period == offset else "mamba" for i in range(count))
    neo = getattr(text, "attention_layers", None)  # gpt_neo: "global" / "local" per layer
    if model_type == "gpt_neo" and isinstance(neo, (list, tuple)) and len(neo) == count:
        return tuple(_LAYER_TYPES.get(str(k), str(k)) for k in neo)
    types = getattr(text, "layer_types", None)
    if isinstance(types, (list, tuple)) and len(types) == count:
        return tuple(_LAYER_TYPES.get(str(k), str(k)) for k in types)
    sliding = getattr(text, "sliding_window", None) and getattr(text, "use_sliding_window", True)
    return ("sliding_attention" if sliding else "attention",) * count


def decoder_layers(model: torch.nn.Module, count: int) -> list[torch.nn.Module]:
    """The decoder's stack: the last module list as long as the layer count (a composite's vision tower comes
    first), else the longest."""
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) > 0]
    exact = [m for m in lists if len(m) == count]
    chosen = exact[-1] if exact else max(lists, key=len, default=None)
    return list(chosen) if chosen is not None else []


def _record_spec(model: torch.nn.Module) -> list[tuple[type, int]]:
    """(module class, index of the weights in its output) from ``_can_record_outputs["attentions"]``."""
    for module in model.modules():
        spec = (getattr(module, "_can_record_outputs", None) or {}).get("attentions")
        if spec is None:
            continue
        out = []
        for entry in spec if isinstance(spec, (list, tuple)) else [spec]:
            target = getattr(entry, "target_class", entry)
            index = int(getattr(entry, "index", 1)) if hasattr(entry, "target_class") else 1
            if isinstance(target, type):
                out.append((target, index))
        return out
    return []


def _capture(
    model: PreTrainedModel, text: PretrainedConfig, kinds: tuple[str, ...]
) -> tuple[AttentionCapture | None, str | None]:
    model_type = str(getattr(text, "model_type", "?"))
    wanted = [i for i, k in enumerate(kinds) if k in ATTENTION_KINDS]
    if not wanted:
        return None, f"{model_type} has no attention layers (its layers are {', '.join(sorted(set(kinds)))})"
    spec = _record_spec(model)
    if spec:
        names = {id(m): n for n, m in model.named_modules()}
        stack = decoder_layers(model, len(kinds))
        layers, modules, indices = [], [], []
        for i in wanted:
            if i >= len(stack):
                continue
            found = next(((m, index) for m in stack[i].modules() for cls, index in spec if isinstance(m, cls)), None)
            if found is not None:
                layers.append(i)
                modules.append(names[id(found[0])])
                indices.append(found[1])
        if layers:
            return AttentionCapture("record", tuple(layers), tuple(modules), tuple(indices)), None
        return None, f"{model_type}: none of the modules transformers records attention from is in a decoder layer"
    if model_type in FLAG_FAMILIES and len(wanted) == len(kinds):
        return AttentionCapture("flag", tuple(wanted)), None
    return None, f"transformers does not say which of {model_type}'s modules produce attention weights"


def _embedding_scale(model: PreTrainedModel) -> float:
    """Measured: the embedding module's output over the raw weight rows for a few tokens (least squares)."""
    embeddings = model.get_input_embeddings()
    weight = getattr(embeddings, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.shape[0] < 2:
        return 1.0
    ids = torch.arange(1, min(9, weight.shape[0]), device=weight.device)
    with torch.no_grad():
        out = embeddings(ids).double()
        rows = weight[ids].double()
        denominator = float((rows * rows).sum())
    return float((out * rows).sum()) / denominator if denominator > 0 else 1.0


def _norm_owners(model: PreTrainedModel) -> list[Any]:
    # composite models keep the decoder in ``language_model``, OPT in ``decoder``
    base: Any = model.base_model
    return [base, getattr(base, "language_model", None), getattr(base, "decoder", None)]


def _final_norm(model: PreTrainedModel) -> str | None:
    for owner in _norm_owners(model):
        for name in FINAL_NORMS:
            if isinstance(getattr(owner, name, None), torch.nn.Module):
                return name
    return None


def final_norm_module(model: PreTrainedModel) -> torch.nn.Module | None:
    """The norm applied to the last hidden state before the output head (``ModelFacts.final_norm``)."""
    name = facts_of(model).final_norm
    if name is None:
        return None
    for owner in _norm_owners(model):
        module = getattr(owner, name, None)
        if isinstance(module, torch.nn.Module):
            return module
    return None


_CACHE: weakref.WeakKeyDictionary[torch.nn.Module, ModelFacts] = weakref.WeakKeyDictionary()


def facts_of(model: PreTrainedModel) -> ModelFacts:
    """The model's facts, computed on first use and kept with the model (they do not change)."""
    cached = _CACHE.get(model)
    if cached is not None:
        return cached
    text = text_config(model.config)
    hidden = _int(text, "hidden_size", "d_model", "n_embd") or 0
    declared = _int(text, "num_hidden_layers", "n_layer", "num_layers")
    count = declared if declared is not None else len(decoder_layers(model, -1))
    kinds = layer_kinds(text, count)
    capture, reason = _capture(model, text, kinds)
    heads = _int(text, "num_attention_heads", "n_head") if any(k in ATTENTION_KINDS for k in kinds) else None
    kv = None
    if heads is not None:
        kv = _int(text, "num_key_value_heads", "num_kv_heads") or heads
        if getattr(text, "multi_query", False) and not getattr(text, "new_decoder_architecture", False):
            kv = 1
    embeddings = model.get_input_embeddings()
    rows = getattr(getattr(embeddings, "weight", None), "shape", (0,))[0]
    facts = ModelFacts(
        model_class=type(model).__name__,
        model_type=str(getattr(text, "model_type", "")),
        layers=count,
        layer_kinds=kinds,
        heads=heads,
        kv_heads=kv,
        hidden=hidden,
        intermediate=_int(text, "intermediate_size", "n_inner", "ffn_dim") or 4 * hidden,
        vocab=_int(text, "vocab_size") or int(rows),
        context=_int(text, *_CONTEXT_FIELDS),
        embedding_scale=_embedding_scale(model),
        attention=capture,
        attention_reason=reason,
        attention_rows=capture is not None
        and capture.how == "record"
        and bool(getattr(model, "_supports_sdpa", False)),
        final_norm=_final_norm(model),
        has_output_head=model.get_output_embeddings() is not None,
    )
    _CACHE[model] = facts
    return facts
