"""The session store's contract.

A store owns expiry (idle TTL), capacity (a maximum number of sessions), byte caps (per
session and in total) and who may see a session (`owner`, a digest of the API key that
created it: for any other key the session does not exist). `open` hands out a session for
one request: with `write=True` no other request, in this process or another replica, writes
it meanwhile, and the request's changes are kept only if it finishes (a failure or a
cancellation leaves the session as it was).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

from engine.errors import EngineError, InvalidGraph, TooLarge, clip
from engine.sessions.state import Session


@dataclass(frozen=True)
class StoreLimits:
    default_ttl: float = 900.0
    max_ttl: float = 86_400.0
    max_sessions: int = 1000
    session_max_bytes: int = 1024**3
    total_max_bytes: int = 8 * 1024**3
    expired_memory: float = 86_400.0  # how long an expired id is told apart from an unknown one


class StoreUnavailable(EngineError):
    """The store cannot be reached (the HTTP layer answers 503 with Retry-After)."""

    title = "Store unavailable"
    retry_after = 1


class SessionStore(ABC):
    kind: str
    limits: StoreLimits
    clock: Callable[[], float] = time.time

    @abstractmethod
    async def create(self, ttl_seconds: float | None = None,
                     owner: str | None = None) -> Session: ...

    @abstractmethod
    def open(self, session_id: str, owner: str | None = None, *,
             write: bool = True) -> AbstractAsyncContextManager[Session]:
        """The live session for one request (its idle clock restarts), or NotFound saying
        unknown or expired."""

    @abstractmethod
    async def delete(self, session_id: str, owner: str | None = None) -> None: ...

    @abstractmethod
    async def sweep(self) -> int:
        """Forget expired sessions; returns how many."""

    @abstractmethod
    def check_bytes(self, session: Session, extra: int) -> None:
        """TooLarge if `extra` more bytes would pass the session's or the store's cap (the
        store's total as of when the session was opened; a shared store checks it again,
        exactly, when the request's changes are written)."""

    @abstractmethod
    def count(self) -> int:
        """Live sessions (as last seen, for metrics)."""

    @abstractmethod
    async def recall(self, key: str) -> tuple[str, int, str] | None:
        """A request's answer kept under `key` by `remember` (for a day), or None."""

    @abstractmethod
    async def remember(self, key: str, answer: tuple[str, int, str]) -> None: ...

    async def ready(self) -> str | None:
        """None when the store can serve, else why not."""
        return None

    async def close(self) -> None:  # noqa: B027 (optional hook)
        """Release connections."""

    # ----- shared rules -----

    def check_ttl(self, ttl_seconds: float | None) -> float:
        ttl = self.limits.default_ttl if ttl_seconds is None else ttl_seconds
        if not 0 < ttl <= self.limits.max_ttl:
            raise InvalidGraph(f"ttl_seconds must be in (0, {self.limits.max_ttl:g}]",
                               loc=("ttl_seconds",))
        return ttl

    def check_session_bytes(self, session: Session, extra: int, total: int) -> None:
        held = session.held_bytes
        if held + extra > self.limits.session_max_bytes:
            raise TooLarge(f"session {session.session_id!r} would hold {held + extra} bytes; "
                           f"its cap is {self.limits.session_max_bytes} "
                           "(GRADTAPE_SESSION_MAX_BYTES): delete tensors or tapes first")
        if total + extra > self.limits.total_max_bytes:
            raise TooLarge(f"all sessions together would hold {total + extra} bytes; the cap "
                           f"is {self.limits.total_max_bytes} (GRADTAPE_TOTAL_SESSION_BYTES)")

    @staticmethod
    def missing(session_id: str, expired: bool) -> str:
        if expired:
            return (f"session {clip(session_id)} expired after its idle time-out; create a "
                    "new one (POST /v1/sessions, optionally with a longer ttl_seconds)")
        return f"unknown session {clip(session_id)}; create one with POST /v1/sessions"


SessionIterator = AsyncIterator[Session]
