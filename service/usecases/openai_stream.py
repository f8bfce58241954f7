"""Streaming `/v1/chat/completions`: native generation streams → `chat.completion.chunk` objects.

Per choice: a first chunk with the role, one chunk per token (with its logprobs when asked), explanation
rows as they finish (choice-level `explanation_row`, outside `delta`, which the client's stream helper
merges), then a final chunk with `finish_reason` (and the complete `explanation`). Then, with
`stream_options.include_usage`, a chunk with no choices and the usage, and always `[DONE]`. An error ends
the stream as `{"error": {...}}` then `[DONE]`. Explanation progress becomes SSE comments (keep-alives).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from schemas.common import ErrorBody
from schemas.explain import ExplainProgressEvent, ExplainRowEvent
from schemas.generate import GenerateResponse, TokenEvent
from schemas.openai import ChatCompletionChunk, ChatCompletionRequest, ChunkChoice, Delta, Usage
from service.usecases.generate_stream import GenerationStream, open_stream
from service.usecases.openai_compat import (
    FINISH,
    Context,
    chat_logprobs,
    chat_natives,
    explanation_of,
    new_id,
    system_fingerprint,
)

#: The stream's last data line, as OpenAI sends it.
DONE = "[DONE]"


@dataclass(frozen=True)
class Comment:
    """An SSE comment line (`: text`): a keep-alive the client's parser skips."""

    text: str


StreamOut = dict[str, Any] | Comment | str


class ChatStream:
    """The generations of one streamed chat request; ``close`` (idempotent) must always run."""

    def __init__(self, ctx: Context, req: ChatCompletionRequest, streams: list[GenerationStream]) -> None:
        self._req, self._streams = req, streams
        self._lm = ctx.registry.get(req.model)
        self._top = [n.top_logprobs for n in chat_natives(req)]
        self._id, self._created = new_id("chatcmpl"), int(time.time())

    def _chunk(self, choices: list[ChunkChoice], usage: Usage | None = None) -> dict[str, Any]:
        chunk = ChatCompletionChunk(
            id=self._id,
            created=self._created,
            model=self._lm.name,
            choices=choices,
            system_fingerprint=system_fingerprint(self._lm),
            usage=usage,
        )
        return chunk.model_dump(mode="json", exclude_none=True)

    def _translate(self, index: int, item: object) -> StreamOut | None:
        if isinstance(item, TokenEvent):
            logprobs = chat_logprobs(self._lm, [item.token], self._top[index]) if self._req.logprobs else None
            token_ids = [item.token.id] if self._req.return_token_ids else None
            delta = Delta(content=item.token.text)
            return self._chunk([ChunkChoice(index=index, delta=delta, logprobs=logprobs, token_ids=token_ids)])
        if isinstance(item, ExplainProgressEvent):
            return Comment(f"progress {item.done}/{item.total} {item.phase} eta {item.eta_s:.1f}s")
        if isinstance(item, ExplainRowEvent):
            row = item.model_dump(mode="json", exclude_none=True)
            return self._chunk([ChunkChoice(index=index, delta=Delta(), explanation_row=row)])
        if isinstance(item, GenerateResponse):
            finish = FINISH[item.finish_reason]
            choice = ChunkChoice(
                index=index,
                delta=Delta(),
                finish_reason=finish,
                explanation=explanation_of(item),  # type: ignore[arg-type]
            )
            return self._chunk([choice])
        return None  # an item type this translation does not know yet: skipped, never fatal

    async def events(self) -> AsyncIterator[StreamOut]:
        queue: asyncio.Queue[tuple[int, object]] = asyncio.Queue()
        finished = object()

        async def pump(index: int, stream: GenerationStream) -> None:
            try:
                async for item in stream.events():
                    await queue.put((index, item))
            finally:
                await queue.put((index, finished))

        pumps = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(self._streams)]
        try:
            for i in range(len(self._streams)):
                yield self._chunk([ChunkChoice(index=i, delta=Delta(role="assistant", content=""))])
            prompt_tokens, completion_tokens, open_ = 0, 0, len(pumps)
            while open_:
                index, item = await queue.get()
                if item is finished:
                    open_ -= 1
                    continue
                if isinstance(item, ErrorBody):
                    yield item.model_dump(mode="json")
                    yield DONE
                    return
                if isinstance(item, GenerateResponse):
                    prompt_tokens = item.usage.prompt_tokens
                    completion_tokens += item.usage.completion_tokens
                out = self._translate(index, item)
                if out is not None:
                    yield out
            options = self._req.stream_options
            if options is not None and options.include_usage:
                usage = Usage(
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                    total_tokens=prompt_tokens + completion_tokens,
                )
                yield self._chunk([], usage)
            yield DONE
        finally:
            for task in pumps:
                task.cancel()
            for task in pumps:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self.close()

    async def close(self) -> None:
        for stream in self._streams:
            await stream.close()


async def open_chat_stream(ctx: Context, req: ChatCompletionRequest) -> ChatStream:
    """Every choice's slot and prompt checks happen here, before the response starts (errors keep statuses)."""
    natives = chat_natives(req)
    streams: list[GenerationStream] = []
    try:
        for native in natives:
            streams.append(
                await open_stream(ctx.registry, ctx.settings, native, serving=ctx.serving, deadline=ctx.deadline)
            )
        return ChatStream(ctx, req, streams)
    except BaseException:
        for stream in streams:
            await stream.close()
        raise
