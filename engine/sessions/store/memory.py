"""Sessions in this process's memory: the embedded default, nothing to start.

Each session has an asyncio lock; a writing request holds it for its whole length, so
requests on one session run one at a time while different sessions proceed in parallel. A
request that fails or is cancelled halfway is undone from a snapshot taken when it began.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from engine.errors import CapacityExceeded, NotFound
from engine.sessions.state import Session
from engine.sessions.store.base import SessionStore, StoreLimits


class InMemorySessionStore(SessionStore):
    kind = "memory"

    def __init__(self, limits: StoreLimits | None = None,
                 clock: Callable[[], float] = time.time):
        self.limits = limits if limits is not None else StoreLimits()
        self.clock = clock
        self._sessions: dict[str, Session] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._expired: OrderedDict[str, str | None] = OrderedDict()  # id -> owner
        self._answers: OrderedDict[str, tuple[float, tuple[str, int, str]]] = OrderedDict()
        self._mutex = threading.Lock()

    def __len__(self) -> int:
        return len(self._sessions)

    def count(self) -> int:
        return len(self._sessions)

    async def create(self, ttl_seconds: float | None = None,
                     owner: str | None = None) -> Session:
        ttl = self.check_ttl(ttl_seconds)
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
        """The live session (its idle clock restarts), or NotFound."""
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

    @asynccontextmanager
    async def open(self, session_id: str, owner: str | None = None, *,
                   write: bool = True) -> AsyncIterator[Session]:
        self.get(session_id, owner)  # 404 for another key before waiting on the lock
        lock = self._locks.get(session_id)
        if lock is None:
            raise NotFound(self._missing(session_id, owner))
        async with lock:
            session = self.get(session_id, owner)
            if not write:
                yield session
                return
            snapshot = session.snapshot()
            try:
                yield session
            except BaseException:
                session.restore(snapshot)
                raise
            finally:
                session.drop_snapshot()

    def _missing(self, session_id: str, owner: str | None) -> str:
        expired = session_id in self._expired and self._expired[session_id] in (None, owner)
        return self.missing(session_id, expired)

    async def delete(self, session_id: str, owner: str | None = None) -> None:
        self.get(session_id, owner)
        lock = self._locks.get(session_id)
        if lock is None:
            raise NotFound(self._missing(session_id, owner))
        async with lock:  # a request in flight on it finishes first
            with self._mutex:
                session = self._sessions.get(session_id)
                if session is None or session.owner not in (None, owner):
                    raise NotFound(self._missing(session_id, owner))
                del self._sessions[session_id]
                self._locks.pop(session_id, None)

    async def sweep(self) -> int:
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

    async def recall(self, key: str) -> tuple[str, int, str] | None:
        found = self._answers.get(key)
        if found is None or found[0] < self.clock():
            return None
        return found[1]

    async def remember(self, key: str, answer: tuple[str, int, str]) -> None:
        self._answers[key] = (self.clock() + self.limits.expired_memory, answer)
        while len(self._answers) > 10_000:
            self._answers.popitem(last=False)

    def total_bytes(self) -> int:
        """What all sessions hold. Each session's `held_bytes` is an int kept up to date by
        its own requests, so summing them never walks another session's tensors (which its
        request may be changing in another thread)."""
        with self._mutex:
            return sum(s.held_bytes for s in self._sessions.values())

    def check_bytes(self, session: Session, extra: int) -> None:
        if extra > 0:
            self.check_session_bytes(session, extra, self.total_bytes())
