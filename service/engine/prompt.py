"""Prompt text → tokens with character offsets, and for chat input which message each token belongs to."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from jinja2 import TemplateError, TemplateSyntaxError
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
    """The template's rendering. A template that refuses the conversation (``raise_exception``, e.g. Gemma 2's
    "System role not supported") is the client's problem: a 422 with the template's own message. A template
    that does not parse is the server's (a 500)."""
    try:
        rendered = tokenizer.apply_chat_template(
            [m.model_dump() for m in messages], tokenize=False, add_generation_prompt=generation
        )
    except TemplateSyntaxError:
        raise
    except TemplateError as exc:
        raise InvalidRequest(
            f"the model's chat template refused these messages: {exc.message or exc}",
            param="messages",
            code="chat_template_error",
        ) from exc
    return str(rendered)


def _content_candidates(content: str) -> list[str]:
    """What a message's content may look like in the rendering: itself, or trimmed the ways templates trim it
    (Qwen3 drops an earlier assistant turn's ``<think>`` block and strips the rest; many templates ``trim``)."""
    candidates = [content]
    if "</think>" in content:
        candidates.append(content.split("</think>")[-1].strip())
    candidates.append(content.strip())
    return [c for c in dict.fromkeys(candidates) if c]


def _find_content(text: str, content: str, after_role: int, cursor: int) -> tuple[int, int]:
    """The span of ``content`` (or of a trimmed form of it) in ``text``: after its role name, else after the
    previous message; ``(-1, -1)`` when no form of it is there."""
    for candidate in _content_candidates(content):
        for lo in (after_role, cursor):
            start = text.find(candidate, lo)
            if start >= 0:
                return start, start + len(candidate)
    return -1, -1


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

    One pass over the rendered text, in linear time (rendering every prefix of the conversation, as this once
    did, is quadratic: 1,000 messages took seconds, and wrong for templates whose rendering of a prefix is not
    a prefix of the whole, as Qwen3's with its ``<think>`` handling): each message's header is found by its
    role name after the previous message, its content (or its trimmed form) after that header; a block ends
    where the next message's header begins, and the last one where the conversation rendered without the
    generation prompt ends (or at the end, when that rendering is not a prefix of this one).
    """
    spans: list[tuple[int, int]] = []
    headers: list[int] = []
    cursor = 0
    for message in messages:
        role_at = text.find(message.role, cursor)
        after_role = role_at + len(message.role) if role_at >= 0 else cursor
        start, end = _find_content(text, message.content, after_role, cursor) if message.content else (-1, -1)
        if start < 0:
            spans.append((after_role, after_role))
            header = _header_start(tokenizer, text, message.role, cursor, after_role) if role_at >= 0 else cursor
        else:
            spans.append((start, end))
            header = _header_start(tokenizer, text, message.role, cursor, start)
        headers.append(header)
        cursor = max(cursor, spans[-1][1])
    whole = _render(tokenizer, messages, generation=False)
    last_end = len(whole) if text.startswith(whole) else len(text)
    blocks: list[tuple[int, int]] = []
    for i, header in enumerate(headers):
        end = headers[i + 1] if i + 1 < len(headers) else last_end
        blocks.append((header, max(end, spans[i][1])))
    return spans, blocks


def _owners(offsets: Sequence[tuple[int, int]], blocks: Sequence[tuple[int, int]]) -> list[int | None]:
    """The message whose block holds each token's start: one merge-like pass (both are in text order)."""
    owners: list[int | None] = []
    m = 0
    for start, _ in offsets:
        while m < len(blocks) and blocks[m][1] <= start:
            m += 1
        owners.append(m if m < len(blocks) and blocks[m][0] <= start else None)
    return owners


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
    for (start, end), owner in zip(offsets, _owners(offsets, blocks), strict=True):
        index.append(owner)
        roles.append(messages[owner].role if owner is not None else None)
        inside = owner is not None and start < spans[owner][1] and end > spans[owner][0]
        template.append(not inside)
    return PromptTokens(
        text, ids, offsets, [i in special_ids for i in ids], index, roles, template, spans, is_chat=True
    )


#: Characters of text looked at per token of the limit before tokenizing all of it (see ``tokens_over``).
_PREFIX_CHARS_PER_TOKEN = 4
#: Tokenizing a prefix cut inside a word may merge differently near the cut; this share of the limit is
#: kept as a margin in that case (a cut before whitespace is exact for pre-tokenizing tokenizers).
_CUT_MARGIN = 8


def render_chat(tokenizer: PreTrainedTokenizerBase, messages: Sequence[ChatMessage]) -> str:
    """The chat rendered by the template with the generation prompt: the text ``build_prompt`` tokenizes."""
    if not getattr(tokenizer, "chat_template", None):
        raise InvalidRequest("this model has no chat template; send `prompt` instead", param="messages")
    return _render(tokenizer, messages, generation=True)


def tokens_over(tokenizer: PreTrainedTokenizerBase, text: str, limit: int) -> int | None:
    """A count of tokens in a prefix of ``text`` when that alone shows ``text`` is over ``limit`` tokens,
    else None. Costs at most the tokenization of ``4 × limit`` characters, whatever the text's length, so a
    huge prompt is refused without tokenizing all of it (990 KB of emoji: 741,000 tokens, seconds).

    The prefix is cut before whitespace when there is some near the cut: pre-tokenizers split there, so the
    prefix's tokens are the text's first tokens and the count is a lower bound. Otherwise (one endless
    "word") a margin of an eighth of the limit covers merges across the cut.
    """
    budget = _PREFIX_CHARS_PER_TOKEN * (limit + limit // _CUT_MARGIN + 16)
    if len(text) <= budget:
        return None  # tokenizing all of it costs no more than this check would
    cut = budget
    while cut < min(len(text), budget + 256) and not (text[cut].isspace() and not text[cut - 1].isspace()):
        cut += 1
    exact = cut < len(text) and text[cut].isspace() and not text[cut - 1].isspace()
    count = len(tokenizer(text[: cut if exact else budget], add_special_tokens=False)["input_ids"])
    needed = limit if exact else limit + limit // _CUT_MARGIN + 16
    return count if count > needed else None


def max_token_bytes(tokenizer: PreTrainedTokenizerBase) -> int:
    """The most UTF-8 bytes of input one token can stand for: no stored vocabulary entry is shorter in UTF-8
    than the input it covers (byte-level BPE stores one character per byte, SentencePiece ``▁`` for a space),
    so ``bytes / max_token_bytes`` is a lower bound on a text's token count. Computed once per tokenizer."""
    cached = _MAX_TOKEN_BYTES.get(id(tokenizer))
    if cached is None or cached[0] is not tokenizer:
        cached = (tokenizer, max((len(token.encode()) for token in tokenizer.get_vocab()), default=1))
        _MAX_TOKEN_BYTES[id(tokenizer)] = cached
    return max(1, cached[1])


_MAX_TOKEN_BYTES: dict[int, tuple[PreTrainedTokenizerBase, int]] = {}
