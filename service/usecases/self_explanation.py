"""The model's own account of its answer, asked in a follow-up turn, held against the attributions.

The follow-up is the conversation so far, the answer as the assistant's turn, and one more user turn
(``QUESTION``), rendered by the model's chat template (raw text for a model without one), generated greedily
in the model's batch. The check is deliberately simple and stated: a source is *mentioned* when its label
(a document's title) or one of its content words (4+ letters) appears as a word in the account; the account
*agrees* with the evidence when it mentions the strongest source by |score|, or sources holding at least
half the absolute attribution mass.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from schemas.common import ChatMessage
from schemas.explain import SelfExplanation
from service.engine.continuation import Answer
from service.engine.generation import GenerationOutput
from service.engine.prompt import PromptTokens, build_prompt
from service.engine.sampling import SamplingParams
from service.explain.units import Unit
from service.models.loaded import LoadedModel
from service.serving import Deadline, Serving
from service.usecases.limits import raise_if_stopped

QUESTION = "Why did you give that answer? Name the words of the question or the documents you relied on."
#: An account that mentions sources holding at least this share of the mass agrees with the evidence.
AGREEMENT_SHARE = 0.5
_WORD = re.compile(r"\w+")
_STOPWORDS = frozenset(
    {
        "what",
        "which",
        "when",
        "where",
        "there",
        "their",
        "about",
        "would",
        "could",
        "should",
        "these",
        "those",
        "this",
        "that",
        "with",
        "from",
        "have",
        "your",
        "answer",
        "question",
        "document",
        "documents",
    }
)


def follow_up(lm: LoadedModel, prompt: PromptTokens, answer: Answer) -> PromptTokens:
    """The conversation with the answer as the assistant's turn and ``QUESTION`` as the next user turn."""
    if not lm.has_chat_template:
        return build_prompt(lm.tokenizer, prompt=f"{prompt.text}{answer.text}\n\n{QUESTION}\n")
    if prompt.is_chat:
        roles = {i: r for i, r in zip(prompt.message_index, prompt.role, strict=True) if i is not None}
        history = [
            ChatMessage(role=roles.get(i, "user"), content=prompt.text[s:e])  # type: ignore[arg-type]
            for i, (s, e) in enumerate(prompt.messages)
        ]
    else:
        history = [ChatMessage(role="user", content=prompt.text)]
    messages = [
        *history,
        ChatMessage(role="assistant", content=answer.text),
        ChatMessage(role="user", content=QUESTION),
    ]
    return build_prompt(lm.tokenizer, messages=messages)


async def ask(
    serving: Serving, lm: LoadedModel, prompt: PromptTokens, answer: Answer, tokens: int, deadline: Deadline
) -> str:
    follow = follow_up(lm, prompt, answer)
    output: GenerationOutput
    output, _ = await serving.scheduler(lm).batcher.generate(
        follow.ids, SamplingParams(max_new_tokens=tokens), deadline=deadline
    )
    raise_if_stopped(output, deadline)
    return output.text.strip()


def _words(text: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(text)}


def mentioned(account: str, unit: Unit) -> bool:
    said = _words(account)
    if unit.label and unit.label.lower() in account.lower():
        return True
    content = {w for w in _words(unit.text) if len(w) >= 4 and w not in _STOPWORDS}
    return bool(content & said)


def check(account: str, units: Sequence[Unit], scores: np.ndarray, method: str) -> SelfExplanation:
    """Which sources the account names, their share of the absolute mass, and whether it agrees."""
    magnitude = np.abs(np.asarray(scores, dtype=np.float64))[: len(units)]
    total = float(magnitude.sum())
    named = [i for i, u in enumerate(units) if u.kind == "prompt" and mentioned(account, u)]
    share = float(magnitude[named].sum() / total) if total > 0 and named else 0.0
    top = [int(i) for i in np.argsort(-magnitude, kind="stable")[:3] if magnitude[i] > 0]
    top_named = [i in named for i in top]
    agrees = bool(top_named and top_named[0]) or share >= AGREEMENT_SHARE
    shown = ", ".join(f"'{units[i].label or units[i].text}'" for i in top)
    if agrees:
        verdict = (
            f"The model's account names sources holding {share:.0%} of the {method} mass"
            + (", including the strongest" if top_named and top_named[0] else "")
            + "; it agrees with the evidence."
        )
    elif named:
        verdict = (
            f"The model's account disagrees with the evidence: it names sources holding only {share:.0%} of the "
            f"{method} mass and not the strongest ({shown})."
        )
    else:
        verdict = f"The model's account disagrees with the evidence: it mentions none of the sources ({shown})."
    return SelfExplanation(
        text=account,
        question=QUESTION,
        method=method,
        mentioned=named,
        mentioned_share=round(share, 4),
        top_sources=top,
        top_mentioned=top_named,
        agrees=agrees,
        verdict=verdict,
    )
