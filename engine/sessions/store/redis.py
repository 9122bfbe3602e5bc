"""Sessions in Redis: any replica serves any request.

Layout, for a session `sid` (every key under the store's prefix):
- `s:{sid}`: a hash of the session's plain state (`codec.dump_state`), its `version`, its
  `owner` digest, its logical expiry time and the bytes it holds;
- `t:{sid}`: a hash of its tensors by id (`codec.dump_tensor`); tensor ids are never
  reused, so a replica caches tensors by (session, id) without ever asking again;
- `ids:{sid}`: a counter from which each writing request takes a block of fresh ids, so
  two replicas (or one that stalled) never name two values with one id;
- `seen:{sid}`: kept a day past the session, to tell "expired" from "unknown";
- `lock:{sid}`: the lease of the one request that may write the session now;
- `live` (sorted set: sid by expiry time), `bytes` (hash: sid -> bytes held) and `total`:
  capacity and the total byte cap, across replicas.

A writing request takes the lease (extended while it runs), loads the session, works on it
in memory and commits with one Lua script that checks the version it loaded (fencing: a
replica that stalled past its lease cannot overwrite newer state), the byte caps, and writes
state and tensors together. Nothing is acknowledged before it is in Redis. Expiry is decided
by the logical expiry time; Redis's own key TTLs (a minute longer) drop what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from engine.errors import CapacityExceeded, Conflict, NotFound, TooLarge
from engine.registry import RegisteredGraph, SharedGraphs
from engine.sessions import codec
from engine.sessions.state import Session
from engine.sessions.store.base import SessionStore, StoreLimits, StoreUnavailable

ID_BLOCK = 1 << 20  # tensor ids a writing request may take
GRACE_MS = 60_000  # Redis keeps a session's keys this much past its logical expiry

# Drop sessions whose logical expiry time has passed: their keys, their bytes from the
# total, their place in `live`. KEYS: live, bytes, total. ARGV: prefix, now.
_REAP = """
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
for _, sid in ipairs(gone) do
  local b = tonumber(redis.call('HGET', KEYS[2], sid) or '0')
  redis.call('DECRBY', KEYS[3], b)
  redis.call('HDEL', KEYS[2], sid)
  redis.call('ZREM', KEYS[1], sid)
  redis.call('DEL', ARGV[1] .. 's:' .. sid, ARGV[1] .. 't:' .. sid, ARGV[1] .. 'ids:' .. sid)
end
return #gone
"""

# KEYS: live, bytes, total, s:{sid}, seen:{sid}
# ARGV: prefix, now, max_sessions, sid, state, owner, expires, ttl_ms, seen_ms, ttl
_CREATE = _REAP.replace("return #gone", "") + """
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return -1 end
redis.call('HSET', KEYS[4], 'state', ARGV[5], 'version', 1, 'owner', ARGV[6],
           'expires', ARGV[7], 'bytes', 0, 'ttl', ARGV[10])
redis.call('PEXPIRE', KEYS[4], ARGV[8])
redis.call('ZADD', KEYS[1], ARGV[7], ARGV[4])
redis.call('HSET', KEYS[2], ARGV[4], 0)
redis.call('SET', KEYS[5], ARGV[6], 'PX', ARGV[9])
return 1
"""

# Open a session, in one round trip: for a writing request (a token given) take its lease
# first (busy: status 3); check the session exists, belongs to the owner and has not
# expired; push its expiry back; for a writer, take a block of fresh tensor ids.
# KEYS: s:{sid}, live, bytes, total, seen:{sid}, t:{sid}, ids:{sid}, lock:{sid}
# ARGV: now, owner, sid, ttl grace ms, seen ms, token (or ''), lease ms, id block
# Returns {status, state, version, total, last id of the block}: status 0 ok, 1 unknown,
# 2 expired, 3 busy.
_OPEN = """
local writer = ARGV[6] ~= ''
if writer and not redis.call('SET', KEYS[8], ARGV[6], 'NX', 'PX', ARGV[7]) then
  return {3}
end
local s = redis.call('HMGET', KEYS[1], 'state', 'version', 'owner', 'expires', 'ttl')
if not s[1] or (s[3] ~= '' and s[3] ~= ARGV[2]) then
  if writer then redis.call('DEL', KEYS[8]) end
  if s[1] then return {1} end
  local seen = redis.call('GET', KEYS[5])
  if seen and (seen == '' or seen == ARGV[2]) then return {2} end
  return {1}
end
local now = tonumber(ARGV[1])
if now >= tonumber(s[4]) then
  local b = tonumber(redis.call('HGET', KEYS[3], ARGV[3]) or '0')
  redis.call('DECRBY', KEYS[4], b)
  redis.call('HDEL', KEYS[3], ARGV[3])
  redis.call('ZREM', KEYS[2], ARGV[3])
  redis.call('DEL', KEYS[1], KEYS[6], KEYS[7], KEYS[8])
  return {2}
end
local ttl = tonumber(s[5])
local expires = now + ttl
redis.call('HSET', KEYS[1], 'expires', tostring(expires))
redis.call('ZADD', KEYS[2], expires, ARGV[3])
local keep = math.floor(ttl * 1000) + tonumber(ARGV[4])
redis.call('PEXPIRE', KEYS[1], keep)
redis.call('PEXPIRE', KEYS[6], keep)
redis.call('PEXPIRE', KEYS[7], keep)
redis.call('PEXPIRE', KEYS[5], keep + tonumber(ARGV[5]))
local last = 0
if writer then last = redis.call('INCRBY', KEYS[7], ARGV[8]) end
return {0, s[1], s[2], redis.call('GET', KEYS[4]) or '0', last}
"""

# KEYS: lock:{sid}; ARGV: token, lease ms. Extend the lease (1) if it is still ours.
_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS: lock:{sid}; ARGV: token. Give the lease back if it is still ours.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# Commit a writing request, whose new tensors were written just before, in the same
# pipeline, under ids nothing refers to yet. KEYS: s:{sid}, t:{sid}, live, bytes, total,
# seen:{sid}, ids:{sid}, lock:{sid}
# ARGV: sid, version, state, bytes, total cap, expires, keep ms, seen ms, token, n_del,
#       del ids..., n_new, new ids...
# Returns {version'}, or {-1} (fenced off), {-2, total} (over the total cap) or {-3} (a new
# tensor is not there: its write was refused), when the new tensors are dropped again. The
# lease is given back either way.
_COMMIT = """
local n = tonumber(ARGV[10])
local m = tonumber(ARGV[11 + n])
local function give_back()
  if redis.call('GET', KEYS[8]) == ARGV[9] then redis.call('DEL', KEYS[8]) end
end
local function drop_new()
  for i = 12 + n, 11 + n + m do redis.call('HDEL', KEYS[2], ARGV[i]) end
  give_back()
end
local v = redis.call('HGET', KEYS[1], 'version')
if v ~= ARGV[2] then drop_new(); return {-1} end
for i = 12 + n, 11 + n + m do  -- the tensors' write before this may have been refused
  if redis.call('HEXISTS', KEYS[2], ARGV[i]) == 0 then drop_new(); return {-3} end
end
local old = tonumber(redis.call('HGET', KEYS[4], ARGV[1]) or '0')
local delta = tonumber(ARGV[4]) - old
local total = tonumber(redis.call('GET', KEYS[5]) or '0')
if delta > 0 and total + delta > tonumber(ARGV[5]) then drop_new(); return {-2, total} end
for i = 11, 10 + n do redis.call('HDEL', KEYS[2], ARGV[i]) end
local nv = tonumber(v) + 1
redis.call('HSET', KEYS[1], 'state', ARGV[3], 'version', nv, 'bytes', ARGV[4],
           'expires', ARGV[6])
redis.call('HSET', KEYS[4], ARGV[1], ARGV[4])
redis.call('INCRBY', KEYS[5], delta)
redis.call('ZADD', KEYS[3], ARGV[6], ARGV[1])
for i = 1, 2 do redis.call('PEXPIRE', KEYS[i], ARGV[7]) end
redis.call('PEXPIRE', KEYS[7], ARGV[7])
redis.call('PEXPIRE', KEYS[6], tonumber(ARGV[7]) + tonumber(ARGV[8]))
give_back()
return {nv}
"""

# KEYS: s:{sid}, t:{sid}, live, bytes, total, seen:{sid}, ids:{sid}, lock:{sid}
# ARGV: sid, owner
_DELETE = """
local owner = redis.call('HGET', KEYS[1], 'owner')
if not owner or (owner ~= '' and owner ~= ARGV[2]) then return 0 end
local b = tonumber(redis.call('HGET', KEYS[4], ARGV[1]) or '0')
redis.call('DECRBY', KEYS[5], b)
redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('DEL', KEYS[1], KEYS[2], KEYS[6], KEYS[7], KEYS[8])
return 1
"""


# Keep a registered graph; evict the least recently used past the caps.
# KEYS: g:{gid}, graphs (sorted set by last use), gbytes (hash), gtotal
# ARGV: gid, json, size, now, max count, max bytes, prefix
_PUT_GRAPH = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
  return 0
end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
redis.call('INCRBY', KEYS[4], ARGV[3])
while redis.call('ZCARD', KEYS[2]) > tonumber(ARGV[5])
      or tonumber(redis.call('GET', KEYS[4]) or '0') > tonumber(ARGV[6]) do
  local oldest = redis.call('ZPOPMIN', KEYS[2])
  if #oldest == 0 then break end
  local size = tonumber(redis.call('HGET', KEYS[3], oldest[1]) or '0')
  redis.call('DECRBY', KEYS[4], size)
  redis.call('HDEL', KEYS[3], oldest[1])
  redis.call('DEL', ARGV[7] .. 'g:' .. oldest[1])
end
return 1
"""


@contextlib.contextmanager
def unavailable_on_failure(what: str = "the session store") -> Iterator[None]:
    """Redis failures as StoreUnavailable (503 with Retry-After), saying which: unreachable,
    or full (a write refused under maxmemory with noeviction)."""
    try:
        yield
    except ResponseError as exc:
        if isinstance(exc, OutOfMemoryError) or str(exc).startswith("OOM"):
            raise StoreUnavailable(f"{what} (Redis) is full and refuses writes (maxmemory); "
                                   "retry later, or delete sessions you no longer need"
                                   ) from None
        raise
    except (RedisError, OSError) as exc:
        raise StoreUnavailable(f"{what} (Redis) cannot be reached: {type(exc).__name__}; "
                               "retry shortly") from None


class TensorCache:
    """This replica's copies of committed tensors, by (session, tensor id), bounded in
    bytes. A tensor id never names two values, so an entry is never stale."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._items: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, sid: str, tid: int) -> np.ndarray | None:
        found = self._items.get((sid, tid))
        if found is None:
            self.misses += 1
            return None
        self.hits += 1
        self._items.move_to_end((sid, tid))
        return found

    def put(self, sid: str, tid: int, value: np.ndarray) -> None:
        if value.nbytes > self.max_bytes or (sid, tid) in self._items:
            return
        self._items[(sid, tid)] = value
        self.nbytes += value.nbytes
        while self.nbytes > self.max_bytes:
            _, dropped = self._items.popitem(last=False)
            self.nbytes -= dropped.nbytes

    def forget(self, sid: str) -> None:
        for key in [k for k in self._items if k[0] == sid]:
            self.nbytes -= self._items.pop(key).nbytes


class RedisSessionStore(SessionStore):
    kind = "redis"

    def __init__(self, url: str, limits: StoreLimits | None = None,
                 clock: Callable[[], float] = time.time, *, prefix: str = "gt:",
                 lease_seconds: float = 30.0, wait_seconds: float = 60.0,
                 cache_bytes: int = 256 * 1024**2):
        self.limits = limits if limits is not None else StoreLimits()
        self.clock = clock
        self.prefix = prefix
        self.lease_seconds = lease_seconds
        self.wait_seconds = wait_seconds
        self.url = url
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop,
                                                 tuple[aioredis.Redis, dict[str, Any]]] = \
            weakref.WeakKeyDictionary()
        self.cache = TensorCache(cache_bytes)
        self._local: dict[str, asyncio.Lock] = {}  # requests of this replica queue here
        self._totals: dict[int, int] = {}  # per open session: the store's total when loaded
        self._count = 0

    # ----- connections -----

    @property
    def redis(self) -> aioredis.Redis:
        return self._connection()[0]

    def _connection(self) -> tuple[aioredis.Redis, dict[str, Any]]:
        """A client for the running event loop (an asyncio connection belongs to the loop
        that opened it; a server has one loop, tests may drive an app from several)."""
        loop = asyncio.get_running_loop()
        found = self._clients.get(loop)
        if found is None:
            # a connection Redis dropped (a restart) is opened again on the next command
            client = aioredis.Redis.from_url(
                self.url, socket_connect_timeout=2, socket_timeout=10,
                health_check_interval=15,
                retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 3),
                retry_on_error=[RedisConnectionError, RedisTimeoutError])
            scripts = {name: client.register_script(body) for name, body in (
                ("reap", _REAP), ("create", _CREATE), ("open", _OPEN), ("commit", _COMMIT),
                ("delete", _DELETE), ("put_graph", _PUT_GRAPH), ("extend", _EXTEND),
                ("release", _RELEASE))}
            found = self._clients[loop] = (client, scripts)
        return found

    # ----- keys -----

    def _k(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def _session_keys(self, sid: str) -> list[str]:
        return [self._k("s", sid), self._k("t", sid), self._k("live"), self._k("bytes"),
                self._k("total"), self._k("seen", sid), self._k("ids", sid),
                self._k("lock", sid)]

    async def _call(self, name: str, keys: list[str], args: list[Any]) -> Any:
        with unavailable_on_failure():
            return await self._connection()[1][name](keys=keys, args=args)

    # ----- the contract -----

    def count(self) -> int:
        return self._count

    async def ready(self) -> str | None:
        try:
            await self.redis.ping()
        except (RedisError, OSError) as exc:
            return f"the session store (Redis) cannot be reached: {type(exc).__name__}"
        return None

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        found = self._clients.pop(loop, None)
        if found is not None:
            await found[0].aclose()

    async def create(self, ttl_seconds: float | None = None,
                     owner: str | None = None) -> Session:
        ttl = self.check_ttl(ttl_seconds)
        now = self.clock()
        session = Session(f"s_{uuid.uuid4().hex}", ttl, now, now, owner)
        sid = session.session_id
        keep = math.ceil(ttl * 1000) + GRACE_MS
        status = await self._call(
            "create", [self._k("live"), self._k("bytes"), self._k("total"), self._k("s", sid),
                       self._k("seen", sid)],
            [self.prefix, now, self.limits.max_sessions, sid, codec.dump_state(session),
             owner or "", repr(now + ttl), keep, self._seen_ms(), repr(ttl)])
        if status == -1:
            raise CapacityExceeded(
                f"the server holds its maximum of {self.limits.max_sessions} sessions; "
                "delete sessions you no longer need or retry after some expire")
        await self._update_count()
        return session

    def _seen_ms(self) -> int:
        return math.ceil(self.limits.expired_memory * 1000)

    async def _load(self, sid: str, owner: str | None, token: str = "",
                    tensors: bool = True) -> tuple[Session, str, int]:
        """The session (as of now) with its version and the store's total bytes; with a
        `token`, under the lease taken for it, with a block of fresh tensor ids."""
        keys = self._session_keys(sid)
        args = [self.clock(), owner or "", sid, GRACE_MS, self._seen_ms(), token,
                math.ceil(self.lease_seconds * 1000), ID_BLOCK]
        order = [keys[0], keys[2], keys[3], keys[4], keys[5], keys[1], keys[6], keys[7]]
        reply = await self._call("open", order, args)
        delay, deadline = 0.002, time.monotonic() + self.wait_seconds
        while reply[0] == 3:  # another request holds the lease: wait for it
            if time.monotonic() > deadline:
                raise StoreUnavailable(f"session {sid!r} is busy with a long request on "
                                       f"another replica (waited {self.wait_seconds:g} s); "
                                       "retry")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
            args[0] = self.clock()
            reply = await self._call("open", order, args)
        if reply[0] != 0:
            raise NotFound(self.missing(sid, expired=reply[0] == 2))
        state, version, total = reply[1], reply[2], int(reply[3])
        try:
            values = await self._tensors(sid, codec.tensor_ids(state)) if tensors else {}
            session = codec.load_state(state, values, self.clock())
        except BaseException:
            if token:
                await self._release(sid, token)
            raise
        session.last_used = self.clock()
        if token:
            session.next_id = int(reply[4]) - ID_BLOCK + 1
        return session, version.decode() if isinstance(version, bytes) else str(version), total

    async def _release(self, sid: str, token: str) -> None:
        with contextlib.suppress(StoreUnavailable):
            await self._call("release", [self._k("lock", sid)], [token])

    async def _tensors(self, sid: str, ids: list[int]) -> dict[int, np.ndarray]:
        values: dict[int, np.ndarray] = {}
        missing = []
        for tid in ids:
            found = self.cache.get(sid, tid)
            if found is None:
                missing.append(tid)
            else:
                values[tid] = found
        if missing:
            with unavailable_on_failure():
                blobs = await self.redis.hmget(self._k("t", sid), [str(t) for t in missing])
            for tid, blob in zip(missing, blobs, strict=True):
                if blob is None:
                    raise Conflict(f"tensor {tid} of session {sid!r} is missing from the "
                                   "store (the session changed meanwhile); retry")
                value = codec.load_tensor(blob if isinstance(blob, bytes) else blob.encode())
                self.cache.put(sid, tid, value)
                values[tid] = value
        return values

    @asynccontextmanager
    async def open(self, session_id: str, owner: str | None = None, *,
                   write: bool = True) -> AsyncIterator[Session]:
        if not write:
            session, _, total = await self._load(session_id, owner)
            self._totals[id(session)] = total
            try:
                yield session
            finally:
                self._totals.pop(id(session), None)
            return
        local = self._local.setdefault(session_id, asyncio.Lock())
        try:
            async with local:  # this replica's requests on a session queue here, not in Redis
                token = uuid.uuid4().hex
                session, version, total = await self._load(session_id, owner, token)
                before = set(session.values)
                self._totals[id(session)] = total
                keeper = asyncio.create_task(self._keep(session_id, token))
                try:
                    yield session
                except BaseException:
                    keeper.cancel()
                    await self._release(session_id, token)
                    raise
                finally:
                    keeper.cancel()
                    self._totals.pop(id(session), None)
                await self._commit(session, version, before, token)
        finally:
            if not local.locked():
                self._local.pop(session_id, None)

    async def _keep(self, sid: str, token: str) -> None:
        """Extend the lease while the request runs."""
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            with contextlib.suppress(StoreUnavailable):
                await self._call("extend", [self._k("lock", sid)],
                                 [token, math.ceil(self.lease_seconds * 1000)])

    async def _commit(self, s: Session, version: str, before: set[int], token: str) -> None:
        """One round trip: the new tensors, then the script that checks the version (fencing)
        and the caps, writes the state and gives the lease back."""
        sid = s.session_id
        new = [t for t in s.values if t not in before]
        gone = [t for t in before if t not in s.values]
        expires = self.clock() + s.ttl_seconds
        keep = math.ceil(s.ttl_seconds * 1000) + GRACE_MS
        client, scripts = self._connection()
        with unavailable_on_failure():
            async with client.pipeline(transaction=False) as pipe:
                if new:
                    pipe.hset(self._k("t", sid), mapping={
                        str(t): codec.dump_tensor(s.values[t]) for t in new})
                await scripts["commit"](
                    keys=self._session_keys(sid), client=pipe,
                    args=[sid, version, codec.dump_state(s), s.held_bytes,
                          self.limits.total_max_bytes, repr(expires), keep, self._seen_ms(),
                          token, len(gone), *[str(t) for t in gone], len(new),
                          *[str(t) for t in new]])
                replies = await pipe.execute(raise_on_error=False)
        for failed in replies:  # the tensors' write refused (Redis full): nothing was kept
            if isinstance(failed, Exception):
                with unavailable_on_failure():
                    raise failed
        reply = replies[-1]
        if reply[0] == -1:
            raise Conflict(f"session {sid!r} was changed by another request while this one "
                           "ran (its lease ran out); nothing of this request was kept: retry")
        if reply[0] == -3:
            raise StoreUnavailable("the session store (Redis) did not keep this request's "
                                   "tensors; nothing of it was kept: retry")
        if reply[0] == -2:
            raise TooLarge(f"all sessions together would hold more than "
                           f"{self.limits.total_max_bytes} bytes "
                           "(GRADTAPE_TOTAL_SESSION_BYTES)")
        for tid in new:  # only what is committed enters the cache
            self.cache.put(sid, tid, s.values[tid])

    async def delete(self, session_id: str, owner: str | None = None) -> None:
        async with self._local.setdefault(session_id, asyncio.Lock()):
            token = uuid.uuid4().hex
            # 404 as a request would; the lease
            await self._load(session_id, owner, token, tensors=False)
            await self._call("delete", self._session_keys(session_id),
                             [session_id, owner or ""])
        self._local.pop(session_id, None)
        self.cache.forget(session_id)
        await self._update_count()

    async def sweep(self) -> int:
        gone = await self._call("reap", [self._k("live"), self._k("bytes"), self._k("total")],
                                [self.prefix, self.clock()])
        await self._update_count()
        return int(gone)

    async def recall(self, key: str) -> tuple[str, int, str] | None:
        with unavailable_on_failure():
            blob = await self.redis.get(self._k("answer", key))
        if blob is None:
            return None
        digest, status, body = orjson.loads(blob)
        return digest, status, body

    async def remember(self, key: str, answer: tuple[str, int, str]) -> None:
        with unavailable_on_failure():
            await self.redis.set(self._k("answer", key), orjson.dumps(answer),
                                 px=self._seen_ms())

    async def _update_count(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            self._count = int(await self.redis.zcard(self._k("live")))

    async def total_bytes(self) -> int:
        return int(await self.redis.get(self._k("total")) or 0)

    def check_bytes(self, session: Session, extra: int) -> None:
        if extra > 0:
            self.check_session_bytes(session, extra, self._totals.get(id(session), 0))


class RedisGraphs(SharedGraphs):
    """Registered graphs in Redis, beside the sessions of `store` (same server, prefix and
    connections), bounded by count and bytes with least-recently-used eviction."""

    def __init__(self, store: RedisSessionStore, max_graphs: int, max_bytes: int):
        self.store = store
        self.max_graphs = max_graphs
        self.max_bytes = max_bytes

    async def put(self, entry: RegisteredGraph) -> bool:
        k = self.store._k
        new = await self.store._call(
            "put_graph", [k("g", entry.graph_id), k("graphs"), k("gbytes"), k("gtotal")],
            [entry.graph_id, entry.graph_json, entry.nbytes, time.time(), self.max_graphs,
             self.max_bytes, self.store.prefix])
        return bool(new)

    async def get(self, gid: str) -> bytes | None:
        k = self.store._k
        with unavailable_on_failure("the graph store"):
            async with self.store.redis.pipeline(transaction=False) as pipe:
                pipe.get(k("g", gid))
                pipe.zadd(k("graphs"), {gid: time.time()}, xx=True)
                blob, _ = await pipe.execute()
        return blob if blob is None or isinstance(blob, bytes) else str(blob).encode()
