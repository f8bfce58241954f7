"""Engine token records → wire ``Token`` objects (shared by /generate and /explain)."""

from __future__ import annotations

from collections.abc import Iterable

from schemas.common import Token, TopLogprob
from service.engine.generation import GeneratedToken
from service.engine.prompt import PromptTokens
from service.models.loaded import LoadedModel


def prompt_tokens(lm: LoadedModel, prompt: PromptTokens) -> list[Token]:
    tokens = []
    for i, token_id in enumerate(prompt.ids):
        token = Token(
            id=token_id,
            text=prompt.token_text(i, lm.tokenizer),
            offset=prompt.offsets[i][0],
            special=prompt.special[i],
        )
        if prompt.is_chat:
            token.message_index = prompt.message_index[i]
            token.role = prompt.role[i]
            token.template = prompt.template[i]
        tokens.append(token)
    return tokens


def top_alternatives(lm: LoadedModel, top: Iterable[tuple[int, float]]) -> list[TopLogprob]:
    ids = [i for i, _ in top]
    texts = lm.tokenizer.batch_decode([[i] for i in ids], skip_special_tokens=False)
    return [TopLogprob(token=str(text), id=i, logprob=lp) for (i, lp), text in zip(top, texts, strict=True)]


def generated_token(lm: LoadedModel, token: GeneratedToken, *, logprobs: bool) -> Token:
    return Token(
        id=token.id,
        text=token.text,
        offset=token.offset,
        special=token.id in lm.special_ids,
        logprob=token.logprob if logprobs else None,
        top_logprobs=top_alternatives(lm, token.top) if logprobs and token.top else None,
    )
