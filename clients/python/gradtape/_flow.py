"""Flows: work of several requests written once for the blocking and the async client.

A flow is a generator that yields `Call`s and is sent each call's decoded JSON answer (None
for 204); an error answer is thrown into it, where it may be handled. Its return value is the
result. `Client.run` and `AsyncClient.run` drive flows.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

T = TypeVar("T")


@dataclass(frozen=True)
class Call:
    """One request of a flow: method, path under the base URL, JSON body, query."""

    method: str
    path: str
    body: Any = None
    params: Mapping[str, str] | None = None


Flow = Generator[Call, Any, T]
"""Yields calls, is sent each call's decoded JSON answer (None for 204), returns its result.
An error answer is thrown into the flow, which may handle it."""


def path(*parts: str) -> str:
    """A URL path from segments, each percent-quoted (names may hold ':' or '/')."""
    return "/" + "/".join(quote(p, safe="") for p in parts)
