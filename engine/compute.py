"""The stateless engine: bind a Program to request values and answer a query.

Everything a request names is checked here before anything runs: inputs against their
declarations, targets and sources against the program, cotangents, vectors and tangents
against the shapes they must match. Then the query's pure function is looked up in the compile
cache (keyed by structure, query and argument types, never by values) and run.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

import numpy as np

from engine import control, numerics
from engine.cache import CompileCache, CompileInfo, Lru
from engine.cost import REVERSE_KINDS, Cost, estimate, human_bytes
from engine.errors import InvalidGraph, InvalidTensor, TooLarge, clip
from engine.interpreter import Aval, TypeCache
from engine.program import Program
from engine.tensors import decode
from engine.transforms import BUILDERS, HVP_PARTS, PureFn, Query, batched

inline_limit: ContextVar[int | None] = ContextVar("inline_limit", default=None)
"""When set (by a caller on an event loop), queries that are not already compiled, or whose
estimated work is over this many floating-point operations, raise `Offload` instead of
running."""


class Offload(Exception):
    """This query is not a cheap dispatch; run it where it may block (a worker thread)."""


def check_inline(compiled: bool, flops: int) -> None:
    """Raise `Offload` when running on an event loop and the work is not a cheap dispatch."""
    limit = inline_limit.get()
    if limit is not None and (not compiled or flops > limit):
        raise Offload


@dataclass(frozen=True)
class Limits:
    """Per request: nodes, arguments of one node, edges (arguments of all nodes), elements of
    one tensor, and the estimated peak bytes, work and answer size of a query."""

    max_nodes: int = 10_000
    max_elements: int = 50_000_000
    max_args_per_node: int = 1_000
    max_edges: int = 100_000
    max_request_bytes: int = 4 * 1024**3
    max_request_flops: float = 1e12
    max_response_bytes: int = 256 * 1024**2
    max_iterations: int = control.DEFAULT_ITERATION_BOUND  # of a while_loop with no bound


@dataclass
class Bound:
    """A Program with checked input values and the inferred type of every name, and how its
    queries run: mapped over the examples of the `batch` inputs (their batch axis moved to
    0; `types` are those of one example), and with numerics checked."""

    program: Program
    inputs: dict[str, np.ndarray]
    types: dict[str, Aval]
    labels: dict[str, str] = field(default_factory=dict)  # program name -> name users know
    batch: tuple[str, ...] = ()
    batch_size: int = 0
    check_numerics: bool = False

    def label(self, name: str) -> str:
        return self.labels.get(name, name)

    def is_float(self, name: str) -> bool:
        return self.types[name].dtype.kind == "f"

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.types[name].shape)

    def signature(self) -> tuple[Any, ...]:
        """What the checks and the compiled function of a query depend on besides the query:
        the program's structure, which of its inputs have defaults, and the inputs' shapes and
        dtypes, as they are batched."""
        return (self.program.structure_key, tuple(self.program.input_defaults),
                _avals_key(self.inputs), self.batch)


@dataclass(frozen=True)
class Apply:
    """An optimiser's update that a gradient query runs in its compiled call: optax's
    `method` with its learning rate and options, of the variables whose gradients are those
    of `sources` (program names among the query's live sources), from their current `values`
    and optimiser state `leaves` (one tuple per variable). `gradients`: answer the gradients
    too (otherwise they are only used for the update)."""

    method: str
    learning_rate: float
    options: tuple[tuple[str, Any], ...]
    sources: tuple[str, ...]
    values: tuple[Any, ...]
    leaves: tuple[tuple[Any, ...], ...]
    gradients: bool = False

    @property
    def spec(self) -> tuple[Any, ...]:
        """What the compiled function depends on (the query's `apply`)."""
        return (self.method, self.learning_rate, self.options, self.sources, self.gradients)


class Key(tuple[Any, ...]):
    """A compile-cache key whose hash is computed once: a query's key is looked up several
    times a request (its cost, whether it is compiled, its function), and its hash would
    otherwise walk the whole query each time."""

    def __new__(cls, items: tuple[Any, ...]) -> Key:
        key = super().__new__(cls, items)
        key._hash = tuple.__hash__(key)
        return key

    _hash: int

    def __hash__(self) -> int:
        return self._hash


@dataclass(frozen=True)
class Plan:
    """A derivative query's checked names and compile-cache key, for one request shape (its
    target, sources and options) on one signature: the checks ran once; a request of the same
    shape only runs the function."""

    targets: tuple[str, ...]
    names: tuple[str, ...]  # the sources asked for
    live: tuple[str, ...]  # of them, those the targets reach
    query: Query
    key: Key


def _avals_key(values: Any) -> tuple[Any, ...]:
    """Shapes and dtypes of a dict or tuple of arrays (or None), for cache keys."""
    if values is None:
        return ()
    items = values.values() if isinstance(values, dict) else values
    return tuple((v.shape, v.dtype) if v is not None else None for v in items)


@lru_cache(maxsize=4096)
def _aval(shape: tuple[int, ...], dtype: np.dtype) -> Aval:
    """One Aval per shape and dtype (building one costs microseconds; none is ever changed)."""
    return Aval(shape, dtype)


def _plan_key(kind: str, bound: Bound, target: Any, sources: Any, *options: Any) -> Any:
    """The key of a query's Plan, or None when the request's names cannot be one (its
    checks then run, and say what is wrong). A plan is kept only once its checks passed."""
    try:
        key = (kind, bound.signature(), target if isinstance(target, str) else tuple(target),
               None if sources is None else tuple(sources), options)
        hash(key)
    except TypeError:
        return None
    return key


def _to_host(tree: Any) -> Any:
    """Arrays in nested tuples as NumPy arrays (several times cheaper than `device_get` for
    the small results of a typical query)."""
    if type(tree) is tuple or type(tree) is list:
        return tuple([_to_host(t) for t in tree])
    return np.asarray(tree)


class Engine:
    """Answers evaluate/gradient/jacobian/hvp/hessian/jvp queries on Programs."""

    def __init__(self, limits: Limits | None = None, cache: CompileCache | None = None,
                 types: TypeCache | None = None):
        self.limits = limits if limits is not None else Limits()
        self.cache = cache if cache is not None else CompileCache()
        self.types = types if types is not None else TypeCache()
        self._costs: OrderedDict[Any, Cost] = OrderedDict()
        self._plans: Lru[Plan] = Lru(1024)

    # ----- binding -----

    def bind(self, program: Program, raw_inputs: Mapping[str, Any],
             loc: Sequence[str | int] = ("inputs",), batch: Mapping[str, int] | None = None,
             check_numerics: bool = False) -> Bound:
        """Decode and check the input values, then infer every name's type. `batch`
        ({input: axis}) maps every query over that axis of those inputs; their declared
        shapes are those of one example.

        >>> engine.bind(program, {"x": [[1.0, 2.0], [3.0, 4.0]]}, batch={"x": 0})  # 2 examples
        """
        unknown = [n for n in raw_inputs if n not in program.inputs]
        if unknown:
            raise InvalidGraph(f"the graph has no input {clip(unknown[0])}; its inputs: "
                               f"{', '.join(program.inputs) or 'none'}", loc=(*loc, unknown[0]))
        batch = batch or {}
        unknown = [n for n in batch if n not in program.inputs]
        if unknown:
            raise InvalidGraph(f"batch names {clip(unknown[0])}, which is not an input of the "
                               f"graph; its inputs: {', '.join(program.inputs) or 'none'}",
                               loc=("batch", unknown[0]))
        values: dict[str, np.ndarray] = {}
        examples: tuple[str, int] | None = None  # (first batched input, its batch size)
        for name in program.inputs:
            if name not in raw_inputs:
                if name not in program.input_defaults:
                    raise InvalidGraph(f"input {name!r} has no value; send it under inputs",
                                       loc=(*loc, name))
                value = program.input_defaults[name]
            else:
                value = decode(raw_inputs[name], (*loc, name),
                               dtype=program.input_dtypes.get(name),
                               max_elements=self.limits.max_elements)
            if name in batch:
                value = _batch_first(name, value, batch[name])
                if examples is not None and value.shape[0] != examples[1]:
                    raise InvalidTensor(
                        f"input {name!r} has {value.shape[0]} examples on its batch axis, but "
                        f"{examples[0]!r} has {examples[1]}; batched inputs need the same "
                        "batch size", loc=(*loc, name))
                examples = examples or (name, value.shape[0])
            shape = program.input_shapes.get(name)
            example = value.shape[1:] if name in batch else value.shape
            if shape is not None and example != shape and name in raw_inputs:
                one = " (one example: the batch axis left out)" if name in batch else ""
                raise InvalidTensor(f"input {name!r} is declared with shape {list(shape)} but "
                                    f"the value has shape {list(example)}{one}",
                                    loc=(*loc, name))
            values[name] = value
        return self.bind_values(program, values, tuple(n for n in program.inputs if n in batch),
                                check_numerics)

    def bind_values(self, program: Program, values: dict[str, np.ndarray],
                    batch: Sequence[str] = (), check_numerics: bool = False) -> Bound:
        """Infer every name's type from input values already decoded (the `batch` inputs
        with their batch axis first)."""
        avals = {n: _aval(v.shape[1:] if n in batch else v.shape, v.dtype)
                 for n, v in values.items()}
        if inline_limit.get() is not None:
            check_inline(self.types.known(program, avals), 0)
        typed = self.types.infer(program, avals)
        types = typed.types
        size, name = typed.largest
        if size > self.limits.max_elements:
            eqn = program.producer.get(name)
            what = "its result" if eqn else repr(name)
            raise TooLarge(f"{what} would have {size} elements (shape "
                           f"{list(types[name].shape)}); the limit is {self.limits.max_elements}"
                           " (GRADTAPE_MAX_ELEMENTS)", node=eqn.node if eqn else None)
        if program.indexing:
            check_indices(program, values, types)
        size = values[batch[0]].shape[0] if batch else 0
        return Bound(program, values, types, batch=tuple(batch), batch_size=size,
                     check_numerics=check_numerics)

    # ----- queries -----

    def evaluate(self, bound: Bound, outputs: Sequence[str] | None = None, *,
                 answered: bool = True) -> dict[str, Any]:
        """Values of `outputs`. `answered=False`: the values are kept on the server (a
        session's run), so the answer-size limit does not apply to them, and they stay the
        compiled call's arrays."""
        names = tuple(outputs) if outputs else bound.program.outputs
        for i, name in enumerate(names):
            self._check_defined(bound, name, ("outputs", i))
        values = self._run(bound, Query("evaluate", names), (), None, answered=answered,
                           host=answered)
        return dict(zip(names, values, strict=True))

    def gradient(self, bound: Bound, target: str | Sequence[str],
                 sources: Sequence[str] | None = None, output_gradients: Any = None,
                 unconnected: str = "none", stored: Mapping[str, Any] | None = None,
                 host: bool = True, apply: Apply | None = None) -> dict[str, Any]:
        """`stored`: values of intermediates computed before (a session's run kept them);
        with them only the backward pass runs. `host=False`: the results stay the compiled
        call's arrays (for a next call on the server, such as an optimiser's update).
        `apply`: an optimiser's update of the variables behind some of the sources, in the
        same compiled call; the answer's "updated" holds their new values and state, and
        "flops" the call's estimated work."""
        if apply is not None and (bound.batch or bound.check_numerics):
            raise ValueError("apply is for unbatched queries without a numerics check")
        plan_key = None
        if not stored and apply is None:
            plan_key = _plan_key("gradient", bound, target, sources, output_gradients is not None)
        plan = self._plans.get(plan_key) if plan_key is not None else None
        if plan is None:
            targets = self._targets(bound, target)
            names = self._sources(bound, sources)
            live = self._live_sources(bound, targets, names)
            query = self._query(bound, "gradient", targets, live,
                                with_cotangents=output_gradients is not None,
                                stored=tuple(sorted(stored or ())),
                                apply=() if apply is None else apply.spec)
        else:
            targets, names, live, query = plan.targets, plan.names, plan.live, plan.query
        cotangents = None
        if output_gradients is not None:
            cotangents = self._cotangents(bound, target, targets, output_gradients)
        source_values = self._source_values(bound, live)
        if stored:  # in name order: the cache key reads the values in dict order
            bound = replace(bound, inputs={**bound.inputs,
                                           **{n: stored[n] for n in sorted(stored)}})
        key = plan.key if plan is not None else self._key(bound, query, source_values,
                                                          cotangents)
        if apply is not None:
            key = Key((*key, _avals_key(apply.values),
                       tuple(_avals_key(ls) for ls in apply.leaves)))
            values, grads, *updated = self._run(
                bound, query, source_values, (cotangents, apply.values, apply.leaves),
                host=host, key=key)
            live = live if apply.gradients else ()
        else:
            values, grads = self._run(bound, query, source_values, cotangents, host=host,
                                      key=key)
        if plan is None and plan_key is not None:
            self._plans.put(plan_key, Plan(targets, names, live, query, key))
        value: Any = values[0] if isinstance(target, str) else dict(zip(targets, values,
                                                                         strict=True))
        found = dict(zip(live, grads, strict=True))
        answer = {"value": value,
                  "gradients": {s: found.get(s, self._missing(bound, s, (), unconnected))
                                for s in names}}
        if apply is not None:
            answer["updated"] = tuple(updated)
            answer["flops"] = self.cost(bound, query, key).flops  # memoised by the call
        return answer

    def jacobian(self, bound: Bound, target: str, sources: Sequence[str] | None = None,
                 unconnected: str = "none") -> dict[str, Any]:
        (name,) = self._targets(bound, target, single="jacobian")
        names = self._sources(bound, sources)
        live = self._live_sources(bound, (name,), names)
        out_size = math.prod(bound.shape(name))
        in_size = sum(math.prod(bound.shape(s)) for s in live)
        self._check_result_size(out_size * in_size * max(bound.batch_size, 1), "jacobian",
                                "use gradient with "
                                "output_gradients (a VJP) or jvp for products with it")
        # forward mode costs one JVP per input element, reverse one VJP per output element;
        # forward tangents carry the target's precision, so a narrower target keeps reverse
        narrow = any(bound.types[x].dtype.itemsize > bound.types[name].dtype.itemsize
                     for x in live)
        mode = "fwd" if in_size < out_size and not narrow else "rev"
        if live:
            query = self._query(bound, "jacobian", (name,), live, mode=mode)
            value, jac = self._run(bound, query, self._source_values(bound, live), None)
        else:  # nothing to differentiate: JAX is not asked for a derivative of no source
            value, jac = self._value_only(bound, name), ()
        # forward mode yields the target's dtype, reverse the source's: answer the latter
        found = {s: np.asarray(j).astype(bound.types[s].dtype, copy=False)
                 for s, j in zip(live, jac, strict=True)}
        shape = bound.shape(name)
        return {"value": value,
                "jacobian": {s: found.get(s, self._missing(bound, s, shape, unconnected))
                             for s in names}}

    def hvp(self, bound: Bound, target: str, sources: Sequence[str] | None,
            vectors: Mapping[str, Any], unconnected: str = "none",
            include: Sequence[str] | None = None) -> dict[str, Any]:
        """Hessian-vector products, with the value and the gradients; `include` names the
        parts to compute and answer (of "value", "gradients", "hvp"; default all)."""
        parts = HVP_PARTS if include is None else tuple(p for p in HVP_PARTS if p in include)
        if not parts:
            raise InvalidGraph(f"include names none of {', '.join(HVP_PARTS)}",
                               loc=("include",))
        name = self._scalar_target(bound, target, "hvp")
        names = self._sources(bound, sources)
        missing = [s for s in names if s not in vectors]
        if missing:
            raise InvalidGraph(f"no vector for source {bound.label(missing[0])!r}: vectors "
                               "needs one tensor per source, shaped like it", loc=("vectors",))
        extra = [s for s in vectors if s not in names]
        if extra:
            raise InvalidGraph(f"vector for {clip(extra[0])}, which is not a source",
                               loc=("vectors", extra[0]))
        checked = {s: self._like(bound, s, vectors[s], ("vectors", bound.label(s)))
                   for s in names}  # every vector is checked, used or not
        live = self._live_sources(bound, (name,), names)
        vecs = tuple(checked[s] for s in live)
        query = self._query(bound, "hvp", (name,), live,
                            parts=() if parts == HVP_PARTS else parts)
        found = dict(zip(parts, self._run(bound, query, self._source_values(bound, live), vecs),
                         strict=True))
        answer: dict[str, Any] = {}
        for part in parts:
            if part == "value":
                answer[part] = found[part]
                continue
            by_source = dict(zip(live, found[part], strict=True))
            answer[part] = {s: by_source.get(s, self._missing(bound, s, (), unconnected))
                            for s in names}
        return answer

    def hessian(self, bound: Bound, target: str, sources: Sequence[str] | None = None,
                unconnected: str = "none") -> dict[str, Any]:
        name = self._scalar_target(bound, target, "hessian")
        names = self._sources(bound, sources)
        live = self._live_sources(bound, (name,), names)
        in_size = sum(math.prod(bound.shape(s)) for s in live)
        self._check_result_size(in_size * in_size * max(bound.batch_size, 1), "hessian",
                                "use hvp for products with it")
        if live:
            query = self._query(bound, "hessian", (name,), live)
            value, grads, hess = self._run(bound, query, self._source_values(bound, live), None)
        else:
            value, grads, hess = self._value_only(bound, name), (), ()
        g = dict(zip(live, grads, strict=True))
        blocks = {(a, b): hess[i][j] for i, a in enumerate(live) for j, b in enumerate(live)}
        return {"value": value,
                "gradients": {s: g.get(s, self._missing(bound, s, (), unconnected))
                              for s in names},
                "hessian": {a: {b: blocks[(a, b)] if (a, b) in blocks else
                                self._missing_block(bound, a, b, unconnected) for b in names}
                            for a in names}}

    def jvp(self, bound: Bound, tangents: Mapping[str, Any],
            outputs: Sequence[str] | None = None) -> dict[str, Any]:
        names = tuple(outputs) if outputs else bound.program.outputs
        for i, out in enumerate(names):
            self._check_defined(bound, out, ("outputs", i))
        if not tangents:
            raise InvalidGraph("tangents is empty: give one tensor per input to push forward",
                               loc=("tangents",))
        sources = []
        for s in tangents:
            self._check_defined(bound, s, ("tangents", s))
            if not bound.is_float(s):
                raise InvalidGraph(f"{s!r} is {bound.types[s].dtype.name}; tangents apply to "
                                   "floating-point values only", loc=("tangents", s))
            sources.append(s)
        tans = tuple(self._like(bound, s, tangents[s], ("tangents", s)) for s in sources)
        query = self._query(bound, "jvp", names, tuple(sources))
        values, touts = self._run(bound, query, self._source_values(bound, tuple(sources)), tans)
        # an integer or bool output has no tangent (JAX's float0): null, like a gradient
        return {"values": dict(zip(names, values, strict=True)),
                "tangents": {n: t if bound.is_float(n) else None
                             for n, t in zip(names, touts, strict=True)}}

    def jvp_stack(self, bound: Bound, source: str, tangents: np.ndarray,
                  output: str) -> np.ndarray:
        """d output along each of the directions stacked on axis 0 of `tangents` (each shaped
        like `source`), in one compiled call: [directions, *output.shape]."""
        query = self._query(bound, "jvp", (output,), (source,), stack=len(tangents))
        _, pushed = self._run(bound, query, self._source_values(bound, (source,)), (tangents,))
        return np.asarray(pushed[0])

    # ----- helpers -----

    def _value_only(self, bound: Bound, name: str) -> Any:
        return self._run(bound, Query("evaluate", (name,)), (), None)[0]

    def _check_result_size(self, size: int, what: str, instead: str) -> None:
        if size > self.limits.max_elements:
            raise TooLarge(f"the {what} would have {size} elements; the limit is "
                           f"{self.limits.max_elements} (GRADTAPE_MAX_ELEMENTS): {instead}")

    def cost(self, bound: Bound, query: Query, key: Any = None) -> Cost:
        """The query's estimated cost (memoised by structure, query and types)."""
        key = key if key is not None else (bound.program.structure_key, query,
                                           _avals_key(bound.inputs))
        found = self._costs.get(key)
        if found is None:
            found = estimate(bound.program, bound.types, query)
            if bound.batch:  # the types are one example's; every example runs the query
                n = bound.batch_size
                found = replace(found, peak_bytes=found.peak_bytes * n, flops=found.flops * n,
                                result_bytes=found.result_bytes * n)
            self._costs[key] = found
            if len(self._costs) > 4096:
                self._costs.popitem(last=False)
        return found

    def admit(self, bound: Bound, query: Query, cost: Cost, answered: bool = True) -> None:
        """TooLarge, before anything runs, when the estimate is over a limit."""
        limits = self.limits
        size, name = cost.largest
        eqn = bound.program.producer.get(name)
        node = eqn.node if eqn is not None else None
        what = f"the {query.kind}"
        if cost.peak_bytes > limits.max_request_bytes:
            aval = bound.types.get(name)
            value = (f"{bound.label(name)!r} (shape {list(aval.shape)}, {aval.dtype.name}, "
                     f"{human_bytes(size)})") if aval is not None else "none"
            if cost.expansion > 1:
                per = "source element" if query.kind == "hessian" or query.mode == "fwd" \
                    else "target element"
                why = (f"it carries {cost.expansion} copies of the forward values at once (one "
                       f"per {per}); the biggest forward value is {value}")
            else:
                why = f"the biggest value is {value}"
            raise TooLarge(f"{what} would need about {human_bytes(cost.peak_bytes)} of memory "
                           f"at its peak (estimate); the limit is "
                           f"{human_bytes(limits.max_request_bytes)} "
                           f"(GRADTAPE_MAX_REQUEST_BYTES): {why}. {_ADVICE[query.kind]}",
                           node=node if cost.expansion == 1 else None)
        if cost.flops > limits.max_request_flops:
            raise TooLarge(f"{what} would take about {cost.flops:.3g} floating-point "
                           f"operations (estimate); the limit is "
                           f"{limits.max_request_flops:.3g} (GRADTAPE_MAX_REQUEST_FLOPS). "
                           f"{_ADVICE[query.kind]}")
        if answered and cost.result_bytes > limits.max_response_bytes:
            raise TooLarge(f"the answer would hold {human_bytes(cost.result_bytes)} of tensors; "
                           f"the limit is {human_bytes(limits.max_response_bytes)} "
                           "(GRADTAPE_MAX_RESPONSE_BYTES): ask for fewer or smaller results")

    @staticmethod
    def _key(bound: Bound, query: Query, sources: tuple[Any, ...], extra: Any) -> Key:
        """The compile-cache key of `query` on these values."""
        return Key((bound.program.structure_key, query, bound.batch, _avals_key(bound.inputs),
                    _avals_key(sources), _avals_key(extra), bound.program.literal_types))

    def _run(self, bound: Bound, query: Query, sources: tuple[Any, ...], extra: Any,
             answered: bool = True, host: bool = True, key: Key | None = None) -> Any:
        token = control.iteration_bound.set(self.limits.max_iterations)
        try:
            out = self._run_bounded(bound, query, sources, extra, answered, key)
            return _to_host(out) if host else out
        finally:
            control.iteration_bound.reset(token)

    def _run_bounded(self, bound: Bound, query: Query, sources: tuple[Any, ...], extra: Any,
                     answered: bool = True, key: Key | None = None) -> Any:
        program = bound.program
        loops = control.unbounded_loops(program, program.needed(query.targets)) \
            if program.functions_used else []
        if loops and (query.kind in REVERSE_KINDS and query.mode != "fwd"):
            raise InvalidGraph(f"the {query.kind} needs reverse mode, which a while_loop "
                               "without max_iterations does not have: set its max_iterations "
                               "(the loop then stops there, as TensorFlow's "
                               "maximum_iterations does), or use jvp (forward mode)",
                               node=loops[0])
        key = key if key is not None else self._key(bound, query, sources, extra)
        cost = self.cost(bound, query, key)
        self.admit(bound, query, cost, answered)
        checking = ("numerics", *key) if bound.check_numerics else None
        if inline_limit.get() is not None:
            check_inline(self.cache.is_compiled(key) and (
                checking is None or self.cache.is_compiled(checking)), cost.flops)
        info = CompileInfo(query.kind, cost.eqns, cost.expansion)
        eager = program.eager  # control flow runs compiled only: past the budget, a 413
        if checking is not None:  # a separate function: the query's own stays as it is
            found = self.cache.call(checking, lambda: self._build(bound, query, numerics.counts),
                                    bound.inputs, program.literals, sources, extra, info=info,
                                    eager=eager)
            numerics.raise_first(program, query, _to_host(found), bound.label,
                                 batched=bool(bound.batch))
        if loops:  # their bound checks come back beside the result
            error, out = self.cache.call(
                key, lambda: control.checked(self._build(bound, query, BUILDERS[query.kind])),
                bound.inputs, program.literals, sources, extra, info=info, eager=eager)
            control.raise_reached(error, loops)
            return out
        return self.cache.call(key, lambda: self._build(bound, query, BUILDERS[query.kind]),
                               bound.inputs, program.literals, sources, extra, info=info,
                               eager=eager)

    @staticmethod
    def _build(bound: Bound, query: Query, builder: Any) -> PureFn:
        fn: PureFn = builder(bound.program, query)
        return batched(fn, bound.batch, query.sources) if bound.batch else fn

    def _query(self, bound: Bound, kind: str, targets: tuple[str, ...],
               sources: tuple[str, ...], **options: Any) -> Query:
        program = bound.program
        inter = frozenset(s for s in sources if s not in program.inputs)
        return Query(kind, targets, sources, inter, **options)

    def _check_defined(self, bound: Bound, name: Any, loc: tuple[str | int, ...]) -> None:
        if not isinstance(name, str) or not bound.program.defines(name):
            raise InvalidGraph(f"{clip(name)} is not an input or a node of the graph", loc=loc)

    def _targets(self, bound: Bound, target: str | Sequence[str],
                 single: str | None = None) -> tuple[str, ...]:
        if isinstance(target, str):
            targets: tuple[str, ...] = (target,)
            locs: list[tuple[str | int, ...]] = [("target",)]
        else:
            if single is not None:
                raise InvalidGraph(f"{single} takes one target name; ask once per target",
                                   loc=("target",))
            targets = tuple(target)
            locs = [("target", i) for i in range(len(targets))]
            if not targets:
                raise InvalidGraph("target is an empty list", loc=("target",))
        for name, loc in zip(targets, locs, strict=True):
            self._check_defined(bound, name, loc)
            if not bound.is_float(name):
                raise InvalidGraph(f"target {name!r} is {bound.types[name].dtype.name}; "
                                   "gradients need a floating-point target (cast it first)",
                                   loc=loc)
        return targets

    def _scalar_target(self, bound: Bound, target: Any, what: str) -> str:
        (name,) = self._targets(bound, target, single=what)
        if bound.shape(name) != ():
            raise InvalidGraph(f"{what} needs a scalar target, but {name!r} has shape "
                               f"{list(bound.shape(name))}; reduce it to a scalar (sum, mean) "
                               "or use jacobian", loc=("target",))
        return name

    def _sources(self, bound: Bound, sources: Sequence[str] | None) -> tuple[str, ...]:
        if sources is None:  # inputs with a default (a model's weights) only when named
            defaults = bound.program.input_defaults
            return tuple(n for n in bound.program.inputs if bound.is_float(n)
                         and n not in defaults)
        seen: set[str] = set()
        for i, name in enumerate(sources):
            self._check_defined(bound, name, ("sources", i))
            if name in seen:
                raise InvalidGraph(f"source {name!r} is listed twice", loc=("sources", i))
            seen.add(name)
        return tuple(sources)

    def _live_sources(self, bound: Bound, targets: tuple[str, ...],
                      sources: tuple[str, ...]) -> tuple[str, ...]:
        floats = [s for s in sources if bound.is_float(s)]
        connected = bound.program.connected(targets, floats, bound.is_float)
        return tuple(s for s in floats if s in connected)

    def _source_values(self, bound: Bound, sources: tuple[str, ...]) -> tuple[Any, ...]:
        return tuple(bound.inputs[s] if s in bound.inputs else
                     np.zeros(bound.shape(s), bound.types[s].dtype) for s in sources)

    def _missing(self, bound: Bound, source: str, prefix: tuple[int, ...],
                 unconnected: str) -> Any:
        if unconnected != "zero" or not bound.is_float(source):
            return None
        return np.zeros(_examples(bound) + prefix + bound.shape(source),
                        bound.types[source].dtype)

    def _missing_block(self, bound: Bound, a: str, b: str, unconnected: str) -> Any:
        if unconnected != "zero" or not (bound.is_float(a) and bound.is_float(b)):
            return None
        return np.zeros(_examples(bound) + bound.shape(a) + bound.shape(b),
                        bound.types[a].dtype)

    def _like(self, bound: Bound, name: str, raw: Any, loc: tuple[str | int, ...]) -> Any:
        """Decode a tensor that must have `name`'s shape and dtype (a cotangent, vector or
        tangent)."""
        aval = bound.types[name]
        value = decode(raw, loc, dtype=aval.dtype.name, max_elements=self.limits.max_elements)
        if value.shape != tuple(aval.shape):
            raise InvalidTensor(f"shape {list(value.shape)} does not match {bound.label(name)!r},"
                                f" which has shape {list(aval.shape)}", loc=loc)
        return value

    def _cotangents(self, bound: Bound, target: Any, targets: tuple[str, ...],
                    raw: Any) -> tuple[Any, ...]:
        if isinstance(raw, dict) and not ("data" in raw or "b64" in raw):
            missing = [t for t in targets if t not in raw]
            extra = [k for k in raw if k not in targets]
            if extra:
                raise InvalidGraph(f"output_gradients names {clip(extra[0])}, which is not a "
                                   "target",
                                   loc=("output_gradients", extra[0]))
            if missing:
                raise InvalidGraph(f"output_gradients has no entry for target {missing[0]!r}",
                                   loc=("output_gradients",))
            return tuple(self._like(bound, t, raw[t], ("output_gradients", bound.label(t)))
                         for t in targets)
        if len(targets) > 1 or not isinstance(target, str):
            raise InvalidGraph("with a list of targets, output_gradients is a map "
                               "{target: tensor}", loc=("output_gradients",))
        return (self._like(bound, targets[0], raw, ("output_gradients",)),)


_ADVICE = {
    "evaluate": "Use smaller inputs or shapes, or split the graph into several requests.",
    "gradient": "Use smaller inputs or shapes, or split the graph into several requests.",
    "jvp": "Use smaller inputs or shapes, or split the graph into several requests.",
    "hvp": "Use smaller inputs or shapes, or split the graph into several requests.",
    "jacobian": "Ask for fewer sources, or use gradient with output_gradients (a VJP) or jvp "
                "for products with the Jacobian.",
    "hessian": "Ask for fewer sources, or use hvp for products with the Hessian.",
}


def _examples(bound: Bound) -> tuple[int, ...]:
    """The leading axis every answer of a batched query has: (batch size,) or ()."""
    return (bound.batch_size,) if bound.batch else ()


def _batch_first(name: str, value: np.ndarray, axis: int) -> np.ndarray:
    """`value` with its batch axis moved first, or InvalidGraph at batch.<name>."""
    if not -value.ndim <= axis < value.ndim:
        raise InvalidGraph(f"batch axis {axis} is out of range for input {name!r}, which has "
                           f"shape {list(value.shape)} (valid axes: {-value.ndim} to "
                           f"{value.ndim - 1})" if value.ndim else
                           f"input {name!r} is a scalar: it has no axis to batch over",
                           loc=("batch", name))
    return np.moveaxis(value, axis, 0)


def check_indices(program: Program, values: Mapping[str, Any],
                   types: Mapping[str, Aval]) -> None:
    """Indices that come from inputs or constants must be in range (as TensorFlow checks
    them): InvalidGraph naming the node. Computed indices are not known before running; JAX
    fills their out-of-range results (NaN for floats)."""
    for eqn in program.indexing:
        arg = eqn.args[eqn.prim.indices]  # type: ignore[attr-defined]
        index = values.get(arg) if isinstance(arg, str) else program.literals[arg]
        if index is None:
            continue
        index = np.asarray(index)
        if index.size == 0 or index.dtype.kind not in "iu":
            continue
        data = eqn.args[0]
        shape = types[data].shape if isinstance(data, str) else np.shape(program.literals[data])
        specs = getattr(eqn.prim, "attrs", {})
        axis = dict(eqn.attrs).get("axis", specs["axis"].default if "axis" in specs else 0)
        size = math.prod(shape) if axis is None else (
            shape[axis] if -len(shape) <= axis < len(shape) else None)
        if size is None:
            continue  # a bad axis was already reported by type inference
        bad = index[(index < -size) | (index >= size)]
        if bad.size:
            where = "the flattened tensor" if axis is None else f"axis {axis}"
            raise InvalidGraph(f"index {int(bad.flat[0])} is out of range for {where} of size "
                               f"{size} (valid: {-size} to {size - 1}); {bad.size} "
                               "of the indices are out of range", node=eqn.node)
