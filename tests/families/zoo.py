"""Tiny random models of every common family, built from transformers' config classes (no download).

Each family is a ``model_type`` plus the few config fields that make it small or select a variant. The
common fields go through ``attribute_map`` (``hidden_size`` becomes ``n_embd`` for GPT-2), so one set of
small dimensions serves all. The tokenizer and chat template are the test suite's (``build_tokenizer``).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from tests.support.tiny_model import build_tokenizer

#: Small dimensions every family accepts (under its own names via ``attribute_map``).
COMMON: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 256,
    "tie_word_embeddings": False,
}

#: family name -> (model_type, overrides). ``None`` as a value removes a common field.
FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    "llama_gqa": ("llama", {"num_key_value_heads": 2}),
    "gpt2": ("gpt2", {"intermediate_size": None, "n_inner": 64}),
    "gpt_neox": ("gpt_neox", {}),
    "gptj": ("gptj", {"intermediate_size": None, "n_inner": 64, "rotary_dim": 4}),
    "opt": ("opt", {"intermediate_size": None, "ffn_dim": 64, "word_embed_proj_dim": 32}),
    "phi": ("phi", {}),
    "phi3": ("phi3", {"pad_token_id": 0}),
    "qwen2": ("qwen2", {"num_key_value_heads": 2}),
    "qwen3": ("qwen3", {"num_key_value_heads": 2, "head_dim": 8}),
    "qwen3_moe": (
        "qwen3_moe",
        {
            "num_key_value_heads": 2,
            "head_dim": 8,
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 16,
        },
    ),
    "mixtral": ("mixtral", {"num_key_value_heads": 2, "num_local_experts": 4, "num_experts_per_tok": 2}),
    "gemma": ("gemma", {"num_key_value_heads": 2, "head_dim": 8}),
    "olmo2": ("olmo2", {"num_key_value_heads": 2}),
    "starcoder2": ("starcoder2", {"num_key_value_heads": 2}),
    "granite": ("granite", {"num_key_value_heads": 2}),
    "mistral": ("mistral", {"num_key_value_heads": 2}),
    "mistral_window": ("mistral", {"num_key_value_heads": 2, "sliding_window": 8}),
    "gemma2": ("gemma2", {"num_key_value_heads": 2, "head_dim": 8, "sliding_window": 8}),
    "gemma3_text": ("gemma3_text", {"num_key_value_heads": 2, "head_dim": 8, "sliding_window": 8}),
    "bloom": ("bloom", {"intermediate_size": None}),
    "falcon": ("falcon", {"intermediate_size": None, "new_decoder_architecture": True, "num_kv_heads": 2}),
    "falcon_alibi": ("falcon", {"intermediate_size": None, "alibi": True, "multi_query": False}),
    "falcon_mqa": ("falcon", {"intermediate_size": None, "multi_query": True}),
    "gpt_neo": (
        "gpt_neo",
        {"intermediate_size": None, "attention_types": [[["global", "local"], 1]], "window_size": 8},
    ),
    "mpt": ("mpt", {"intermediate_size": None, "expansion_ratio": 2}),
    "mamba": ("mamba", {"intermediate_size": None, "num_attention_heads": None, "state_size": 4}),
    "mamba2": (
        "mamba2",
        {
            "intermediate_size": None,
            "num_attention_heads": None,
            "num_heads": 4,
            "head_dim": 16,
            "state_size": 4,
            "n_groups": 1,
        },
    ),
    "falcon_mamba": ("falcon_mamba", {"intermediate_size": None, "num_attention_heads": None, "state_size": 4}),
    "rwkv": ("rwkv", {"intermediate_size": None, "num_attention_heads": None, "attention_hidden_size": 32}),
    "jamba": (
        "jamba",
        {
            "num_key_value_heads": 2,
            "num_experts": 2,
            "num_experts_per_tok": 1,
            "attn_layer_period": 2,
            "attn_layer_offset": 1,
            "expert_layer_period": 2,
            "expert_layer_offset": 1,
            "mamba_d_state": 4,
            "mamba_dt_rank": 4,
        },
    ),
    "minimax": (
        "minimax",
        {
            "num_key_value_heads": 2,
            "head_dim": 8,
            "num_local_experts": 2,
            "num_experts_per_tok": 1,
            "layer_types": ["linear_attention", "full_attention"],
        },
    ),
    "recurrent_gemma": (
        "recurrent_gemma",
        {
            "num_key_value_heads": 1,
            "head_dim": 8,
            "lru_width": 32,
            "attention_window_size": 8,
            "block_types": ["recurrent", "attention"],
        },
    ),
}


#: A composite (multimodal) config whose text model is a family above: Gemma 3 >= 4B loads this way.
COMPOSITES: dict[str, str] = {"gemma3": "gemma3_text"}
_TINY_VISION = {
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "image_size": 28,
    "patch_size": 14,
}


def config_of(family: str, vocab: int, specials: dict[str, int]) -> PretrainedConfig:
    if family in COMPOSITES:
        text = config_of(COMPOSITES[family], vocab, specials).to_dict()
        return AutoConfig.for_model(
            family, text_config=text, vision_config=_TINY_VISION, mm_tokens_per_image=4, **specials
        )
    model_type, overrides = FAMILIES[family]
    fields = {**COMMON, **overrides, **specials, "vocab_size": vocab}
    fields = {k: v for k, v in fields.items() if v is not None}
    return AutoConfig.for_model(model_type, **fields)


#: Every buildable name: the families and the composites.
ALL = (*FAMILIES, *COMPOSITES)


@functools.cache
def _tokenizer() -> Any:
    return build_tokenizer()


def build(family: str, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple[PreTrainedModel, Any]:
    """The family's tiny random model (eval mode) and the shared test tokenizer."""
    tokenizer = _tokenizer()
    specials = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    config = config_of(family, len(tokenizer), specials)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    # Random init is near-uniform over the vocabulary; scale up so greedy choices are decisive.
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(4)
    return model, tokenizer


def save(family: str, folder: Path, *, seed: int = 0) -> Path:
    """Write the family's tiny model and tokenizer to ``folder`` (servable through ``GLASSBOX_MODELS``)."""
    model, tokenizer = build(family, seed=seed)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
