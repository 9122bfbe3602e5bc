"""The deployment with its real parts: a redis-server with AOF, two gradtape replicas on the
Redis session store, and nginx from the deployment's template in front of them.

What a client of the cluster relies on: the tutorial through nginx; concurrent clients on
one session spread over both replicas; a training loop that goes on while a replica is
killed and restarted (retrying with an Idempotency-Key: nothing acknowledged is lost,
nothing applied twice); a replica killed in the middle of a request; Redis restarted from
its append-only file; expiry; Redis full or down.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.cluster import Nginx, RedisServer, Replica, start_all
from tests.test_examples import EXPECTED, LINE

ROOT = Path(__file__).resolve().parent.parent
LEASE = "2"  # seconds: a dead replica's lease on a session runs out this fast


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[RedisServer, list[Replica], Nginx]]:
    base = tmp_path_factory.mktemp("cluster")
    redis_server = RedisServer(base / "redis").start()
    env = {"GRADTAPE_STORE": "redis", "GRADTAPE_REDIS_URL": redis_server.url,
           "GRADTAPE_SESSION_LEASE_SECONDS": LEASE, "GRADTAPE_ACCESS_LOG": "false"}
    replicas = [Replica(base / name, env=env) for name in ("a", "b")]
    nginx = None
    try:
        start_all(replicas)
        nginx = Nginx(base / "nginx", [r.port for r in replicas]).start()
        yield redis_server, replicas, nginx
    finally:
        if nginx is not None:
            nginx.stop()
        for replica in replicas:
            replica.stop()
        redis_server.stop()


@pytest.fixture
def up(cluster: tuple[RedisServer, list[Replica], Nginx]
       ) -> tuple[RedisServer, list[Replica], Nginx]:
    """Everything running, whatever an earlier test stopped."""
    redis_server, replicas, _ = cluster
    if not redis_server.running:
        redis_server.start()
    start_all(r for r in replicas if not r.running)
    return cluster


def call(client: httpx.Client, method: str, path: str, body: Any = None,
         key: str | None = None, attempts: int = 60) -> httpx.Response:
    """A client that retries what a lost replica or a busy store answers (502, 503, a
    broken connection), with the same Idempotency-Key each time."""
    headers = {"Idempotency-Key": key} if key else {}
    for _ in range(attempts):
        try:
            r = client.request(method, path, json=body, headers=headers)
        except httpx.TransportError:
            time.sleep(0.2)
            continue
        if r.status_code not in (502, 503, 504):
            return r
        time.sleep(0.2)
    raise AssertionError(f"{method} {path}: no answer after {attempts} tries")


def test_the_tutorial_through_nginx(up: tuple[RedisServer, list[Replica], Nginx]) -> None:
    _, replicas, nginx = up
    before = [r.request_count("POST", "/v1/sessions/{session_id}/run") for r in replicas]
    out = subprocess.run([sys.executable, "tutorial.py"], cwd=ROOT / "examples",
                         env={**os.environ, "GRADTAPE_URL": nginx.url}, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line.startswith("part")]
    assert len(lines) == len(EXPECTED)
    for line, (part, label, data, shape) in zip(lines, EXPECTED, strict=True):
        m = LINE.match(line)
        assert m is not None and (m["part"], m["label"]) == (part, label), line
        assert json.loads(m["shape"]) == shape
        np.testing.assert_allclose(json.loads(m["data"]), data, rtol=1e-6)
    after = [r.request_count("POST", "/v1/sessions/{session_id}/run") for r in replicas]
    assert all(a > b for a, b in zip(after, before, strict=True)), (before, after)


def test_concurrent_clients_on_one_session_across_replicas(
        up: tuple[RedisServer, list[Replica], Nginx]) -> None:
    _, replicas, nginx = up
    with httpx.Client(base_url=nginx.url, timeout=60) as c:
        sid = c.post("/v1/sessions", json={}).json()["session_id"]
        base = f"/v1/sessions/{sid}"
        c.put(f"{base}/tensors/v", json={"value": 0.0, "variable": True})
        before = [r.request_count("POST", "/v1/sessions/{session_id}/run") for r in replicas]
        codes: list[int] = []

        def bump() -> None:
            with httpx.Client(base_url=nginx.url, timeout=60) as own:
                r = own.post(f"{base}/run", json={"nodes": [
                    {"id": "v", "op": "assign_add", "args": ["v", 1.0]}], "fetch": []})
                codes.append(r.status_code)

        threads = [threading.Thread(target=bump) for _ in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert codes == [200] * 50
        assert c.get(f"{base}/tensors/v").json()["data"] == 50.0
        after = [r.request_count("POST", "/v1/sessions/{session_id}/run") for r in replicas]
        assert all(a > b for a, b in zip(after, before, strict=True))


def test_a_training_loop_survives_a_replica_killed_and_restarted(
        up: tuple[RedisServer, list[Replica], Nginx]) -> None:
    _, replicas, nginx = up
    steps, w0 = 60, 10.0
    with httpx.Client(base_url=nginx.url, timeout=60) as c:
        sid = call(c, "POST", "/v1/sessions", {}, key=str(uuid.uuid4())).json()["session_id"]
        base = f"/v1/sessions/{sid}"
        call(c, "PUT", f"{base}/tensors/w", {"value": w0, "variable": True})
        call(c, "PUT", f"{base}/tensors/n", {"value": 0.0, "variable": True})
        step = {"nodes": [  # one step of gradient descent on (w - 3)^2, and a step count
            {"id": "d", "op": "subtract", "args": ["w", 3.0]},
            {"id": "g", "op": "multiply", "args": ["d", 0.2]},
            {"id": "w", "op": "assign_sub", "args": ["w", "g"]},
            {"id": "n", "op": "assign_add", "args": ["n", 1.0]}], "fetch": ["n"]}
        for i in range(steps):
            if i == 20:
                replicas[0].kill()  # SIGKILL, maybe in the middle of this step
            if i == 40:
                replicas[0].start()
            r = call(c, "POST", f"{base}/run", step, key=f"{sid}-step-{i}")
            assert r.status_code == 200, r.text
            assert r.json()["values"]["n"]["data"] == i + 1  # each step applied once
        n = c.get(f"{base}/tensors/n").json()["data"]
        w = c.get(f"{base}/tensors/w").json()["data"]
    assert n == steps
    assert w == pytest.approx(3 + (w0 - 3) * 0.8**steps, rel=1e-5)


def test_a_replica_killed_mid_request_leaves_the_session_as_it_was(
        up: tuple[RedisServer, list[Replica], Nginx]) -> None:
    _, (a, b), _ = up
    with httpx.Client(base_url=b.url, timeout=60) as c:
        sid = c.post("/v1/sessions", json={}).json()["session_id"]
        base = f"/v1/sessions/{sid}"
        c.put(f"{base}/tensors/x", json={"value": 0.001, "variable": True})
        slow = {"nodes": [
            {"id": "big", "op": "broadcast_to", "args": ["x"], "attrs": {"shape": [3000, 3000]}},
            {"id": "m", "op": "matmul", "args": ["big", "big"]},
            {"id": "m2", "op": "matmul", "args": ["m", "big"]},
            {"id": "m3", "op": "matmul", "args": ["m2", "big"]},
            {"id": "x", "op": "assign_add", "args": ["x", 1.0]}], "fetch": []}
        started = threading.Event()

        def doomed() -> None:
            started.set()
            with contextlib.suppress(httpx.TransportError):
                httpx.post(f"{a.url}{base}/run", json=slow, timeout=30)

        worker = threading.Thread(target=doomed)
        worker.start()
        started.wait()
        time.sleep(0.5)  # replica a holds the session's lease and computes
        assert worker.is_alive(), "the request finished before the kill: make it longer"
        a.send(signal.SIGKILL)
        worker.join()
        a.stop()
        # once the dead replica's lease runs out, the other one writes as usual
        r = call(c, "POST", f"{base}/run", {"nodes": [
            {"id": "y", "op": "sin", "args": ["x"]}]})
        assert r.status_code == 200
        names = {t["name"] for t in c.get(base).json()["tensors"]}
        assert names == {"x", "y"}  # nothing of the killed request
        assert c.get(f"{base}/tensors/x").json()["data"] == pytest.approx(0.001)


def test_redis_restarted_from_its_append_only_file(
        up: tuple[RedisServer, list[Replica], Nginx]) -> None:
    redis_server, replicas, nginx = up
    with httpx.Client(base_url=nginx.url, timeout=60) as c:
        sid = c.post("/v1/sessions", json={}).json()["session_id"]
        base = f"/v1/sessions/{sid}"
        c.put(f"{base}/tensors/x", json={"value": 3.0})
        tid = c.post(f"{base}/tapes", json={"persistent": True}).json()["tape_id"]
        c.post(f"{base}/tapes/{tid}/watch", json={"tensors": ["x"]})
        c.post(f"{base}/run", json={"nodes": [{"id": "y", "op": "multiply", "args": ["x", "x"]}]})
        gid = c.post("/v1/graphs", json={"nodes": [
            {"id": "q", "op": "sin", "args": ["p"]}]}).json()["graph_id"]
        for stop in (redis_server.terminate, redis_server.kill):
            stop()
            r = c.post(f"{base}/run", json={"nodes": [{"id": "z", "op": "sin", "args": ["x"]}]})
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            assert r.headers["content-type"].startswith("application/problem+json")
            ready = httpx.get(f"{replicas[0].url}/v1/health/ready", timeout=10)
            assert ready.status_code == 503 and "cannot be reached" in ready.json()["detail"]
            r = c.post("/v1/gradient", json={"graph": {"nodes": [
                {"id": "y", "op": "multiply", "args": ["x", "x"]}]}, "inputs": {"x": 2.0},
                "target": "y"})
            assert r.status_code == 200  # stateless routes go on without the store
            redis_server.start()
            r = call(c, "POST", f"{base}/tapes/{tid}/gradient",
                     {"target": "y", "sources": ["x"]})
            assert r.json()["gradients"]["x"]["data"] == 6.0
            assert call(c, "GET", f"/v1/graphs/{gid}").status_code == 200
        for replica in replicas:
            assert httpx.get(f"{replica.url}/v1/health/ready", timeout=10).status_code == 200


def test_sessions_expire_in_redis(up: tuple[RedisServer, list[Replica], Nginx]) -> None:
    redis_server, _, nginx = up
    import redis

    with httpx.Client(base_url=nginx.url, timeout=60) as c:
        sid = c.post("/v1/sessions", json={"ttl_seconds": 1}).json()["session_id"]
        c.put(f"/v1/sessions/{sid}/tensors/x", json={"value": 1.0})
        keys = redis.Redis.from_url(redis_server.url)
        ttl_ms = keys.pttl(f"gt:s:{sid}")
        assert 0 < ttl_ms <= 61_000  # Redis drops the keys a minute after expiry
        assert 0 < keys.pttl(f"gt:t:{sid}") <= 61_000
        time.sleep(1.3)
        r = c.get(f"/v1/sessions/{sid}")
        assert r.status_code == 404 and "expired" in r.json()["detail"]
        assert not keys.exists(f"gt:s:{sid}", f"gt:t:{sid}")


def test_a_full_redis_is_a_503_not_a_lost_session(tmp_path: Path) -> None:
    small = RedisServer(tmp_path / "redis", extra_args=[
        "--maxmemory", "4mb", "--maxmemory-policy", "noeviction"])
    with small, Replica(tmp_path / "api", env={"GRADTAPE_STORE": "redis",
                                               "GRADTAPE_REDIS_URL": small.url}) as api:
        if True:
            with httpx.Client(base_url=api.url, timeout=60) as c:
                sid = c.post("/v1/sessions", json={}).json()["session_id"]
                base = f"/v1/sessions/{sid}"
                c.put(f"{base}/tensors/keep", json={"value": [1.0, 2.0]})
                full = None
                for i in range(20):
                    r = c.put(f"{base}/tensors/t{i}", json={"value": {
                        "dtype": "float32", "shape": [250_000], "b64": _zeros_b64(250_000)}})
                    if r.status_code != 200:
                        full = r
                        break
                assert full is not None, "Redis never refused a write"
                assert full.status_code == 503 and "full" in full.json()["detail"]
                assert full.headers["retry-after"] == "1"
                r = c.get(f"{base}/tensors/keep")  # what was acknowledged is still there
                assert r.status_code == 200 and r.json()["data"] == [1.0, 2.0]


def _zeros_b64(n: int) -> str:
    import base64

    return base64.b64encode(bytes(4 * n)).decode()
