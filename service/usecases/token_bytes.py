"""A token's own UTF-8 bytes (OpenAI's `bytes` field), from the vocabulary, not from decoded text.

Decoded text cannot give them: a token that holds half of a multi-byte character decodes to U+FFFD or to
nothing. Byte-level BPE vocabularies (GPT-2, Llama 3, SmolLM) spell each byte as one printable character,
so mapping the token string back through that table gives the exact bytes; SentencePiece vocabularies
spell raw bytes as ``<0xHH>`` and spaces as ``▁``.
"""

from __future__ import annotations

import functools
import re

from transformers import PreTrainedTokenizerBase

_SP_BYTE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@functools.cache
def byte_decoder() -> dict[str, int]:
    """GPT-2's printable-character → byte table (the inverse of ``bytes_to_unicode``)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


def _decoder_json(tokenizer: PreTrainedTokenizerBase) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    if decoder is None:
        return ""
    return bytes(decoder.__getstate__()).decode("utf-8", "replace")


class TokenBytes:
    """``bytes_of(id)`` for one tokenizer; the decoder kind is read once."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self._tokenizer = tokenizer
        decoder = _decoder_json(tokenizer)
        self._byte_level = '"ByteLevel"' in decoder
        self._special = set(tokenizer.all_special_ids)

    def bytes_of(self, token_id: int) -> list[int]:
        piece = str(self._tokenizer.convert_ids_to_tokens(token_id))
        if token_id in self._special:
            return list(piece.encode("utf-8"))
        if self._byte_level:
            table = byte_decoder()
            if all(ch in table for ch in piece):
                return [table[ch] for ch in piece]
        match = _SP_BYTE.match(piece)
        if match:
            return [int(match.group(1), 16)]
        if "▁" in piece:
            return list(piece.replace("▁", " ").encode("utf-8"))
        text = self._tokenizer.decode([token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        return list(str(text).encode("utf-8"))
