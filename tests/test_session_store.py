"""The session store: idle expiry on an injected clock, sweeping, TTL bounds, capacity and
byte caps, on the engine directly and through HTTP."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from engine.compute import Engine
from engine.errors import CapacityExceeded, InvalidGraph, NotFound, TooLarge
from engine.sessions.runtime import SessionRuntime
from engine.sessions.state import NAME_OVERHEAD, TENSOR_OVERHEAD
from engine.sessions.store import InMemorySessionStore, StoreLimits
from service.config import Settings
from service.errors import STATUS
from service.main import create_app
from service.state import Services


def make_store(**limits: Any) -> tuple[InMemorySessionStore, list[float]]:
    now = [1_000.0]
    return InMemorySessionStore(StoreLimits(**limits), clock=lambda: now[0]), now


def floats(n: int) -> dict[str, Any]:
    return {"dtype": "float32", "shape": [n], "data": [1.0] * n}


# ----- expiry -----


def test_expires_after_ttl_of_idle_time() -> None:
    store, now = make_store(default_ttl=10.0)
    s = store.create()
    assert s.ttl_seconds == 10.0 and s.expires_at == 1_010.0
    now[0] += 9.99
    assert store.get(s.session_id) is s
    now[0] += 10.0  # 10 s idle since the last use
    with pytest.raises(NotFound) as err:
        store.get(s.session_id)
    assert "expired" in err.value.detail and s.session_id in err.value.detail
    assert len(store) == 0
    with pytest.raises(NotFound, match="expired"):  # it stays expired, not unknown
        store.get(s.session_id)


def test_use_pushes_expiry_back() -> None:
    store, now = make_store(default_ttl=10.0)
    s = store.create()
    for _ in range(5):  # 40 s in all, never 10 s idle
        now[0] += 8.0
        store.get(s.session_id)
        assert s.expires_at == now[0] + 10.0
    now[0] += 9.0
    assert store.get(s.session_id).session_id == s.session_id


def test_unknown_and_deleted_sessions() -> None:
    store, _ = make_store()
    with pytest.raises(NotFound) as err:
        store.get("s_nope")
    assert "unknown" in err.value.detail and "s_nope" in err.value.detail
    s = store.create()
    store.lock(s.session_id)
    store.delete(s.session_id)
    with pytest.raises(NotFound, match="unknown"):
        store.get(s.session_id)
    with pytest.raises(NotFound):
        store.lock(s.session_id)
    with pytest.raises(NotFound):
        store.delete(s.session_id)


def test_sweep_drops_expired_sessions() -> None:
    store, now = make_store(default_ttl=10.0)
    old = [store.create() for _ in range(3)]
    now[0] += 6.0
    young = store.create(ttl_seconds=10.0)
    kept = store.create(ttl_seconds=100.0)
    assert store.sweep() == 0 and len(store) == 5
    now[0] += 5.0  # the first three are 11 s idle, the others 5 s
    assert store.sweep() == 3
    assert len(store) == 2
    for s in old:
        with pytest.raises(NotFound, match="expired"):
            store.get(s.session_id)
    store.get(young.session_id)
    now[0] += 50.0
    assert store.sweep() == 1
    assert store.get(kept.session_id) is kept


def test_per_session_ttl_and_max_ttl() -> None:
    store, now = make_store(default_ttl=10.0, max_ttl=60.0)
    short, long = store.create(), store.create(ttl_seconds=60.0)
    assert (short.ttl_seconds, long.ttl_seconds) == (10.0, 60.0)
    now[0] += 30.0
    with pytest.raises(NotFound, match="expired"):
        store.get(short.session_id)
    assert store.get(long.session_id) is long
    for bad in (60.5, 0.0, -1.0):
        with pytest.raises(InvalidGraph) as err:
            store.create(ttl_seconds=bad)
        assert STATUS[type(err.value)] == 422 and err.value.loc == ("ttl_seconds",)
    assert len(store) == 1


# ----- capacity -----


def test_max_sessions() -> None:
    store, now = make_store(default_ttl=10.0, max_sessions=2)
    a = store.create()
    now[0] += 5.0
    store.create()
    with pytest.raises(CapacityExceeded) as err:
        store.create()
    assert STATUS[type(err.value)] == 429 and "2" in err.value.detail
    store.delete(a.session_id)
    now[0] += 6.0
    c = store.create()
    with pytest.raises(CapacityExceeded):
        store.create()
    now[0] += 5.0  # the second one is 11 s idle and expires: its slot is free again
    store.get(c.session_id)
    store.create()
    assert len(store) == 2


# what a named tensor (one-letter name) holds beside its data
PER_TENSOR = TENSOR_OVERHEAD + NAME_OVERHEAD + 1


def test_session_byte_cap() -> None:
    store, _ = make_store(session_max_bytes=100 + PER_TENSOR)
    rt = SessionRuntime(Engine(), store.check_bytes)
    s = store.create()
    rt.put_tensor(s, "a", floats(20))  # 80 bytes
    rt.put_tensor(s, "a", floats(25))  # rebinding frees the old 80: 100 bytes
    assert s.nbytes == 100 and s.held_bytes == 100 + PER_TENSOR == s.footprint()
    with pytest.raises(TooLarge) as err:
        rt.put_tensor(s, "b", 1.0)
    assert STATUS[type(err.value)] == 413 and s.session_id in err.value.detail
    with pytest.raises(KeyError):
        s.names["b"]  # nothing was bound
    rt.delete_tensor(s, "a")
    assert s.nbytes == 0 and s.held_bytes == 0
    rt.put_tensor(s, "b", floats(25))
    with pytest.raises(TooLarge):
        rt.put_tensor(s, "c", floats(26), variable=True)
    # a run whose results would pass the cap binds nothing
    with pytest.raises(TooLarge):
        rt.run(s, [{"id": "d", "op": "multiply", "args": ["b", 2.0]}], None, 100)
    assert set(s.names) == {"b"} and s.nbytes == 100


def test_total_byte_cap() -> None:
    store, _ = make_store(session_max_bytes=10_000, total_max_bytes=200 + 2 * PER_TENSOR)
    rt = SessionRuntime(Engine(), store.check_bytes)
    a, b = store.create(), store.create()
    rt.put_tensor(a, "x", floats(30))  # 120 bytes
    rt.put_tensor(b, "x", floats(20))  # 80 bytes: 200 in all
    with pytest.raises(TooLarge) as err:
        rt.put_tensor(b, "y", floats(1))
    assert "all sessions" in err.value.detail
    store.delete(a.session_id)
    rt.put_tensor(b, "y", floats(30))
    assert store.total_bytes() == 200 + 2 * PER_TENSOR


# ----- through HTTP -----


def test_http_max_sessions_is_429() -> None:
    with TestClient(create_app(Settings(_env_file=None, max_sessions=2))) as client:
        ids = [client.post("/v1/sessions", json={}) for _ in range(2)]
        assert [r.status_code for r in ids] == [201, 201]
        r = client.post("/v1/sessions", json={})
        assert r.status_code == 429, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["status"] == 429 and r.json()["detail"]
        assert client.delete(f"/v1/sessions/{ids[0].json()['session_id']}").status_code == 204
        assert client.post("/v1/sessions", json={}).status_code == 201


def test_http_session_byte_cap_is_413() -> None:
    with TestClient(create_app(Settings(_env_file=None, session_max_bytes=4096))) as client:
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


def test_http_expiry_on_an_injected_clock() -> None:
    now = [1_000.0]
    settings = Settings(_env_file=None, session_ttl_seconds=30)
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
    assert len(app.state.services.sessions) == 0
