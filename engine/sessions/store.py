"""Where sessions live: an interface, and an in-memory implementation.

The store owns expiry (idle TTL, checked on access and by a periodic sweep), capacity (a
maximum number of sessions) and byte caps (per session and in total). Each session has a lock;
the HTTP layer holds it for the whole of a request, so requests on one session run one at a
time while different sessions proceed in parallel.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from engine.errors import CapacityExceeded, InvalidGraph, NotFound, TooLarge, clip
from engine.sessions.state import Session


@dataclass(frozen=True)
class StoreLimits:
    default_ttl: float = 900.0
    max_ttl: float = 86_400.0
    max_sessions: int = 1000
    session_max_bytes: int = 1024**3
    total_max_bytes: int = 8 * 1024**3


class SessionStore(ABC):
    """Sessions by id. `owner` is a digest of the API key of the request (None without
    keys): a session belongs to the key that created it, and for any other key it does not
    exist (NotFound, as for an unknown id)."""

    kind: str

    @abstractmethod
    def create(self, ttl_seconds: float | None = None, owner: str | None = None) -> Session: ...

    @abstractmethod
    def get(self, session_id: str, owner: str | None = None) -> Session:
        """The live session (its idle clock restarts), or NotFound saying unknown or
        expired."""

    @abstractmethod
    def delete(self, session_id: str, owner: str | None = None) -> None: ...

    @abstractmethod
    def lock(self, session_id: str) -> asyncio.Lock: ...

    @abstractmethod
    def sweep(self) -> int:
        """Drop expired sessions; returns how many."""

    @abstractmethod
    def check_bytes(self, session: Session, extra: int) -> None:
        """TooLarge if `extra` more bytes would pass the session's or the store's cap."""

    @abstractmethod
    def __len__(self) -> int: ...


class InMemorySessionStore(SessionStore):
    kind = "memory"

    def __init__(self, limits: StoreLimits | None = None,
                 clock: Callable[[], float] = time.time):
        self.limits = limits if limits is not None else StoreLimits()
        self.clock = clock
        self._sessions: dict[str, Session] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._expired: OrderedDict[str, str | None] = OrderedDict()  # id -> owner
        self._mutex = threading.Lock()

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, ttl_seconds: float | None = None, owner: str | None = None) -> Session:
        ttl = self.limits.default_ttl if ttl_seconds is None else ttl_seconds
        if not 0 < ttl <= self.limits.max_ttl:
            raise InvalidGraph(f"ttl_seconds must be in (0, {self.limits.max_ttl:g}]",
                               loc=("ttl_seconds",))
        with self._mutex:
            self._sweep_locked()
            if len(self._sessions) >= self.limits.max_sessions:
                raise CapacityExceeded(
                    f"the server holds its maximum of {self.limits.max_sessions} sessions; "
                    "delete sessions you no longer need or retry after some expire")
            now = self.clock()
            session = Session(f"s_{uuid.uuid4().hex}", ttl, now, now, owner)
            self._sessions[session.session_id] = session
            self._locks[session.session_id] = asyncio.Lock()
            return session

    def get(self, session_id: str, owner: str | None = None) -> Session:
        with self._mutex:
            session = self._sessions.get(session_id)
            now = self.clock()
            if session is not None and session.owner not in (None, owner):
                raise NotFound(self._missing(session_id, owner))
            if session is not None and now >= session.expires_at:
                self._drop(session_id)
                session = None
            if session is None:
                raise NotFound(self._missing(session_id, owner))
            session.last_used = now
            return session

    def _missing(self, session_id: str, owner: str | None = None) -> str:
        if self._expired.get(session_id, "") in (None, owner):
            return (f"session {clip(session_id)} expired after its idle time-out; create a "
                    "new one (POST /v1/sessions, optionally with a longer ttl_seconds)")
        return f"unknown session {clip(session_id)}; create one with POST /v1/sessions"

    def delete(self, session_id: str, owner: str | None = None) -> None:
        with self._mutex:
            session = self._sessions.get(session_id)
            if session is None or session.owner not in (None, owner):
                raise NotFound(self._missing(session_id, owner))
            del self._sessions[session_id]
            self._locks.pop(session_id, None)

    def lock(self, session_id: str) -> asyncio.Lock:
        found = self._locks.get(session_id)
        if found is None:
            with self._mutex:
                raise NotFound(self._missing(session_id))
        return found

    def sweep(self) -> int:
        with self._mutex:
            return self._sweep_locked()

    def _sweep_locked(self) -> int:
        now = self.clock()
        expired = [sid for sid, s in self._sessions.items() if now >= s.expires_at]
        for sid in expired:
            self._drop(sid)
        return len(expired)

    def _drop(self, session_id: str) -> None:
        session = self._sessions.pop(session_id, None)
        self._locks.pop(session_id, None)
        self._expired[session_id] = session.owner if session is not None else None
        while len(self._expired) > 10_000:
            self._expired.popitem(last=False)

    def total_bytes(self) -> int:
        """What all sessions hold. Each session's `held_bytes` is an int kept up to date by
        its own requests, so summing them never walks another session's tensors (which its
        request may be changing in another thread)."""
        with self._mutex:
            return sum(s.held_bytes for s in self._sessions.values())

    def check_bytes(self, session: Session, extra: int) -> None:
        if extra <= 0:
            return
        held = session.held_bytes
        if held + extra > self.limits.session_max_bytes:
            raise TooLarge(f"session {session.session_id!r} would hold {held + extra} bytes; "
                           f"its cap is {self.limits.session_max_bytes} "
                           "(GRADTAPE_SESSION_MAX_BYTES): delete tensors or tapes first")
        total = self.total_bytes()
        if total + extra > self.limits.total_max_bytes:
            raise TooLarge(f"all sessions together would hold {total + extra} bytes; the cap "
                           f"is {self.limits.total_max_bytes} (GRADTAPE_TOTAL_SESSION_BYTES)")
