"""Incremental detokenization: each new token's text and offset, without re-decoding the whole answer."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

_REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Streams text for byte-level tokenizers, holding back a token whose UTF-8 character is incomplete.

    The same scheme as TGI's: decode a short window twice (with and without the new tokens) and emit the
    difference, so the cost per token is constant and multi-token characters come out whole.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix = 0
        self._read = 0
        self.text = ""

    @property
    def settled(self) -> int:
        """Tokens whose text is final; those after them hold an incomplete character (flushed at the end)."""
        return self._read

    def _decode(self, ids: list[int]) -> str:
        return str(self._tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False))

    def add(self, token_id: int) -> str:
        """Append one token; return the text it completes ('' while a character is still incomplete)."""
        self._ids.append(token_id)
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        if len(after) > len(before) and not after.endswith(_REPLACEMENT):
            new = after[len(before) :]
            self._prefix = self._read
            self._read = len(self._ids)
            self.text += new
            return new
        return ""

    def flush(self) -> str:
        """Text still held back at the end (an incomplete character decodes to U+FFFD here)."""
        full = self._decode(self._ids[self._prefix :])
        before = self._decode(self._ids[self._prefix : self._read])
        rest = full[len(before) :] if full.startswith(before) else ""
        self.text += rest
        self._prefix = self._read = len(self._ids)
        return rest
