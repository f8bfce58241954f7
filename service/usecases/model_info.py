"""What ``/models`` says about one loaded model: its facts and what it supports, read from ``ModelFacts``
(computed at load) so that listing never touches the model and never fails for one family's config."""

from __future__ import annotations

from transformers import PreTrainedModel

from schemas.common import ModelFactsInfo, ModelInfo, Support
from service.explain import methods as registry
from service.models.facts import ModelFacts
from service.models.loaded import LoadedModel
from service.serving.cache_support import batching_support, generation_refusal


def method_supports(facts: ModelFacts) -> dict[str, Support]:
    """Per registered method: the planner's refusal, if any (the same text as the 422)."""
    out = {}
    for name in registry.names():
        reason = registry.get(name).refusal(facts)
        out[name] = Support(supported=reason is None, reason=reason)
    return out


def facts_info(facts: ModelFacts) -> ModelFactsInfo:
    return ModelFactsInfo(
        model_class=facts.model_class,
        model_type=facts.model_type,
        layers=facts.layers,
        layer_kinds=list(facts.layer_kinds),
        attention_layers=list(facts.attention_layers),
        attention_capture=facts.attention.describe() if facts.attention is not None else None,
        heads=facts.heads,
        kv_heads=facts.kv_heads,
        hidden_size=facts.hidden,
        vocab=facts.vocab,
        context=facts.context,
        embedding_scale=facts.embedding_scale,
    )


def serving_supports(model: PreTrainedModel) -> tuple[Support, Support]:
    """(generation, batching) of a model: the one place ``/models`` and ``scripts/families_table.py`` ask
    (the serving side's load-time probe, ``service/serving/cache_support.py``)."""
    refusal = generation_refusal(model)
    batching, batching_reason = batching_support(model)
    return Support(supported=refusal is None, reason=refusal), Support(supported=batching, reason=batching_reason)


def model_info(lm: LoadedModel, *, default: bool) -> ModelInfo:
    facts = lm.facts
    generation, batching = serving_supports(lm.model)
    return ModelInfo(
        id=lm.name,
        source=lm.source,
        revision=lm.revision,
        device=str(lm.device),
        dtype=str(lm.dtype).removeprefix("torch."),
        max_context=lm.max_context,
        vocab_size=facts.vocab,
        num_layers=facts.layers,
        num_heads=facts.heads,
        chat_template=lm.has_chat_template,
        ready=True,
        default=default,
        facts=facts_info(facts),
        supports=method_supports(facts),
        generation=generation,
        batching=batching,
    )
