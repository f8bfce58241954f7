"""Retrieved documents (RAG) into the prompt, by one documented template, and into the explanation as units.

The documents become one system message, first in the chat (or a block before a raw prompt): the header,
then `[i] title` and the text of each. Unless the caller chose its own granularity or segments, each
document (or each of its sentences, with `document_units: "sentence"`) is then one labelled segment, so every
method scores documents and `context_attribution` can cite them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

from schemas.common import ChatMessage
from schemas.explain import ExplainOptions, ExplainRequest, Segment
from schemas.generate import GenerateRequest
from service.explain.units import sentence_spans

#: The template's header; each document follows as `\n\n[i] title\n` and its text.
DOCUMENTS_HEADER = "Use these documents to answer."
#: Between the documents block and a raw prompt.
PROMPT_SEPARATOR = "\n\n"


class _Doc(Protocol):
    title: str
    text: str


Label = tuple[str, int, int]  # label, char start, char end in the documents text


def documents_message(documents: Sequence[_Doc]) -> tuple[str, list[Label]]:
    """The system message the documents become, and each text's label and character span in it."""
    text = DOCUMENTS_HEADER
    spans = []
    for i, doc in enumerate(documents, start=1):
        text += f"\n\n[{i}] {doc.title}\n" if doc.title else f"\n\n[{i}]\n"
        spans.append((doc.title or f"document {i}", len(text), len(text) + len(doc.text)))
        text += doc.text
    return text, spans


def sentence_labels(text: str, spans: list[Label]) -> list[Label]:
    """Each document's sentences as labelled spans ("title · 2" is the document's second sentence)."""
    out = []
    for label, start, end in spans:
        for j, (s, e) in enumerate(sentence_spans(text[start:end]), start=1):
            out.append((f"{label} · {j}", start + s, start + e))
    return out


Opts = TypeVar("Opts", bound=ExplainOptions)


def with_document_segments(options: Opts, spans: list[Label], *, message: int | None) -> Opts:
    """Documents are the natural units of an explanation, unless the client chose its own."""
    if options.segments is not None or "granularity" in options.model_fields_set:
        return options
    segments = [Segment(label=label, start=s, end=e, message=message) for label, s, e in spans]
    return options.model_copy(update={"granularity": "segments", "segments": segments})


def _shift_messages(options: Opts) -> Opts:
    """Caller segments count the caller's messages; the documents' system message comes first."""
    if not options.segments:
        return options
    shifted = [s if s.message is None else s.model_copy(update={"message": s.message + 1}) for s in options.segments]
    return options.model_copy(update={"segments": shifted})


Placed = TypeVar("Placed", ExplainRequest, GenerateRequest)


def place_documents(req: Placed) -> Placed:
    """The request with its documents in the prompt (none left in `documents`), and its explain options
    with the documents (or their sentences) as segments."""
    if not req.documents:
        return req
    text, spans = documents_message(req.documents)
    options = req if isinstance(req, ExplainRequest) else req.explain
    units = spans if options is None or options.document_units == "document" else sentence_labels(text, spans)
    update: dict[str, object] = {"documents": None}
    messages: list[ChatMessage] | None = req.messages
    if messages is not None:
        placed = list(messages)
        placed.insert(0, ChatMessage(role="system", content=text))
        update["messages"] = placed
        if options is not None:
            options = with_document_segments(_shift_messages(options), units, message=0)
    else:
        update["prompt"] = text + PROMPT_SEPARATOR + (req.prompt or "")
        if options is not None:
            options = with_document_segments(options, units, message=None)
    if isinstance(req, ExplainRequest):
        assert isinstance(options, ExplainRequest)
        return options.model_copy(update=update)
    return req.model_copy(update={**update, "explain": options})
