"""What every client command shares: where the server is, the API key, and how failures end the process."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from service.client.core import default_url
from service.client.errors import APIError, DeadlineExceeded, Unreachable

#: Exit statuses: the server could not be reached or refused the request; the input was unusable.
EXIT_SERVER = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def add_server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=None, help="server URL (GLASSBOX_URL, default http://127.0.0.1:8000)")
    parser.add_argument("--api-key", default=None, help="API key sent as Bearer (GLASSBOX_API_KEY)")
    parser.add_argument("--timeout", type=float, default=None, help="deadline per request, seconds")
    parser.add_argument("--retries", type=int, default=3, help="retries on 429/503 and refused connections")


def url_of(args: argparse.Namespace) -> str:
    return str(args.url or default_url())


def api_key_of(args: argparse.Namespace) -> str | None:
    return args.api_key or os.environ.get("GLASSBOX_API_KEY") or None


def fail(message: str, status: int) -> int:
    print(f"glassbox: {message}", file=sys.stderr)
    return status


def guarded(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn the client's errors into one clear line on stderr and a non-zero exit status."""

    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except Unreachable as exc:
            return fail(f"{exc} (is `glassbox serve` running? set --url or GLASSBOX_URL)", EXIT_SERVER)
        except APIError as exc:
            return fail(f"the server refused the request: {exc}", EXIT_SERVER)
        except DeadlineExceeded as exc:
            return fail(str(exc), EXIT_SERVER)
        except ValidationError as exc:
            return fail(f"invalid request: {_first_error(exc)}", EXIT_USAGE)
        except (OSError, ValueError) as exc:
            return fail(str(exc), EXIT_USAGE)
        except KeyboardInterrupt:
            return fail("interrupted", EXIT_INTERRUPTED)

    return run


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    return f"{where}: {err['msg']}" if where else str(err["msg"])


def input_fields(args: argparse.Namespace) -> dict[str, Any]:
    """``prompt``/``messages`` from the positional question, ``--prompt`` or ``--messages FILE``."""
    given = [x for x in (args.question, args.prompt, args.messages) if x is not None]
    if len(given) != 1:
        raise ValueError("give one of: a question, --prompt TEXT, or --messages FILE.json")
    if args.messages is not None:
        messages = json.loads(Path(args.messages).read_text(encoding="utf-8"))
        return {"messages": messages["messages"] if isinstance(messages, dict) else messages}
    if args.prompt is not None:
        return {"prompt": args.prompt}
    return {"messages": [{"role": "user", "content": args.question}]}


def add_input_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("question", nargs="?", help="a user message (chat template applied)")
    parser.add_argument("--prompt", help="raw prompt text instead of a chat message")
    parser.add_argument("--messages", help="JSON file: a list of {role, content} (or {'messages': [...]})")
    parser.add_argument("--model", help="model id (GET /models); the default model if omitted")
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--seed", type=int, default=None)


def sampling_fields(args: argparse.Namespace) -> dict[str, Any]:
    fields = {
        "model": args.model,
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "seed": args.seed,
    }
    return {k: v for k, v in fields.items() if v is not None}
