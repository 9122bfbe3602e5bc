"""The session store's contract, held by both stores (this process's memory, and Redis):
idle expiry on an injected clock, sweeping, TTL bounds, capacity, byte caps, ownership, a
failed request leaving the session as it was, one writer at a time. Then what only a shared
store has to get right (replicas, fencing, tensor ids, the cache, Redis down), and the same
rules through HTTP."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from engine.compute import Engine
from engine.errors import CapacityExceeded, Conflict, InvalidGraph, NotFound, TooLarge
from engine.sessions.runtime import SessionRuntime
from engine.sessions.state import NAME_OVERHEAD, TENSOR_OVERHEAD
from engine.sessions.store import InMemorySessionStore, SessionStore, StoreLimits, StoreUnavailable
from engine.sessions.store.redis import ID_BLOCK, RedisSessionStore
from service.config import Settings
from service.errors import STATUS
from service.main import create_app
from service.state import Services

# what a named tensor (one-letter name) holds beside its data
PER_TENSOR = TENSOR_OVERHEAD + NAME_OVERHEAD + 1

Factory = Callable[..., SessionStore]


@pytest.fixture(params=["memory", "redis"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def clock() -> list[float]:
    return [1_000.0]


@pytest.fixture
def make(kind: str, clock: list[float], request: pytest.FixtureRequest) -> Factory:
    """make(**limits) -> a store on the injected clock; for Redis, every store made in one
    test shares the server (as replicas do), which starts empty."""
    url = ""
    if kind == "redis":
        url = request.getfixturevalue("redis_url")
        redis.Redis.from_url(url).flushdb()

    def factory(**limits: Any) -> SessionStore:
        if kind == "memory":
            return InMemorySessionStore(StoreLimits(**limits), clock=lambda: clock[0])
        return RedisSessionStore(url, StoreLimits(**limits), clock=lambda: clock[0])

    return factory


def run(body: Callable[[], Awaitable[None]], *stores: SessionStore) -> None:
    async def main() -> None:
        try:
            await body()
        finally:
            for store in stores:
                await store.close()

    asyncio.run(main())


def floats(n: int) -> dict[str, Any]:
    return {"dtype": "float32", "shape": [n], "data": [1.0] * n}


async def expect_missing(store: SessionStore, sid: str, word: str,
                         owner: str | None = None) -> None:
    with pytest.raises(NotFound) as err:
        async with store.open(sid, owner):
            pass
    assert word in err.value.detail and sid in err.value.detail, err.value.detail


# ----- expiry -----


def test_expires_after_ttl_of_idle_time(make: Factory, clock: list[float]) -> None:
    store = make(default_ttl=10.0)

    async def body() -> None:
        s = await store.create()
        assert s.ttl_seconds == 10.0 and s.expires_at == 1_010.0
        clock[0] += 9.99
        async with store.open(s.session_id) as got:
            assert got.session_id == s.session_id
        clock[0] += 10.0  # 10 s idle since the last use
        await expect_missing(store, s.session_id, "expired")
        await expect_missing(store, s.session_id, "expired")  # it stays expired
        await store.sweep()
        assert store.count() == 0

    run(body, store)


def test_use_pushes_expiry_back(make: Factory, clock: list[float]) -> None:
    store = make(default_ttl=10.0)

    async def body() -> None:
        s = await store.create()
        for _ in range(5):  # 40 s in all, never 10 s idle
            clock[0] += 8.0
            async with store.open(s.session_id, write=False) as got:
                assert got.expires_at == clock[0] + 10.0
        clock[0] += 9.0
        async with store.open(s.session_id):
            pass

    run(body, store)


def test_unknown_and_deleted_sessions(make: Factory) -> None:
    store = make()

    async def body() -> None:
        await expect_missing(store, "s_nope", "unknown")
        s = await store.create()
        await store.delete(s.session_id)
        await expect_missing(store, s.session_id, "unknown")
        with pytest.raises(NotFound):
            await store.delete(s.session_id)

    run(body, store)


def test_sweep_drops_expired_sessions(make: Factory, clock: list[float]) -> None:
    store = make(default_ttl=10.0)

    async def body() -> None:
        old = [await store.create() for _ in range(3)]
        clock[0] += 6.0
        young = await store.create(ttl_seconds=10.0)
        kept = await store.create(ttl_seconds=100.0)
        assert await store.sweep() == 0 and store.count() == 5
        clock[0] += 5.0  # the first three are 11 s idle, the others 5 s
        assert await store.sweep() == 3
        assert store.count() == 2
        for s in old:
            await expect_missing(store, s.session_id, "expired")
        async with store.open(young.session_id):
            pass
        clock[0] += 50.0
        assert await store.sweep() == 1
        async with store.open(kept.session_id) as got:
            assert got.ttl_seconds == 100.0

    run(body, store)


def test_per_session_ttl_and_max_ttl(make: Factory, clock: list[float]) -> None:
    store = make(default_ttl=10.0, max_ttl=60.0)

    async def body() -> None:
        short, long = await store.create(), await store.create(ttl_seconds=60.0)
        assert (short.ttl_seconds, long.ttl_seconds) == (10.0, 60.0)
        clock[0] += 30.0
        await expect_missing(store, short.session_id, "expired")
        async with store.open(long.session_id):
            pass
        for bad in (60.5, 0.0, -1.0):
            with pytest.raises(InvalidGraph) as err:
                await store.create(ttl_seconds=bad)
            assert STATUS[type(err.value)] == 422 and err.value.loc == ("ttl_seconds",)
        await store.sweep()
        assert store.count() == 1

    run(body, store)


# ----- capacity -----


def test_max_sessions(make: Factory, clock: list[float]) -> None:
    store = make(default_ttl=10.0, max_sessions=2)

    async def body() -> None:
        a = await store.create()
        clock[0] += 5.0
        await store.create()
        with pytest.raises(CapacityExceeded) as err:
            await store.create()
        assert STATUS[type(err.value)] == 429 and "2" in err.value.detail
        await store.delete(a.session_id)
        clock[0] += 6.0
        c = await store.create()
        with pytest.raises(CapacityExceeded):
            await store.create()
        clock[0] += 5.0  # the second one is 11 s idle and expires: its slot is free again
        async with store.open(c.session_id):
            pass
        await store.create()

    run(body, store)


def test_session_byte_cap(make: Factory) -> None:
    store = make(session_max_bytes=100 + PER_TENSOR)
    rt = SessionRuntime(Engine(), store.check_bytes)

    async def body() -> None:
        sid = (await store.create()).session_id
        async with store.open(sid) as s:
            rt.put_tensor(s, "a", floats(20))  # 80 bytes
            rt.put_tensor(s, "a", floats(25))  # rebinding frees the old 80: 100 bytes
            assert s.nbytes == 100 and s.held_bytes == 100 + PER_TENSOR == s.footprint()
            with pytest.raises(TooLarge) as err:
                rt.put_tensor(s, "b", 1.0)
            assert STATUS[type(err.value)] == 413 and sid in err.value.detail
            assert "b" not in s.names  # nothing was bound
        async with store.open(sid) as s:
            rt.delete_tensor(s, "a")
            assert s.nbytes == 0 and s.held_bytes == 0
            rt.put_tensor(s, "b", floats(25))
            with pytest.raises(TooLarge):
                rt.put_tensor(s, "c", floats(26), variable=True)
            # a run whose results would pass the cap binds nothing
            with pytest.raises(TooLarge):
                rt.run(s, [{"id": "d", "op": "multiply", "args": ["b", 2.0]}], None, 100)
        async with store.open(sid, write=False) as s:
            assert set(s.names) == {"b"} and s.nbytes == 100

    run(body, store)


def test_total_byte_cap(make: Factory) -> None:
    store = make(session_max_bytes=10_000, total_max_bytes=200 + 2 * PER_TENSOR)
    rt = SessionRuntime(Engine(), store.check_bytes)

    async def body() -> None:
        a, b = (await store.create()).session_id, (await store.create()).session_id
        async with store.open(a) as s:
            rt.put_tensor(s, "x", floats(30))  # 120 bytes
        async with store.open(b) as s:
            rt.put_tensor(s, "x", floats(20))  # 80 bytes: 200 in all
        with pytest.raises(TooLarge) as err:
            async with store.open(b) as s:
                rt.put_tensor(s, "y", floats(1))
        assert "all sessions" in err.value.detail
        await store.delete(a)
        async with store.open(b) as s:
            rt.put_tensor(s, "y", floats(30))
        total = store.total_bytes()
        assert (await total if asyncio.iscoroutine(total) else total) == 200 + 2 * PER_TENSOR

    run(body, store)


# ----- ownership, failures, one writer at a time -----


def test_a_session_exists_only_for_its_owner(make: Factory, clock: list[float]) -> None:
    store = make(default_ttl=10.0)

    async def body() -> None:
        s = await store.create(owner="alice")
        async with store.open(s.session_id, "alice") as got:
            assert got.owner == "alice"
        await expect_missing(store, s.session_id, "unknown", owner="bob")
        await expect_missing(store, s.session_id, "unknown", owner=None)
        with pytest.raises(NotFound, match="unknown"):
            await store.delete(s.session_id, "bob")
        clock[0] += 11.0
        await expect_missing(store, s.session_id, "unknown", owner="bob")
        await expect_missing(store, s.session_id, "expired", owner="alice")

    run(body, store)


def test_a_failed_request_leaves_the_session_as_it_was(make: Factory) -> None:
    store = make()
    rt = SessionRuntime(Engine(), store.check_bytes)

    async def body() -> None:
        sid = (await store.create()).session_id
        async with store.open(sid) as s:
            rt.put_tensor(s, "x", 2.0, variable=True)
            before = (dict(s.names), s.nbytes, s.held_bytes)
        with pytest.raises(RuntimeError):
            async with store.open(sid) as s:
                rt.run(s, [{"id": "y", "op": "sin", "args": ["x"]},
                           {"id": "x2", "op": "assign_add", "args": ["x", 1.0]}], None, 100)
                rt.open_tape(s, True, True)
                raise RuntimeError("the request failed here")
        async with store.open(sid, write=False) as s:
            assert (dict(s.names), s.nbytes, s.held_bytes) == before and not s.tapes
            assert float(rt.get_tensor(s, "x")) == 2.0

    run(body, store)


def test_an_update_still_computing_is_stored_and_restored(make: Factory) -> None:
    """A step's update is kept before it is computed (`Values`): the store commits it as
    its values (Redis writes them), and a later request that fails gives it back."""
    from engine.sessions.training import train_step

    store = make()
    rt = SessionRuntime(Engine(), store.check_bytes)
    w0 = np.arange(6, dtype=np.float32).reshape(3, 2) / 10
    X = np.linspace(-1, 1, 24, dtype=np.float32).reshape(8, 3)
    Y = np.ones((8, 2), np.float32)
    nodes = [{"id": "p", "op": "matmul", "args": ["X", "W"]},
             {"id": "r", "op": "subtract", "args": ["p", "Y"]},
             {"id": "sq", "op": "multiply", "args": ["r", "r"]},
             {"id": "loss", "op": "mean", "args": ["sq"]}]
    # one SGD step in float64 from the closed form of the gradient
    want = w0 - 0.5 * (X.T.astype(np.float64) @ (X @ w0 - Y)) * 2 / Y.size

    async def body() -> None:
        sid = (await store.create()).session_id
        async with store.open(sid) as s:
            rt.put_tensor(s, "W", w0, variable=True)
            rt.create_optimizer(s, "o", "sgd", 0.5)
            train_step(rt, s, nodes, {"X": X, "Y": Y}, "loss", "o", None, 1, 100)
        with pytest.raises(RuntimeError):
            async with store.open(sid) as s:
                rt.put_tensor(s, "W", np.zeros((3, 2), np.float32), variable=True)
                raise RuntimeError("the request failed here")
        async with store.open(sid, write=False) as s:
            got = rt.get_tensor(s, "W")
            assert type(got) is np.ndarray
            np.testing.assert_allclose(got, want, rtol=1e-5)
            assert s.optimizers["o"].step == 1

    run(body, store)


def test_one_writer_at_a_time(make: Factory, kind: str) -> None:
    """40 increments from concurrent requests, through two stores (replicas, for Redis)."""
    stores = [make(), make()] if kind == "redis" else [make()] * 2
    rt = SessionRuntime(Engine(), stores[0].check_bytes)

    async def body() -> None:
        sid = (await stores[0].create()).session_id
        async with stores[0].open(sid) as s:
            rt.put_tensor(s, "v", 0.0, variable=True)

        async def bump(store: SessionStore) -> None:
            async with store.open(sid) as s:
                value = float(rt.get_tensor(s, "v"))
                await asyncio.sleep(0)  # let the others try to get in between
                rt.run(s, [{"id": "v", "op": "assign", "args": ["v", value + 1.0]}], [], 100)

        await asyncio.gather(*(bump(stores[i % 2]) for i in range(40)))
        async with stores[1].open(sid, write=False) as s:
            assert float(rt.get_tensor(s, "v")) == 40.0

    run(body, *set(stores))


# ----- what a shared store adds -----


@pytest.fixture
def shared(redis_url: str, clock: list[float]) -> Iterator[Callable[..., RedisSessionStore]]:
    redis.Redis.from_url(redis_url).flushdb()
    yield lambda **kw: RedisSessionStore(redis_url, clock=lambda: clock[0], **kw)


def test_a_stalled_writer_is_fenced_off(shared: Callable[..., RedisSessionStore]) -> None:
    a, b = shared(), shared()
    rt = SessionRuntime(Engine(), a.check_bytes)

    async def body() -> None:
        sid = (await a.create()).session_id
        # a replica takes the lease and loads, then stalls past its lease
        stale, version, _ = await a._load(sid, None, token="stalled")
        loaded = set(stale.values)
        await a.redis.delete(f"gt:lock:{sid}")  # the lease runs out
        async with b.open(sid) as s:  # another writes meanwhile
            rt.put_tensor(s, "x", 1.0)
        rt.put_tensor(stale, "x", 99.0)  # under an id of the stalled request's own block
        rt.put_tensor(stale, "y", 5.0)
        with pytest.raises(Conflict, match="changed by another request"):
            await a._commit(stale, version, loaded, "stalled")
        async with a.open(sid, write=False) as s:
            assert float(rt.get_tensor(s, "x")) == 1.0 and "y" not in s.names
        # nothing of the fenced-off request stays in Redis
        stored = {int(t) for t in await a.redis.hkeys(f"gt:t:{sid}")}
        async with a.open(sid, write=False) as s:
            assert stored == set(s.values)

    run(body, a, b)


def test_tensor_ids_never_repeat_across_replicas(
        shared: Callable[..., RedisSessionStore]) -> None:
    a, b = shared(), shared()
    rt = SessionRuntime(Engine(), a.check_bytes)

    async def body() -> None:
        sid = (await a.create()).session_id
        ids = []
        for store in (a, b, a, b):
            async with store.open(sid) as s:
                rt.put_tensor(s, f"t{len(ids)}", float(len(ids)))
                ids.append(s.names[f"t{len(ids)}"].tensor)
        assert len(set(ids)) == 4 and ids == sorted(ids)
        assert ids[1] - ids[0] >= ID_BLOCK  # each request takes a block of its own
        # a failed request's ids are never handed out again, and never cached
        with pytest.raises(RuntimeError):
            async with a.open(sid) as s:
                rt.put_tensor(s, "lost", 5.0)
                lost = s.names["lost"].tensor
                raise RuntimeError
        assert a.cache.get(sid, lost) is None
        async with b.open(sid) as s:
            rt.put_tensor(s, "next", 6.0)
            assert s.names["next"].tensor > lost
        async with a.open(sid, write=False) as s:
            assert [float(rt.get_tensor(s, f"t{i}")) for i in range(4)] == [0, 1, 2, 3]

    run(body, a, b)


def test_the_replica_cache_serves_committed_tensors(
        shared: Callable[..., RedisSessionStore]) -> None:
    a, b = shared(), shared(cache_bytes=0)
    rt = SessionRuntime(Engine(), a.check_bytes)

    async def body() -> None:
        sid = (await a.create()).session_id
        async with a.open(sid) as s:
            rt.put_tensor(s, "w", np.arange(1000, dtype=np.float32).tolist())
        hits = a.cache.hits
        for _ in range(3):
            async with a.open(sid, write=False) as s:
                assert float(np.sum(rt.get_tensor(s, "w"))) == 499_500.0
        assert a.cache.hits == hits + 3  # never fetched again by the replica that wrote it
        async with b.open(sid, write=False) as s:  # another replica, no cache: from Redis
            assert float(np.sum(rt.get_tensor(s, "w"))) == 499_500.0
        assert b.cache.hits == 0

    run(body, a, b)


def test_redis_unreachable_is_a_503_with_a_reason() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once the socket closes
    store = RedisSessionStore(f"redis://127.0.0.1:{port}/0")

    async def body() -> None:
        with pytest.raises(StoreUnavailable) as err:
            await store.create()
        assert STATUS[type(err.value)] == 503 and "cannot be reached" in err.value.detail
        why = await store.ready()
        assert why is not None and "cannot be reached" in why

    run(body, store)


# ----- through HTTP -----


def test_http_max_sessions_is_429(store_settings: Settings) -> None:
    settings = store_settings.model_copy(update={"max_sessions": 2})
    with TestClient(create_app(settings)) as client:
        ids = [client.post("/v1/sessions", json={}) for _ in range(2)]
        assert [r.status_code for r in ids] == [201, 201]
        r = client.post("/v1/sessions", json={})
        assert r.status_code == 429, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["status"] == 429 and r.json()["detail"]
        assert client.delete(f"/v1/sessions/{ids[0].json()['session_id']}").status_code == 204
        assert client.post("/v1/sessions", json={}).status_code == 201


def test_http_session_byte_cap_is_413(store_settings: Settings) -> None:
    settings = store_settings.model_copy(update={"session_max_bytes": 4096})
    with TestClient(create_app(settings)) as client:
        sid = client.post("/v1/sessions", json={}).json()["session_id"]
        base = f"/v1/sessions/{sid}"
        r = client.put(f"{base}/tensors/big", json={"value": floats(1025)})  # 4100 bytes
        assert r.status_code == 413, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        assert "4096" in r.json()["detail"]
        assert client.get(f"{base}/tensors/big").status_code == 404
        r = client.put(f"{base}/tensors/x", json={"value": floats(600)})  # 2400 bytes
        assert r.status_code == 200, r.text
        r = client.post(f"{base}/run", json={"nodes": [
            {"id": "y", "op": "multiply", "args": ["x", 2.0]}]})
        assert r.status_code == 413, r.text
        info = client.get(base).json()
        assert info["tensor_bytes"] == 2400 and info["bytes"] == 2400 + PER_TENSOR
        assert [t["name"] for t in info["tensors"]] == ["x"]


def test_http_expiry_on_an_injected_clock(store_settings: Settings) -> None:
    now = [1_000.0]
    settings = store_settings.model_copy(update={"session_ttl_seconds": 30})
    app = create_app(settings)
    app.state.services = Services.build(settings, clock=lambda: now[0])
    with TestClient(app) as client:
        sid = client.post("/v1/sessions", json={}).json()["session_id"]
        now[0] += 20.0
        assert client.put(f"/v1/sessions/{sid}/tensors/x", json={"value": 1.0}).status_code \
            == 200
        now[0] += 20.0
        assert client.get(f"/v1/sessions/{sid}/tensors/x").status_code == 200
        now[0] += 30.0
        r = client.get(f"/v1/sessions/{sid}")
        assert r.status_code == 404 and "expired" in r.json()["detail"]
        r = client.get(f"/v1/sessions/{sid}/tensors/x")
        assert r.status_code == 404 and "expired" in r.json()["detail"]


def test_http_store_down_is_503_and_not_ready_while_stateless_routes_work() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = Settings(_env_file=None, store="redis", redis_url=f"redis://127.0.0.1:{port}/0")
    with TestClient(create_app(settings)) as client:
        r = client.post("/v1/sessions", json={})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.headers["content-type"].startswith("application/problem+json")
        r = client.get("/v1/health/ready")
        assert r.status_code == 503 and "cannot be reached" in r.json()["detail"]
        assert client.get("/v1/health/live").status_code == 200
        r = client.post("/v1/gradient", json={
            "graph": {"nodes": [{"id": "y", "op": "multiply", "args": ["x", "x"]}]},
            "inputs": {"x": 3.0}, "target": "y"})
        assert r.status_code == 200 and r.json()["gradients"]["x"]["data"] == 6.0


def test_two_replicas_on_one_redis_serve_each_others_sessions_and_graphs(
        redis_url: str) -> None:
    redis.Redis.from_url(redis_url).flushdb()
    settings = Settings(_env_file=None, store="redis", redis_url=redis_url)
    with TestClient(create_app(settings)) as a, TestClient(create_app(settings)) as b:
        sid = a.post("/v1/sessions", json={}).json()["session_id"]
        base = f"/v1/sessions/{sid}"
        assert b.put(f"{base}/tensors/x", json={"value": [[1, 1], [1, 1]]}).status_code == 200
        tid = a.post(f"{base}/tapes", json={}).json()["tape_id"]
        assert b.post(f"{base}/tapes/{tid}/watch", json={"tensors": ["x"]}).status_code == 200
        assert a.post(f"{base}/run", json={"nodes": [
            {"id": "y", "op": "reduce_sum", "args": ["x"]},
            {"id": "z", "op": "multiply", "args": ["y", "y"]}]}).status_code == 200
        assert b.post(f"{base}/tapes/{tid}/stop").status_code == 200
        r = a.post(f"{base}/tapes/{tid}/gradient", json={"target": "z", "sources": ["x"]})
        assert r.json()["gradients"]["x"] == {"dtype": "float32", "shape": [2, 2],
                                              "data": [[8.0, 8.0], [8.0, 8.0]]}
        r = b.post(f"{base}/tapes/{tid}/gradient", json={"target": "z", "sources": ["x"]})
        assert r.status_code == 409  # the tape answered once, on the other replica
        # a graph registered on one replica is known to the other
        graph = {"nodes": [{"id": "y", "op": "multiply", "args": ["x", "x"]}]}
        created = a.post("/v1/graphs", json=graph)
        assert created.status_code == 201
        gid = created.json()["graph_id"]
        assert b.post("/v1/graphs", json=graph).status_code == 200  # known already
        assert b.get(f"/v1/graphs/{gid}").json()["graph"] == graph
        r = b.post("/v1/gradient", json={"graph_id": gid, "inputs": {"x": 3.0}, "target": "y"})
        assert r.json()["gradients"]["x"]["data"] == 6.0
        assert b.delete(base).status_code == 204
        assert a.get(base).status_code == 404


# ----- Idempotency-Key -----


def test_a_retried_request_is_answered_not_applied_twice(store_settings: Settings) -> None:
    with TestClient(create_app(store_settings)) as c:
        key = {"Idempotency-Key": "create-1"}
        first = c.post("/v1/sessions", json={}, headers=key)
        again = c.post("/v1/sessions", json={}, headers=key)
        assert first.status_code == again.status_code == 201
        assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
        assert c.app.state.services.sessions.count() == 1
        base = f"/v1/sessions/{first.json()['session_id']}"
        assert c.put(f"{base}/tensors/v", json={"value": 0.0, "variable": True}).status_code \
            == 200
        bump = {"nodes": [{"id": "v", "op": "assign_add", "args": ["v", 1.0]}]}
        answers = [c.post(f"{base}/run", json=bump, headers={"Idempotency-Key": "bump-1"})
                   for _ in range(3)]
        assert [r.status_code for r in answers] == [200] * 3
        assert answers[2].json() == answers[0].json() == {"values": {
            "v": {"dtype": "float32", "shape": [], "data": 1.0}}}
        assert "idempotent-replayed" not in answers[0].headers
        assert c.get(f"{base}/tensors/v").json()["data"] == 1.0  # applied once
        c.post(f"{base}/run", json=bump, headers={"Idempotency-Key": "bump-2"})
        assert c.get(f"{base}/tensors/v").json()["data"] == 2.0  # a new key applies again
        # the same key with another request is refused, naming the header
        r = c.post(f"{base}/run", json={"nodes": [
            {"id": "v", "op": "assign_add", "args": ["v", 5.0]}]},
            headers={"Idempotency-Key": "bump-1"})
        assert r.status_code == 422 and r.json()["errors"][0]["loc"] == [
            "header", "Idempotency-Key"]
        assert c.get(f"{base}/tensors/v").json()["data"] == 2.0
        # tape routes and deletions replay too
        tape = [c.post(f"{base}/tapes", json={}, headers={"Idempotency-Key": "tape-1"})
                for _ in range(2)]
        assert tape[0].json() == tape[1].json()
        assert len(c.get(base).json()["tapes"]) == 1
        gone = [c.delete(base, headers={"Idempotency-Key": "del-1"}) for _ in range(2)]
        assert [r.status_code for r in gone] == [204, 204]
        assert c.delete(base).status_code == 404  # without the key: it is gone
        r = c.post("/v1/sessions", json={}, headers={"Idempotency-Key": "x" * 300})
        assert r.status_code == 422 and "Idempotency-Key" in r.text


def test_a_long_answer_is_not_kept_but_never_applied_twice(store_settings: Settings) -> None:
    with TestClient(create_app(store_settings)) as c:
        base = f"/v1/sessions/{c.post('/v1/sessions', json={}).json()['session_id']}"
        c.put(f"{base}/tensors/v", json={"value": [0.0] * 20_000, "variable": True})
        bump = {"nodes": [{"id": "v", "op": "assign_add", "args": ["v", 1.0]}]}
        key = {"Idempotency-Key": "long-1"}
        first = c.post(f"{base}/run", json=bump, headers=key)
        assert first.status_code == 200 and len(first.content) > 65_536
        again = c.post(f"{base}/run", json=bump, headers=key)
        assert again.status_code == 409 and "applied already" in again.json()["detail"]
        assert c.get(f"{base}/tensors/v").json()["data"][:2] == [1.0, 1.0]
        assert c.get(base).json()["bytes"] < c.get(base).json()["tensor_bytes"] + 10_000
