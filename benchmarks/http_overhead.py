"""HTTP overhead: the tutorial gradient over HTTP against a trivial FastAPI echo endpoint.

Three servers run side by side on 127.0.0.1, each started as a subprocess with the same
uvicorn, one worker, access log off:

- `echo`: benchmarks/echo_app.py, `POST /echo` returning the JSON body it got;
- `gradtape`: `gradtape serve` with default settings;
- `gradtape inline=0`: `gradtape serve` with GRADTAPE_INLINE_MAX_BODY_BYTES=0 and
  GRADTAPE_INLINE_IDLE_MAX_BODY_BYTES=0, which send every request to the thread pool (what the inline policy saves).

The tutorial graph (x float32 [2,2], y = reduce_sum(x), z = multiply(y, y)) is registered
once with POST /v1/graphs; the load is POST /v1/gradient {graph_id, inputs {x: [[1,1],[1,1]]},
target z, sources [x]}. The echo server gets the same body. Load comes from `wrk --latency`
(-t1 -c1 and -t2 -c8), each run `--duration` seconds after a warm-up; the runs are
interleaved across servers in `--rounds` rounds, and the tables show medians over rounds.

Goals: gradtape p50 within 1.4x of echo's, throughput at c=8 at least 0.7x of echo's.

    python benchmarks/http_overhead.py [--duration 10] [--rounds 3] [--warmup 2]
    python benchmarks/http_overhead.py --smoke    # 1 s runs, one round; writes no results
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from _common import (
    echo_server,
    environment,
    gradtape_server,
    median,
    table,
    verdict,
    write_result,
)

GRAPH: dict[str, Any] = {
    "inputs": {"x": {"dtype": "float32", "shape": [2, 2]}},
    "nodes": [
        {"id": "y", "op": "reduce_sum", "args": ["x"]},
        {"id": "z", "op": "multiply", "args": ["y", "y"]},
    ],
    "outputs": ["z"],
}
LOADS = [(1, 1), (2, 8)]  # (wrk threads, connections)
P50_GOAL = 1.4  # gradtape p50 / echo p50 at most
RPS_GOAL = 0.7  # gradtape req/s / echo req/s at least (c=8)

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _to_ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not m:
        raise ValueError(f"cannot read wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def lua_script(body: str, folder: Path) -> Path:
    """A wrk script that POSTs `body` as JSON."""
    level = "=" * 4
    assert f"]{level}]" not in body
    path = folder / f"post-{abs(hash(body))}.lua"
    path.write_text('wrk.method = "POST"\n'
                    'wrk.headers["Content-Type"] = "application/json"\n'
                    f"wrk.body = [{level}[{body}]{level}]\n")
    return path


def run_wrk(url: str, script: Path, threads: int, conns: int, seconds: float) -> dict[str, Any]:
    cmd = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds:g}s", "--latency",
           "--timeout", "10s", "-s", str(script), url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60,
                         check=True).stdout
    result: dict[str, Any] = {"threads": threads, "connections": conns, "seconds": seconds}
    for pct in ("50", "75", "90", "99"):
        m = re.search(rf"^\s*{pct}%\s+(\S+)", out, re.M)
        result[f"p{pct}_ms"] = _to_ms(m.group(1)) if m else None
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    result["rps"] = float(m.group(1)) if m else None
    m = re.search(r"(\d+) requests in", out)
    result["requests"] = int(m.group(1)) if m else None
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    result["non_2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors:(.*)", out)
    result["socket_errors"] = m.group(1).strip() if m else None
    if result["p50_ms"] is None or result["rps"] is None:
        raise RuntimeError(f"cannot parse wrk output:\n{out}")
    return result


# ----- in-process breakdown: where a request's time goes, without network or uvicorn -----

def _scope(path: str, body: bytes, method: str = "POST") -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
            "query_string": b"", "root_path": "", "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 80), "state": {},
            "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode())]}


async def _drive(app: Any, path: str, body: bytes, n: int,
                 method: str = "POST") -> tuple[int, bytes]:
    """Call the ASGI app n times with one request; returns the last status and body."""
    status, chunks = 0, []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
            chunks.clear()
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    for _ in range(n):
        await app(_scope(path, body, method), receive, send)
    return status, b"".join(chunks)


def _per_call_us(fn: Callable[[], Any], n: int, batches: int = 3) -> float:
    """Median over batches of the mean time of one call, in microseconds."""
    per = []
    for _ in range(batches):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        per.append((time.perf_counter() - start) / n * 1e6)
    return median(per)


def _per_call_async_us(runner: Any, call: Callable[[], Awaitable[Any]], n: int,
                       batches: int = 3) -> float:
    """As _per_call_us, for a coroutine function awaited n times in one event-loop run."""
    async def calls() -> None:
        for _ in range(n):
            await call()

    per = []
    for _ in range(batches):
        start = time.perf_counter()
        runner.run(calls())
        per.append((time.perf_counter() - start) / n * 1e6)
    return median(per)


def threadpool_hop_us(runner: Any, n: int) -> float:
    """Microseconds of one `run_in_threadpool` round trip on the event loop."""
    from starlette.concurrency import run_in_threadpool

    async def hops() -> None:
        for _ in range(n):
            await run_in_threadpool(int)

    per = []
    for _ in range(3):
        start = time.perf_counter()
        runner.run(hops())
        per.append((time.perf_counter() - start) / n * 1e6)
    return median(per)


def inprocess_breakdown(n: int = 200, profile_calls: int = 1000) -> dict[str, Any]:
    """Time each layer of one tutorial gradient request in this process: the whole ASGI app
    (FastAPI + gradtape's middleware + route) called directly, its parts, and the echo app."""
    import asyncio

    import echo_app
    import jax
    import jax.numpy as jnp
    import numpy as np
    import orjson

    from service.config import Settings
    from service.main import create_app
    from service.schemas.differentiation import GradientRequest
    from service.state import encode_tree

    try:
        import uvloop
        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    # log level warning, as the servers below run: no access-log line per request
    apps = {"default": create_app(Settings(log_level="warning")),
            "inline=0": create_app(Settings(log_level="warning", inline_max_body_bytes=0,
                                            inline_idle_max_body_bytes=0))}
    graph = orjson.dumps(GRAPH)
    for app in apps.values():
        status, out = runner.run(_drive(app, "/v1/graphs", graph, 1))
    gid = orjson.loads(out)["graph_id"]
    body = orjson.dumps({"graph_id": gid, "inputs": {"x": [[1, 1], [1, 1]]}, "target": "z",
                         "sources": ["x"]})
    for app in apps.values():
        status, out = runner.run(_drive(app, "/v1/gradient", body, 3))
        assert status == 200, out
    hops = {name: _threadpool_hops(runner, app, body) for name, app in apps.items()}
    svc = apps["default"].state.services
    req = GradientRequest.model_validate_json(body)
    program = runner.run(svc.graph(gid)).program
    bound = svc.engine.bind(program, req.inputs)

    direct = jax.jit(jax.value_and_grad(lambda x: jnp.sum(x) * jnp.sum(x)))
    x = np.ones((2, 2), np.float32)
    jax.device_get(direct(x))

    async def engine_path() -> bytes:  # what the route does once the request is parsed
        registered = await svc.graph(gid)
        b = svc.engine.bind(registered.program, req.inputs)
        result = svc.engine.gradient(b, req.target, req.sources, req.output_gradients,
                                     req.unconnected_gradients)
        return orjson.dumps(encode_tree(result, req.encoding),
                            option=orjson.OPT_SERIALIZE_NUMPY)

    def asgi_us(app: Any, path: str, count: int, method: str = "POST") -> float:
        per = []
        for _ in range(3):
            start = time.perf_counter()
            runner.run(_drive(app, path, body, count, method))
            per.append((time.perf_counter() - start) / count * 1e6)
        return median(per)

    rows: dict[str, float] = {}
    for count in (20, n):  # the second pass is the one kept (the first warms caches)
        rows["echo app: whole ASGI call"] = asgi_us(echo_app.app, "/echo", count)
        rows["gradtape app: whole ASGI call (default)"] = asgi_us(
            apps["default"], "/v1/gradient", count)
        rows["gradtape app: whole ASGI call (inline=0)"] = asgi_us(
            apps["inline=0"], "/v1/gradient", count)
        rows["gradtape app: GET /v1/health/live (middleware + routing floor)"] = asgi_us(
            apps["default"], "/v1/health/live", count, "GET")
        rows["  request schema (GradientRequest.model_validate_json)"] = _per_call_us(
            lambda: GradientRequest.model_validate_json(body), count)
        rows["  engine path (registry + bind + gradient + encode + orjson)"] = \
            _per_call_async_us(runner, engine_path, count)
        rows["    Services.graph (registry lookup)"] = _per_call_async_us(
            runner, lambda: svc.graph(gid), count)
        rows["    Engine.bind"] = _per_call_us(lambda: svc.engine.bind(program, req.inputs),
                                               count)
        rows["    Engine.gradient (bound; compiled call + device_get)"] = _per_call_us(
            lambda: svc.engine.gradient(bound, "z", ["x"]), count)
        rows["  one worker-thread round trip (run_in_threadpool of a no-op)"] = \
            threadpool_hop_us(runner, count)
        rows["  jax.jit(value_and_grad) of the same function + device_get"] = _per_call_us(
            lambda: jax.device_get(direct(x)), count)

    import cProfile
    import io
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    runner.run(_drive(apps["default"], "/v1/gradient", body, profile_calls))
    prof.disable()
    runner.close()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(35)
    return {"per_request_us": rows, "threadpool_hops_per_request": hops,
            "cprofile_top_cumulative": buf.getvalue()}


def _threadpool_hops(runner: Any, app: Any, body: bytes, n: int = 50) -> float:
    """Worker-thread round trips (anyio.to_thread.run_sync calls) per gradient request."""
    import anyio.to_thread

    original = anyio.to_thread.run_sync
    calls = 0

    async def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return await original(*args, **kwargs)

    anyio.to_thread.run_sync = counting  # type: ignore[assignment]
    try:
        runner.run(_drive(app, "/v1/gradient", body, n))
    finally:
        anyio.to_thread.run_sync = original  # type: ignore[assignment]
    return calls / n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument("--warmup", type=float, default=2, help="seconds of wrk warm-up")
    parser.add_argument("--smoke", action="store_true",
                        help="1 s wrk runs, one round and a short in-process breakdown, to "
                        "check that it works (writes no results)")
    args = parser.parse_args()
    if args.smoke:
        args.duration, args.rounds, args.warmup = 1, 1, 1
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install -y wrk", file=sys.stderr)
        return 2
    env = environment()
    breakdown = inprocess_breakdown(20, 50) if args.smoke else inprocess_breakdown()
    print(table(["layer", "us per request"], list(breakdown["per_request_us"].items()),
                title="In-process breakdown of one tutorial gradient request (no network, "
                "no uvicorn; median of 3 batches)"))
    print("worker-thread round trips per request: " + ", ".join(
        f"{k} {v:g}" for k, v in breakdown["threadpool_hops_per_request"].items()))
    print()
    tmp = Path(tempfile.mkdtemp(prefix="bench-wrk-"))

    with echo_server() as echo, gradtape_server() as gt, \
            gradtape_server("gradtape-inline0", inline_max_body_bytes=0,
                            inline_idle_max_body_bytes=0) as gt0:
        targets: dict[str, tuple[str, Path]] = {}
        body = ""
        for name, server in (("gradtape", gt), ("gradtape inline=0", gt0)):
            reg = httpx.post(f"{server.url}/v1/graphs", json=GRAPH, timeout=60)
            reg.raise_for_status()
            request = {"graph_id": reg.json()["graph_id"], "inputs": {"x": [[1, 1], [1, 1]]},
                       "target": "z", "sources": ["x"]}
            body = json.dumps(request, separators=(",", ":"))
            for _ in range(3):  # eager, then compiled, then hot
                r = httpx.post(f"{server.url}/v1/gradient", content=body, timeout=60,
                               headers={"content-type": "application/json"})
                r.raise_for_status()
            grad = r.json()["gradients"]["x"]
            assert grad["data"] == [[8.0, 8.0], [8.0, 8.0]], grad
            targets[name] = (f"{server.url}/v1/gradient", lua_script(body, tmp))
        r = httpx.post(f"{echo.url}/echo", content=body, timeout=10,
                       headers={"content-type": "application/json"})
        assert r.json() == json.loads(body), r.text
        targets = {"echo": (f"{echo.url}/echo", lua_script(body, tmp)), **targets}
        print(f"request body ({len(body)} bytes): {body}")

        for name, (url, script) in targets.items():
            for threads, conns in LOADS:
                warm = run_wrk(url, script, threads, conns, args.warmup)
                if warm["non_2xx"]:
                    raise RuntimeError(f"{name}: {warm['non_2xx']} non-2xx answers in warm-up")

        runs: dict[str, dict[int, list[dict[str, Any]]]] = {
            n: {c: [] for _, c in LOADS} for n in targets}
        names = list(targets)
        for rnd in range(args.rounds):
            order = names[rnd % len(names):] + names[:rnd % len(names)]
            for threads, conns in LOADS:
                for name in order:
                    url, script = targets[name]
                    res = run_wrk(url, script, threads, conns, args.duration)
                    if res["non_2xx"]:
                        raise RuntimeError(f"{name}: {res['non_2xx']} non-2xx answers")
                    runs[name][conns].append(res)
                    print(f"  round {rnd + 1}/{args.rounds} c={conns} {name:18s} "
                          f"p50 {res['p50_ms']:.3f} ms  {res['rps']:.0f} req/s", flush=True)

    summary: dict[str, dict[str, dict[str, float]]] = {}
    rows = []
    for name in targets:
        summary[name] = {}
        for threads, conns in LOADS:
            rs = runs[name][conns]
            p50s = [r["p50_ms"] for r in rs]
            rps = [r["rps"] for r in rs]
            s = {"p50_ms": median(p50s), "p50_ms_min": min(p50s), "p50_ms_max": max(p50s),
                 "p99_ms": median([r["p99_ms"] for r in rs]), "rps": median(rps),
                 "rps_min": min(rps), "rps_max": max(rps)}
            summary[name][f"c{conns}"] = s
            rows.append([name, f"-t{threads} -c{conns}", s["p50_ms"],
                         f"{s['p50_ms_min']:.3f}-{s['p50_ms_max']:.3f}", s["p99_ms"],
                         round(s["rps"]), f"{s['rps_min']:.0f}-{s['rps_max']:.0f}"])
    print()
    print(table(["server", "load", "p50 ms", "p50 range", "p99 ms", "req/s", "req/s range"],
                rows, title=f"Medians over {args.rounds} rounds of {args.duration:g} s "
                f"(wrk --latency)"))

    ratios: dict[str, dict[str, Any]] = {}
    rrows = []
    for name in ("gradtape", "gradtape inline=0"):
        ratios[name] = {}
        for _, conns in LOADS:
            s, e = summary[name][f"c{conns}"], summary["echo"][f"c{conns}"]
            p50_ratio, rps_ratio = s["p50_ms"] / e["p50_ms"], s["rps"] / e["rps"]
            ratios[name][f"c{conns}"] = {
                "p50_ratio": p50_ratio, "rps_ratio": rps_ratio,
                "p50_goal_met": p50_ratio <= P50_GOAL, "rps_goal_met": rps_ratio >= RPS_GOAL}
            rrows.append([name, f"c={conns}", p50_ratio, verdict(p50_ratio <= P50_GOAL),
                          rps_ratio, verdict(rps_ratio >= RPS_GOAL)])
    print()
    print(table(["server / echo", "load", "p50 ratio", f"<= {P50_GOAL}", "req/s ratio",
                 f">= {RPS_GOAL}"], rrows, title="Ratios to the echo endpoint"))

    savings = {}
    srows = []
    for _, conns in LOADS:
        d, z = summary["gradtape"][f"c{conns}"], summary["gradtape inline=0"][f"c{conns}"]
        savings[f"c{conns}"] = {"p50_ms_saved": z["p50_ms"] - d["p50_ms"],
                                "p50_inline0_over_default": z["p50_ms"] / d["p50_ms"],
                                "rps_default_over_inline0": d["rps"] / z["rps"]}
        srows.append([f"c={conns}", z["p50_ms"] - d["p50_ms"], z["p50_ms"] / d["p50_ms"],
                      d["rps"] / z["rps"]])
    print()
    print(table(["load", "p50 saved ms", "p50 inline0/default", "req/s default/inline0"],
                srows, title="What the inline policy saves (default vs inline_max_body_bytes=0)"))

    shutil.rmtree(tmp, ignore_errors=True)
    if args.smoke:
        print("\nsmoke run: no results written")
        return 0
    path = write_result("http_overhead", {
        "config": {"duration_s": args.duration, "rounds": args.rounds, "warmup_s": args.warmup,
                   "loads": [{"threads": t, "connections": c} for t, c in LOADS],
                   "body": json.loads(body), "graph": GRAPH},
        "goals": {"p50_ratio_max": P50_GOAL, "rps_ratio_min": RPS_GOAL},
        "summary": summary, "ratios": ratios, "inline_savings": savings, "runs": runs,
        "inprocess_breakdown": breakdown,
    }, env)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
