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


def tokenize_continuation(tokenizer: PreTrainedTokenizerBase, text: str, param: str) -> Answer:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = [int(i) for i in enc["input_ids"]]
    if not ids:
        raise InvalidRequest(f"`{param}` produced no tokens", param=param)
    special = set(tokenizer.all_special_ids)
    return Answer(ids, text, [(int(s), int(e)) for s, e in enc["offset_mapping"]], [i in special for i in ids])


def placeholder_answer(length: int) -> Answer:
    """Worst case for estimates made before generating: one word per token."""
    return Answer([0] * length, "x " * length, [(2 * i, 2 * i + 1) for i in range(length)], [False] * length)
