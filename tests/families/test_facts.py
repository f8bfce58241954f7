"""Model facts of the zoo's families: layer kinds, heads, context, embedding scale, attention capture.

References are transformers' own: the config classes' defaults, the module's measured output, and the
attention tensors ``output_attentions=True`` returns on the same weights.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, Gemma3TextConfig

from service.explain.cost import ModelDims
from service.models.facts import ATTENTION_KINDS, facts_of
from tests.families import zoo

warnings.filterwarnings("ignore", message=".*falling back to its reference.*")


def test_hybrids_name_each_layer_kind() -> None:
    assert facts_of(zoo.build("jamba")[0]).layer_kinds == ("mamba", "attention")
    assert facts_of(zoo.build("minimax")[0]).layer_kinds == ("linear_attention", "attention")
    assert facts_of(zoo.build("recurrent_gemma")[0]).layer_kinds == ("recurrent", "sliding_attention")
    assert facts_of(zoo.build("gemma2")[0]).layer_kinds == ("sliding_attention", "attention")
    assert facts_of(zoo.build("gpt_neo")[0]).layer_kinds == ("attention", "sliding_attention")


@pytest.mark.parametrize("family", ["jamba", "minimax", "recurrent_gemma"])
def test_hybrids_capture_only_their_attention_layers(family: str) -> None:
    facts = facts_of(zoo.build(family)[0])
    assert facts.attention_layers == (1,)
    assert facts.other_layers == (0,)
    assert facts.hybrid


@pytest.mark.parametrize("family", ["mamba", "mamba2", "falcon_mamba", "rwkv"])
def test_state_space_models_have_no_heads_and_no_capture(family: str) -> None:
    facts = facts_of(zoo.build(family)[0])
    assert facts.heads is None and facts.kv_heads is None
    assert facts.attention is None
    assert facts.attention_reason is not None and "no attention layers" in facts.attention_reason
    assert not any(k in ATTENTION_KINDS for k in facts.layer_kinds)
    assert ModelDims.of(facts).attention_bytes(10) == 0


def test_composite_gemma3_reads_its_text_config() -> None:
    """Gemma 3 >= 4B loads as a composite whose top-level config has no context field: the text model's
    default (131,072) is the limit, not a 2,048 fallback."""
    model, tokenizer = zoo.build("gemma3")
    specials = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    text = zoo.config_of("gemma3_text", len(tokenizer), specials).to_dict()
    del text["max_position_embeddings"]
    config = AutoConfig.for_model("gemma3", text_config=text, vision_config=zoo._TINY_VISION, mm_tokens_per_image=4)
    assert getattr(config, "max_position_embeddings", None) is None
    facts = facts_of(AutoModelForCausalLM.from_config(config))
    assert facts.context == Gemma3TextConfig().max_position_embeddings == 131072
    assert facts.model_type == "gemma3_text"
    assert facts.layers == text["num_hidden_layers"] and facts.heads == text["num_attention_heads"]
    assert facts_of(model).attention_layers == (0, 1)  # the decoder's layers, not the vision tower's


@pytest.mark.parametrize("family", ["gemma", "gemma2", "gemma3_text", "gemma3"])
def test_gemma_embedding_scale_is_sqrt_d(family: str) -> None:
    model = zoo.build(family)[0]
    facts = facts_of(model)
    assert facts.embedding_scale == pytest.approx(math.sqrt(facts.hidden), rel=1e-5)
    ids = torch.tensor([3, 4])
    module_out = model.get_input_embeddings()(ids)
    raw = model.get_input_embeddings().weight[ids]
    torch.testing.assert_close(module_out, raw * facts.embedding_scale, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", ["llama_gqa", "gpt2", "mamba", "jamba"])
def test_unscaled_embeddings(family: str) -> None:
    assert facts_of(zoo.build(family)[0]).embedding_scale == pytest.approx(1.0)


@pytest.mark.parametrize("family", zoo.ALL)
def test_capture_covers_exactly_the_layers_transformers_returns_weights_for(family: str) -> None:
    """Every attention-kind layer is captured; the count matches the [B, H, T, T] tensors of
    ``output_attentions=True`` (where transformers returns real attention weights)."""
    model = zoo.build(family)[0]
    facts = facts_of(model)
    attention_kinds = tuple(i for i, k in enumerate(facts.layer_kinds) if k in ATTENTION_KINDS)
    assert facts.attention_layers == attention_kinds
    assert len(facts.layer_kinds) == facts.layers == zoo.COMMON["num_hidden_layers"]
    if facts.attention is None:
        assert facts.heads is None
        return
    model.set_attn_implementation("eager")
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    with torch.no_grad():
        out = model(input_ids=ids, output_attentions=True, use_cache=False)
    square = [a for a in out.attentions if a is not None and a.shape[-2:] == (6, 6) and a.shape[1] == facts.heads]
    assert len(square) == len(facts.attention_layers)


def test_readme_family_table_is_current() -> None:
    """The README's table is the script's output over the same facts (regenerate with ``--write``)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "scripts" / "families_table.py"
    spec = importlib.util.spec_from_file_location("families_table", path)
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    threads = torch.get_num_threads()
    try:
        expected = script.table()
    finally:
        torch.set_num_threads(threads)
    readme = script.README.read_text()
    start, end = readme.index(script.START) + len(script.START), readme.index(script.END)
    assert readme[start:end].strip() == expected.strip(), (
        "README.md's family table is stale: run PYTHONPATH=. .venv/bin/python scripts/families_table.py --write"
    )
