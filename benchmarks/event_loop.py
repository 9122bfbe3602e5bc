"""Does a heavy request hold up everyone else? `/v1/health/live` latency under heavy load.

A probe sends `GET /v1/health/live` every `--interval` seconds (50 ms) with a timeout, on a
fixed schedule (a probe goes out when due, answered or not are the earlier ones, so a stall of
T seconds is seen by all the probes sent during it, as by independent clients), first with no
other traffic for `--baseline` seconds, then while `--clients` clients (2) send a heavy request
over and over for `--duration` seconds. The heavy request is `POST /v1/evaluate` of

    b = broadcast_to(x, [size, size]); m = matmul(b, b); m2 = matmul(m, b); s = sum(m2)

with a scalar input `x`: a small body whose query is compiled after the warm-up, and whose
work (two size x size matmuls) is large; `--size` sets it (default 2000: ~1-3 s a call on 2
cores). A server that runs such a request on its event loop cannot answer the probe until the
call is done. `--mix` adds one client each for three other kinds of heavy request:

- `POST /v1/graphs` of a graph holding one big literal (`--literal-mb`, 36 MB of JSON);
- `POST /v1/evaluate` of a graph whose op name is unknown and long (`--op-mb`, 30 MB): the
  server looks for close op names to suggest;
- `GET /v1/sessions/{sid}` of a session holding `--session-tensors` (200k) scalar tensors.

The warm-up sends each kind until it runs as in steady state (the matmul query compiled, as
/v1/info's compile cache stats tell) and times one call of each alone. A probe that times out
counts as the timeout (`--probe-timeout`) in the percentiles and is also counted apart; a
probe that fails otherwise (connection refused, ...) is counted apart only. Heavy requests are
counted by status code (a 503 from a saturated server is an answer like any other); those in
flight when the load window closes are waited for (up to `--request-timeout`) and counted as
finished after the window.

The server is `gradtape serve` started here on a free 127.0.0.1 port (default settings, one
worker), from this checkout or, with `--server-dir DIR`, from the code in DIR (e.g. a `git
worktree` of an older commit, run with this venv's interpreter, DIR first on PYTHONPATH); or a
running server given by `--url` (loopback only). Every phase has a time limit: the run stops by
itself.

    python benchmarks/event_loop.py [--duration 45] [--size 2000] [--clients 2] [--mix]
        [--url http://127.0.0.1:8000 | --server-dir DIR] [--json PATH] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from _common import (
    HOST,
    RESULTS,
    ROOT,
    Server,
    environment,
    fmt,
    free_port,
    median,
    ms,
    quantile,
)

LIVE = "/v1/health/live"
JSON = {"content-type": "application/json"}
SMOKE = {"duration": 3.0, "baseline": 1.0, "size": 64, "clients": 2, "mix": True,
         "literal_mb": 0.05, "op_mb": 0.05, "session_tensors": 300, "warm_timeout": 60.0,
         "request_timeout": 30.0, "probe_timeout": 5.0}


# ----- request bodies -----

def matmul_body(size: int) -> bytes:
    graph = {"nodes": [
        {"id": "b", "op": "broadcast_to", "args": ["x"], "attrs": {"shape": [size, size]}},
        {"id": "m", "op": "matmul", "args": ["b", "b"]},
        {"id": "m2", "op": "matmul", "args": ["m", "b"]},
        {"id": "s", "op": "sum", "args": ["m2"]},
    ]}
    return json.dumps({"graph": graph, "inputs": {"x": 0.001}}).encode()


def literal_graph_body(megabytes: float) -> bytes:
    """A graph `sum(<literal>)` whose literal is a flat list of ~megabytes MB of JSON; the
    same bytes every time, so that the registry keeps one copy."""
    n = max(1, int(megabytes * 1e6) // 5)  # "0.25," is 5 bytes
    return b'{"nodes":[{"id":"c","op":"sum","args":[[' + b"0.25," * (n - 1) + b'0.25]]}]}'


def unknown_op_body(megabytes: float) -> bytes:
    name = b"unknown_op_" + b"z" * max(1, int(megabytes * 1e6))
    return (b'{"graph":{"nodes":[{"id":"y","op":"' + name + b'","args":["x"]}]},'
            b'"inputs":{"x":1.0}}')


# ----- the kinds of heavy request -----

@dataclass
class Kind:
    name: str
    describe: str
    send: Callable[[httpx.Client], httpx.Response]
    ok: tuple[int, ...] = (200,)  # what a warm-up call must answer
    compiled: bool = False  # a query the compile cache compiles after a few calls


def matmul_kind(size: int) -> Kind:
    body = matmul_body(size)
    return Kind(f"matmul {size}", f"POST /v1/evaluate, 2 matmuls {size}x{size} "
                f"({len(body)} B body)",
                lambda c: c.post("/v1/evaluate", content=body, headers=JSON), compiled=True)


def literal_kind(megabytes: float) -> Kind:
    body = literal_graph_body(megabytes)
    return Kind("register literal", f"POST /v1/graphs, one literal, {len(body) / 1e6:.3g} MB",
                lambda c: c.post("/v1/graphs", content=body, headers=JSON), (200, 201))


def unknown_op_kind(megabytes: float) -> Kind:
    body = unknown_op_body(megabytes)
    return Kind("unknown op", f"POST /v1/evaluate, unknown op name of {len(body) / 1e6:.3g} MB",
                lambda c: c.post("/v1/evaluate", content=body, headers=JSON), (400, 422))


def session_kind(client: httpx.Client, tensors: int, chunk: int = 10_000) -> tuple[Kind, str]:
    """A session holding `tensors` scalars, filled with `run` requests of `chunk` nodes."""
    r = client.post("/v1/sessions", json={"ttl_seconds": 3600})
    r.raise_for_status()
    sid = r.json()["session_id"]
    for first in range(0, tensors, chunk):
        nodes = [{"id": f"t{i}", "op": "identity", "args": [0.0]}
                 for i in range(first, min(first + chunk, tensors))]
        r = client.post(f"/v1/sessions/{sid}/run", json={"nodes": nodes, "fetch": []})
        if r.is_error:
            raise RuntimeError(f"filling the session: {r.status_code} {r.text[:500]}")
    path = f"/v1/sessions/{sid}"
    return Kind("session listing", f"GET /v1/sessions/{{sid}}, {tensors} tensors",
                lambda c: c.get(path)), sid


# ----- measuring -----

@dataclass
class Sample:
    at: float  # seconds since the phase started
    seconds: float  # the timeout for a probe that timed out
    outcome: str  # status code, "timeout", or the exception's name
    kind: str = ""
    in_window: bool = True


def outcome_of(send: Callable[[], httpx.Response]) -> tuple[float, str]:
    start = time.perf_counter()
    try:
        outcome = str(send().status_code)
    except httpx.TimeoutException:
        outcome = "timeout"
    except httpx.HTTPError as exc:
        outcome = type(exc).__name__
    return time.perf_counter() - start, outcome


def probe(url: str, t0: float, stop_at: float, interval: float, timeout: float,
          out: list[Sample]) -> float:
    """GET /v1/health/live every `interval` s until `stop_at`, on a fixed schedule: a probe
    goes out when it is due whether or not earlier ones have been answered (as independent
    health checks would), so that a stall of T seconds is seen by every probe sent during it.
    Returns how late, at worst, this process sent a probe (a busy client would show here)."""
    async def one(client: httpx.AsyncClient) -> None:
        at = time.monotonic() - t0
        start = time.perf_counter()
        try:
            outcome = str((await client.get(LIVE)).status_code)
        except httpx.TimeoutException:
            outcome = "timeout"
        except httpx.HTTPError as exc:
            outcome = type(exc).__name__
        seconds = timeout if outcome == "timeout" else time.perf_counter() - start
        out.append(Sample(at, seconds, outcome))

    async def schedule() -> float:
        limits = httpx.Limits(max_connections=int(timeout / interval) + 16,
                              max_keepalive_connections=16)
        lag = 0.0
        async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
            tasks = []
            first = time.monotonic()
            for k in itertools.count():
                due = first + k * interval
                if due >= stop_at:
                    break
                if due > time.monotonic():
                    await asyncio.sleep(due - time.monotonic())
                lag = max(lag, time.monotonic() - due)
                tasks.append(asyncio.create_task(one(client)))
            await asyncio.gather(*tasks)
        return lag

    return asyncio.run(schedule())


def load(url: str, kind: Kind, t0: float, stop_at: float, timeout: float,
         out: list[Sample]) -> None:
    """Send `kind` back to back until `stop_at` (the call in flight then is finished)."""
    with httpx.Client(base_url=url, timeout=timeout) as client:
        while time.monotonic() < stop_at:
            at = time.monotonic() - t0
            seconds, outcome = outcome_of(lambda: kind.send(client))
            out.append(Sample(at, seconds, outcome, kind.name, time.monotonic() <= stop_at))


def run_phase(url: str, seconds: float, kinds: Sequence[Kind], args: argparse.Namespace
              ) -> tuple[list[Sample], list[Sample], dict[str, float]]:
    """Probe for `seconds` while one thread per entry of `kinds` sends it. Returns the probe
    samples, the heavy calls, and the phase's wall time, how many calls were still in flight
    when given up on and the probe's worst send lag."""
    probes: list[Sample] = []
    calls: list[Sample] = []
    t0 = time.monotonic()
    stop_at = t0 + seconds
    threads = [threading.Thread(target=load, daemon=True, name=f"load-{i}",
                                args=(url, kind, t0, stop_at, args.request_timeout, calls))
               for i, kind in enumerate(kinds)]
    for t in threads:
        t.start()
    lag = probe(url, t0, stop_at, args.interval, args.probe_timeout, probes)
    give_up = time.monotonic() + args.request_timeout + 5
    for t in threads:
        t.join(max(0.0, give_up - time.monotonic()))
    stuck = sum(t.is_alive() for t in threads)
    probes.sort(key=lambda p: p.at)
    return probes, list(calls), {"wall_s": time.monotonic() - t0, "stuck_clients": stuck,
                                 "probe_send_lag_s": lag}


def warm(client: httpx.Client, kind: Kind, deadline: float) -> dict[str, Any]:
    """Send `kind` until it runs as in steady state; returns the time of the last call.

    For a compiled query that is a call that ran no eager step (/v1/info's compile cache
    `eager_runs` did not move); without /v1/info, the third call. Other kinds: one call."""
    def counters() -> tuple[Any, Any] | None:
        """The compile cache's (eager_runs, compiles), or None where /v1/info lacks them."""
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError, TypeError):
            r = client.get("/v1/info")
            if r.status_code == 200:
                stats = r.json()["compile_cache"]
                return stats["eager_runs"], stats["compiles"]
        return None

    once = not kind.compiled
    calls: list[float] = []
    while True:
        before = None if once else counters()
        start = time.perf_counter()
        r = kind.send(client)
        seconds = time.perf_counter() - start
        if r.status_code not in kind.ok:
            raise RuntimeError(f"warm-up of {kind.name}: {r.status_code} {r.text[:1000]}")
        calls.append(seconds)
        if once:
            return {"calls": len(calls), "last_call_s": seconds, "steady": True}
        after = counters()
        if before is None or after is None:
            if len(calls) >= 3:
                return {"calls": len(calls), "last_call_s": seconds, "steady": None}
        elif after == before:
            return {"calls": len(calls), "last_call_s": seconds, "steady": True}
        if time.monotonic() > deadline:
            print(f"warning: {kind.name} still not compiled after the warm-up "
                  f"({len(calls)} calls)", file=sys.stderr)
            return {"calls": len(calls), "last_call_s": seconds, "steady": False}


# ----- summaries -----

def probe_summary(samples: Sequence[Sample]) -> dict[str, Any]:
    timed = [s.seconds for s in samples if s.outcome in ("200", "timeout")]
    row: dict[str, Any] = {
        "probes": len(samples),
        "ok": sum(s.outcome == "200" for s in samples),
        "timeouts": sum(s.outcome == "timeout" for s in samples),
        "errors": dict(Counter(s.outcome for s in samples
                               if s.outcome not in ("200", "timeout"))),
        "over_100ms": sum(s.seconds > 0.1 for s in samples),
        "over_1s": sum(s.seconds > 1.0 for s in samples),
    }
    for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0)):
        row[f"{name}_ms"] = ms(quantile(timed, q)) if timed else None
    return row


def call_summary(calls: Sequence[Sample], kinds: Sequence[Kind]) -> list[dict[str, Any]]:
    rows = []
    for name in dict.fromkeys(k.name for k in kinds):
        mine = [c for c in calls if c.kind == name]
        rows.append({
            "kind": name,
            "clients": sum(k.name == name for k in kinds),
            "sent": len(mine),
            "done_in_window": sum(c.in_window for c in mine),
            "done_after_window": sum(not c.in_window for c in mine),
            "outcomes": dict(sorted(Counter(c.outcome for c in mine).items())),
            "median_s": median([c.seconds for c in mine]) if mine else None,
            "max_s": max((c.seconds for c in mine), default=None),
        })
    return rows


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(
        " --- " if i == 0 else " ---: " for i in range(len(headers))) + "|"]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# ----- the server -----

def loopback_url(url: str) -> str:
    host = urlsplit(url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise SystemExit(f"--url must be a loopback address (127.0.0.1), not {host!r}")
    return url.rstrip("/")


def server_code(server_dir: Path | None) -> dict[str, Any]:
    """Which `service` package the server imports (asked of a Python started as the server
    is), and the commit of its checkout."""
    env = {**os.environ, **server_env(server_dir)}
    code = subprocess.run([sys.executable, "-P", "-c", "import service; print(service.__file__)"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    info: dict[str, Any] = {"dir": str(server_dir or ROOT),
                            "service_file": code.stdout.strip() or code.stderr.strip()[-500:]}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        git = ["git", "-C", str(server_dir or ROOT)]
        info["git_commit"] = subprocess.run([*git, "rev-parse", "--short", "HEAD"],
                                            capture_output=True, text=True,
                                            timeout=5).stdout.strip()
        info["git_dirty"] = bool(subprocess.run(
            [*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True,
            text=True, timeout=5).stdout.strip())
    return info


def server_env(server_dir: Path | None) -> dict[str, str]:
    return {} if server_dir is None else {"PYTHONPATH": str(server_dir)}


@contextlib.contextmanager
def target(args: argparse.Namespace) -> Iterator[tuple[str, dict[str, Any]]]:
    """The URL to measure, and what runs there."""
    if args.url:
        yield loopback_url(args.url), {"url": args.url, "started_here": False}
        return
    server_dir = Path(args.server_dir).resolve() if args.server_dir else None
    if server_dir is not None and not (server_dir / "service" / "cli.py").is_file():
        raise SystemExit(f"--server-dir {server_dir}: no service/cli.py there")
    code = server_code(server_dir)
    expected = (server_dir or ROOT) / "service" / "__init__.py"
    if Path(code["service_file"]).resolve() != expected.resolve():
        raise SystemExit(f"the server would import {code['service_file']}, not {expected}")
    port = free_port()
    # -P: no script or working directory in front of sys.path, so that `service` comes from
    # PYTHONPATH (--server-dir) or else from the project's editable install
    command = [sys.executable, "-P", "-m", "service.cli", "serve", "--host", HOST, "--port",
               str(port), "--workers", "1", "--log-level", "warning"]
    with Server("gradtape", command, port, "/v1/health/ready", server_env(server_dir),
                ready_timeout=args.warm_timeout) as server:
        yield server.url, {"url": server.url, "started_here": True, "command": command,
                           "code": code}


# ----- main -----

def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=45.0, help="seconds of load (45)")
    p.add_argument("--baseline", type=float, default=10.0,
                   help="seconds of probing with no load first (10)")
    p.add_argument("--size", type=int, default=2000,
                   help="matrix side of the matmul request (2000: ~1-3 s a call on 2 cores)")
    p.add_argument("--clients", type=int, default=2,
                   help="concurrent clients sending the matmul request (2)")
    p.add_argument("--mix", action="store_true",
                   help="one more client each for a big literal graph registration, a long "
                        "unknown op name and a big session listing")
    p.add_argument("--literal-mb", type=float, default=36.0)
    p.add_argument("--op-mb", type=float, default=30.0)
    p.add_argument("--session-tensors", type=int, default=200_000)
    p.add_argument("--interval", type=float, default=0.05, help="seconds between probes (0.05)")
    p.add_argument("--probe-timeout", type=float, default=30.0,
                   help="seconds; a probe that times out counts as this long (30)")
    p.add_argument("--request-timeout", type=float, default=120.0,
                   help="seconds, for each heavy request (120)")
    p.add_argument("--warm-timeout", type=float, default=180.0,
                   help="seconds for the server to start, and again for the warm-up (180)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--url", help="measure this running server (loopback only)")
    where.add_argument("--server-dir",
                       help="start the server from the code in this directory")
    p.add_argument("--json", metavar="PATH",
                   help="write the results here (default benchmarks/results/event_loop.json; "
                        "with --smoke, nowhere unless given)")
    p.add_argument("--smoke", action="store_true",
                   help="a few seconds with tiny sizes and --mix, to check that it all runs")
    args = p.parse_args(argv)
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    if args.clients < 1 or args.size < 1 or args.duration <= 0 or args.interval <= 0:
        p.error("--clients, --size, --duration and --interval must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    env = environment()
    started = time.monotonic()
    with target(args) as (url, server), httpx.Client(
            base_url=url, timeout=args.request_timeout) as client:
        client.get(LIVE).raise_for_status()
        deadline = time.monotonic() + args.warm_timeout
        kinds = [matmul_kind(args.size)]
        warmup = {kinds[0].name: warm(client, kinds[0], deadline)}
        session_id = None
        setup: dict[str, float] = {}
        if args.mix:
            t = time.monotonic()
            session, session_id = session_kind(client, args.session_tensors)
            setup["session_fill_s"] = time.monotonic() - t
            mix = [literal_kind(args.literal_mb), unknown_op_kind(args.op_mb), session]
            warmup |= {k.name: warm(client, k, deadline) for k in mix}
            kinds += mix
        load_kinds = [kinds[0]] * args.clients + kinds[1:]

        base_probes, _, base_info = run_phase(url, args.baseline, [], args)
        probes, calls, load_info = run_phase(url, args.duration, load_kinds, args)
        with contextlib.suppress(httpx.HTTPError):
            if session_id is not None:
                client.delete(f"/v1/sessions/{session_id}")
    total = time.monotonic() - started

    phases = {"no load": probe_summary(base_probes), "under load": probe_summary(probes)}
    heavy = call_summary(calls, load_kinds)
    print(f"server {server['url']}" + (f", code {server['code']['service_file']} "
                                       f"(commit {server['code'].get('git_commit', '?')}"
                                       f"{', dirty' if server['code'].get('git_dirty') else ''})"
                                       if server.get("code") else ""))
    print(f"probe GET {LIVE} every {ms(args.interval):.0f} ms (fixed schedule), timeout "
          f"{args.probe_timeout:g} s; {args.baseline:g} s with no load, then {args.duration:g} s "
          f"of load from {len(load_kinds)} clients; load average "
          f"{env['loadavg_at_start'][0]:.1f} at start, {os.getloadavg()[0]:.1f} at end\n")
    if "session_fill_s" in setup:
        print(f"session filled with {args.session_tensors} tensors in "
              f"{setup['session_fill_s']:.1f} s\n")
    print(md_table(["kind", "request", "warm-up calls", "one call alone, s"],
                   [[k.name, k.describe, warmup[k.name]["calls"],
                     warmup[k.name]["last_call_s"]] for k in kinds]))
    print()
    print(md_table(
        ["probe", "probes", "p50 ms", "p90 ms", "p99 ms", "max ms", "> 100 ms", "> 1 s",
         "timeouts", "errors"],
        [[name, r["probes"], r["p50_ms"], r["p90_ms"], r["p99_ms"], r["max_ms"],
          r["over_100ms"], r["over_1s"], r["timeouts"],
          ", ".join(f"{k}: {v}" for k, v in r["errors"].items()) or 0]
         for name, r in phases.items()]))
    print()
    print(md_table(
        ["heavy request", "clients", "sent", "done in window", "done after", "status codes",
         "median s", "max s"],
        [[r["kind"], r["clients"], r["sent"], r["done_in_window"], r["done_after_window"],
          ", ".join(f"{k}: {v}" for k, v in r["outcomes"].items()), r["median_s"],
          r["max_s"]] for r in heavy]))
    stuck = load_info["stuck_clients"]
    if stuck:
        print(f"\n{stuck} client(s) still waiting for an answer "
              f"{args.request_timeout:g} s after the window closed")
    lag = max(base_info["probe_send_lag_s"], load_info["probe_send_lag_s"])
    print(f"\nload phase {load_info['wall_s']:.1f} s (window {args.duration:g} s), whole run "
          f"{total:.1f} s; probes sent at most {ms(lag):.1f} ms late by this process")

    path = Path(args.json) if args.json else None if args.smoke else RESULTS / "event_loop.json"
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "benchmark": "event_loop", "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "environment": {**env, "loadavg_at_end": os.getloadavg()},
            "config": dict(vars(args)), "server": server,
            "kinds": {k.name: k.describe for k in kinds}, "setup": setup, "warmup": warmup,
            "probe": phases, "heavy": heavy, "phases": {"no_load": base_info,
                                                        "under_load": load_info},
            "total_s": total,
            "samples": {"no_load": [asdict(s) for s in base_probes],
                        "under_load": [asdict(s) for s in probes],
                        "heavy": [asdict(s) for s in calls]},
        }
        path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
        print(f"wrote {path}")

    answered = [c for c in calls if c.outcome.isdigit()]
    ok = bool(answered) and phases["under load"]["ok"] > 0 and phases["no load"]["ok"] > 0
    if not ok:
        print("FAILED: no heavy request answered, or no probe answered", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
