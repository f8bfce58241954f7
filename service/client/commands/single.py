"""``glassbox generate`` and ``glassbox explain``: one request, printed for people (or ``--json``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from schemas.explain import METHOD_NAMES
from service.client.commands.common import (
    add_input_options,
    add_server_options,
    api_key_of,
    guarded,
    input_fields,
    sampling_fields,
    url_of,
)
from service.client.figure import write_png, write_svg
from service.client.models import Generation
from service.client.sync import Client


def _client(args: argparse.Namespace) -> Client:
    return Client(url_of(args), api_key=api_key_of(args), timeout=args.timeout, max_retries=args.retries)


@guarded
def generate(args: argparse.Namespace) -> int:
    fields = {**input_fields(args), **sampling_fields(args)}
    with _client(args) as client:
        if args.stream and not args.json:
            for event in client.stream_generate(**fields):
                if isinstance(event, Generation):
                    print(flush=True)
                else:
                    print(event.token.text, end="", flush=True)
            return 0
        result = client.generate(**fields)
    print(result.model_dump_json(exclude_none=True, indent=2) if args.json else result.text)
    return 0


@guarded
def explain(args: argparse.Namespace) -> int:
    fields = {**input_fields(args), **sampling_fields(args), "granularity": args.granularity}
    if args.method:
        fields["methods"] = args.method
    if args.target is not None:
        fields["target"] = args.target
    with _client(args) as client:
        ex = client.explain(**fields)
    if args.svg:
        write_svg(ex, Path(args.svg), args.method[0] if args.method else None)
    if args.png:
        write_png(ex, Path(args.png), args.method[0] if args.method else None)
    if args.json:
        print(ex.model_dump_json(exclude_none=True))
        return 0
    from service.client.commands.terminal import show

    show(Console(highlight=False, soft_wrap=True), ex, args.method[0] if args.method else None, args.top)
    for path in (args.svg, args.png):
        if path:
            print(f"heatmap written to {path}", file=sys.stderr)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    gen = sub.add_parser("generate", help="generate text on a server")
    add_input_options(gen)
    gen.add_argument("--stream", action="store_true", help="print tokens as they arrive")
    gen.add_argument("--json", action="store_true", help="print the raw JSON response")
    add_server_options(gen)
    gen.set_defaults(handler=generate)

    exp = sub.add_parser("explain", help="explain an answer: which parts of the prompt drove it")
    add_input_options(exp)
    exp.add_argument("--target", help="explain this answer (forced decoding) instead of generating one")
    exp.add_argument("--method", action="append", choices=METHOD_NAMES, help="attribution method (repeatable)")
    exp.add_argument("--granularity", default="word", choices=["token", "word", "sentence", "message"])
    exp.add_argument("--top", type=int, default=5, help="strongest sources to list")
    exp.add_argument("--json", action="store_true", help="print the raw JSON response")
    exp.add_argument("--svg", help="write the target × source heatmap as SVG")
    exp.add_argument("--png", help="write the heatmap as PNG (needs matplotlib)")
    add_server_options(exp)
    exp.set_defaults(handler=explain)
