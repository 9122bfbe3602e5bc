"""Compile budget: XLA compile time and memory against graph size, per query kind.

The compile cache compiles every query structure it sees often enough, whatever its size, and
an XLA compile grows faster than the graph: a Hessian of a few thousand elementwise nodes can
take minutes and many GiB. This benchmark measures that growth, to pick a size past which a
query is not compiled (it runs eagerly instead, or is refused).

The graph is a chain of N elementwise nodes on an input `x` (float32 [100]), cycling through
`sin(h)`, `multiply(h, 0.9)`, `tanh(h)`, `add(h, x)`, closed by a scalar `sum` (the engine sees
N + 1 equations). For each query kind (gradient, jacobian, hvp, hessian by default; evaluate
and jvp on request; all with respect to `x`; the Jacobian's target is the [100] vector before
the sum) and each N, a fresh Python process:

1. imports JAX and the engine, runs a trivial `jax.jit`, and reads its peak RSS
   (`getrusage(RUSAGE_SELF).ru_maxrss`): the baseline;
2. runs the same kind eagerly on an 8-node chain, so that the process's one-off costs (JAX's
   first eager dispatch of each primitive at these shapes) are paid, as a running server has;
3. eager: `Engine` with `CompileCache(jit_after=10**9)`; times the first call on the N-chain
   (parse and bind apart) and a second call;
4. compile: resets the kernel's peak-RSS mark (`/proc/self/clear_refs`), then calls the query
   through `CompileCache(jit_after=0, background=False)`, which compiles on first sight; the
   compile time is the cache's own (`jax.jit` trace + lowering + XLA compile + one run),
   split with JAX's monitoring events, and also taken as CPU time (all threads), which a
   loaded machine inflates far less than wall time; the peak is `ru_maxrss` after it, minus
   the baseline; the compiled answer is checked against the eager one;
5. warm: the median of up to 10 compiled calls with new values (query call only, bound
   inputs given as NumPy arrays);
6. counts the equations of the traced function's jaxpr (`jax.make_jaxpr`), i.e. what XLA is
   given once the transforms have run.

Each process is killed past `--timeout` seconds of wall time or `--rss-cap-gib` of resident
memory (polled from /proc/<pid>/status every 0.1 s; also when the machine's MemAvailable falls
under 1 GiB), and reported as over the cap, with what it had spent when killed as lower bounds;
a kind stops growing after such a run. The parent imports JAX only after the runs.

The tables are Markdown: every run; where the compile goes; per kind, least-squares slopes of
compile seconds (wall and CPU) and MB per equation, growth exponents, and the budget: the
largest size whose compile stays within 5 s and 1 GiB, measured and interpolated; and a
weighted size (eqns x a per-kind factor) that puts every kind under one budget. Raw results go
to results/compile_budget.json (or `--json PATH`; `--smoke` writes only with `--json`).

    python benchmarks/compile_budget.py [--smoke] [--kinds gradient,hessian]
        [--sizes 10,30,100] [--timeout 60] [--rss-cap-gib 6] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from _common import ROOT, environment, fmt, median, proc_status_kib, reset_peak, write_result

KINDS = ("evaluate", "jvp", "gradient", "jacobian", "hvp", "hessian")
DEFAULT_KINDS = ("gradient", "jacobian", "hvp", "hessian")
SIZES = (10, 30, 100, 200, 300, 500, 1000, 2000, 3000)
SMOKE_SIZES = (10, 30)
SIZE = 100  # elements of x
SCALE = 0.9
WARMUP_NODES = 8  # the eager warm-up chain: each op twice
WARM_CALLS = 10
WARM_SECONDS = 3.0  # fewer warm calls when they are slow
BUDGET_SECONDS = 5.0
BUDGET_MB = 1024.0
POLL_SECONDS = 0.1
MIN_AVAILABLE_MIB = 1024  # a run is also killed when the machine gets this close to full


# ----- output -----

def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str = "") -> str:
    """A Markdown table, padded so that it also reads as plain text; numbers right-aligned."""
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [max(3, len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]

    def line(items: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                                 enumerate(zip(items, widths, strict=True))) + " |"

    rule = "| " + " | ".join("-" * w if i == 0 else "-" * (w - 1) + ":"
                             for i, w in enumerate(widths)) + " |"
    out = [title, ""] if title else []
    return "\n".join([*out, line(headers), rule, *(line(r) for r in cells)])


# ----- the graph -----

def chain_graph(n: int) -> dict[str, Any]:
    """n elementwise nodes h0..h{n-1} on x, cycling sin, multiply by a constant, tanh, add x;
    then `y = sum(h{n-1})`."""
    nodes: list[dict[str, Any]] = []
    prev = "x"
    for i in range(n):
        step = i % 4
        if step == 0:
            op, args = "sin", [prev]
        elif step == 1:
            op, args = "multiply", [prev, SCALE]
        elif step == 2:
            op, args = "tanh", [prev]
        else:
            op, args = "add", [prev, "x"]
        nodes.append({"id": f"h{i}", "op": op, "args": args})
        prev = f"h{i}"
    nodes.append({"id": "y", "op": "sum", "args": [prev]})
    return {"inputs": {"x": {"dtype": "float32", "shape": [SIZE]}}, "nodes": nodes,
            "outputs": ["y"]}


def last_node(n: int) -> str:
    return f"h{n - 1}"


# ----- the child process: one (kind, N) -----

def child(kind: str, n: int) -> int:
    """Measure one (kind, n) and write one JSON line per finished phase to stdout, so that the
    parent keeps what was measured before a kill."""
    started = time.perf_counter()

    def emit(phase: str, **data: Any) -> None:
        print(json.dumps({"phase": phase, "t": time.perf_counter() - started, **data}),
              flush=True)

    import jax
    import jax.numpy as jnp
    import numpy as np

    from engine.cache import CompileCache
    from engine.compute import Engine, Limits
    from engine.graph import parse_graph

    events: dict[str, float] = {}

    def on_event(event: str, seconds: float, **_: Any) -> None:
        events[event] = events.get(event, 0.0) + seconds

    class RecordingCache(CompileCache):
        """A CompileCache that keeps the builder and the arguments of its last call, and
        compiles whatever the size (a compile budget, where the cache has one, is lifted:
        measuring past it is the point)."""

        recorded: tuple[Callable[[], Any], tuple[Any, ...]]

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            if hasattr(self, "max_compile_weight"):
                self.max_compile_weight = math.inf

        def call(self, key: Any, build: Callable[[], Callable[..., Any]], *args: Any,
                 **options: Any) -> Any:
            self.recorded = (build, args)
            return super().call(key, build, *args, **options)

    jax.monitoring.register_event_duration_secs_listener(on_event)
    jax.block_until_ready(jax.jit(lambda v: v * 2.0 + 1.0)(jnp.ones(SIZE, jnp.float32)))
    baseline_kib = peak_kib()
    emit("baseline", backend=jax.default_backend(), jax=jax.__version__,
         rss_kib=baseline_kib, vm_rss_kib=proc_status_kib("self", "VmRSS"))

    rng = np.random.default_rng(n)

    def new_x() -> np.ndarray:
        return rng.standard_normal(SIZE).astype(np.float32)

    def query(engine: Engine, bound: Any, chain: int) -> Callable[[], dict[str, Any]]:
        v = np.linspace(-1, 1, SIZE, dtype=np.float32)
        if kind == "evaluate":
            return lambda: engine.evaluate(bound, ["y"])
        if kind == "jvp":
            return lambda: engine.jvp(bound, {"x": v}, ["y"])
        if kind == "gradient":
            return lambda: engine.gradient(bound, "y", ["x"])
        if kind == "jacobian":
            return lambda: engine.jacobian(bound, last_node(chain), ["x"])
        if kind == "hvp":
            return lambda: engine.hvp(bound, "y", ["x"], {"x": v})
        if kind == "hessian":
            return lambda: engine.hessian(bound, "y", ["x"])
        raise ValueError(f"unknown kind {kind!r}")

    def parse(chain: int) -> Any:
        limits = Limits()
        return parse_graph(chain_graph(chain), max_nodes=limits.max_nodes,
                           max_elements=limits.max_elements)

    # the process's one-off eager costs, on a small chain of the same kind
    small = Engine(cache=RecordingCache(jit_after=10**9))
    query(small, small.bind_values(parse(WARMUP_NODES), {"x": new_x()}), WARMUP_NODES)()

    # eager, first sight of the N-chain
    x0 = new_x()
    eager = Engine(cache=RecordingCache(jit_after=10**9))
    t0 = time.perf_counter()
    program = parse(n)
    t1 = time.perf_counter()
    bound = eager.bind_values(program, {"x": x0})
    t2 = time.perf_counter()
    eager_out = query(eager, bound, n)()
    t3 = time.perf_counter()
    query(eager, eager.bind_values(program, {"x": new_x()}), n)()
    t4 = time.perf_counter()
    targets = (last_node(n),) if kind == "jacobian" else ("y",)
    emit("eager", eqns=len(program.eqns), needed_eqns=len(program.needed(targets)),
         parse_s=t1 - t0, bind_s=t2 - t1, first_s=t3 - t2, second_s=t4 - t3,
         rss_kib=peak_kib(), epoch=time.time(), cpu_s=time.process_time())

    # compile on first sight
    reset = reset_peak()
    before_kib = proc_status_kib("self", "VmRSS")
    events.clear()
    cache = RecordingCache(jit_after=0, background=False)
    engine = Engine(cache=cache)
    bound = engine.bind_values(program, {"x": x0})
    t0, cpu0 = time.perf_counter(), time.process_time()
    out = query(engine, bound, n)()
    call_s, cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
    after_kib = peak_kib()
    diff = max_abs_diff(out, eager_out)
    emit("compile", compile_s=cache.stats.compile_seconds, call_s=call_s, call_cpu_s=cpu_s,
         compiles=cache.stats.compiles,
         trace_s=events.get("/jax/core/compile/jaxpr_trace_duration"),
         lower_s=events.get("/jax/core/compile/jaxpr_to_mlir_module_duration"),
         xla_s=events.get("/jax/core/compile/backend_compile_duration"),
         peak_kib=after_kib, peak_reset=reset, rss_before_kib=before_kib,
         rss_after_kib=proc_status_kib("self", "VmRSS"),
         peak_over_baseline_mb=(after_kib - baseline_kib) / 1024, max_abs_diff_vs_eager=diff)
    scale = max(1.0, max_abs(eager_out))
    if not diff <= 1e-3 * scale:
        print(f"compiled and eager answers differ by {diff}", file=sys.stderr)
        return 1

    # warm compiled calls on new values
    times: list[float] = []
    spent = time.perf_counter()
    while len(times) < WARM_CALLS and (len(times) < 3 or
                                       time.perf_counter() - spent < WARM_SECONDS):
        call = query(engine, engine.bind_values(program, {"x": new_x()}), n)
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    emit("warm", median_s=median(times), calls=len(times), compiles=cache.stats.compiles)

    # what XLA is given: the equations of the transformed function
    build, args = cache.recorded
    t0 = time.perf_counter()
    jaxpr = jax.make_jaxpr(build())(*args)
    emit("jaxpr", eqns=count_eqns(jaxpr), top_level_eqns=len(jaxpr.eqns),
         trace_s=time.perf_counter() - t0)
    return 0


def count_eqns(jaxpr: Any) -> int:
    """Equations of a (closed) jaxpr, those of sub-jaxprs (pjit, custom rules) included."""
    inner = getattr(jaxpr, "jaxpr", jaxpr)
    total = 0
    for eqn in inner.eqns:
        total += 1
        for param in eqn.params.values():
            for sub in param if isinstance(param, tuple | list) else (param,):
                if hasattr(sub, "eqns") or hasattr(getattr(sub, "jaxpr", None), "eqns"):
                    total += count_eqns(sub)
    return total


def _leaves(tree: Any) -> list[Any]:
    if isinstance(tree, dict):
        return [leaf for v in tree.values() for leaf in _leaves(v)]
    if isinstance(tree, tuple | list):
        return [leaf for v in tree for leaf in _leaves(v)]
    return [tree]


def max_abs_diff(a: Any, b: Any) -> float:
    import numpy as np

    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
               for x, y in zip(_leaves(a), _leaves(b), strict=True))


def max_abs(a: Any) -> float:
    import numpy as np

    return max(float(np.max(np.abs(np.asarray(x, np.float64)))) for x in _leaves(a))


def peak_kib() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


# ----- the parent: one process per (kind, N), watched -----

def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a running process, all threads (/proc/<pid>/stat)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def available_kib() -> int | None:
    """MemAvailable of the machine (/proc/meminfo), in KiB."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def run_one(kind: str, n: int, timeout: float, cap_bytes: int) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("GRADTAPE_") and k != "JAX_COMPILATION_CACHE_DIR"}
    # the engine from this checkout, installed or not
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    with tempfile.TemporaryDirectory(prefix="compile-budget-") as tmp:
        out_path, err_path = Path(tmp, "out"), Path(tmp, "err")
        with out_path.open("wb") as out, err_path.open("wb") as err:
            proc = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--child", kind, str(n)],
                cwd=ROOT, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        start = time.monotonic()
        load = os.getloadavg()[0]
        sampled_peak = 0
        killed: str | None = None
        at_kill: dict[str, float] = {}
        try:
            while proc.poll() is None:
                rss = proc_status_kib(proc.pid, "VmRSS") or 0
                sampled_peak = max(sampled_peak, rss)
                if rss * 1024 > cap_bytes:
                    killed = "rss"
                elif (available_kib() or math.inf) < MIN_AVAILABLE_MIB * 1024:
                    killed = "machine memory"
                elif time.monotonic() - start > timeout:
                    killed = "time"
                if killed:
                    at_kill = {"epoch": time.time(), "cpu_s": cpu_seconds(proc.pid) or 0.0}
                    proc.send_signal(signal.SIGKILL)
                    break
                time.sleep(POLL_SECONDS)
        finally:
            if proc.poll() is None and not killed:  # interrupted: never leave it running
                proc.kill()
            proc.wait()
        wall = time.monotonic() - start
        phases: dict[str, dict[str, Any]] = {}
        for line in out_path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and "phase" in record:
                phases[record.pop("phase")] = record
        stderr_tail = err_path.read_text(errors="replace")[-2000:]
    if killed:
        status = "over cap"
    elif proc.returncode == 0 and "jaxpr" in phases:
        status = "ok"
    else:
        status = "failed"
    last = max(phases, key=lambda p: phases[p]["t"]) if phases else None
    bounds: dict[str, float] = {}
    if killed and last == "eager" and "baseline" in phases:  # killed while compiling
        eager, base = phases["eager"], phases["baseline"]
        bounds = {"compile_s": at_kill["epoch"] - eager["epoch"],
                  "call_cpu_s": at_kill["cpu_s"] - eager["cpu_s"],
                  "peak_over_baseline_mb": (sampled_peak - base["rss_kib"]) / 1024}
    return {"kind": kind, "n": n, "status": status, "killed_by": killed,
            "returncode": proc.returncode, "last_phase_done": last, "wall_s": wall,
            "loadavg_1min_at_start": load, "sampled_peak_rss_mb": sampled_peak / 1024,
            "compile_lower_bounds": bounds, "phases": phases,
            "stderr_tail": stderr_tail if status != "ok" else ""}


def get(run: dict[str, Any], phase: str, key: str) -> Any:
    return run["phases"].get(phase, {}).get(key)


# ----- fits -----

def slope(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float] | None:
    """Least-squares line y = a + b x: (b, a), or None with fewer than two distinct x."""
    if len(xs) < 2 or len(set(xs)) < 2:
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    b = (sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) /
         sum((x - mx) ** 2 for x in xs))
    return b, my - b * mx


def exponent(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """The least-squares slope of log y against log x: y ~ x**k."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys, strict=True) if x > 0 and y > 0]
    fit = slope([p[0] for p in pts], [p[1] for p in pts])
    return fit[0] if fit else None


def crossing(n0: float, y0: float, n1: float, y1: float, limit: float) -> float:
    """Where y reaches `limit` between (n0, y0) under it and (n1, y1) over it, interpolating
    y ~ n**k (a straight line in log-log)."""
    if y0 <= 0 or y1 <= y0:
        return n0
    k = math.log(y1 / y0) / math.log(n1 / n0)
    return n0 * (limit / y0) ** (1 / k)


def eqns_of(run: dict[str, Any]) -> int:
    return int(get(run, "eager", "eqns") or len(chain_graph(run["n"])["nodes"]))


def budget(mine: list[dict[str, Any]], time_key: str) -> dict[str, Any]:
    """The largest measured size (engine eqns) whose compile stays within BUDGET_SECONDS of
    `time_key` and BUDGET_MB, with no smaller size over them; and where the limits are crossed,
    interpolated in log-log between it and the next size. When that next size was killed while
    compiling, only lower bounds of its cost are known, so the crossing found is an upper
    bound."""
    limits = ((time_key, BUDGET_SECONDS), ("peak_over_baseline_mb", BUDGET_MB))
    last = None
    for i, r in enumerate(mine):
        values = [get(r, "compile", k) for k, _ in limits]
        if any(v is None for v in values) or any(
                v > lim for v, (_, lim) in zip(values, limits, strict=True)):
            break
        last = i
    out: dict[str, Any] = {"measured": None, "interpolated": None, "upper_bound": False}
    if last is None:
        return out
    lo = mine[last]
    out["measured"] = eqns_of(lo)
    if last + 1 == len(mine):
        return out  # every size is within the limits: no upper bracket
    hi = mine[last + 1]
    exact = get(hi, "compile", time_key) is not None
    crossings = []
    for key, lim in limits:
        y0 = max(float(get(lo, "compile", key)), 1e-9)
        y1 = get(hi, "compile", key) if exact else hi.get("compile_lower_bounds", {}).get(key)
        if y1 is not None and y1 > lim:
            crossings.append(crossing(eqns_of(lo), y0, eqns_of(hi), float(y1), lim))
    if crossings:
        out["interpolated"] = int(min(crossings))
        out["upper_bound"] = not exact
    return out


def fits(runs: list[dict[str, Any]], kinds: Sequence[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for kind in kinds:
        mine = sorted((r for r in runs if r["kind"] == kind), key=lambda r: r["n"])
        done = [r for r in mine if get(r, "compile", "compile_s") is not None]
        eqns = [float(eqns_of(r)) for r in done]
        secs = [float(get(r, "compile", "compile_s")) for r in done]
        cpus = [float(get(r, "compile", "call_cpu_s")) for r in done]
        mbs = [max(0.0, float(get(r, "compile", "peak_over_baseline_mb"))) for r in done]
        big = [i for i, e in enumerate(eqns) if e >= 100]
        s_fit, m_fit, c_fit = slope(eqns, secs), slope(eqns, mbs), slope(eqns, cpus)
        jaxpr = [get(r, "jaxpr", "eqns") / eqns_of(r) for r in done
                 if get(r, "jaxpr", "eqns") is not None]
        out[kind] = {
            "sizes_finished": [r["n"] for r in done],
            "seconds_per_eqn": s_fit[0] if s_fit else None,
            "seconds_intercept": s_fit[1] if s_fit else None,
            "cpu_seconds_per_eqn": c_fit[0] if c_fit else None,
            "mb_per_eqn": m_fit[0] if m_fit else None,
            "mb_intercept": m_fit[1] if m_fit else None,
            "seconds_exponent_n_ge_100": exponent([eqns[i] for i in big], [secs[i] for i in big]),
            "cpu_exponent_n_ge_100": exponent([eqns[i] for i in big], [cpus[i] for i in big]),
            "mb_exponent_n_ge_100": exponent([eqns[i] for i in big], [mbs[i] for i in big]),
            "jaxpr_eqns_per_eqn": jaxpr[-1] if jaxpr else None,
            "budget_wall": budget(mine, "compile_s"),
            "budget_cpu": budget(mine, "call_cpu_s"),
        }
    return out


def suggested(b: dict[str, Any]) -> int | None:
    """The budget to use: the interpolated crossing when there is one, else the measured."""
    return b["interpolated"] if b["interpolated"] is not None else b["measured"]


def budget_text(b: dict[str, Any]) -> str:
    if b["measured"] is None:
        return "none measured"
    text = str(b["measured"])
    if b["interpolated"] is not None:
        text += f" ({'<= ' if b['upper_bound'] else '~'}{b['interpolated']})"
    return text


# ----- main -----

def _ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true",
                        help=f"sizes {','.join(map(str, SMOKE_SIZES))} only (a quick check)")
    parser.add_argument("--kinds", default=",".join(DEFAULT_KINDS),
                        help=f"comma-separated query kinds, of {', '.join(KINDS)} (default "
                        f"{','.join(DEFAULT_KINDS)}; evaluate gives the reference for the "
                        "per-kind factors)")
    parser.add_argument("--sizes", default=None,
                        help="comma-separated chain lengths N (default "
                        f"{','.join(map(str, SIZES))})")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="wall seconds per process before it is killed")
    parser.add_argument("--rss-cap-gib", type=float, default=6.0,
                        help="resident memory per process before it is killed")
    parser.add_argument("--json", type=Path, default=None,
                        help="write the raw results here (default: results/compile_budget.json,"
                        " except with --smoke)")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child[0], int(args.child[1]))

    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        parser.error(f"unknown kind {unknown[0]!r}; kinds: {', '.join(KINDS)}")
    sizes = sorted(set(_ints(args.sizes) if args.sizes else
                       (SMOKE_SIZES if args.smoke else SIZES)))
    if not sizes or min(sizes) < 1:
        parser.error("sizes are positive integers")
    cap_bytes = int(args.rss_cap_gib * 1024**3)
    load_at_start = os.getloadavg()
    started = time.monotonic()

    runs: list[dict[str, Any]] = []
    stopped: set[str] = set()
    for n in sizes:  # size by size, so that every kind sees the same stretch of load
        for kind in kinds:
            if kind in stopped:
                runs.append({"kind": kind, "n": n, "status": "skipped", "phases": {}})
                continue
            run = run_one(kind, n, args.timeout, cap_bytes)
            runs.append(run)
            print(f"{kind:8} N={n:<5} {run['status']:8} {run['wall_s']:6.1f} s"
                  f"  compile {fmt(get(run, 'compile', 'compile_s'))} s", flush=True)
            if run["status"] == "over cap":
                stopped.add(kind)
            elif run["status"] == "failed":
                print(run["stderr_tail"], file=sys.stderr)
    elapsed = time.monotonic() - started

    fitted, weights = report(runs, args)
    print(f"\n{len(runs)} runs in {elapsed:.0f} s (timeout {args.timeout:g} s, RSS cap "
          f"{args.rss_cap_gib:g} GiB per run)")

    data = {"config": {"kinds": kinds, "sizes": sizes, "timeout_s": args.timeout,
                       "rss_cap_gib": args.rss_cap_gib, "x_elements": SIZE,
                       "budget_seconds": BUDGET_SECONDS, "budget_mb": BUDGET_MB,
                       "smoke": args.smoke, "example_graph": chain_graph(4)},
            "elapsed_s": elapsed, "fits": fitted, "weighted_size": weights, "runs": runs}
    if args.json is not None or not args.smoke:
        env = environment()  # after the runs: it imports JAX, which the parent avoids before
        env["loadavg_at_start"] = load_at_start
        if args.json is None:
            print(f"wrote {write_result('compile_budget', data, env)}")
        else:
            payload = {"benchmark": "compile_budget",
                       "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                       "environment": {**env, "loadavg_at_end": os.getloadavg()}, **data}
            args.json.write_text(json.dumps(payload, indent=2, default=str) + "\n")
            print(f"wrote {args.json}")
    return 1 if any(r["status"] == "failed" for r in runs) else 0


def report(runs: list[dict[str, Any]], args: argparse.Namespace
           ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Print the tables; return the fits and the weighted sizes."""
    kinds = list(dict.fromkeys(r["kind"] for r in runs))
    print()
    print(md_table(["kind", "N", "eqns", "eager first call ms", "compile s", "compile CPU s",
                    "compile peak RSS MB over baseline", "warm call ms", "jaxpr eqns"],
                   [_row(r, args) for r in runs],
                   title=f"Chain of N elementwise nodes on float32 [{SIZE}]: eager first "
                   "call, compile on first sight (trace + lower + XLA + one run; wall and CPU "
                   "seconds of all threads), its peak RSS over the baseline, warm compiled "
                   "call"))

    phases = [[r["kind"], r["n"], get(r, "compile", "trace_s"), get(r, "compile", "lower_s"),
               get(r, "compile", "xla_s"), _ms(get(r, "eager", "second_s")),
               r.get("sampled_peak_rss_mb"), r.get("loadavg_1min_at_start")]
              for r in runs if get(r, "compile", "compile_s") is not None]
    print()
    print(md_table(["kind", "N", "trace s", "lower s", "XLA s", "eager 2nd call ms",
                    "sampled RSS MB", "load at start"],
                   phases, title="Where the compile goes (wall seconds); the eager steady-state "
                   "call; the whole process's RSS peak as sampled by the parent; the machine's "
                   "1-minute load average when the run started"))

    fitted = fits(runs, kinds)
    print()
    print(md_table(["kind", "s / eqn", "CPU s / eqn", "MB / eqn", "s ~ N^k", "CPU s ~ N^k",
                    "MB ~ N^k", "jaxpr eqns / eqn"],
                   [[k, f["seconds_per_eqn"], f["cpu_seconds_per_eqn"], f["mb_per_eqn"],
                     f["seconds_exponent_n_ge_100"], f["cpu_exponent_n_ge_100"],
                     f["mb_exponent_n_ge_100"], f["jaxpr_eqns_per_eqn"]]
                    for k, f in fitted.items()],
                   title="Per kind, over the sizes whose compile finished: least-squares slope "
                   "(compile wall s, compile CPU s, peak MB over baseline per engine eqn), "
                   "growth exponent k over N >= 100, and jaxpr eqns per engine eqn"))
    print()
    limits = f"<= {BUDGET_SECONDS:g} s and {BUDGET_MB:g} MB"
    print(md_table(["kind", f"budget, wall {limits}", f"budget, CPU {limits}"],
                   [[k, budget_text(f["budget_wall"]), budget_text(f["budget_cpu"])]
                    for k, f in fitted.items()],
                   title="Compile budget in engine eqns: the largest size measured within the "
                   "limits (and, in brackets, where they are crossed, interpolated in log-log "
                   "towards the next size; '<=' when that size was killed, so only a lower bound "
                   "of its cost is known)"))
    weights = weighted(fitted)
    if weights:
        print()
        print(md_table(["kind", "budget eqns (CPU)", "factor", "budget x factor",
                        "jaxpr eqns / eqn", "budget in jaxpr eqns"],
                       [[k, w["budget_eqns"], w["factor"], w["budget_weight"],
                         w["jaxpr_eqns_per_eqn"], w["budget_jaxpr_eqns"]]
                        for k, w in weights.items()],
                       title="Weighted size = eqns x factor, factor = the reference kind's CPU "
                       f"budget over the kind's ({next(iter(weights))} first, factor 1); and "
                       "the same budgets counted in jaxpr eqns (one formula fits every kind "
                       "where that column is about constant)"))
    return fitted, weights


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e3


def _row(r: dict[str, Any], args: argparse.Namespace) -> list[Any]:
    """kind, N, eqns, eager first ms, compile s, compile CPU s, peak MB, warm ms, jaxpr eqns."""
    head = [r["kind"], r["n"], eqns_of(r), _ms(get(r, "eager", "first_s"))]
    if r["status"] == "skipped":
        return [*head, "skipped", "-", "-", "-", "-"]
    if get(r, "compile", "compile_s") is None:  # killed while compiling, or failed
        if r["status"] != "over cap":
            return [*head, r["status"], "-", "-", "-", "-"]
        cap = {"time": f"{args.timeout:g} s", "rss": f"{args.rss_cap_gib:g} GiB"}.get(
            r["killed_by"], str(r["killed_by"]))
        bounds = r.get("compile_lower_bounds") or {}

        def at_least(key: str, sign: str) -> str:
            return f"{sign} {bounds[key]:.0f}" if key in bounds else "-"

        spent = f"{at_least('compile_s', '>')}: " if "compile_s" in bounds else ""
        return [*head, f"{spent}over cap ({cap})", at_least("call_cpu_s", ">"),
                at_least("peak_over_baseline_mb", ">="), "-", "-"]
    return [*head, get(r, "compile", "compile_s"), get(r, "compile", "call_cpu_s"),
            get(r, "compile", "peak_over_baseline_mb"), _ms(get(r, "warm", "median_s")),
            get(r, "jaxpr", "eqns")]


def weighted(fitted: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per kind: the factor that makes `eqns x factor` one budget for every kind (from the
    CPU budgets, relative to the gradient's when it was measured, else the first kind's), and
    the budget counted in jaxpr eqns."""
    budgets = {k: suggested(f["budget_cpu"]) for k, f in fitted.items()}
    budgets = {k: b for k, b in budgets.items() if b}
    if not budgets:
        return {}
    ref = "gradient" if "gradient" in budgets else next(iter(budgets))
    out: dict[str, dict[str, Any]] = {}
    for kind in [ref, *(k for k in budgets if k != ref)]:
        per = fitted[kind]["jaxpr_eqns_per_eqn"]
        out[kind] = {"budget_eqns": budgets[kind], "factor": budgets[ref] / budgets[kind],
                     "budget_weight": budgets[ref], "jaxpr_eqns_per_eqn": per,
                     "budget_jaxpr_eqns": budgets[kind] * per if per else None}
    return out


if __name__ == "__main__":
    sys.exit(main())
