"""Scale-out: sessions in Redis against sessions in memory, and stateless throughput through
nginx with one and two replicas.

Everything runs on 127.0.0.1 in one run, and every comparison is against a baseline measured
in the same run, interleaved with it:

1. The tutorial: examples/tutorial.py's five parts (68 requests, each part in its own
   session) against four setups: `gradtape serve` on the memory store; on the Redis store
   (GRADTAPE_STORE=redis); on the Redis store with the replica's tensor cache off
   (GRADTAPE_TENSOR_CACHE_BYTES=0); and two Redis-store replicas behind nginx (the
   deployment's template), where consecutive requests of one client alternate between the
   replicas. Goal: the Redis store within 1.25x of the memory store per tutorial run.
2. The MLP training step of session_training.py (seven requests, the six weights trainable
   variables of the session) on the same four setups, step by step in turn; the final
   weights are checked to agree. The cost of writing everything through to Redis is
   measured from outside the replicas, on each setup's own Redis server: `INFO
   commandstats` (calls and microseconds per command), `INFO stats` (bytes received and
   sent), `INFO cpu` and `INFO persistence` before and after every step. Then a few untimed
   steps with the slow log recording every command (`slowlog-log-slower-than 0`) and the
   session's state read between requests give, request by request, the top-level commands,
   what each commit wrote and deleted, the state document and the tensor cache's hits; and
   the biggest commit's tensors are written again to a scratch key, as Lua script arguments
   (as the store does) and as a MULTI/EXEC of HSETs, to see what the script costs.
3. Stateless throughput: the tutorial gradient with its graph inline (POST /v1/gradient) to
   one replica directly, through nginx (the deployment's template, deploy/nginx) to that
   replica, and through nginx to two replicas (memory store), with wrk (or, without wrk,
   an asyncio load generator in this process) at a few concurrency levels; the CPU time of
   the load generator, nginx and each replica during each run says how the cores were
   shared.

Each Redis server is `redis-server` as docker-compose.yml runs it (AOF on, fsync every
second, no RDB snapshots), one per setup so that its counters belong to that setup. Servers are subprocesses on free loopback ports, stopped at the end whatever
happens.

    python benchmarks/scale_out.py [--steps 20] [--tutorial-runs 10] [--duration 8]
    python benchmarks/scale_out.py --smoke      # tiny counts, about a minute; for CI
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from _common import (
    ROOT,
    Server,
    environment,
    free_port,
    gradtape_command,
    median,
    ms,
    quantile,
    table,
    verdict,
    write_result,
)
from mlp import WEIGHTS, batch, init_weights
from session_training import REQUESTS, SessionTrainer, run_tutorial

TUTORIAL_GOAL = 1.25  # Redis store / memory store, median time per tutorial run
MEMORY, REDIS, NOCACHE = "memory", "redis", "redis, no tensor cache"
REDIS2 = "redis, 2 replicas via nginx"
PREFIX = "gt:"  # the Redis store's default key prefix
GRADIENT_BODY = {
    "graph": {"inputs": {"x": {"dtype": "float32", "shape": [2, 2]}},
              "nodes": [{"id": "y", "op": "reduce_sum", "args": ["x"]},
                        {"id": "z", "op": "multiply", "args": ["y", "y"]}],
              "outputs": ["z"]},
    "inputs": {"x": [[1, 1], [1, 1]]}, "target": "z", "sources": ["x"]}
LOADS = [(1, 1), (2, 8), (2, 32)]  # (client threads, connections)
SMOKE_LOADS = [(1, 1), (2, 8)]
# our own commands on the Redis servers, left out of every delta
OWN_COMMANDS = ("info", "slowlog", "config", "client", "hello", "hstrlen")


def rotated(names: Sequence[str], i: int) -> list[str]:
    """The names starting at the i-th: each takes each place in turn."""
    k = i % len(names)
    return [*names[k:], *names[:k]]


# ----- servers -----


class Fleet:
    """Every process this benchmark starts, stopped in reverse order by `close`."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.stoppers: list[Callable[[], None]] = []
        self.gradtape: list[Server] = []

    def redis(self, name: str) -> Any:
        from tests.cluster import RedisServer

        server = RedisServer(self.folder / name, appendfsync="everysec")
        self.stoppers.append(server.stop)
        server.start()
        return server

    def nginx(self, name: str, ports: list[int]) -> Any:
        from tests.cluster import Nginx

        server = Nginx(self.folder / name, ports)
        self.stoppers.append(server.stop)
        server.start()
        return server

    def replicas(self, settings: dict[str, dict[str, Any]]) -> dict[str, Server]:
        """`gradtape serve` (one worker) with GRADTAPE_<KEY>=value per setting, per name;
        started side by side."""
        servers = {}
        for name, values in settings.items():
            port = free_port()
            env = {f"GRADTAPE_{k.upper()}": str(v) for k, v in values.items()}
            slug = "-".join(name.replace(",", " ").split())  # for its log file's name
            server = Server(slug, gradtape_command(port), port, "/v1/health/ready", env)
            self.stoppers.append(server.stop)
            self.gradtape.append(server)
            servers[name] = server
        with ThreadPoolExecutor(len(servers)) as pool:
            for done in [pool.submit(s.start) for s in servers.values()]:
                done.result()
        return servers

    def close(self, failed: bool) -> None:
        for stop in reversed(self.stoppers):
            with contextlib.suppress(Exception):
                stop()
        self.stoppers.clear()
        for server in self.gradtape:
            if failed:
                print(f"{server.name} log: {server.log_path}", file=sys.stderr)
            else:
                server.log_path.unlink(missing_ok=True)


# ----- Redis, seen from outside -----


def script_names() -> dict[str, str]:
    """SHA1 -> name of every Lua script the store and redis-py's lock send."""
    from redis.asyncio.lock import Lock

    from engine.sessions.store import redis as store

    bodies = {"open": store._OPEN, "commit": store._COMMIT, "create": store._CREATE,
              "delete": store._DELETE, "reap": store._REAP, "put_graph": store._PUT_GRAPH,
              "lock release": Lock.LUA_RELEASE_SCRIPT, "lock extend": Lock.LUA_EXTEND_SCRIPT,
              "lock reacquire": Lock.LUA_REACQUIRE_SCRIPT}
    return {hashlib.sha1(b.encode()).hexdigest(): n for n, b in bodies.items()}


class RedisProbe:
    """A connection of ours to one Redis server: INFO snapshots and their differences,
    and the slow log."""

    def __init__(self, url: str):
        import redis

        self.client = redis.Redis.from_url(url, socket_timeout=30)
        self.client.client_setname("bench")
        self.scripts = script_names()
        # our INFO's own request and reply, counted in the next difference: measured here
        a, b, c = self.snapshot(), self.snapshot(), self.snapshot()
        self.own_in = (b["net_in"] - a["net_in"] + c["net_in"] - b["net_in"]) / 2
        self.own_out = (b["net_out"] - a["net_out"] + c["net_out"] - b["net_out"]) / 2

    def snapshot(self) -> dict[str, Any]:
        info = self.client.info("stats", "cpu", "persistence", "commandstats")
        commands = {k.removeprefix("cmdstat_"): (v["calls"], v["usec"])
                    for k, v in info.items() if k.startswith("cmdstat_")}
        return {"commands": commands, "net_in": info["total_net_input_bytes"],
                "net_out": info["total_net_output_bytes"],
                "cpu_s": info["used_cpu_user"] + info["used_cpu_sys"],
                "aof_bytes": info.get("aof_current_size", 0),
                "aof_rewrites": info.get("aof_rewrites", 0)}

    def delta(self, before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
        commands = {}
        for name, (calls, usec) in after["commands"].items():
            if name.split("|")[0] in OWN_COMMANDS:
                continue
            c0, u0 = before["commands"].get(name, (0, 0))
            if calls > c0:
                commands[name] = {"calls": calls - c0, "usec": usec - u0}
        aof = after["aof_bytes"] - before["aof_bytes"]
        rewrote = after["aof_rewrites"] != before["aof_rewrites"] or aof < 0
        return {"commands": commands,
                "bytes_in": after["net_in"] - before["net_in"] - self.own_in,
                "bytes_out": after["net_out"] - before["net_out"] - self.own_out,
                "cpu_ms": ms(after["cpu_s"] - before["cpu_s"]),
                # an AOF rewrite in between shrinks the file: no figure for that interval
                "aof_bytes": None if rewrote else aof}

    def slowlog_on(self) -> None:
        self.client.config_set("slowlog-max-len", 100_000)
        self.client.config_set("slowlog-log-slower-than", 0)
        self.client.slowlog_reset()

    def slowlog_off(self) -> None:
        self.client.config_set("slowlog-log-slower-than", 10_000)
        self.client.slowlog_reset()

    def slowlog(self) -> list[dict[str, Any]]:
        """The commands logged since the last reset, oldest first, ours left out. `inner`:
        run by a Lua script (Redis 7 logs those too, from its script client `?:0`)."""
        raw = self.client.execute_command("SLOWLOG", "GET", "-1")
        self.client.slowlog_reset()
        out = []
        for entry in reversed(raw):
            usec, args, addr = entry[2], entry[3], entry[4]
            name = entry[5] if len(entry) > 5 else b""
            if name == b"bench":
                continue
            words = [a.decode(errors="replace") for a in args]
            command = words[0].lower()
            if command in ("evalsha", "eval"):
                command = f"evalsha({self.scripts.get(words[1], words[1][:8])})"
            out.append({"command": command, "usec": usec, "args": words,
                        "inner": addr in (b"?:0", b"")})
        return out


def arg_count(args: list[str]) -> int:
    """How many arguments a slow-log entry had (it keeps 31 and says how many more)."""
    last = args[-1]
    if last.startswith("... (") and last.endswith("more arguments)"):
        return len(args) - 1 + int(last.split("(")[1].split()[0])
    return len(args)


# ----- part 1: the tutorial -----


def tutorial_part(servers: dict[str, Any], probes: dict[str, RedisProbe], warm: int,
                  runs: int, behind: dict[str, list[str]]) -> dict[str, Any]:
    """`behind`: the replicas behind a proxy, warmed up one by one as well."""
    for name, server in servers.items():  # first runs compile each new query structure
        for url in behind.get(name, []):
            run_tutorial(url, warm)
        run_tutorial(server.url, warm)
    out: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
    for i in range(runs):
        for name in rotated(list(servers), i):
            probe = probes.get(name)
            before = probe.snapshot() if probe else None
            result = run_tutorial(servers[name].url, 1)[0]
            if probe and before:
                result["redis"] = probe.delta(before, probe.snapshot())
            out[name].append(result)
    return out


def report_tutorial(results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    summary = {}
    base = median([r["total_ms"] for r in results[MEMORY]])
    rows = []
    for name, runs in results.items():
        total = median([r["total_ms"] for r in runs])
        redis = [r["redis"] for r in runs if "redis" in r]
        s = {"runs": len(runs), "requests": runs[0]["requests"], "median_total_ms": total,
             "min_total_ms": min(r["total_ms"] for r in runs),
             "max_total_ms": max(r["total_ms"] for r in runs),
             "median_ms_per_request": median([r["ms_per_request"] for r in runs]),
             "ratio_to_memory": total / base,
             "answers_match_api_md": all(r["matches_api_md"] for r in runs)}
        if redis:
            s["bytes_to_redis_per_run"] = median([d["bytes_in"] for d in redis])
            s["bytes_from_redis_per_run"] = median([d["bytes_out"] for d in redis])
            s["redis_cpu_ms_per_run"] = median([d["cpu_ms"] for d in redis])
            s["evalsha_per_run"] = median([d["commands"].get("evalsha", {}).get("calls", 0)
                                           for d in redis])
        summary[name] = s
        rows.append([name, s["requests"], total, f"{s['min_total_ms']:.0f}-"
                     f"{s['max_total_ms']:.0f}", s["median_ms_per_request"], total / base,
                     s.get("evalsha_per_run"), _kb(s.get("bytes_to_redis_per_run")),
                     _kb(s.get("bytes_from_redis_per_run")), s.get("redis_cpu_ms_per_run"),
                     "yes" if s["answers_match_api_md"] else "NO"])
    print(table(["store", "requests", "median ms / run", "range", "ms / request",
                 "x memory", "scripts / run", "KB to Redis", "KB from Redis", "Redis CPU ms",
                 "answers = API.md"], rows,
                title=f"1. The tutorial (examples/tutorial.py), {len(results[MEMORY])} runs "
                "per store after warm-up, interleaved"))
    ratio = summary[REDIS]["ratio_to_memory"]
    print(f"\nredis / memory: {ratio:.2f}x per tutorial run  (goal <= {TUTORIAL_GOAL}: "
          f"{verdict(ratio <= TUTORIAL_GOAL)})")
    return summary


def _kb(x: float | None) -> float | None:
    return None if x is None else x / 1024


# ----- part 2: the MLP training step -----


def training_part(servers: dict[str, Any], probes: dict[str, RedisProbe], steps: int,
                  warmup: int, attribution_steps: int, behind: dict[str, list[str]]
                  ) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    weights = init_weights(rng)
    batches = [batch(rng) for _ in range(warmup + steps + attribution_steps)]
    for url in (u for urls in behind.values() for u in urls):
        # replicas behind a proxy see every other request of a session: compile the step's
        # queries on each of them first, in a session of their own
        with httpx.Client(base_url=url, timeout=120) as client:
            warm = SessionTrainer(client, weights)
            for X, Y in batches[:warmup]:
                warm.step(X, Y)
            warm.close()
    clients = {n: httpx.Client(base_url=s.url, timeout=120) for n, s in servers.items()}
    try:
        trainers = {n: SessionTrainer(c, weights) for n, c in clients.items()}
        times: dict[str, list[float]] = {n: [] for n in servers}
        per_request: dict[str, list[list[float]]] = {n: [] for n in servers}
        deltas: dict[str, list[dict[str, Any]]] = {n: [] for n in probes}
        for i, (X, Y) in enumerate(batches[:warmup + steps]):
            for name in rotated(list(servers), i):
                probe = probes.get(name)
                before = probe.snapshot() if probe else None
                elapsed, req_times = trainers[name].step(X, Y)
                after = probe.snapshot() if probe else None
                if i < warmup:
                    continue
                times[name].append(elapsed)
                per_request[name].append(req_times)
                if probe and before and after:
                    deltas[name].append(probe.delta(before, after))
        final = {n: {w: t.weight(w) for w in WEIGHTS} for n, t in trainers.items()}
        # then more steps, request by request, on the Redis stores with the cache on:
        # untimed (each store's session goes its own way from here)
        attribution = {n: attribute(trainers[n], probes[n], batches[warmup + steps:])
                       for n in (REDIS, REDIS2) if n in trainers}
        payload = commit_payload_cost(probes[REDIS], trainers[REDIS].sid)
        for t in trainers.values():
            t.close()
    finally:
        for c in clients.values():
            c.close()
    agree = {n: max(float(np.max(np.abs(final[n][w] - final[MEMORY][w]))) for w in WEIGHTS)
             for n in servers}
    for n in servers:
        for w in WEIGHTS:
            np.testing.assert_allclose(final[n][w], final[MEMORY][w], rtol=1e-4, atol=1e-5)
    return {"step_s": times, "per_request_s": per_request, "redis_per_step": deltas,
            "attribution": attribution, "commit_payload": payload,
            "final_weights_max_abs_diff_to_memory": agree}


def attribute(trainer: SessionTrainer, probe: RedisProbe,
              batches: Sequence[tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """Steps on the Redis store with a snapshot and the slow log around every request, and
    the session's state read in between: what each request made Redis do."""
    sid = trainer.sid
    state_key, tensors_key = f"{PREFIX}s:{sid}", f"{PREFIX}t:{sid}"
    r = probe.client

    def state() -> dict[str, Any]:
        return json.loads(r.hget(state_key, "state"))

    def labels(doc: dict[str, Any]) -> dict[int, str]:
        """Tensor id -> what holds it: a name, a variable (by its name) or a tape."""
        out: dict[int, str] = {}
        by_handle = {var: name for name, _, var in doc["names"] if var is not None}
        for handle, current, _ in doc["variables"]:
            out[current] = f"{by_handle.get(handle, handle)} (variable)"
        for name, tensor, _ in doc["names"]:
            if tensor is not None:
                out.setdefault(tensor, name)
        for tid, handle in doc["version_of"]:
            out.setdefault(tid, f"{by_handle.get(handle, handle)} (old version, for a tape)")
        for tape in doc["tapes"]:
            for rec in tape["records"]:
                for arg in rec[2]:
                    if isinstance(arg, int):
                        out.setdefault(arg, f"tape value ({rec[4]})")
        return out

    rows: list[dict[str, Any]] = []
    written: dict[int, dict[str, Any]] = {}  # tensor id -> who wrote it, size, shape, label
    probe.slowlog_on()
    try:
        for k, (X, Y) in enumerate(batches):
            requests = iter(REQUESTS)
            original = trainer._call

            def traced(method: str, path: str, body: Any = None, k: int = k,
                       requests: Iterator[str] = requests,
                       original: Callable[..., Any] = original) -> Any:
                label = next(requests)
                doc0 = state()
                held0 = set(doc0["tensors"])
                probe.slowlog()  # empties it
                before = probe.snapshot()
                start = time.perf_counter()
                out = original(method, path, body)
                elapsed = time.perf_counter() - start
                d = probe.delta(before, probe.snapshot())
                log = probe.slowlog()
                doc1 = state()
                held1 = set(doc1["tensors"])
                new, gone = sorted(held1 - held0), sorted(held0 - held1)
                names = labels(doc1)
                sizes = {}
                for tid in new:
                    blob = r.hget(tensors_key, str(tid)) or b""
                    meta = json.loads(blob.partition(b"\n")[0] or b"{}")
                    sizes[tid] = len(blob)
                    written[tid] = {"step": k, "request": label, "bytes": len(blob),
                                    "shape": meta.get("shape"), "label": names.get(tid, "?")}
                for tid in gone:
                    if tid in written:
                        written[tid]["deleted_by"] = (k, label)
                top = [e for e in log if not e["inner"]]
                fetched = sum(arg_count(e["args"]) - 2 for e in top
                              if e["command"] == "hmget" and e["args"][1] == tensors_key)
                rows.append({
                    "step": k, "request": label, "client_ms": ms(elapsed),
                    "top_level": dict(Counter(e["command"] for e in top)),
                    "top_level_usec": sum(e["usec"] for e in top),
                    "inner": dict(Counter(e["command"] for e in log if e["inner"])),
                    "bytes_in": d["bytes_in"], "bytes_out": d["bytes_out"],
                    "redis_cpu_ms": d["cpu_ms"], "written": len(new),
                    "written_bytes": sum(sizes.values()), "deleted": len(gone),
                    "state_json_bytes": r.hstrlen(state_key, "state"),
                    "tensors_held": len(held1), "tensor_lookups": len(held0),
                    "fetched_from_redis": fetched,
                    "tape_records": sum(len(t["records"]) for t in doc1["tapes"])})
                return out

            trainer._call = traced  # type: ignore[method-assign]
            try:
                trainer.step(X, Y)
            finally:
                trainer._call = original  # type: ignore[method-assign]
    finally:
        probe.slowlog_off()
    return {"requests": rows, "written": {str(t): w for t, w in written.items()}}


_HSET_ALL = """
for i = 1, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""


def commit_payload_cost(probe: RedisProbe, sid: str, repeats: int = 5) -> dict[str, Any]:
    """What the biggest commit of a step (POST run (updates): the six u_<W> and the six new
    weights) costs Redis as Lua script arguments, as the store sends it, against the same
    blobs as a MULTI/EXEC of HSETs; on a scratch key of the same Redis, after the runs."""
    r = probe.client
    doc = json.loads(r.hget(f"{PREFIX}s:{sid}", "state"))
    handles = {handle: current for handle, current, _ in doc["variables"]}
    ids = [t for n, t, _ in doc["names"] if t is not None and n.startswith("u_")]
    ids += [handles[v] for _, _, v in doc["names"] if v is not None]
    blobs = r.hmget(f"{PREFIX}t:{sid}", [str(t) for t in ids])
    key = "bench:payload"
    script = r.register_script(_HSET_ALL)
    out: dict[str, list[float]] = defaultdict(list)
    try:
        for _ in range(repeats):
            r.delete(key)
            before = probe.snapshot()
            start = time.perf_counter()
            script(keys=[key], args=[x for i, b in enumerate(blobs) for x in (str(i), b)])
            out["script_client_ms"].append(ms(time.perf_counter() - start))
            d = probe.delta(before, probe.snapshot())["commands"]
            out["script_redis_usec"].append(d["evalsha"]["usec"])
            out["script_hset_usec"].append(d["hset"]["usec"])
            r.delete(key)
            before = probe.snapshot()
            start = time.perf_counter()
            with r.pipeline(transaction=True) as pipe:
                for i, b in enumerate(blobs):
                    pipe.hset(key, str(i), b)
                pipe.execute()
            out["multi_client_ms"].append(ms(time.perf_counter() - start))
            d = probe.delta(before, probe.snapshot())["commands"]
            out["multi_redis_usec"].append(sum(v["usec"] for v in d.values()))
    finally:
        r.delete(key)
    result: dict[str, Any] = {k: median(v) for k, v in out.items()}
    result.update(tensors=len(blobs), bytes=sum(len(b) for b in blobs), samples=dict(out))
    return result


def report_training(res: dict[str, Any], steps: int, warmup: int) -> dict[str, Any]:
    names = list(res["step_s"])
    base = median(res["step_s"][MEMORY])
    summary: dict[str, Any] = {"median_step_ms": {}, "ratio_to_memory": {}}
    rows = []
    for n in names:
        t = res["step_s"][n]
        m = median(t)
        summary["median_step_ms"][n] = ms(m)
        summary["ratio_to_memory"][n] = m / base
        rows.append([n, ms(m), ms(min(t)), ms(max(t)), m / base])
    print(table(["store", "median ms / step", "min", "max", "x memory"], rows,
                title=f"2. MLP training step (784-512-512-10, batch 128, 7 requests), "
                f"{steps} steps after {warmup} warm-up, the stores in turn"))
    print("final weights agree across stores (max abs diff to memory "
          f"{max(res['final_weights_max_abs_diff_to_memory'].values()):.1e})")

    per_req = {n: {req: ms(median([s[k] for s in res["per_request_s"][n]]))
                   for k, req in enumerate(REQUESTS)} for n in names}
    summary["per_request_median_ms"] = per_req
    print()
    print(table(["request", *[f"{n} ms" for n in names], "redis - memory ms"],
                [[req, *[per_req[n][req] for n in names], per_req[REDIS][req] -
                  per_req[MEMORY][req]] for req in REQUESTS],
                title="Median client-side time of each request of the step"))

    # Redis, per step, from INFO differences around each timed step
    redis_names = list(res["redis_per_step"])
    per_step: dict[str, dict[str, Any]] = {}
    commands = sorted({c for n in redis_names for d in res["redis_per_step"][n]
                       for c in d["commands"]})
    for n in redis_names:
        ds = res["redis_per_step"][n]
        count = len(ds)
        per_step[n] = {
            "commands": {c: {"calls": sum(d["commands"].get(c, {}).get("calls", 0)
                                          for d in ds) / count,
                             "usec": sum(d["commands"].get(c, {}).get("usec", 0)
                                         for d in ds) / count} for c in commands},
            "bytes_in": median([d["bytes_in"] for d in ds]),
            "bytes_out": median([d["bytes_out"] for d in ds]),
            "cpu_ms": median([d["cpu_ms"] for d in ds]),
            "aof_bytes": median([d["aof_bytes"] for d in ds if d["aof_bytes"] is not None]
                                or [0]),
            "aof_rewrites": sum(d["aof_bytes"] is None for d in ds)}
    summary["redis_per_step"] = per_step
    # where each command ran, as the slow log of the untimed pass saw it
    where: dict[str, set[str]] = defaultdict(set)
    for r in (r for a in res["attribution"].values() for r in a["requests"]):
        for c in r["top_level"]:
            where[c.split("(")[0]].add("top level")
        for c in r["inner"]:
            where[c].add("in scripts")
    rows = []
    for c in commands:
        row: list[Any] = [c, " + ".join(sorted(where.get(c, {"not in traced steps"})))]
        for n in redis_names:
            v = per_step[n]["commands"][c]
            row += [v["calls"], v["usec"]]
        rows.append(row)
    for label, key, scale in (("MB to Redis (net input)", "bytes_in", 1 / 1024**2),
                              ("MB from Redis (net output)", "bytes_out", 1 / 1024**2),
                              ("MB appended to the AOF", "aof_bytes", 1 / 1024**2),
                              ("AOF rewrites during the timed steps", "aof_rewrites", 1),
                              ("Redis CPU ms (user + sys, INFO cpu)", "cpu_ms", 1)):
        rows.append([label, "", *[x for n in redis_names
                                  for x in ("", per_step[n][key] * scale)]])
    headers = ["per step (mean; bytes and CPU: median)", "where"]
    for n in redis_names:
        headers += [f"{n}: calls", f"{n}: usec"]
    print()
    print(table(headers, rows, title="Redis per training step, from INFO commandstats / stats "
                "/ cpu / persistence before and after each timed step (evalsha's usec "
                "include the commands its scripts run)"))
    return summary


def generic(label: str) -> str:
    """A tensor's label with the weight's name as <W>: g_W1 -> g_<W>."""
    for w in WEIGHTS:
        label = label.replace(f"g_{w}", "g_<W>").replace(f"u_{w}", "u_<W>")
        if label == w or label.startswith(w + " "):
            label = "<W>" + label[len(w):]
    return label


def report_attribution(atts: dict[str, dict[str, Any]], payload: dict[str, Any]
                       ) -> dict[str, Any]:
    out = {name: attribution_summary(name, att, detail=name == REDIS)
           for name, att in atts.items()}
    p = payload
    print()
    print(table(["the same 12 tensors, " + f"{p['bytes'] / 1024**2:.1f} MB", "Redis usec",
                 "client ms"],
                [["as Lua script arguments (EVALSHA, HSET each), as the store commits",
                  p["script_redis_usec"], p["script_client_ms"]],
                 ["  of which the HSETs inside the script", p["script_hset_usec"], None],
                 ["as MULTI + 12 HSET + EXEC (one pipeline)", p["multi_redis_usec"],
                  p["multi_client_ms"]]],
                title="What the biggest commit of a step (POST run (updates)) costs Redis, "
                "by how it is sent (median of 5, on a scratch key after the runs)"))
    out["commit_payload"] = {k: v for k, v in p.items() if k != "samples"}
    return out


def attribution_summary(name: str, att: dict[str, Any], detail: bool) -> dict[str, Any]:
    rows = att["requests"]
    if not rows:
        return {}
    last = max(r["step"] for r in rows)
    shown = [r for r in rows if r["step"] == last]
    lookups = sum(r["tensor_lookups"] for r in rows)
    fetched = sum(r["fetched_from_redis"] for r in rows)
    # Redis's usec are wall time inside Redis, preemption included: median over the steps
    top_usec = median([sum(r["top_level_usec"] for r in rows if r["step"] == k)
                       for k in range(last + 1)])
    usec = {req: median([r["top_level_usec"] for r in rows if r["request"] == req])
            for req in REQUESTS}
    if not detail:
        print(f"\n{name}: tensor cache {lookups - fetched} of {lookups} tensor loads hit "
              f"({100 * (1 - fetched / lookups):.0f}%) over {last + 1} steps; Redis time in "
              f"top-level commands {top_usec} usec per step")
        return {"tensor_lookups": lookups, "fetched_from_redis": fetched,
                "tensor_cache_hit_rate": 1 - fetched / lookups if lookups else None,
                "top_level_usec_per_step": top_usec}
    print()
    print(table(["request", "top-level Redis commands", "usec (median)", "KB to Redis", "KB from Redis",
                 "tensors written", "KB written", "deleted", "held after", "lookups",
                 "fetched", "state JSON KB", "tape records"],
                [[r["request"], " ".join(f"{c} x{n}" if n > 1 else c
                                         for c, n in r["top_level"].items()),
                  usec[r["request"]], r["bytes_in"] / 1024, r["bytes_out"] / 1024,
                  r["written"], r["written_bytes"] / 1024, r["deleted"], r["tensors_held"],
                  r["tensor_lookups"], r["fetched_from_redis"], r["state_json_bytes"] / 1024,
                  r["tape_records"]] for r in shown],
                title=f"One step on the Redis store, request by request (untimed; slow log "
                f"of every command; usec: median over {last + 1} steps, the rest from the last; "
                "lookups = tensors the request loaded, fetched = those not in the tensor "
                "cache)"))
    # what the first step wrote, and when it was dropped
    firsts = [w for w in att["written"].values() if w["step"] == 0]
    by_label: dict[tuple[str, str], dict[str, Any]] = defaultdict(
        lambda: {"count": 0, "bytes": 0, "fates": Counter()})
    steps_seen = last + 1
    for w in firsts:
        group = by_label[(w["request"], generic(w["label"]))]
        group["count"] += 1
        group["bytes"] += w["bytes"]
        gone = w.get("deleted_by")
        if gone is None:
            fate = "held at the end" if steps_seen > 1 else "held (1 step seen)"
        elif gone[0] == w["step"]:
            fate = f"dropped by {gone[1]}, same step"
        else:
            fate = f"dropped by {gone[1]}, next step"
        group["fates"][fate] += 1
    total = sum(w["bytes"] for w in firsts)
    transient = sum(w["bytes"] for w in firsts
                    if w.get("deleted_by") and w["deleted_by"][0] == w["step"])
    next_step = sum(w["bytes"] for w in firsts
                    if w.get("deleted_by") and w["deleted_by"][0] == w["step"] + 1)
    print()
    print(table(["written by", "tensors", "count", "KB", "fate"],
                [[req, label, g["count"], g["bytes"] / 1024,
                  ", ".join(f"{f}" + (f" x{c}" if c > 1 else "") for f, c in g["fates"].items())]
                 for (req, label), g in by_label.items()],
                title="Tensors one step writes to Redis, and when they stop being needed"))
    state_bytes = sum(r["state_json_bytes"] for r in shown)
    summary = {"tensor_bytes_written_per_step": total,
               "dropped_same_step_bytes": transient, "dropped_next_step_bytes": next_step,
               "state_json_bytes_written_per_step": state_bytes,
               "tensor_lookups": lookups, "fetched_from_redis": fetched,
               "tensor_cache_hit_rate": 1 - fetched / lookups if lookups else None,
               "top_level_usec_per_step": top_usec}
    print(f"\ntensor data written per step: {total / 1024**2:.2f} MB, of which "
          f"{transient / 1024**2:.2f} MB dropped within the same step and "
          f"{next_step / 1024**2:.2f} MB by the next step; state documents written: "
          f"{state_bytes / 1024:.0f} KB per step")
    if lookups:
        print(f"{name}: tensor cache {lookups - fetched} of {lookups} tensor loads hit "
              f"({100 * (1 - fetched / lookups):.0f}%) over {last + 1} steps; Redis time in "
              "top-level commands "
              f"{summary['top_level_usec_per_step']} usec per step")
    return summary


# ----- part 3: stateless throughput through nginx -----


def cpu_ticks(pids: Sequence[int]) -> float:
    """CPU seconds (user + system, all threads) of the processes and their children."""
    tick = os.sysconf("SC_CLK_TCK")
    wanted = set(pids)
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(entry), int(fields[1])
        if pid in wanted or ppid in wanted:
            total += int(fields[11]) + int(fields[12])
    return total / tick


def wrk_load(url: str, script: Path, threads: int, conns: int, seconds: int
             ) -> dict[str, Any]:
    from http_overhead import run_wrk

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = run_wrk(url, script, threads, conns, seconds)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    out["client_cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime -
                                                                 before.ru_stime)
    return out


def python_load(url: str, body: bytes, conns: int, seconds: float) -> dict[str, Any]:
    """`conns` keep-alive connections, each sending the POST again as soon as its answer is
    in, from one asyncio loop in this process (which shares the cores with the servers)."""
    hostport = url.split("//")[1].split("/")[0]
    host, port = hostport.split(":")
    path = "/" + url.split("//")[1].split("/", 1)[1]
    request = (f"POST {path} HTTP/1.1\r\nHost: {hostport}\r\nContent-Type: application/json"
               f"\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    latencies: list[float] = []
    bad = 0

    async def one(deadline: float) -> None:
        nonlocal bad
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                writer.write(request)
                status = int((await reader.readline()).split()[1])
                length, close = 0, False
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    key, _, value = line.decode("latin-1").partition(":")
                    if key.lower() == "content-length":
                        length = int(value)
                    elif key.lower() == "connection" and "close" in value.lower():
                        close = True
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - start)
                bad += not 200 <= status < 400
                if close:
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, int(port))
        finally:
            writer.close()

    async def run() -> float:
        start = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(one(start + seconds) for _ in range(conns))),
                               seconds + 60)
        return time.perf_counter() - start

    before = resource.getrusage(resource.RUSAGE_SELF)
    elapsed = asyncio.run(run())
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {"threads": 1, "connections": conns, "seconds": seconds,
            "p50_ms": ms(quantile(latencies, 0.5)), "p99_ms": ms(quantile(latencies, 0.99)),
            "rps": len(latencies) / elapsed, "requests": len(latencies), "non_2xx": bad,
            "client_cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime -
                                                                   before.ru_stime)}


def gradient_count(url: str) -> float:
    """POST /v1/gradient requests a replica has answered, from its /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("gradtape_http_requests_total{") and \
                'route="/v1/gradient"' in line and 'method="POST"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def throughput_part(fleet: Fleet, replicas: list[Server], loads: Sequence[tuple[int, int]],
                    duration: int, warm_s: int, rounds: int, generator: str,
                    folder: Path) -> dict[str, Any]:
    r1, r2 = replicas
    lb1 = fleet.nginx("nginx-1", [r1.port])
    lb2 = fleet.nginx("nginx-2", [r1.port, r2.port])
    body = json.dumps(GRADIENT_BODY, separators=(",", ":"))
    for server in replicas:  # eager, then compiled, then hot, on each replica
        for _ in range(3):
            r = httpx.post(f"{server.url}/v1/gradient", content=body, timeout=60,
                           headers={"content-type": "application/json"})
            r.raise_for_status()
        assert r.json()["gradients"]["x"]["data"] == [[8.0, 8.0], [8.0, 8.0]], r.text
    for lb in (lb1, lb2):
        r = httpx.post(f"{lb.url}/v1/gradient", content=body, timeout=60,
                       headers={"content-type": "application/json"})
        r.raise_for_status()
    targets = {"1 replica, direct": (r1.url, [r1]), "nginx -> 1 replica": (lb1.url, [r1]),
               "nginx -> 2 replicas": (lb2.url, [r1, r2])}
    script = None
    if generator == "wrk":
        from http_overhead import lua_script

        script = lua_script(body, folder)

    def load(url: str, threads: int, conns: int, seconds: int) -> dict[str, Any]:
        if script is not None:
            return wrk_load(f"{url}/v1/gradient", script, threads, conns, seconds)
        return python_load(f"{url}/v1/gradient", body.encode(), conns, seconds)

    for url, _ in targets.values():
        for threads, conns in loads:
            load(url, threads, conns, warm_s)
    procs = {"nginx": [lb1.pid, lb2.pid], "replica 1": [r1.proc.pid if r1.proc else 0],
             "replica 2": [r2.proc.pid if r2.proc else 0]}
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {t: {c: [] for _, c in loads}
                                                        for t in targets}
    share = {r1.name: 0.0, r2.name: 0.0}
    for rnd in range(rounds):
        for threads, conns in loads:
            for name in rotated(list(targets), rnd):
                url, _ = targets[name]
                counts = [gradient_count(s.url) for s in replicas]
                cpu0 = {k: cpu_ticks(v) for k, v in procs.items()}
                res = load(url, threads, conns, duration)
                cpu1 = {k: cpu_ticks(v) for k, v in procs.items()}
                res["cores"] = {k: (cpu1[k] - cpu0[k]) / res["seconds"] for k in procs}
                res["cores"]["load generator"] = res.pop("client_cpu_s") / res["seconds"]
                res["per_replica"] = [gradient_count(s.url) - c
                                      for s, c in zip(replicas, counts, strict=True)]
                if res["non_2xx"]:
                    raise RuntimeError(f"{name}: {res['non_2xx']} non-2xx answers")
                if name == "nginx -> 2 replicas":
                    share[r1.name] += res["per_replica"][0]
                    share[r2.name] += res["per_replica"][1]
                runs[name][conns].append(res)
                print(f"  round {rnd + 1}/{rounds} c={conns:<3} {name:20s} "
                      f"p50 {res['p50_ms']:.2f} ms  {res['rps']:.0f} req/s", flush=True)
    return {"runs": runs, "loads": loads, "targets": list(targets), "generator": generator,
            "two_replica_split": share}


def report_throughput(res: dict[str, Any], duration: float, rounds: int) -> dict[str, Any]:
    summary: dict[str, dict[str, Any]] = {}
    rows = []
    cpu_rows = []
    for name in res["targets"]:
        summary[name] = {}
        for threads, conns in res["loads"]:
            rs = res["runs"][name][conns]
            s = {"rps": median([r["rps"] for r in rs]),
                 "p50_ms": median([r["p50_ms"] for r in rs]),
                 "p99_ms": median([r["p99_ms"] for r in rs]),
                 "cores": {k: median([r["cores"][k] for r in rs]) for k in rs[0]["cores"]}}
            summary[name][f"c{conns}"] = s
            label = f"-t{threads} -c{conns}" if res["generator"] == "wrk" else f"c={conns}"
            rows.append([name, label, round(s["rps"]), s["p50_ms"],
                         s["p99_ms"]])
            c = s["cores"]
            s["replica_cpu_ms_per_request"] = 1e3 * (c["replica 1"] + c["replica 2"]) / s["rps"]
            cpu_rows.append([name, f"c={conns}", c["load generator"], c["nginx"],
                             c["replica 1"], c["replica 2"], sum(c.values()),
                             s["replica_cpu_ms_per_request"]])
    gen = "wrk --latency" if res["generator"] == "wrk" else \
        "an asyncio load generator in the benchmark process"
    print(table(["target", "load", "req/s", "p50 ms", "p99 ms"], rows,
                title=f"3. Stateless POST /v1/gradient (tutorial graph inline), memory store; "
                f"medians of {rounds} rounds of {duration:g} s ({gen})"))
    ratios = []
    for _, conns in res["loads"]:
        d = summary["1 replica, direct"][f"c{conns}"]
        n1 = summary["nginx -> 1 replica"][f"c{conns}"]
        n2 = summary["nginx -> 2 replicas"][f"c{conns}"]
        ratios.append([f"c={conns}", n1["rps"] / d["rps"], n1["p50_ms"] / d["p50_ms"],
                       n2["rps"] / n1["rps"], n2["rps"] / d["rps"]])
    print()
    print(table(["load", "nginx/direct req/s", "nginx/direct p50", "2 replicas/1 req/s",
                 "2 replicas via nginx / direct req/s"], ratios, title="Ratios"))
    print()
    print(table(["target", "load", "client", "nginx", "replica 1", "replica 2", "total",
                 "replica CPU ms / request"],
                cpu_rows, title="Cores busy during the runs (CPU seconds per second, from "
                "/proc and getrusage; the machine has "
                f"{os.cpu_count()})"))
    split = res["two_replica_split"]
    total = sum(split.values()) or 1
    print("nginx -> 2 replicas: " + ", ".join(f"{k} answered {100 * v / total:.0f}%"
                                              for k, v in split.items()))
    return summary


# ----- main -----


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true",
                        help="tiny counts and 1 s runs, to check that it works")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per store")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--attribution-steps", type=int, default=3,
                        help="untimed steps on the Redis store with the slow log on")
    parser.add_argument("--tutorial-runs", type=int, default=10, help="timed runs per store")
    parser.add_argument("--tutorial-warmup", type=int, default=2, help="untimed runs first")
    parser.add_argument("--duration", type=int, default=8,
                        help="seconds per throughput run (whole seconds: wrk's unit)")
    parser.add_argument("--rounds", type=int, default=2, help="throughput rounds (median)")
    parser.add_argument("--generator", choices=("auto", "wrk", "python"), default="auto",
                        help="throughput load: wrk, or an asyncio client (auto: wrk when "
                        "installed)")
    parser.add_argument("--json", type=Path, default=None,
                        help="write the results here (default: results/scale_out.json, "
                        "except with --smoke)")
    args = parser.parse_args()
    loads = LOADS
    if args.smoke:
        args.steps, args.warmup, args.attribution_steps = 2, 1, 2
        args.tutorial_runs, args.tutorial_warmup = 2, 1
        args.duration, args.rounds = 1, 1
        loads = SMOKE_LOADS
    generator = args.generator
    if generator == "auto":
        generator = "wrk" if shutil.which("wrk") else "python"
    elif generator == "wrk" and not shutil.which("wrk"):
        parser.error("wrk is not installed (apt-get install -y wrk)")
    sys.path.insert(0, str(ROOT))  # tests.cluster: redis-server and nginx as processes
    env = environment()
    started = time.monotonic()
    folder = Path(tempfile.mkdtemp(prefix="bench-scale-out-"))
    fleet = Fleet(folder)
    failed = True
    probes: dict[str, RedisProbe] = {}
    try:
        stores = {n: fleet.redis(f"redis-{i}") for i, n in enumerate((REDIS, NOCACHE, REDIS2))}
        started_servers = fleet.replicas({
            MEMORY: {},
            REDIS: {"store": "redis", "redis_url": stores[REDIS].url},
            NOCACHE: {"store": "redis", "redis_url": stores[NOCACHE].url,
                      "tensor_cache_bytes": 0},
            "redis 2a": {"store": "redis", "redis_url": stores[REDIS2].url},
            "redis 2b": {"store": "redis", "redis_url": stores[REDIS2].url},
            "replica 2": {}})
        pair = [started_servers["redis 2a"], started_servers["redis 2b"]]
        servers: dict[str, Any] = {n: started_servers[n] for n in (MEMORY, REDIS, NOCACHE)}
        servers[REDIS2] = fleet.nginx("nginx-redis", [s.port for s in pair])
        probes = {n: RedisProbe(store.url) for n, store in stores.items()}
        print(f"servers up after {time.monotonic() - started:.0f} s; load average "
              f"{os.getloadavg()[0]:.1f}", flush=True)

        behind = {REDIS2: [s.url for s in pair]}
        tutorial = tutorial_part(servers, probes, args.tutorial_warmup, args.tutorial_runs,
                                 behind)
        tutorial_summary = report_tutorial(tutorial)
        print(flush=True)

        training = training_part(servers, probes, args.steps, args.warmup,
                                 args.attribution_steps, behind)
        training_summary = report_training(training, args.steps, args.warmup)
        attribution_summary = report_attribution(training["attribution"],
                                                 training["commit_payload"])
        print(flush=True)

        for probe in probes.values():
            probe.client.close()
        probes = {}
        for server in (servers[REDIS], servers[NOCACHE], *pair, servers[REDIS2]):
            server.stop()  # idle, but their memory is better given back
        throughput = throughput_part(fleet, [servers[MEMORY], started_servers["replica 2"]],
                                     loads, args.duration, 1 if args.smoke else 2,
                                     args.rounds, generator, folder)
        throughput_summary = report_throughput(throughput, args.duration, args.rounds)
        failed = False
    finally:
        for probe in probes.values():
            with contextlib.suppress(Exception):
                probe.client.close()
        fleet.close(failed)
        shutil.rmtree(folder, ignore_errors=True)

    elapsed = time.monotonic() - started
    print(f"\ndone in {elapsed:.0f} s")
    ratio = tutorial_summary[REDIS]["ratio_to_memory"]
    data = {
        "config": {"smoke": args.smoke, "steps": args.steps, "warmup": args.warmup,
                   "attribution_steps": args.attribution_steps,
                   "tutorial_runs": args.tutorial_runs,
                   "tutorial_warmup": args.tutorial_warmup, "duration_s": args.duration,
                   "rounds": args.rounds, "loads": loads, "generator": generator,
                   "gradient_body": GRADIENT_BODY, "requests_per_step": REQUESTS,
                   "redis": "redis-server, appendonly yes, appendfsync everysec, save ''"},
        "goals": {"tutorial_redis_over_memory_max": TUTORIAL_GOAL},
        "tutorial": {"summary": tutorial_summary, "ratio": ratio,
                     "goal_met": ratio <= TUTORIAL_GOAL, "runs": tutorial},
        "training": {"summary": training_summary, "attribution": attribution_summary,
                     "step_ms": {n: [ms(t) for t in ts]
                                 for n, ts in training["step_s"].items()},
                     "redis_per_step_raw": training["redis_per_step"],
                     "attribution_raw": training["attribution"],
                     "final_weights_max_abs_diff_to_memory":
                         training["final_weights_max_abs_diff_to_memory"]},
        "throughput": {"summary": throughput_summary, "raw": throughput},
        "elapsed_s": elapsed,
    }
    if args.json is not None:
        payload = {"benchmark": "scale_out", "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                   "environment": {**env, "loadavg_at_end": os.getloadavg()}, **data}
        args.json.write_text(json.dumps(payload, indent=2, default=str) + "\n")
        print(f"wrote {args.json}")
    elif not args.smoke:
        print(f"wrote {write_result('scale_out', data, env)}")
    ok = all(s["answers_match_api_md"] for s in tutorial_summary.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
