"""What ``/models`` says about one loaded model: its facts and what it supports, read from ``ModelFacts``
(computed at load) so that listing never touches the model and never fails for one family's config."""

from __future__ import annotations

from schemas.common import ModelFactsInfo, ModelInfo, Support
from service.explain import methods as registry
from service.models.facts import ModelFacts, batching_support_placeholder, generation_support_placeholder
from service.models.loaded import LoadedModel


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


def model_info(lm: LoadedModel, *, default: bool) -> ModelInfo:
    facts = lm.facts
    batching, batching_reason = batching_support_placeholder(lm.model)
    generation, generation_reason = generation_support_placeholder(lm.model)
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
        generation=Support(supported=generation, reason=generation_reason),
        batching=Support(supported=batching, reason=batching_reason),
    )
