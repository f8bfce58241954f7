"""A continuation of the prompt (an answer, a target or a contrast) as token ids with offsets in its own text."""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from service.errors import InvalidRequest


@dataclass(frozen=True)
class Answer:
    """The explained continuation (or the contrast): ids with char offsets in its own text."""

    ids: list[int]
    text: str
    offsets: list[tuple[int, int]]
    special: list[bool]

    def token_text(self, i: int) -> str:
        start, end = self.offsets[i]
        return self.text[start:end]


def tokenize_continuation(
    tokenizer: PreTrainedTokenizerBase, text: str, param: str, *, after: str | None = None
) -> Answer:
    """``text``'s tokens as the model sees them after ``after`` (the prompt's text), when given.

    Tokenized alone, a continuation can come out differently than it does after the prompt: a SentencePiece
    tokenizer with a dummy prefix (Metaspace, ``prepend_scheme``) starts it with a ``▁`` word start it does
    not have in context. So the prompt and the continuation are tokenized together and the continuation's
    tokens taken from the end; when the prompt's own tokens do not come out first (the two merge across the
    boundary) no split is exact, and the continuation is tokenized alone as before.
    """
    alone = _tokens(tokenizer, text)
    ids, offsets = alone
    if after:
        joint_ids, joint_offsets = _tokens(tokenizer, after + text)
        prompt_ids, _ = _tokens(tokenizer, after)
        n = len(prompt_ids)
        if joint_ids[:n] == prompt_ids and all(s >= len(after) for s, _ in joint_offsets[n:]):
            ids = joint_ids[n:]
            offsets = [(s - len(after), e - len(after)) for s, e in joint_offsets[n:]]
    if not ids:
        raise InvalidRequest(f"`{param}` produced no tokens", param=param)
    special = set(tokenizer.all_special_ids)
    return Answer(ids, text, offsets, [i in special for i in ids])


def _tokens(tokenizer: PreTrainedTokenizerBase, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return [int(i) for i in enc["input_ids"]], [(int(s), int(e)) for s, e in enc["offset_mapping"]]


def placeholder_answer(length: int) -> Answer:
    """Worst case for estimates made before generating: one word per token."""
    return Answer([0] * length, "x " * length, [(2 * i, 2 * i + 1) for i in range(length)], [False] * length)
