"""`gradtape serve`: run the API with uvicorn."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from service.config import Settings


def main(argv: Sequence[str] | None = None) -> int:
    defaults = Settings()
    parser = argparse.ArgumentParser(prog="gradtape", description="Gradients as a service.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP API")
    serve.add_argument("--host", default=defaults.host, help=f"default {defaults.host}")
    serve.add_argument("--port", type=int, default=defaults.port,
                       help=f"default {defaults.port}")
    serve.add_argument("--workers", type=int, default=defaults.workers,
                       help="worker processes (sessions live in each worker's memory)")
    serve.add_argument("--log-level", default=defaults.log_level)
    args = parser.parse_args(argv)
    if args.workers > 1:
        print("gradtape: sessions live in each worker's memory, so with several workers a "
              "session's requests must reach the worker that created it", file=sys.stderr)

    import uvicorn

    uvicorn.run("service.main:create_app", factory=True, host=args.host, port=args.port,
                workers=args.workers, log_level=args.log_level, access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
