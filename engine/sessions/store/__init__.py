"""Where sessions live: one interface (`base`), kept in this process (`memory`) or in Redis
(`redis`), so that any replica can serve any request."""

from engine.sessions.store.base import SessionStore, StoreLimits, StoreUnavailable
from engine.sessions.store.memory import InMemorySessionStore

__all__ = ["InMemorySessionStore", "SessionStore", "StoreLimits", "StoreUnavailable"]
