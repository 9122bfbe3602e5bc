"""What a query will cost, estimated from inferred types before anything runs.

Type inference knows the shape of every value, so the peak memory and the work of a query can
be estimated without running it: the forward values the query keeps (JAX keeps every residual
a derivative needs), times the expansion its transform brings (a Jacobian carries one tangent
or cotangent per row or column, a Hessian one tangent per source element), plus its result.
The estimate is an upper-bound model, not a measurement: `tests/test_cost.py` compares it with
the peak memory measured in a subprocess for a range of queries.

Each op's work comes from its `work` kind in the op table; nothing here switches on op names.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from engine.control import function_calls
from engine.program import Eqn, Program, functions_of
from engine.transforms import Query

# Peak live values per forward pass, and work per forward pass, for each query kind (a
# gradient keeps the forward residuals, what the backward rules keep beside them, and builds
# as many cotangents; a HVP runs a tangent through both passes of a gradient). Fitted to the
# eager path, which a first request takes (benchmarks/memory_estimate.py); compiled code,
# fused by XLA, peaks lower.
MEMORY_PASSES = {"evaluate": 1, "gradient": 3, "jvp": 2, "hvp": 4, "jacobian": 2, "hessian": 4}
WORK_PASSES = {"evaluate": 1, "gradient": 3, "jvp": 3, "hvp": 8, "jacobian": 3, "hessian": 8}


@dataclass(frozen=True)
class Cost:
    """The estimate for one query. `expansion` is how many copies of the forward values the
    transform carries at once (1 but for Jacobians and Hessians); `largest` names the
    biggest forward value (bytes, name); `result_bytes` is the raw size of the answer."""

    peak_bytes: int
    flops: int
    result_bytes: int
    expansion: int
    largest: tuple[int, str]
    eqns: int


def _size(aval: Any) -> int:
    return math.prod(aval.shape)


def _bytes(aval: Any) -> int:
    return _size(aval) * aval.dtype.itemsize


def eqn_flops(eqn: Eqn, args: list[Any], outs: list[Any]) -> int:
    """Floating-point operations of one equation, from its op's declared `work` kind and
    the sizes of its arguments and results (Python scalars count as one element)."""
    sizes = [_size(a) if hasattr(a, "shape") else 1 for a in args]
    out = sum(_size(o) for o in outs)
    work = getattr(eqn.prim, "work", "elementwise")
    if work == "matmul" and len(args) == 2 and hasattr(args[0], "shape"):
        k = args[0].shape[-1] if args[0].shape else 1
        return 2 * max(out, 1) * k
    if work == "contract" and len(args) >= 2 and out:
        k = math.isqrt(max(sizes[0] * sizes[1] // out, 1))
        return 2 * out * max(k, 1)
    if work == "conv" and len(args) == 2 and outs and outs[0].shape:
        # each result element is a dot product over one group's kernel: (C / groups) * prod(k)
        channels_last = dict(eqn.attrs).get("layout") == "channels_last"
        out_channels = outs[0].shape[-1 if channels_last else 1]
        return 2 * out * max(sizes[1] // max(out_channels, 1), 1)
    if work == "window" and args:
        # each result element reads one window
        return max(out * math.prod(dict(eqn.attrs).get("window", ())), sizes[0])
    if work == "cubic" and args and hasattr(args[0], "shape") and args[0].shape:
        n = args[0].shape[-1]
        return max(sizes[0] * n, out)
    total = max(out, sum(sizes))
    if work == "sort":
        return total * max(1, int(math.log2(max(total, 2))))
    return total


def estimate(program: Program, types: Mapping[str, Any], query: Query) -> Cost:
    """The peak bytes, work and result size of `query` on `program` with these types."""
    targets = query.targets or program.outputs
    eqns = program.needed(targets)
    forward = 0
    flops = 0
    largest = (0, "")
    for name in program.inputs:
        forward += _bytes(types[name])
    for lit in program.literals:
        forward += getattr(lit, "nbytes", 8)
    kept_per_step = query.kind in REVERSE_KINDS and not (query.kind == "jacobian" and
                                                          query.mode == "fwd")
    inner_eqns = 0
    for eqn in eqns:
        args = [types[a] if isinstance(a, str) else program.literals[a] for a in eqn.args]
        outs = [types[o] for o in eqn.outs]
        flops += eqn_flops(eqn, args, outs)
        if functions_of(eqn):
            work, held, count = _inside(eqn, args, kept_per_step)
            flops += work
            forward += held
            inner_eqns += count
        for name, aval in zip(eqn.outs, outs, strict=True):
            size = _bytes(aval)
            forward += size
            largest = max(largest, (size, name))
    target_size = sum(_size(types[t]) for t in targets)
    source_size = sum(_size(types[s]) for s in query.sources)
    expansion = 1
    result = sum(_bytes(types[t]) for t in targets)
    kind = query.kind
    if kind == "gradient":
        result += sum(_bytes(types[s]) for s in query.sources)
    elif kind == "jvp":
        expansion = max(query.stack, 1)
        result *= 1 + expansion
    elif kind == "hvp":
        result += 2 * sum(_bytes(types[s]) for s in query.sources)
    elif kind == "jacobian":
        expansion = source_size if query.mode == "fwd" else target_size
        result += target_size * sum(_bytes(types[s]) for s in query.sources)
    elif kind == "hessian":
        expansion = source_size
        result += (1 + source_size) * sum(_bytes(types[s]) for s in query.sources)
    passes = MEMORY_PASSES.get(kind, 1)
    # an evaluation's results are among its forward values; a derivative's are new arrays
    peak = forward * passes * max(expansion, 1) + (result if kind != "evaluate" else 0)
    work = flops * WORK_PASSES.get(kind, 1) * max(expansion, 1)
    return Cost(peak, work, result, expansion, largest, len(eqns) + inner_eqns)


# the kinds whose reverse pass keeps every step's values of a loop
REVERSE_KINDS = {"gradient", "hvp", "hessian", "jacobian"}


def _inside(eqn: Eqn, args: list[Any], kept_per_step: bool) -> tuple[int, int, int]:
    """Work, bytes held and equations of the functions an equation applies: a loop's work is
    its functions' times its trip count (its bound, where the graph gives no count), and so
    are its values when a reverse pass keeps each step's."""
    trips_of = getattr(eqn.prim, "trips", None)
    trips = trips_of(dict(eqn.attrs), args) if trips_of is not None else 1
    work = held = count = 0
    for fn, types in function_calls(eqn, args):
        body = fn.program
        count += len(body.eqns)
        for inner in body.eqns:
            inner_args = [types[a] if isinstance(a, str) else body.literals[a]
                          for a in inner.args]
            outs = [types[o] for o in inner.outs]
            step = eqn_flops(inner, inner_args, outs)
            step_bytes = sum(_bytes(o) for o in outs)
            if functions_of(inner):
                nested_work, nested_held, nested_count = _inside(inner, inner_args,
                                                                 kept_per_step)
                step += nested_work
                step_bytes += nested_held
                count += nested_count
            work += trips * step
            held += (trips if kept_per_step else 1) * step_bytes
    return work, held, count


def human_bytes(n: int) -> str:
    """1536 -> '1.5 KiB'."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def machine_memory() -> int:
    """Memory this process may use: the cgroup limit where one is set, else physical RAM."""
    import os

    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < total:
            return int(text)
    return total
