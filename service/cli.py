"""`glassbox serve`: start the HTTP server on the configured models."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence

import uvicorn

from service.api.app import create_app
from service.settings import Settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glassbox", description="Glassbox: LLM generation and explanation")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the HTTP API")
    serve.add_argument("--host", help="bind address (GLASSBOX_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (GLASSBOX_PORT, default 8000)")
    serve.add_argument("--model", action="append", dest="models", help="model to load (repeatable)")
    serve.add_argument("--device", help="auto, cpu, cuda or cuda:N (GLASSBOX_DEVICE)")
    serve.add_argument("--dtype", help="auto, float32, bfloat16 or float16 (GLASSBOX_DTYPE)")
    serve.add_argument("--log-level", help="debug, info, warning or error")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    overrides = {
        key: value
        for key, value in {
            "host": args.host,
            "port": args.port,
            "models": ",".join(args.models) if args.models else None,
            "device": args.device,
            "dtype": args.dtype,
            "log_level": args.log_level,
        }.items()
        if value is not None
    }
    settings = Settings(**overrides)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=30,
    )


if __name__ == "__main__":
    main()
