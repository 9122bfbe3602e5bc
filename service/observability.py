"""Request ids, access logs, and the format of every log line the process writes.

Each HTTP request gets an id: the client's `X-Request-ID` when it is a sane token, else a new
one. The id is echoed in the response headers of every answer (errors from other middleware
included), is in the request's access log line (logger `gradtape.access`), and is available to
any code running for the request through the `request_id` context variable, which the log
filter adds to every record written while it is set.

Log lines are `text` (a timestamp, level, logger and message, then `key=value` fields) or
`json` (one object a line). Headers are never logged, so neither is an API key.
"""

from __future__ import annotations

import logging
import random
import re
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson
from starlette.types import Scope

from service.config import Settings

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
"""The id of the request being handled, when there is one."""

access_log = logging.getLogger("gradtape.access")

REQUEST_ID_HEADER = b"x-request-id"
MAX_REQUEST_ID_LENGTH = 128
_VALID_REQUEST_ID = re.compile(rb"[\x21-\x7e]{1,%d}" % MAX_REQUEST_ID_LENGTH)
_MAX_LOGGED_PATH = 200


def incoming_request_id(value: bytes | None) -> str | None:
    """The client's request id when it is 1 to 128 visible ASCII characters (no spaces or
    control characters), else None."""
    if value is None or not _VALID_REQUEST_ID.fullmatch(value):
        return None
    return value.decode("ascii")


def new_request_id() -> str:
    """32 hex digits, as uuid4().hex. A request id names a request in logs and answers and
    guards nothing, so it comes from the process's pseudo-random generator (seeded from the
    OS, and again in each forked worker) rather than a system call per request."""
    return f"{random.getrandbits(128):032x}"


def log_access(scope: Scope, rid: str, status: int | None, seconds: float) -> None:
    route = getattr(scope.get("route"), "path", None)
    fields: dict[str, Any] = {
        "method": scope.get("method", ""),
        "route": route or "unmatched",
        "status": status,
        "duration_ms": round(seconds * 1000, 3),
    }
    session = (scope.get("path_params") or {}).get("session_id")
    if session is not None:
        fields["session_id"] = str(session)
    if route is None:
        fields["path"] = str(scope.get("path", ""))[:_MAX_LOGGED_PATH]
    access_log.info("%s %s %s %.1fms", fields["method"], fields["route"],
                    "-" if status is None else status, fields["duration_ms"],
                    extra={"request_id": rid, "access": fields})


# ----- formatting -----

def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class RequestIdFilter(logging.Filter):
    """Adds the current request's id to records that do not carry one."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            rid = request_id.get()
            if rid is not None:
                record.request_id = rid
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (ISO 8601, UTC), level, logger, message, request_id
    when there is one, the access fields of access records, and the exception if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", None)
        if rid is not None:
            entry["request_id"] = rid
        access = getattr(record, "access", None)
        if isinstance(access, dict):
            entry.update(access)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(entry, default=str).decode()


_BARE = re.compile(r"[^\s\"=\\]+")


def _text_value(value: object) -> str:
    text = str(value)
    return text if _BARE.fullmatch(text) and text.isprintable() else orjson.dumps(text).decode()


class TextFormatter(logging.Formatter):
    """`<time> <LEVEL> <logger> <message>`, then `request_id=...` (and `session_id=...`,
    `path=...` on access lines), then the traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record)} {record.levelname} {record.name} {record.getMessage()}"
        rid = getattr(record, "request_id", None)
        if rid is not None:
            line += f" request_id={_text_value(rid)}"
        access = getattr(record, "access", None)
        if isinstance(access, dict):
            for key in ("session_id", "path"):
                if key in access:
                    line += f" {key}={_text_value(access[key])}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


FORMATTERS: dict[str, type[logging.Formatter]] = {"json": JsonFormatter, "text": TextFormatter}


class StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever `sys.stderr` is when a record comes (as `logging.lastResort` does),
    so that a replaced stderr (test capture, a daemonizing wrapper) keeps working."""

    def __init__(self, level: int = logging.NOTSET):
        logging.Handler.__init__(self, level)
        self.addFilter(RequestIdFilter())

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


def configure_logging(settings: Settings) -> None:
    """Send the `gradtape` loggers' records to stderr in `settings.log_format`, at
    `settings.log_level`. Safe to call any number of times: it keeps a single handler.

    When the process routes the root logger through a `StderrHandler` already (as
    `gradtape serve` does, with `logging_config`), that handler is the one used, and the
    `gradtape` records reach it by propagation."""
    root = logging.getLogger()
    gradtape = logging.getLogger("gradtape")
    formatter = FORMATTERS[settings.log_format]()
    on_root = [h for h in root.handlers if isinstance(h, StderrHandler)]
    own = [h for h in gradtape.handlers if isinstance(h, StderrHandler)]
    if on_root:
        for handler in own:
            gradtape.removeHandler(handler)
        targets = on_root
    elif own:
        for handler in own[1:]:
            gradtape.removeHandler(handler)
        targets = own[:1]
    else:
        targets = [StderrHandler()]
        gradtape.addHandler(targets[0])
    for handler in targets:
        handler.setFormatter(formatter)
    gradtape.setLevel(settings.log_level.upper())


def logging_config(settings: Settings) -> dict[str, Any]:
    """A `logging.config.dictConfig` for the whole process (uvicorn's `log_config`): the root
    logger, and with it uvicorn's and third-party warnings, in the same format as the
    service's own lines. uvicorn applies it in every worker process."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"gradtape": {"()": f"{__name__}.{FORMATTERS[settings.log_format].__name__}"}},
        "handlers": {"stderr": {"class": f"{__name__}.StderrHandler", "formatter": "gradtape"}},
        "root": {"level": "WARNING", "handlers": ["stderr"]},
        "loggers": {
            "uvicorn": {"level": "INFO", "handlers": [], "propagate": True},
            "uvicorn.error": {"level": settings.log_level.upper()},
            "uvicorn.access": {"handlers": [], "propagate": False},
        },
    }
