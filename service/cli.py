"""`glassbox serve` (the HTTP server), and the client commands: `generate`, `explain`, `explain-batch`.

The server's modules (torch, transformers, uvicorn) are imported only by `serve`: the client commands run
from a client-only install and start in a fraction of a second.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from service.client.commands import batch, single


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
    serve.set_defaults(handler=None)
    single.add_commands(sub)
    batch.add_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.handler is not None:
        sys.exit(args.handler(args))
    _serve(args)


def _serve(args: argparse.Namespace) -> None:
    try:
        import torch  # noqa: F401
        import uvicorn
    except ImportError as exc:  # a client-only install (`pip install glassbox`)
        raise SystemExit(f'glassbox serve needs: pip install "glassbox[server]" ({exc})') from exc

    from service.api.app import create_app
    from service.observability.logging import configure_logging
    from service.serving.server import CLOSE_TIMEOUT_S, DrainingServer
    from service.settings import Settings

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
    configure_logging(settings.log_level, settings.log_format)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,  # our handlers (JSON with request ids) for uvicorn's loggers too
        access_log=False,  # replaced by glassbox.access, which has the request id and duration
        # The drain phase already waited up to drain_timeout_s; this only bounds closing what is left.
        timeout_graceful_shutdown=CLOSE_TIMEOUT_S,
        # No WebSocket endpoints: an upgrade attempt is a plain HTTP request (404/405), and no WebSocket
        # library logs its handshake headers (a bearer key among them) at debug level.
        ws="none",
    )
    serving = app.state.serving
    DrainingServer(config, serving.drain, stop_work=serving.close).run()


if __name__ == "__main__":
    main()
