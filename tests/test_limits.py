"""The fault battery: requests that once exhausted the host, froze the event loop or answered
a 5xx. Each is checked for its status and message, and, where it matters, for what the server
did not do (compute, allocate, block). Memory and event-loop checks run against a real server
in a subprocess; the rest in process."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from engine.cache import CompileCache
from engine.compute import Engine, Offload, inline_limit
from engine.sessions.runtime import SessionRuntime
from engine.sessions.store import InMemorySessionStore, StoreLimits
from service.config import Settings
from service.main import create_app

ROOT = Path(__file__).resolve().parent.parent
PROBLEM = "application/problem+json"


def make_client(**settings: Any) -> TestClient:
    return TestClient(create_app(Settings(_env_file=None, **settings)),
                      raise_server_exceptions=False)


def problem(r: httpx.Response, status: int, *needles: str) -> dict[str, Any]:
    assert r.status_code == status, r.text[:2000]
    assert r.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = r.json()
    for needle in needles:
        assert needle in body["detail"], (needle, body["detail"])
    return body


def chain(n: int, source: str = "x") -> list[dict[str, Any]]:
    """n elementwise nodes ending in a scalar `t`."""
    nodes, prev = [], source
    for i in range(n):
        nodes.append({"id": f"c{i}", "op": "sin" if i % 2 else "tanh", "args": [prev]})
        prev = f"c{i}"
    return [*nodes, {"id": "t", "op": "sum", "args": [prev]}]


def hessian_body(n: int) -> dict[str, Any]:
    return {"graph": {"nodes": [{"id": "o", "op": "outer", "args": ["x", "x"]},
                                {"id": "s", "op": "sin", "args": ["o"]},
                                {"id": "t", "op": "sum", "args": ["s"]}]},
            "inputs": {"x": np.linspace(0, 1, n).tolist()}, "target": "t"}


def matmul_body(size: int) -> dict[str, Any]:
    return {"graph": {"nodes": [
        {"id": "b", "op": "broadcast_to", "args": ["x"], "attrs": {"shape": [size, size]}},
        {"id": "m", "op": "matmul", "args": ["b", "b"]},
        {"id": "m2", "op": "matmul", "args": ["m", "b"]},
        {"id": "s", "op": "sum", "args": ["m2"]}]}, "inputs": {"x": 0.001}}


# ----- argument and edge limits -----


def test_too_many_arguments_for_one_node_is_413_before_anything_runs() -> None:
    with make_client() as c:
        nodes = [{"id": "c", "op": "concatenate", "args": ["x"] * 10_000}]
        start = time.perf_counter()
        r = c.post("/v1/evaluate", json={"graph": {"nodes": nodes}, "inputs": {"x": [1.0] * 10}})
        body = problem(r, 413, "10000 arguments", "GRADTAPE_MAX_ARGS_PER_NODE")
        assert body["node"] == "c"
        assert body["errors"][0]["loc"] == ["body", "graph", "nodes", 0, "args"]
        assert time.perf_counter() - start < 5
        assert c.app.state.services.engine.cache.stats.misses == 0  # nothing was traced
        sid = c.post("/v1/sessions").json()["session_id"]
        c.put(f"/v1/sessions/{sid}/tensors/x", json={"value": 1.0})
        r = c.post(f"/v1/sessions/{sid}/run", json={"nodes": [
            {"id": "s", "op": "add_n", "args": ["x"] * 100_000}]})
        problem(r, 413, "GRADTAPE_MAX_ARGS_PER_NODE")


def test_too_many_edges_is_413() -> None:
    with make_client(max_edges=1000, max_args_per_node=100) as c:
        nodes = [{"id": f"n{i}", "op": "add_n", "args": ["x"] * 60} for i in range(20)]
        r = c.post("/v1/evaluate", json={"graph": {"nodes": nodes}, "inputs": {"x": 1.0}})
        body = problem(r, 413, "1200 arguments", "GRADTAPE_MAX_EDGES")
        assert body["errors"][0]["loc"] == ["body", "graph", "nodes"]
        sid = c.post("/v1/sessions").json()["session_id"]
        c.put(f"/v1/sessions/{sid}/tensors/x", json={"value": 1.0})
        problem(c.post(f"/v1/sessions/{sid}/run", json={"nodes": nodes}), 413,
                "GRADTAPE_MAX_EDGES")
        assert c.get(f"/v1/sessions/{sid}").json()["tensors"][0]["name"] == "x"


# ----- echoed strings are cut short -----


def test_a_huge_unknown_op_name_answers_fast_with_a_short_message() -> None:
    name = "q" * 30_000_000
    with make_client() as c:
        start = time.perf_counter()
        r = c.post("/v1/evaluate", json={"graph": {"nodes": [
            {"id": "y", "op": name, "args": ["x"]}]}, "inputs": {"x": 1.0}})
        elapsed = time.perf_counter() - start
        body = problem(r, 422, "unknown op", "(30000000 characters)")
        assert len(r.content) < 2000 and elapsed < 10
        assert body["errors"][0]["loc"] == ["body", "graph", "nodes", 0, "op"]


def test_huge_undefined_names_and_ids_are_cut_short() -> None:
    long = "n" * 1_000_000
    with make_client() as c:
        r = c.post("/v1/evaluate", json={"graph": {"inputs": {"x": {}}, "nodes": [
            {"id": "y", "op": "sin", "args": [long]}]}, "inputs": {"x": 1.0}})
        problem(r, 422, "undefined name", "(1000000 characters)")
        assert len(r.content) < 2000
        r = c.post("/v1/evaluate", json={"graph": {"nodes": [
            {"id": long, "op": "nope", "args": ["x"]}]}, "inputs": {"x": 1.0}})
        body = problem(r, 422, "unknown op")
        assert len(r.content) < 2000 and len(body["node"]) < 250
        sid = c.post("/v1/sessions").json()["session_id"]
        r = c.get(f"/v1/sessions/{sid}/tensors/{'z' * 5000}")
        problem(r, 404, "has no tensor", "(5000 characters)")
        assert len(r.content) < 2000


# ----- derivatives with respect to nothing connected -----


@pytest.mark.parametrize("mode", ["none", "zero"])
def test_hessian_and_jacobian_of_unconnected_sources_only(mode: str) -> None:
    with make_client() as c:
        g = {"nodes": [{"id": "s", "op": "stop_gradient", "args": ["a"]},
                       {"id": "t", "op": "sum", "args": ["s"]}]}
        r = c.post("/v1/hessian", json={"graph": g, "inputs": {"a": [1.0, 2.0]}, "target": "t",
                                        "sources": ["a"], "unconnected_gradients": mode})
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["value"]["data"] == 3.0
        if mode == "none":
            assert out["gradients"] == {"a": None} and out["hessian"] == {"a": {"a": None}}
        else:
            assert out["gradients"]["a"]["data"] == [0.0, 0.0]
            assert out["hessian"]["a"]["a"] == {"dtype": "float32", "shape": [2, 2],
                                                "data": [[0.0, 0.0], [0.0, 0.0]]}
        g = {"inputs": {"x": {}, "y": {}}, "nodes": [{"id": "q", "op": "identity", "args": ["y"]}]}
        r = c.post("/v1/jacobian", json={"graph": g, "inputs": {"x": [2.0], "y": [1.0, 3.0]},
                                         "target": "q", "sources": ["x"],
                                         "unconnected_gradients": mode})
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["value"]["data"] == [1.0, 3.0]
        assert out["jacobian"]["x"] == (None if mode == "none" else {
            "dtype": "float32", "shape": [2, 1], "data": [[0.0], [0.0]]})


# ----- indices -----


def test_out_of_range_indices_from_inputs_and_constants_name_the_node() -> None:
    with make_client() as c:
        g = {"nodes": [{"id": "t", "op": "take", "args": ["x", "i"]}]}
        r = c.post("/v1/evaluate", json={"graph": g, "inputs": {
            "x": [1.0, 2.0], "i": {"dtype": "int32", "data": [0, 5]}}})
        body = problem(r, 422, "index 5 is out of range", "size 2")
        assert body["node"] == "t"
        g = {"nodes": [{"id": "g", "op": "gather", "args": [
            "x", {"dtype": "int32", "data": [-3]}], "attrs": {"axis": 1}}]}
        r = c.post("/v1/evaluate", json={"graph": g, "inputs": {"x": [[1.0, 2.0]]}})
        body = problem(r, 422, "index -3", "axis 1 of size 2")
        assert body["node"] == "g"
        # in range, negative indices count from the end, as in NumPy
        g = {"nodes": [{"id": "g", "op": "take", "args": ["x", {"dtype": "int32",
                                                                "data": [-1, 0]}]}]}
        r = c.post("/v1/evaluate", json={"graph": g, "inputs": {"x": [1.0, 2.0, 3.0]}})
        assert r.json()["values"]["g"]["data"] == [3.0, 1.0]
        # computed indices cannot be checked before running: out of range, they give NaN
        g = {"nodes": [{"id": "k", "op": "multiply", "args": ["i", 10]},
                       {"id": "g", "op": "take", "args": ["x", "k"]}]}
        r = c.post("/v1/evaluate", json={"graph": g, "inputs": {
            "x": [1.0, 2.0], "i": {"dtype": "int32", "data": [0, 1]}}})
        assert r.json()["values"]["g"]["data"] == [1.0, "NaN"]


# ----- sessions: budget before compute, ownership, accounting, failures -----


def test_a_run_over_the_session_budget_is_refused_before_it_computes() -> None:
    with make_client(session_max_bytes=1024 * 1024) as c:
        sid = c.post("/v1/sessions").json()["session_id"]
        c.put(f"/v1/sessions/{sid}/tensors/x", json={"value": 1.0})
        stats = c.app.state.services.engine.cache.stats
        before = (stats.eager_runs, stats.compiles)
        r = c.post(f"/v1/sessions/{sid}/run", json={"nodes": [
            {"id": "big", "op": "broadcast_to", "args": ["x"], "attrs": {"shape": [10000, 4900]}}],
            "fetch": []})
        problem(r, 413, "GRADTAPE_SESSION_MAX_BYTES")
        assert (stats.eager_runs, stats.compiles) == before  # nothing ran
        assert [t["name"] for t in c.get(f"/v1/sessions/{sid}").json()["tensors"]] == ["x"]


def test_sessions_belong_to_the_api_key_that_created_them() -> None:
    with make_client(api_keys="k1,k2") as c:
        one, two = {"X-API-Key": "k1"}, {"Authorization": "Bearer k2"}
        sid = c.post("/v1/sessions", headers=one).json()["session_id"]
        base = f"/v1/sessions/{sid}"
        assert c.put(f"{base}/tensors/x", json={"value": 1.0}, headers=one).status_code == 200
        for method, path, body in [("GET", base, None), ("GET", f"{base}/tensors/x", None),
                                   ("PUT", f"{base}/tensors/x", {"value": 2.0}),
                                   ("POST", f"{base}/run", {"nodes": [
                                       {"id": "y", "op": "sin", "args": ["x"]}]}),
                                   ("POST", f"{base}/tapes", {}), ("DELETE", base, None)]:
            r = c.request(method, path, json=body, headers=two)
            problem(r, 404, "unknown session")
        r = c.get(f"{base}/tensors/x", headers=one)
        assert r.status_code == 200 and r.json()["data"] == 1.0  # untouched by k2
        assert c.delete(base, headers=one).status_code == 204
        # the key is never kept: the session holds a digest
        store = c.app.state.services.sessions
        other = c.post("/v1/sessions", headers=one).json()["session_id"]
        owner = store.get(other, store._sessions[other].owner).owner
        assert owner and "k1" not in owner and len(owner) == 32


def test_session_accounting_tracks_what_python_allocates() -> None:
    """300k scalar tensors on a persistent tape were once counted as 1 MB while the process
    grew by 2 GB. Compare the accounting with tracemalloc on a smaller session."""
    store = InMemorySessionStore(StoreLimits(session_max_bytes=1 << 40, total_max_bytes=1 << 40))
    rt = SessionRuntime(Engine(cache=CompileCache(jit_after=0)), store.check_bytes)
    s = asyncio.run(store.create())
    rt.put_tensor(s, "x", 1.0)
    tape = rt.open_tape(s, persistent=True, watch_accessed_variables=True)
    rt.watch(s, tape, ["x"])
    for i in range(3):  # warm the caches and compile the run's structure
        rt.run(s, [{"id": f"w{i}_{j}", "op": "multiply", "args": ["x", 2.0]}
                   for j in range(100)], [], 1000)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    held_before = s.held_bytes
    for i in range(40):
        rt.run(s, [{"id": f"y{i}_{j}", "op": "multiply", "args": ["x", 2.0]}
                   for j in range(100)], [], 1000)
    gc.collect()
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    counted = s.held_bytes - held_before
    assert len(s.names) > 4000 and len(tape.records) > 4000
    assert s.held_bytes == s.footprint()
    # within a factor of two either way of what Python and NumPy allocated
    assert 0.5 * grown <= counted <= 2 * grown, (counted, grown)


def test_total_bytes_is_safe_while_other_sessions_change() -> None:
    store = InMemorySessionStore(StoreLimits(session_max_bytes=1 << 30, total_max_bytes=1 << 40))
    rt = SessionRuntime(Engine(), store.check_bytes)
    sessions = [asyncio.run(store.create()) for _ in range(4)]
    errors: list[BaseException] = []
    stop = threading.Event()

    def churn(s: Any, k: int) -> None:
        try:
            i = 0
            while not stop.is_set():
                rt.put_tensor(s, f"t{i % 50}", [float(i)] * (1 + i % 7))
                if i % 3 == 0:
                    rt.delete_tensor(s, f"t{i % 50}")
                i += 1
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=churn, args=(s, k)) for k, s in enumerate(sessions)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 1.5
    totals = 0
    try:
        while time.monotonic() < deadline:
            store.check_bytes(sessions[0], 1)  # walks every session's total
            totals += 1
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors
    assert totals > 10
    assert store.total_bytes() == sum(s.footprint() for s in sessions)


def test_a_failure_inside_a_worker_thread_leaves_the_session_as_it_was(
        monkeypatch: pytest.MonkeyPatch) -> None:
    with make_client() as c:
        sid = c.post("/v1/sessions").json()["session_id"]
        base = f"/v1/sessions/{sid}"
        c.put(f"{base}/tensors/x", json={"value": 3.0, "variable": True})
        tid = c.post(f"{base}/tapes", json={"persistent": True}).json()["tape_id"]
        c.post(f"{base}/run", json={"nodes": [{"id": "y", "op": "multiply", "args": ["x", "x"]}]})
        before = c.get(base).json()
        runtime = c.app.state.services.runtime
        real = runtime._collect

        def broken(s: Any) -> None:  # fails after the commit has changed the session
            raise RuntimeError("injected")

        monkeypatch.setattr(runtime, "_collect", broken)
        r = c.post(f"{base}/run", json={"nodes": [
            {"id": "z", "op": "sin", "args": ["y"]},
            {"id": "x2", "op": "assign_add", "args": ["x", 1.0]}]})
        assert r.status_code == 500 and r.headers["content-type"].startswith(PROBLEM)
        assert "injected" not in r.text  # no internals leak
        monkeypatch.setattr(runtime, "_collect", real)
        after = c.get(base).json()
        assert {**after, "expires_at": None} == {**before, "expires_at": None}
        assert c.get(f"{base}/tensors/x").json()["data"] == 3.0
        r = c.post(f"{base}/tapes/{tid}/gradient", json={"target": "y", "sources": ["x"]})
        assert r.json()["gradients"]["x"]["data"] == 6.0


def test_describing_a_big_session_leaves_the_event_loop() -> None:
    store = InMemorySessionStore()
    rt = SessionRuntime(Engine(), store.check_bytes)
    s = asyncio.run(store.create())
    for i in range(1001):
        rt.put_tensor(s, f"t{i}", 1.0)
    token = inline_limit.set(1000)
    try:
        with pytest.raises(Offload):
            rt.describe(s)
    finally:
        inline_limit.reset(token)
    assert len(rt.describe(s)["tensors"]) == 1001


def test_tape_gradient_of_a_list_of_targets_sums_them() -> None:
    with make_client() as c:
        sid = c.post("/v1/sessions").json()["session_id"]
        base = f"/v1/sessions/{sid}"
        c.put(f"{base}/tensors/x", json={"value": 3.0})
        tid = c.post(f"{base}/tapes", json={"persistent": True}).json()["tape_id"]
        c.post(f"{base}/tapes/{tid}/watch", json={"tensors": ["x"]})
        c.post(f"{base}/run", json={"nodes": [{"id": "y", "op": "multiply", "args": ["x", "x"]},
                                              {"id": "z", "op": "sin", "args": ["x"]}]})
        r = c.post(f"{base}/tapes/{tid}/gradient", json={"target": ["y", "z"], "sources": ["x"]})
        assert r.status_code == 200, r.text
        assert r.json()["gradients"]["x"]["data"] == pytest.approx(6 + np.cos(3.0), rel=1e-6)
        r = c.post(f"{base}/tapes/{tid}/gradient", json={
            "target": ["y", "z"], "sources": ["x"], "output_gradients": {"y": 2.0, "z": 0.0}})
        assert r.json()["gradients"]["x"]["data"] == pytest.approx(12.0)
        problem(c.post(f"{base}/tapes/{tid}/gradient", json={
            "target": ["y", "z"], "sources": ["x"], "output_gradients": 1.0}), 422,
            "one entry per target")
        problem(c.post(f"{base}/tapes/{tid}/gradient", json={
            "target": ["y", "z"], "sources": ["x"], "save_as": {"x": "g"}}), 422,
            "save_as needs one target")
        body = problem(c.post(f"{base}/tapes/{tid}/gradient", json={
            "target": ["y", "nope"], "sources": ["x"]}), 422, "'nope'")
        assert body["errors"][0]["loc"] == ["body", "target", 1]


# ----- registered graphs, compiles, backpressure -----


def test_registered_graphs_are_bounded_by_bytes(store_settings: Settings) -> None:
    def graph(i: int, n: int) -> dict[str, Any]:
        return {"nodes": [{"id": "y", "op": "add", "args": [
            "x", {"dtype": "float32", "shape": [n], "data": [float(i)] * n}]}]}

    settings = store_settings.model_copy(update={"graph_cache_bytes": 2_000_000})
    with TestClient(create_app(settings)) as c:
        registry = c.app.state.services.registry
        ids = []
        for i in range(6):
            r = c.post("/v1/graphs", json=graph(i, 50_000))  # ~450 kB each as JSON+array
            assert r.status_code == 201, r.text
            ids.append(r.json()["graph_id"])
            assert registry.nbytes <= 2_000_000
        if settings.store == "redis":  # the shared store keeps within the same caps
            shared = redis.Redis.from_url(settings.redis_url)
            assert 0 < int(shared.get("gt:gtotal") or 0) <= 2_000_000
            assert shared.zcard("gt:graphs") < 6
        assert c.get(f"/v1/graphs/{ids[0]}").status_code == 404  # the oldest went first
        got = c.get(f"/v1/graphs/{ids[-1]}")
        assert got.status_code == 200 and got.json()["graph"] == graph(5, 50_000)
        problem(c.post("/v1/graphs", json=graph(9, 300_000)), 413,
                "GRADTAPE_GRAPH_CACHE_BYTES")


def test_a_query_over_the_compile_budget_runs_eagerly_and_is_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    with make_client(jit_after=0, compile_in_background=False, max_compile_weight=60) as c:
        stats = c.app.state.services.engine.cache.stats
        body = {"graph": {"nodes": chain(12)}, "inputs": {"x": [0.1, 0.2, 0.3]}, "target": "t"}
        with caplog.at_level("INFO", logger="gradtape.engine"):
            first = c.post("/v1/hessian", json=body)
            second = c.post("/v1/hessian", json=body)
        assert first.status_code == second.status_code == 200
        assert first.json() == second.json()
        assert stats.compiles == 0 and stats.over_budget == 2 and stats.eager_runs == 2
        assert "not compiling: kind=hessian eqns=13 weight=65" in caplog.text
        # under the budget, the same kind compiles, and the compile is logged
        small = {**body, "graph": {"nodes": chain(3)}}
        with caplog.at_level("INFO", logger="gradtape.engine"):
            assert c.post("/v1/hessian", json=small).status_code == 200
        assert stats.compiles == 1
        assert "compile started: kind=hessian eqns=4" in caplog.text
        assert "compile finished: kind=hessian eqns=4" in caplog.text


def test_saturated_compute_is_a_503_with_retry_after() -> None:
    with make_client(max_concurrent_compute=1, compute_queue=0) as c:
        answers: list[httpx.Response] = []
        workers = [threading.Thread(target=lambda n=n: answers.append(
            c.post("/v1/evaluate", json=matmul_body(1500 + n)))) for n in range(3)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        statuses = sorted(r.status_code for r in answers)
        assert statuses[0] == 200 and statuses[-1] == 503, statuses
        busy = next(r for r in answers if r.status_code == 503)
        problem(busy, 503, "busy", "GRADTAPE_MAX_CONCURRENT_COMPUTE")
        assert busy.headers["retry-after"] == "1"
        assert c.get("/v1/health/live").status_code == 200
        assert c.post("/v1/evaluate", json=matmul_body(200)).status_code == 200


# ----- a real server: memory and the event loop -----


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, port: int, proc: subprocess.Popen[bytes]):
        self.url = f"http://127.0.0.1:{port}"
        self.proc = proc

    def memory_mb(self, field: str = "VmHWM") -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(status.split(f"{field}:")[1].split()[0]) / 1024


@contextlib.contextmanager
def server(**env: str) -> Iterator[Server]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--port", str(port)],
        cwd=ROOT, env={**os.environ, "GRADTAPE_ACCESS_LOG": "false", **env},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    live = Server(port, proc)
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{live.url}/v1/health/live", timeout=1).status_code == 200:
                    break
            assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
            time.sleep(0.2)
        yield live
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def live() -> Iterator[Server]:
    # limits stated here, so the tests do not depend on the machine's memory
    with server(GRADTAPE_MAX_REQUEST_BYTES=str(8 * 1024**3)) as s:
        yield s


def test_memory_bombs_are_refused_without_allocating(live: Server) -> None:
    with httpx.Client(base_url=live.url, timeout=60) as c:
        c.post("/v1/evaluate", json={"graph": {"nodes": [{"id": "y", "op": "sin",
                                                          "args": ["x"]}]}, "inputs": {"x": 1.0}})
        base = live.memory_mb()
        # the Hessian's batched tangents: N^3 elements for N = 1000 (estimated ~30 GiB)
        problem(c.post("/v1/hessian", json=hessian_body(1000)), 413,
                "GRADTAPE_MAX_REQUEST_BYTES", "use hvp")
        # ten answers of 49M float64 elements each, from a 700-byte body
        nodes = [{"id": f"o{i}", "op": "broadcast_to", "args": [
            {"dtype": "float64", "data": float(i)}], "attrs": {"shape": [7000, 7000]}}
            for i in range(10)]
        problem(c.post("/v1/evaluate", json={"graph": {"nodes": nodes,
                                                       "outputs": [f"o{i}" for i in range(10)]}}),
                413, "GRADTAPE_MAX_RESPONSE_BYTES")
        assert c.get("/v1/health/live").status_code == 200
        assert live.memory_mb() - base < 200, (base, live.memory_mb())


def test_heavy_work_does_not_hold_up_the_event_loop(live: Server) -> None:
    body = matmul_body(1600)
    with httpx.Client(base_url=live.url, timeout=120) as c:
        assert c.post("/v1/evaluate", json=body).status_code == 200
        assert c.post("/v1/evaluate", json=body).status_code == 200  # compiled from here
        latencies: list[float] = []
        done = threading.Event()

        def heavy() -> None:
            try:
                for _ in range(2):
                    assert c.post("/v1/evaluate", json=body).status_code == 200
            finally:
                done.set()

        worker = threading.Thread(target=heavy)
        worker.start()
        with httpx.Client(base_url=live.url, timeout=30) as probe:
            while not done.is_set():
                start = time.perf_counter()
                assert probe.get("/v1/health/live").status_code == 200
                latencies.append(time.perf_counter() - start)
                time.sleep(0.02)
        worker.join()
    assert len(latencies) >= 5
    assert max(latencies) < 0.5, sorted(latencies)[-5:]


def test_a_client_that_disconnects_mid_request_leaves_its_session_consistent(
        live: Server) -> None:
    with httpx.Client(base_url=live.url, timeout=60) as c:
        sid = c.post("/v1/sessions").json()["session_id"]
        base = f"/v1/sessions/{sid}"
        c.put(f"{base}/tensors/x", json={"value": 0.001, "variable": True})
        nodes = [{"id": "b", "op": "broadcast_to", "args": ["x"], "attrs": {"shape": [2500, 2500]}},
                 {"id": "m", "op": "matmul", "args": ["b", "b"]},
                 {"id": "m2", "op": "matmul", "args": ["m", "b"]},
                 {"id": "s", "op": "sum", "args": ["m2"]},
                 {"id": "x", "op": "assign_add", "args": ["x", 1.0]}]
        # fetching `s` makes the answer wait for the compute (a run that fetches nothing
        # answers before its compute ends): the client gives up while the run is under way
        with pytest.raises(httpx.TimeoutException):
            httpx.post(f"{live.url}{base}/run", json={"nodes": nodes, "fetch": ["s"]},
                       timeout=0.2)
        info = c.get(base).json()  # waits for the session's lock, then sees one state
        names = {t["name"] for t in info["tensors"]}
        x = c.get(f"{base}/tensors/x").json()["data"]
        if "s" in names:  # the run was applied whole
            assert x == pytest.approx(1.001) and {"b", "m", "m2"} <= names
        else:  # or not at all
            assert x == pytest.approx(0.001) and names == {"x"}
        assert c.post(f"{base}/run", json={"nodes": [{"id": "y", "op": "sin", "args": ["x"]}]}
                      ).status_code == 200


def test_the_persistent_compile_cache_keeps_compiled_code_across_restarts(
        tmp_path: Path) -> None:
    script = """
import sys, time
from fastapi.testclient import TestClient
from service.config import Settings
from service.main import create_app
with TestClient(create_app(Settings(_env_file=None, compile_cache_dir=sys.argv[1], jit_after=0,
                                    compile_in_background=False))) as c:
    body = {"graph": {"nodes": [{"id": "y", "op": "sin", "args": ["x"]},
                                {"id": "t", "op": "sum", "args": ["y"]}]},
            "inputs": {"x": [1.0, 2.0]}, "target": "t"}
    assert c.post("/v1/hessian", json=body).status_code == 200
    print(c.app.state.services.engine.cache.stats.compiles)
"""
    cache = tmp_path / "xla"
    for _ in range(2):  # two processes: the second finds what the first wrote
        out = subprocess.run([sys.executable, "-c", script, str(cache)], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.split() == ["1"]
    entries = [p for p in cache.rglob("*") if p.is_file()]
    assert entries, "nothing was written to the persistent compile cache"


def test_the_only_request_runs_on_the_event_loop_up_to_the_idle_limits() -> None:
    """Alone, a compiled query of moderate work skips the thread hop; with another request
    being answered, the same work goes to a worker thread."""
    from engine.compute import check_inline
    from service.state import Services

    svc = Services.build(Settings(_env_file=None, inline_max_flops=1_000_000,
                                  inline_idle_max_flops=500_000_000,
                                  inline_idle_max_body_bytes=1000))
    loop_thread = threading.current_thread()

    async def ask(in_flight: int, flops: int, body_bytes: int = 100) -> list[Any]:
        svc.metrics.in_flight = in_flight
        seen: list[Any] = []

        def work() -> str:
            seen.append((threading.current_thread() is loop_thread, inline_limit.get()))
            check_inline(True, flops)
            return "answer"

        assert await svc.run(work, body_bytes=body_bytes) == "answer"
        return seen

    assert asyncio.run(ask(1, 10**8)) == [(True, 500_000_000)]
    assert asyncio.run(ask(2, 10**8)) == [(True, 1_000_000), (False, None)]
    assert asyncio.run(ask(1, 10**9)) == [(True, 500_000_000), (False, None)]
    assert asyncio.run(ask(1, 10**3, body_bytes=2000)) == [(False, None)]
    assert asyncio.run(ask(2, 10**3)) == [(True, 1_000_000)]


def test_requests_in_flight_are_counted() -> None:
    app = create_app(Settings(_env_file=None))
    with TestClient(app) as c:
        svc = app.state.services
        assert svc.metrics.in_flight == 0
        assert c.get("/v1/health/live").status_code == 200
        assert svc.metrics.in_flight == 0
        # the scrape is itself a request in flight
        line = next(ln for ln in c.get("/metrics").text.splitlines()
                    if ln.startswith("gradtape_http_requests_in_flight "))
        assert float(line.split()[1]) == 1.0
