"""`gradtape serve`: run the API with uvicorn."""

from __future__ import annotations

import argparse
import contextlib
import logging
import logging.config
import os
import signal
import sys
from collections.abc import Sequence
from types import FrameType
from typing import Any, get_args

from pydantic import ValidationError

from service.config import Settings

log = logging.getLogger("gradtape.cli")

LOG_LEVELS: tuple[str, ...] = get_args(Settings.model_fields["log_level"].annotation)
LOG_FORMATS: tuple[str, ...] = get_args(Settings.model_fields["log_format"].annotation)


class _Version(argparse.Action):
    """`--version`, importing the engine (and with it JAX) only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS, help: str | None = None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        import engine

        print(f"gradtape {engine.__version__}")
        parser.exit()


def main(argv: Sequence[str] | None = None) -> int:
    """The `gradtape` command. Run as the program (argv None), `serve` ends the process
    itself once the server has stopped (see `serve`); called with argv, it returns."""
    try:
        defaults = Settings()
    except ValidationError as exc:
        print(f"gradtape: invalid GRADTAPE_* setting:\n{exc}", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog="gradtape", description="Gradients as a service.")
    parser.add_argument("--version", action=_Version, help="print the version and exit")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="run the HTTP API")
    serve_parser.add_argument("--host", default=defaults.host, help=f"default {defaults.host}")
    serve_parser.add_argument("--port", type=int, default=defaults.port,
                              help=f"default {defaults.port}")
    serve_parser.add_argument("--workers", type=int, default=defaults.workers,
                              help="worker processes (sessions live in each worker's memory)")
    serve_parser.add_argument("--log-level", choices=LOG_LEVELS, default=None,
                              help=f"default {defaults.log_level} (GRADTAPE_LOG_LEVEL)")
    serve_parser.add_argument("--log-format", choices=LOG_FORMATS, default=None,
                              help=f"default {defaults.log_format} (GRADTAPE_LOG_FORMAT)")
    args = parser.parse_args(argv)
    if args.workers > 1:
        print("gradtape: sessions live in each worker's memory, so with several workers a "
              "session's requests must reach the worker that created it", file=sys.stderr)
    # The app reads its settings from the environment, in this process and in each worker.
    if args.log_level is not None:
        os.environ["GRADTAPE_LOG_LEVEL"] = args.log_level
    if args.log_format is not None:
        os.environ["GRADTAPE_LOG_FORMAT"] = args.log_format
    settings = Settings()
    return serve(settings, host=args.host, port=args.port, workers=args.workers,
                 own_process=argv is None)


def serve(settings: Settings, *, host: str, port: int, workers: int,
          own_process: bool = False) -> int:
    """Run uvicorn until it is stopped. With `own_process`, the process then ends with
    `os._exit`, whatever threads are still busy.

    On SIGTERM or SIGINT, uvicorn stops accepting connections, waits up to
    `shutdown_timeout_seconds` for requests in flight, cancels the tasks of those left, runs
    the app's shutdown, and re-raises the signal to the handler that was in place before it
    started. A computation in a worker thread goes on after its task is cancelled, and the
    interpreter's exit joins such (non-daemon) threads: left to Python's default handlers,
    SIGINT would wait for the computation to finish. So the handler in place before uvicorn
    flushes the logs and ends the process at once, with status 0."""
    from service.observability import configure_logging, logging_config

    log_config = logging_config(settings)
    if own_process:
        logging.config.dictConfig(log_config)
        # the process's lines (ours and uvicorn's) never show a record's thread, process or
        # calling source line: leave them out of every record (a quarter of the cost of an
        # access-log line), as the logging HOWTO's "Optimization" section describes
        logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
        logging._srcfile = None
    configure_logging(settings)
    raise_open_files_limit()
    previous = _install_exit_handlers() if own_process else {}

    import uvicorn

    code = 0
    try:
        uvicorn.run(
            "service.main:create_app", factory=True, host=host, port=port, workers=workers,
            log_level=settings.log_level, log_config=log_config, access_log=False,
            http=settings.http_parser, timeout_keep_alive=settings.keep_alive_seconds,
            h11_max_incomplete_event_size=settings.max_incomplete_event_bytes,
            timeout_graceful_shutdown=settings.shutdown_timeout_seconds)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if own_process:
        _exit(code)
    return code


def _install_exit_handlers() -> dict[int, Any]:
    if sys.platform == "win32":
        return {}

    def stop(signum: int, frame: FrameType | None) -> None:
        log.info("stopped (%s)", signal.Signals(signum).name)
        _exit(0)

    return {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}


def _exit(code: int) -> None:
    """Flush the logs and standard streams, then end the process without waiting for
    threads (a background compile, a computation whose request was abandoned)."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


def raise_open_files_limit() -> None:
    """Raise the soft limit on open files to the hard limit: each connection is a file."""
    try:
        import resource
    except ImportError:  # not on Windows
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= target:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.warning("could not raise the open files limit from %s to %s: %s", soft, target, exc)
    else:
        log.info("open files limit raised from %s to %s", soft, target)


if __name__ == "__main__":
    sys.exit(main())
