"""Schemathesis hooks, loaded by schemathesis.toml (run schemathesis from the repository root).

An Idempotency-Key names one request, and clients make each one unique (a UUID, say). Keys
that schemathesis generates repeat across requests (short strings do), and the server answers
a repeated key as a retry: with the first request's answer (a session created earlier, maybe
deleted since) or, for another request, with a 422. So each well-formed generated key is made
unique before it is sent; a malformed one (a negative test) is sent as generated.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import schemathesis

HEADER = "Idempotency-Key"
WELL_FORMED = re.compile(r"[!-~]([ -~]{0,253}[!-~])?")


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    key = (case.headers or {}).get(HEADER)
    if isinstance(key, str) and WELL_FORMED.fullmatch(key):
        case.headers[HEADER] = f"{key[:200]}-{uuid.uuid4().hex}"
