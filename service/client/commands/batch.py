"""``glassbox explain-batch in.jsonl --out out.jsonl``: a dataset through ``/explain``, resumable.

Each input line is an ``/explain`` request (JSON), optionally with an ``id``; its output line is
``{"id", "line", "ok", "cache", "response"}`` or ``{"id", "line", "ok": false, "status", "error"}``, written
and flushed as each row finishes. Rerunning the same command skips every id already in the output, so an
interrupted run (Ctrl-C, a preempted pod) resumes where it stopped. A bad row is recorded and the run goes
on; an unreachable server or a refused API key stops it (every row would fail the same way).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from schemas.explain import ExplainRequest
from service.client.aio import AsyncClient
from service.client.commands.common import EXIT_INTERRUPTED, EXIT_SERVER, add_server_options, api_key_of, url_of
from service.client.errors import APIError, DeadlineExceeded, Unreachable

#: Statuses that would fail every row alike: stop the run instead of recording each one.
FATAL_STATUSES = frozenset({401, 403})


@dataclass
class Row:
    line: int
    id: str
    request: dict[str, Any] | None = None
    error: dict[str, Any] | None = None  # an unusable input line: recorded without sending


@dataclass
class Tally:
    total: int = 0
    skipped: int = 0
    done: int = 0
    failed: int = 0
    cache_hits: int = 0
    started: float = field(default_factory=time.monotonic)

    def summary(self, out: Path) -> dict[str, Any]:
        return {
            "rows": self.total,
            "already_done": self.skipped,
            "explained": self.done,
            "failed": self.failed,
            "cache_hits": self.cache_hits,
            "seconds": round(time.monotonic() - self.started, 2),
            "out": str(out),
        }


class _Fatal(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)


def _error(message: str, type_: str = "invalid_request", param: str | None = None) -> dict[str, Any]:
    return {"message": message, "type": type_, "param": param, "code": None}


def read_rows(path: Path, options: dict[str, Any], shard: tuple[int, int]) -> Iterator[Row]:
    """The input's rows of this shard; a line that is not a valid request becomes an error row."""
    index, count = shard
    seen: set[str] = set()
    with path.open(encoding="utf-8") as lines:
        for number, text in enumerate(lines, 1):
            if not text.strip() or (number - 1) % count != index:
                continue
            row = _parse(number, text, options)
            if row.id in seen:
                row = Row(number, f"line:{number}", error=_error(f"duplicate id {row.id!r}", param="id"))
            seen.add(row.id)
            yield row


def _parse(number: int, text: str, options: dict[str, Any]) -> Row:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return Row(number, f"line:{number}", error=_error(f"line {number} is not JSON: {exc.msg}"))
    if not isinstance(data, dict):
        return Row(number, f"line:{number}", error=_error(f"line {number} is not a JSON object"))
    row_id = str(data.pop("id")) if "id" in data else f"line:{number}"
    try:
        request = ExplainRequest.model_validate({**options, **data}).model_dump(mode="json", exclude_unset=True)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = ".".join(str(p) for p in err["loc"]) or None
        return Row(number, row_id, error=_error(f"{param + ': ' if param else ''}{err['msg']}", param=param))
    request.pop("stream", None)
    return Row(number, row_id, request=request)


def done_ids(out: Path) -> set[str]:
    """Ids already written; a torn last line (a killed writer) is cut off so appends stay line-aligned."""
    if not out.exists():
        return set()
    raw = out.read_bytes()
    if raw and not raw.endswith(b"\n"):
        raw = raw[: raw.rfind(b"\n") + 1]
        out.write_bytes(raw)
    ids = set()
    for line in raw.decode("utf-8").splitlines():
        try:
            ids.add(str(json.loads(line)["id"]))
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    return ids


async def _one(client: AsyncClient, row: Row) -> dict[str, Any]:
    if row.error is not None:
        return {"id": row.id, "line": row.line, "ok": False, "status": None, "error": row.error}
    try:
        ex = await client.explain(row.request)
    except APIError as exc:
        if exc.status_code in FATAL_STATUSES:
            raise _Fatal(f"the server refused the request: {exc}") from exc
        return {"id": row.id, "line": row.line, "ok": False, "status": exc.status_code, "error": exc.error.model_dump()}
    except DeadlineExceeded as exc:
        return {"id": row.id, "line": row.line, "ok": False, "status": None, "error": _error(str(exc), "timeout")}
    response = ex.model_dump(mode="json", exclude_none=True)
    return {"id": row.id, "line": row.line, "ok": True, "cache": ex.cache, "response": response}


class _Rate(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:.2f} rows/s" if task.speed else "– rows/s", style="cyan")


async def run(args: argparse.Namespace, rows: list[Row], out: Path, tally: Tally) -> None:
    client = AsyncClient(url_of(args), api_key=api_key_of(args), timeout=args.timeout, max_retries=args.retries)
    queue: asyncio.Queue[Row] = asyncio.Queue()
    for row in rows:
        queue.put_nowait(row)
    columns = (
        TextColumn("explain-batch"),
        BarColumn(),
        MofNCompleteColumn(),
        _Rate(),
        TextColumn("{task.fields[failed]} failed"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    console = Console(stderr=True)
    with out.open("a", encoding="utf-8") as sink, Progress(*columns, console=console, disable=args.quiet) as bar:
        task = bar.add_task("rows", total=len(rows), failed=0)

        async def worker() -> None:
            while not queue.empty():
                record = await _one(client, queue.get_nowait())
                sink.write(json.dumps(record, ensure_ascii=False) + "\n")
                sink.flush()
                if record["ok"]:
                    tally.done += 1
                    tally.cache_hits += record.get("cache") == "hit"
                else:
                    tally.failed += 1
                bar.update(task, advance=1, failed=tally.failed)

        try:
            await asyncio.gather(*(worker() for _ in range(max(1, args.concurrency))))
        finally:
            await client.aclose()


def _shard(args: argparse.Namespace) -> tuple[int, int]:
    count = args.shards
    index = args.shard_index if args.shard_index is not None else int(os.environ.get("JOB_COMPLETION_INDEX", "0"))
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"--shard-index must be in [0, {count})")
    return index, count


def explain_batch(args: argparse.Namespace) -> int:
    index, count = _shard(args)
    out = Path(args.out.format(shard=index))
    out.parent.mkdir(parents=True, exist_ok=True)
    options = _options(args.options)
    finished = done_ids(out)
    rows = list(read_rows(Path(args.input), options, (index, count)))
    todo = [row for row in rows if row.id not in finished]
    tally = Tally(total=len(rows), skipped=len(rows) - len(todo))
    status = 0
    try:
        asyncio.run(_cancel_on_sigterm(run(args, todo, out, tally)))
    except _Fatal as exc:
        print(f"glassbox: {exc}; stopped ({tally.done + tally.failed} rows written to {out})", file=sys.stderr)
        status = EXIT_SERVER
    except Unreachable as exc:
        print(f"glassbox: {exc}; stopped, rerun to resume ({out})", file=sys.stderr)
        status = EXIT_SERVER
    except (KeyboardInterrupt, asyncio.CancelledError):
        print(f"glassbox: interrupted; rerun the same command to resume ({out})", file=sys.stderr)
        status = EXIT_INTERRUPTED
    summary = tally.summary(out)
    if args.json_summary:
        print(json.dumps(summary))
    else:
        print(
            f"explain-batch: {summary['rows']} rows, {summary['already_done']} already done, "
            f"{summary['explained']} explained, {summary['failed']} failed, {summary['cache_hits']} cache hits, "
            f"{summary['seconds']} s → {out}"
        )
    return status


async def _cancel_on_sigterm(work: Any) -> None:
    """SIGTERM (a pod being preempted) stops the run like Ctrl-C: finished rows are already on disk."""
    task = asyncio.ensure_future(work)
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread, or Windows
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
    await task


def _options(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    raw = Path(text[1:]).read_text(encoding="utf-8") if text.startswith("@") else text
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError("--options must be a JSON object")
    return value


def add_command(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    batch = sub.add_parser("explain-batch", help="explain every row of a JSONL file (resumable)")
    batch.add_argument("input", help="JSONL: one /explain request per line, optionally with an `id`")
    batch.add_argument("--out", default="explanations.jsonl", help="JSONL output; `{shard}` is the shard index")
    batch.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    batch.add_argument("--options", help="JSON (or @file) of request fields applied to every row (rows win)")
    batch.add_argument("--shards", type=int, default=1, help="split the input into this many shards")
    batch.add_argument("--shard-index", type=int, default=None, help="this shard (default $JOB_COMPLETION_INDEX)")
    batch.add_argument("--json-summary", action="store_true", help="print the final summary as JSON")
    batch.add_argument("--quiet", action="store_true", help="no progress bar")
    add_server_options(batch)
    from service.client.commands.common import guarded

    batch.set_defaults(handler=guarded(explain_batch))


__all__ = ["EXIT_INTERRUPTED", "add_command", "explain_batch"]
