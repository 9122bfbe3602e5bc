"""Memory estimate: the engine's peak-memory estimate against the measured peak, per query.

Before a query runs, `engine.cost.estimate` predicts its peak memory from the inferred types
(forward values x passes of its kind x expansion, plus the result), and the service refuses a
request whose estimate is over GRADTAPE_MAX_REQUEST_BYTES. This benchmark runs a range of
queries (evaluate, gradient, jacobian in both modes, hvp, hessian, jvp) and sets the estimate
the engine used beside the peak memory the query took.

Each (case, mode) runs in a fresh Python process, so that peaks never mix. The process
1. imports JAX and the engine, parses the graph, binds the inputs (NumPy arrays) and runs a
   trivial `jax.jit` op, then collects garbage: its resident set size now (VmRSS of
   /proc/self/status) is the baseline;
2. resets the kernel's peak-RSS mark to the current RSS (`echo 5 > /proc/self/clear_refs`,
   Linux >= 4.0), so that VmHWM afterwards is the peak of the query alone, not of the
   imports before it (nor of the process it was forked from: `getrusage`'s ru_maxrss keeps
   that one across `exec`);
3. runs the query once through `Engine` and records the `Cost` that `Engine.admit` receives
   (the estimate the service decides on);
4. reports measured = VmHWM - baseline VmRSS.
Where the reset is not possible, VmHWM still holds the peak of the imports, and measured
is then an upper bound of the query's own peak (the table says so in its method line).

Modes: `eager` uses the compile cache's default path for a first request (the query runs op
by op: `CompileCache(jit_after=10**9)`); `compiled` compiles on first sight
(`CompileCache(jit_after=0)`), and its peak includes XLA's compile, which is what a process
that compiles pays. The parent never imports JAX; a child past `--timeout` seconds or
`--rss-cap-gib` of resident memory (polled every 0.05 s) is killed and reported as such.
Up to `--jobs` children run at once: each peak is its own process's, only the times mix.

Peaks under 100 MiB are marked: a fresh process's first eager derivative costs 10-70 MiB
whatever the size (JAX's tracing machinery, one small compile per primitive and shape).
The allocator matters too: glibc raises its mmap threshold (up to 32 MiB) as large blocks are
freed, so arrays between about 128 KiB and 32 MiB end up on the heap, where fragmentation
adds up to ~1.7x to the peak; `--mmap-threshold 1048576` shows the peaks without it.

    python benchmarks/memory_estimate.py [--smoke] [--modes eager,compiled]
        [--only SUBSTRING] [--jobs 2] [--timeout 120] [--rss-cap-gib 5]
        [--mmap-threshold BYTES] [--json PATH]

`tests/test_cost.py` runs a few of these cases (through `measure`) and asserts the estimate
is within a stated factor of the measured peak.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:  # also when loaded from a file path (tests/test_cost.py)
    sys.path.insert(0, str(HERE))

from _common import proc_status_kib, reset_peak  # noqa: E402

MODES = ("eager", "compiled")
KINDS = ("evaluate", "gradient", "jacobian", "hvp", "hessian", "jvp")
MIB = 1024**2
POLL_SECONDS = 0.05
MIN_AVAILABLE_MIB = 1024  # a child is also killed when the machine gets this close to full


# ----- cases -----

@dataclass(frozen=True)
class Case:
    """One query on one graph. `inputs` maps each input to (shape, dtype); its values are
    drawn uniformly from [-scale, scale]. `target`/`sources` are those of the query
    (gradient: the scalar target; jacobian: the one target; hvp/hessian: the scalar target;
    jvp: `sources` are the inputs given tangents); `outputs` are evaluate's and jvp's."""

    name: str
    kind: str
    graph: dict[str, Any]
    inputs: dict[str, tuple[tuple[int, ...], str]]
    target: str | None = None
    sources: tuple[str, ...] | None = None
    outputs: tuple[str, ...] | None = None
    scale: float = 0.1

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Case:
        data = json.loads(text)
        data["inputs"] = {k: (tuple(shape), dtype) for k, (shape, dtype) in
                          data["inputs"].items()}
        for key in ("sources", "outputs"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        return cls(**data)


def node(ident: str, op: str, *args: Any, **attrs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"id": ident, "op": op, "args": list(args)}
    if attrs:
        out["attrs"] = attrs
    return out


def matmul_chain(n: int, k: int) -> Case:
    """evaluate: a = broadcast(x, [n, k]), w = broadcast(x, [k, k]), two matmuls, a sum."""
    nodes = [node("a", "broadcast_to", "x", shape=[n, k]),
             node("w", "broadcast_to", "x", shape=[k, k]),
             node("h1", "matmul", "a", "w"),
             node("h2", "matmul", "h1", "w"),
             node("s", "sum", "h2")]
    return Case(f"evaluate matmul chain [{n},{k}]@[{k},{k}] x2", "evaluate",
                {"nodes": nodes, "outputs": ["s"]}, {"x": ((), "float64")}, outputs=("s",))


def square_matmul_chain(n: int) -> Case:
    """evaluate: b = broadcast(x, [n, n]); m = b @ b; m2 = m @ b; s = sum(m2)."""
    nodes = [node("b", "broadcast_to", "x", shape=[n, n]),
             node("m", "matmul", "b", "b"),
             node("m2", "matmul", "m", "b"),
             node("s", "sum", "m2")]
    return Case(f"evaluate matmul chain [{n},{n}] x2", "evaluate",
                {"nodes": nodes, "outputs": ["s"]}, {"x": ((), "float64")}, outputs=("s",))


def mlp(batch: int, d: int, h: int, o: int, kind: str = "gradient") -> Case:
    """t = sum(tanh(tanh(x @ w1) @ w2)), float32; gradient (or hvp) with respect to w1, w2."""
    nodes = [node("a1", "matmul", "x", "w1"),
             node("h1", "tanh", "a1"),
             node("a2", "matmul", "h1", "w2"),
             node("h2", "tanh", "a2"),
             node("t", "sum", "h2")]
    inputs = {"x": ((batch, d), "float32"), "w1": ((d, h), "float32"),
              "w2": ((h, o), "float32")}
    return Case(f"{kind} mlp x[{batch},{d}] h={h} o={o} f32", kind,
                {"nodes": nodes, "outputs": ["t"]}, inputs, target="t",
                sources=("w1", "w2"))


def elementwise(prefix: str, last: str) -> list[dict[str, Any]]:
    """e1 = sin(prefix), e2 = e1 * prefix, `last` = tanh(e2)."""
    return [node("e1", "sin", prefix),
            node("e2", "multiply", "e1", prefix),
            node(last, "tanh", "e2")]


def jacobian_fwd(n: int, k: int) -> Case:
    """Few in, many out (forward mode): x [k] broadcast to [n, k], an elementwise chain;
    the Jacobian of the [n, k] result with respect to x."""
    nodes = [node("b", "broadcast_to", "x", shape=[n, k]), *elementwise("b", "y")]
    return Case(f"jacobian fwd x[{k}] -> y[{n},{k}]", "jacobian",
                {"nodes": nodes, "outputs": ["y"]}, {"x": ((k,), "float64")}, target="y",
                sources=("x",))


def jacobian_rev(n: int, k: int) -> Case:
    """Many in, few out (reverse mode): an elementwise chain on x [n, k], summed over its
    first axis; the Jacobian of the [k] result with respect to x."""
    nodes = [*elementwise("x", "e3"), node("y", "sum", "e3", axis=0)]
    return Case(f"jacobian rev x[{n},{k}] -> y[{k}]", "jacobian",
                {"nodes": nodes, "outputs": ["y"]}, {"x": ((n, k), "float64")}, target="y",
                sources=("x",))


def chain_hvp(n: int) -> Case:
    """hvp of t = sum(tanh(sin(x) * x)) with respect to x [n]."""
    nodes = [*elementwise("x", "e3"), node("t", "sum", "e3")]
    return Case(f"hvp elementwise x[{n}]", "hvp", {"nodes": nodes, "outputs": ["t"]},
                {"x": ((n,), "float64")}, target="t", sources=("x",))


def chain_jvp(n: int) -> Case:
    """jvp of y = tanh(sin(x) * x) along a tangent for x [n]."""
    return Case(f"jvp elementwise x[{n}]", "jvp",
                {"nodes": elementwise("x", "y"), "outputs": ["y"]},
                {"x": ((n,), "float64")}, sources=("x",), outputs=("y",))


def outer_hessian(n: int) -> Case:
    """hessian of t = sum(sin(outer(x, x))) with respect to x [n] (float64)."""
    nodes = [node("o", "outer", "x", "x"), node("s", "sin", "o"), node("t", "sum", "s")]
    return Case(f"hessian sum(sin(outer(x,x))) x[{n}]", "hessian",
                {"nodes": nodes, "outputs": ["t"]}, {"x": ((n,), "float64")}, target="t",
                sources=("x",))


def large_outputs(n: int, count: int = 4) -> Case:
    """evaluate of `count` outputs, each an elementwise op on x broadcast to [n] (float64);
    the broadcast itself is not an output."""
    ops = ("sin", "cos", "exp", "tanh", "negative", "square", "abs", "sqrt")
    nodes = [node("b", "broadcast_to", "x", shape=[n])]
    names = []
    for i in range(count):
        nodes.append(node(f"o{i}", ops[i % len(ops)], "b"))
        names.append(f"o{i}")
    return Case(f"evaluate {count} outputs of [{n}] f64", "evaluate",
                {"nodes": nodes, "outputs": names}, {"x": ((), "float64")},
                outputs=tuple(names))


def full_cases() -> list[Case]:
    return [
        square_matmul_chain(1000),
        square_matmul_chain(2000),
        matmul_chain(200_000, 64),
        matmul_chain(800_000, 64),
        mlp(20_000, 64, 256, 32),
        mlp(100_000, 64, 256, 32),
        mlp(50_000, 64, 256, 32, kind="hvp"),
        jacobian_fwd(200_000, 8),
        jacobian_fwd(50_000, 32),
        jacobian_rev(200_000, 8),
        jacobian_rev(50_000, 32),
        chain_hvp(2_000_000),
        chain_hvp(8_000_000),
        chain_jvp(8_000_000),
        outer_hessian(100),
        outer_hessian(200),
        outer_hessian(300),
        outer_hessian(400),
        large_outputs(10_000_000, 4),
        large_outputs(5_000_000, 8),
    ]


def smoke_cases() -> list[Case]:
    return [square_matmul_chain(300), mlp(1000, 16, 32, 8), outer_hessian(30)]


# ----- the child process: one case, one mode -----

LIMITS = {"max_request_bytes": 2**62, "max_request_flops": 1e30,
          "max_response_bytes": 2**62, "max_elements": 10**9}


def peak_kib() -> int:
    """This process's peak RSS: VmHWM of /proc/self/status, which the reset lowers. Not
    `getrusage`'s ru_maxrss: Linux carries the image that ran before `exec` into it, so a
    child forked from a big process (a long test session) would report the parent's size."""
    import resource

    hwm = proc_status_kib("self", "VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child(case: Case, mode: str) -> dict[str, Any]:
    """Run `case` once in this (fresh) process; the estimate the engine admitted it with, and
    the peak resident memory over the baseline."""
    import gc

    import jax
    import jax.numpy as jnp
    import numpy as np

    from engine.cache import CompileCache
    from engine.compute import Engine, Limits
    from engine.graph import parse_graph

    program = parse_graph(case.graph, max_nodes=10_000, max_elements=10**9)
    cache = CompileCache(jit_after=0 if mode == "compiled" else 10**9)
    engine = Engine(Limits(**LIMITS), cache=cache)
    rng = np.random.default_rng(0)

    def draw(shape: Sequence[int], dtype: str) -> Any:
        return (rng.uniform(-case.scale, case.scale, size=tuple(shape))).astype(dtype)

    bound = engine.bind(program, {n: draw(s, d) for n, (s, d) in case.inputs.items()})
    sources = case.sources or ()
    extra = {s: draw(bound.shape(s), bound.types[s].dtype.name) for s in sources}
    jax.block_until_ready(jax.jit(lambda v: v * 2.0 + 1.0)(jnp.ones(8)))  # warm-up

    admitted: list[Any] = []
    admit = engine.admit

    def recording_admit(bound: Any, query: Any, cost: Any, answered: bool = True) -> None:
        admitted.append(cost)
        admit(bound, query, cost, answered)

    engine.admit = recording_admit  # type: ignore[method-assign]

    def run() -> Any:
        kind = case.kind
        if kind == "evaluate":
            return engine.evaluate(bound, case.outputs)
        if kind == "gradient":
            return engine.gradient(bound, case.target, case.sources)
        if kind == "jacobian":
            return engine.jacobian(bound, case.target, case.sources)
        if kind == "hvp":
            return engine.hvp(bound, case.target, case.sources, extra)
        if kind == "hessian":
            return engine.hessian(bound, case.target, case.sources)
        if kind == "jvp":
            return engine.jvp(bound, extra, case.outputs)
        raise ValueError(f"unknown kind {kind!r}")

    gc.collect()
    baseline = proc_status_kib("self", "VmRSS") or 0
    before = peak_kib()
    reset = reset_peak()
    start = time.perf_counter()
    result = run()
    seconds = time.perf_counter() - start
    peak = peak_kib()
    del result
    (cost,) = admitted
    return {"case": case.name, "kind": case.kind, "mode": mode,
            "estimate_bytes": cost.peak_bytes, "result_bytes": cost.result_bytes,
            "expansion": cost.expansion, "flops": cost.flops,
            "baseline_kib": baseline, "peak_kib": peak, "peak_before_kib": before,
            "peak_reset": reset, "measured_bytes": max(peak - baseline, 0) * 1024,
            "seconds": seconds, "eager_runs": cache.stats.eager_runs,
            "compiles": cache.stats.compiles}


# ----- the parent: one process per (case, mode), watched -----

def available_kib() -> int | None:
    """MemAvailable of the machine (/proc/meminfo), in KiB."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def measure(case: Case, mode: str = "eager", timeout: float = 120.0,
            rss_cap_bytes: int = 5 * 1024**3,
            env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run `case` in a fresh process in `mode` ('eager' or 'compiled'); its record, with
    `status` 'ok', 'killed' (past the time or memory cap; `killed_by` says which) or
    'failed' (`stderr` has the tail). `env`: extra environment variables for the child."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    inherited = {k: v for k, v in os.environ.items()
                 if not k.startswith("GRADTAPE_") and k != "JAX_COMPILATION_CACHE_DIR"}
    env = {**inherited, "JAX_PLATFORMS": "cpu", **(env or {})}
    command = [sys.executable, str(Path(__file__).resolve()), "--child", mode,
               "--case", case.to_json()]
    with tempfile.TemporaryDirectory(prefix="memory-estimate-") as tmp:
        out_path, err_path = Path(tmp, "out"), Path(tmp, "err")
        with out_path.open("wb") as out, err_path.open("wb") as err:
            proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=err,
                                    stdin=subprocess.DEVNULL)
        start = time.monotonic()
        killed: str | None = None
        sampled = 0
        try:
            while proc.poll() is None:
                rss = proc_status_kib(proc.pid, "VmRSS") or 0
                sampled = max(sampled, rss)
                if rss * 1024 > rss_cap_bytes:
                    killed = "rss cap"
                elif (available_kib() or 1 << 60) < MIN_AVAILABLE_MIB * 1024:
                    killed = "machine memory"
                elif time.monotonic() - start > timeout:
                    killed = "time"
                if killed:
                    proc.send_signal(signal.SIGKILL)
                    break
                time.sleep(POLL_SECONDS)
        finally:
            if proc.poll() is None and not killed:  # interrupted: never leave it running
                proc.kill()
            proc.wait()
        stdout = out_path.read_text(errors="replace")
        stderr = err_path.read_text(errors="replace")
    record: dict[str, Any] = {"case": case.name, "kind": case.kind, "mode": mode}
    for line in stdout.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                record.update(json.loads(line))
    record["wall_s"] = time.monotonic() - start
    record["sampled_peak_rss_kib"] = sampled
    if killed:
        record.update(status="killed", killed_by=killed)
    elif proc.returncode == 0 and "measured_bytes" in record:
        record["status"] = "ok"
    else:
        record.update(status="failed", returncode=proc.returncode, stderr=stderr[-2000:])
    return record


NOISE_BYTES = 100 * MIB
"""Below this measured peak, a fresh process's one-off costs (JAX's first eager dispatches
and per-primitive compiles: 10-70 MiB whatever the size) weigh in the ratio; such cells are
marked and left out of the summary."""


def ratio(record: dict[str, Any] | None) -> float | None:
    """estimate / measured, or None when the run did not finish."""
    if not record or record.get("status") != "ok" or not record.get("measured_bytes"):
        return None
    return float(record["estimate_bytes"]) / float(record["measured_bytes"])


def run_cases(cases: Iterable[Case], modes: Sequence[str] = MODES, timeout: float = 120.0,
              rss_cap_bytes: int = 5 * 1024**3, verbose: bool = True,
              env: dict[str, str] | None = None, jobs: int = 1
              ) -> list[dict[str, dict[str, Any]]]:
    """Every case in every mode, `jobs` processes at a time (peaks are per process, so they
    never mix; only the times do); one {mode: record} per case, in the order given."""
    cases = list(cases)

    def one(case: Case, mode: str) -> dict[str, Any]:
        r = measure(case, mode, timeout, rss_cap_bytes, env)
        if verbose:
            got = (f"{r['measured_bytes'] / MIB:.1f} MiB" if r["status"] == "ok"
                   else r["status"] + (f" ({r.get('killed_by')})"
                                       if r["status"] == "killed" else ""))
            print(f"  {case.name} [{mode}]: {got} in {r['wall_s']:.1f} s", file=sys.stderr,
                  flush=True)
            if r["status"] == "failed":
                print(r.get("stderr", ""), file=sys.stderr)
        return r

    with ThreadPoolExecutor(max_workers=max(jobs, 1)) as pool:
        futures = [{mode: pool.submit(one, case, mode) for mode in modes} for case in cases]
        return [{mode: f.result() for mode, f in row.items()} for row in futures]


# ----- the report -----

def mib(n: float | None) -> str:
    return "-" if n is None else f"{n / MIB:,.1f}"


def cell(record: dict[str, Any] | None) -> str:
    if record is None:
        return "-"
    if record.get("status") == "ok":
        small = "*" if record["measured_bytes"] < NOISE_BYTES else ""
        return mib(record["measured_bytes"]) + small
    return record.get("status", "?") + (f" ({record['killed_by']})"
                                        if record.get("killed_by") else "")


def fmt_ratio(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}"


def markdown(rows: Sequence[dict[str, dict[str, Any]]]) -> str:
    lines = ["| query | expansion | estimate (MiB) | measured eager (MiB) | "
             "measured compiled (MiB) | estimate/eager | estimate/compiled |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        first = next((r for r in row.values() if "estimate_bytes" in r), None)
        any_record = next(iter(row.values()))
        name = any_record["case"]
        estimate = first["estimate_bytes"] if first else None
        expansion = first["expansion"] if first else "-"
        eager, compiled = row.get("eager"), row.get("compiled")
        lines.append(f"| {name} | {expansion} | {mib(estimate)} | {cell(eager)} | "
                     f"{cell(compiled)} | {fmt_ratio(ratio(eager))} | "
                     f"{fmt_ratio(ratio(compiled))} |")
    return "\n".join(lines)


def summary(rows: Sequence[dict[str, dict[str, Any]]]) -> str:
    """The smallest and largest estimate/measured ratio per kind and mode, over the cells
    measured at NOISE_BYTES or more."""
    out = [f"estimate/measured over the cells measured at {NOISE_BYTES // MIB} MiB or more "
           "(* in the table: under it):"]
    for mode in MODES:
        for kind in KINDS:
            rs = [r for row in rows if (rec := row.get(mode)) and rec["kind"] == kind
                  and (r := ratio(rec)) is not None and rec["measured_bytes"] >= NOISE_BYTES]
            if rs:
                out.append(f"- {kind} [{mode}]: {min(rs):.2f} .. {max(rs):.2f} "
                           f"({len(rs)} cases)")
    return "\n".join(out)


def method(rows: Sequence[dict[str, dict[str, Any]]]) -> str:
    records = [r for row in rows for r in row.values() if r.get("status") == "ok"]
    if records and all(r["peak_reset"] for r in records):
        return ("measured = VmHWM after the query - VmRSS before it, with the peak mark "
                "reset (/proc/self/clear_refs) after the baseline; one fresh process per cell")
    return ("measured = VmHWM after the query - VmRSS before it; the peak mark could NOT "
            "be reset, so VmHWM includes the imports' peak and measured is an upper "
            "bound; one fresh process per cell")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a few small cases (seconds)")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--only", default=None, help="cases whose name contains this")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per process")
    parser.add_argument("--jobs", type=int, default=2, help="processes at a time")
    parser.add_argument("--rss-cap-gib", type=float, default=5.0)
    parser.add_argument("--json", default=None, help="also write the records here")
    parser.add_argument("--mmap-threshold", type=int, default=None,
                        help="run the children with MALLOC_MMAP_THRESHOLD_ set to this many "
                        "bytes (glibc then maps every bigger array on its own instead of "
                        "raising the threshold to 32 MiB as it frees them)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(Case.from_json(args.case), args.child)), flush=True)
        return 0
    modes = [m for m in args.modes.split(",") if m]
    cases = smoke_cases() if args.smoke else full_cases()
    if args.only:
        cases = [c for c in cases if args.only in c.name]
    started = time.monotonic()
    env = ({"MALLOC_MMAP_THRESHOLD_": str(args.mmap_threshold)}
           if args.mmap_threshold is not None else None)
    rows = run_cases(cases, modes, args.timeout, int(args.rss_cap_gib * 1024**3), env=env,
                     jobs=args.jobs)
    print(markdown(rows))
    print()
    print(summary(rows))
    print()
    allocator = (f"MALLOC_MMAP_THRESHOLD_={args.mmap_threshold}"
                 if args.mmap_threshold is not None else "glibc malloc defaults")
    print(f"{method(rows)}; {allocator}; {args.jobs} processes at a time; "
          f"{time.monotonic() - started:.0f} s in all, {os.cpu_count()} CPUs")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # the child imports the engine from this checkout
    sys.exit(main())
