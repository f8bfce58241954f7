"""Prompt text → tokens with character offsets, and for chat input which message each token belongs to."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase

from schemas.common import ChatMessage
from service.errors import InvalidRequest


@dataclass(frozen=True)
class PromptTokens:
    """A tokenized prompt. Lists are parallel, one entry per token; offsets are char spans in ``text``."""

    text: str
    ids: list[int]
    offsets: list[tuple[int, int]]
    special: list[bool]
    message_index: list[int | None] = field(default_factory=list)
    role: list[str | None] = field(default_factory=list)
    template: list[bool] = field(default_factory=list)
    #: Chat input: (start, end) char span of each message's content in ``text``.
    messages: list[tuple[int, int]] = field(default_factory=list)
    is_chat: bool = False

    def __len__(self) -> int:
        return len(self.ids)

    def token_text(self, index: int, tokenizer: PreTrainedTokenizerBase) -> str:
        start, end = self.offsets[index]
        if end > start or not self.special[index]:
            return self.text[start:end]
        return str(tokenizer.decode([self.ids[index]]))  # e.g. a BOS token that has no text


def _tokenize(tokenizer: PreTrainedTokenizerBase, text: str, *, add_special: bool) -> tuple[list, list]:
    if not getattr(tokenizer, "is_fast", False):
        raise InvalidRequest("this model's tokenizer gives no character offsets (a fast tokenizer is needed)")
    enc = tokenizer(text, add_special_tokens=add_special, return_offsets_mapping=True)
    # Byte-level tokens that split one character all report that character's span; give it to the first
    # and empty spans to the rest, so token texts concatenate to the prompt exactly.
    offsets: list[tuple[int, int]] = []
    reached = 0
    for start, end in enc["offset_mapping"]:
        start = max(start, reached) if end > start else start
        end = max(end, start)
        offsets.append((start, end))
        reached = max(reached, end)
    return list(enc["input_ids"]), offsets


def _render(tokenizer: PreTrainedTokenizerBase, messages: Sequence[ChatMessage], generation: bool) -> str:
    rendered = tokenizer.apply_chat_template(
        [m.model_dump() for m in messages], tokenize=False, add_generation_prompt=generation
    )
    return str(rendered)


def _header_start(tokenizer: PreTrainedTokenizerBase, text: str, role: str, lo: int, content_start: int) -> int:
    """Where a message's own header begins: at its role name, extended back over special tokens before it.

    Text in the block before that (e.g. a default system prompt the template injects) belongs to no message.
    """
    at = text.rfind(role, lo, content_start)
    if at < 0:
        return lo
    specials = [t for t in tokenizer.all_special_tokens if t]
    moved = True
    while moved:
        moved = False
        for special in specials:
            if at - len(special) >= lo and text.startswith(special, at - len(special)):
                at -= len(special)
                moved = True
    return at


def _content_spans(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[ChatMessage], text: str
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Each message's content span and its block (header start, end of its trailing template text).

    Blocks come from rendering growing prefixes of the conversation, which chat templates keep stable;
    contents are searched for inside their block.
    """
    spans: list[tuple[int, int]] = []
    blocks: list[tuple[int, int]] = []
    cursor = 0
    for i, message in enumerate(messages):
        prefix = _render(tokenizer, messages[: i + 1], generation=False)
        block_end = len(prefix) if text.startswith(prefix) else len(text)
        start = text.find(message.content, cursor, block_end) if message.content else -1
        if start < 0:
            spans.append((cursor, cursor))
            header = cursor
        else:
            spans.append((start, start + len(message.content)))
            header = _header_start(tokenizer, text, message.role, cursor, start)
        cursor = max(spans[-1][1], cursor)
        blocks.append((header, max(block_end, cursor)))
        cursor = max(cursor, block_end)
    return spans, blocks


def build_prompt(
    tokenizer: PreTrainedTokenizerBase,
    *,
    prompt: str | None = None,
    messages: Sequence[ChatMessage] | None = None,
) -> PromptTokens:
    """Tokenize raw text (with the tokenizer's own special tokens) or a chat (through its template)."""
    special_ids = set(tokenizer.all_special_ids)
    if prompt is not None:
        ids, offsets = _tokenize(tokenizer, prompt, add_special=True)
        if not ids:
            raise InvalidRequest("the prompt produced no tokens", param="prompt")
        return PromptTokens(prompt, ids, offsets, [i in special_ids for i in ids])
    if not messages:
        raise InvalidRequest("give exactly one of `prompt` or `messages`", param="messages")
    if not getattr(tokenizer, "chat_template", None):
        raise InvalidRequest("this model has no chat template; send `prompt` instead", param="messages")
    text = _render(tokenizer, messages, generation=True)
    ids, offsets = _tokenize(tokenizer, text, add_special=False)
    spans, blocks = _content_spans(tokenizer, messages, text)
    index: list[int | None] = []
    roles: list[str | None] = []
    template: list[bool] = []
    for start, end in offsets:
        owner = next((m for m, (lo, hi) in enumerate(blocks) if lo <= start < hi), None)
        index.append(owner)
        roles.append(messages[owner].role if owner is not None else None)
        inside = owner is not None and start < spans[owner][1] and end > spans[owner][0]
        template.append(not inside)
    return PromptTokens(
        text, ids, offsets, [i in special_ids for i in ids], index, roles, template, spans, is_chat=True
    )
