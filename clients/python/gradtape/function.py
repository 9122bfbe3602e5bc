"""`gt.function`: a Python function of tensors traced into a graph for the stateless routes.

    @gt.function
    def f(x, w):
        return gt.reduce_sum(gt.tanh(x @ w))

    client.gradient(f, x, w)            # GradientResult(value=..., gradients={"x": ..., "w": ...})

Calling `f` with symbolic tensors writes nodes into a graph: its parameters become the graph's
inputs (dtype and shape from the arrays given), what it returns its outputs (a dict's keys
name them; otherwise `out`, or `out0`, `out1`, ... for a tuple). The graph is registered once
per input signature (`POST /v1/graphs`, content-addressed) and then named by its `graph_id`.
Calling `f` with session tensors simply runs it in the session.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from gradtape import _codec
from gradtape._flow import Call, Flow
from gradtape.errors import NotFoundError
from gradtape.tensor import Builder, Tensor, building

Signature = tuple[tuple[str, str, tuple[int, ...]], ...]


class Trace(Builder):
    """A builder that writes ops into a graph instead of running them."""

    def __init__(self) -> None:
        self.nodes: list[dict[str, Any]] = []
        self._counters: dict[str, int] = {}

    def _name(self, op: str) -> str:
        self._counters[op] = self._counters.get(op, 0) + 1
        return f"{op}:{self._counters[op]}"

    def _ref(self, tensor: Tensor) -> str:
        if tensor._builder is not self:
            raise ValueError(f"tensor {tensor.name!r} belongs to a session or another trace; "
                             "a traced function sees only its arguments (pass the value in)")
        if not tensor._bound:
            assert tensor._value is not None
            self.nodes.append({"id": tensor.name, "op": "identity",
                               "args": [_codec.encode(tensor._value)]})
            tensor._bound = True
        return tensor.name

    def _add(self, op: str, args: list[Any], attrs: dict[str, Any], n_out: int) -> list[Tensor]:
        names = [self._name(op) for _ in range(n_out)]
        node: dict[str, Any] = {"id": names[0] if n_out == 1 else names, "op": op,
                                "args": args}
        if attrs:
            node["attrs"] = attrs
        self.nodes.append(node)
        return [Tensor(self, n) for n in names]

    def _value(self, tensor: Tensor) -> np.ndarray:
        raise TypeError(f"{tensor.name!r} is a traced tensor of a gt.function: it has no value "
                        "while tracing. Python control flow on it (if, while, float()) cannot "
                        "be traced; use gt.where, or compute it in a session")

    def constant(self, value: Any, dtype: Any = None) -> Tensor:
        return Tensor(self, self._name("const"), _codec.as_array(value, dtype), bound=False)


@dataclass(frozen=True)
class Traced:
    """A traced graph: the graph itself, its input dtypes, its outputs' names and the
    structure the function returned (leaves replaced by output names)."""

    graph: dict[str, Any]
    dtypes: dict[str, str]
    outputs: list[str]
    structure: Any


class Function:
    """A Python function of tensors, traceable into a graph (made by `gt.function`)."""

    def __init__(self, fn: Callable[..., Any]):
        self.fn = fn
        functools.update_wrapper(self, fn)
        self._params = [p for p in inspect.signature(fn).parameters.values()]
        for p in self._params:
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                raise TypeError("gt.function needs named parameters (no *args or **kwargs): "
                                "each parameter is an input of the graph")
        self._traces: dict[Signature, Traced] = {}
        self._graph_ids: dict[tuple[str, Signature], str] = {}

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def inputs(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The function's arguments by parameter name, as arrays (defaults included)."""
        bound = inspect.signature(self.fn).bind(*args, **kwargs)
        bound.apply_defaults()
        return {name: _codec.as_array(value.numpy() if isinstance(value, Tensor) else value)
                for name, value in bound.arguments.items()}

    def trace(self, inputs: Mapping[str, np.ndarray]) -> Traced:
        """The graph for inputs of these dtypes and shapes (traced once per signature)."""
        signature = _signature(inputs)
        found = self._traces.get(signature)
        if found is None:
            found = self._traces[signature] = self._trace(inputs)
        return found

    def graph(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The graph this function traces to for these arguments (NumPy arrays)."""
        return self.trace(self.inputs(args, kwargs)).graph

    def _trace(self, inputs: Mapping[str, np.ndarray]) -> Traced:
        trace = Trace()
        symbols = {name: Tensor(trace, name) for name in inputs}
        with building(trace):
            result = self.fn(**symbols)
        if isinstance(result, Mapping):
            named = [(str(k), v) for k, v in result.items()]
        elif isinstance(result, list | tuple):
            named = [(f"out{i}", v) for i, v in enumerate(result)]
        else:
            named = [("out", result)]
        rename: dict[str, str] = {}
        producers = {node["id"]: node for node in trace.nodes if isinstance(node["id"], str)}
        for out, value in named:
            if not isinstance(value, Tensor):
                raise TypeError(f"{self.fn.__name__} returned {type(value).__name__} as {out!r}; "
                                "a gt.function returns tensors (or a tuple or dict of them)")
            if out in inputs:
                raise ValueError(f"output name {out!r} is also a parameter; name it otherwise")
            name = trace._ref(value)
            if name in producers and name not in rename:
                rename[name] = out
            else:  # an input, or one value returned twice: a node of its own
                trace.nodes.append({"id": out, "op": "identity",
                                    "args": [rename.get(name, name)]})
        # a graph is JSON alone: it is registered once, kept and hashed by the server, and
        # its nodes go into steps, which take binary tensors as inputs, not in nodes
        nodes = [_codec.as_json(_renamed(node, rename)) for node in trace.nodes]
        outputs = [out for out, _ in named]
        graph = {"inputs": {name: {"dtype": a.dtype.name, "shape": list(a.shape)}
                            for name, a in inputs.items()},
                 "nodes": nodes or [{"id": "out", "op": "identity", "args": [0.0]}],
                 "outputs": outputs}
        structure: Any
        if isinstance(result, Mapping):
            structure = {k: str(k) for k in result}
        elif isinstance(result, list | tuple):
            structure = type(result)(outputs)
        else:
            structure = "out"
        return Traced(graph, {n: a.dtype.name for n, a in inputs.items()}, outputs, structure)


def function(fn: Callable[..., Any]) -> Function:
    """Decorate a Python function of tensors so the client can trace it into a graph for
    the stateless routes (`client.evaluate`, `gradient`, `jacobian`, `hvp`, `hessian`, `jvp`,
    `minimize`)."""
    return Function(fn)


def _renamed(node: dict[str, Any], rename: Mapping[str, str]) -> dict[str, Any]:
    ident = node["id"]
    out = dict(node)
    out["id"] = rename.get(ident, ident) if isinstance(ident, str) else \
        [rename.get(i, i) for i in ident]
    out["args"] = [rename.get(a, a) if isinstance(a, str) else a for a in node["args"]]
    return out


def _signature(inputs: Mapping[str, np.ndarray]) -> Signature:
    return tuple((name, a.dtype.name, tuple(a.shape)) for name, a in inputs.items())


# ----- results -----

Arrays = dict[str, np.ndarray | None]


@dataclass(frozen=True)
class GradientResult:
    """`value`: the target's value (a dict for a list of targets); `gradients`: by source."""

    value: Any
    gradients: Arrays


@dataclass(frozen=True)
class JacobianResult:
    value: np.ndarray
    jacobian: Arrays


@dataclass(frozen=True)
class HvpResult:
    """The parts asked for with `include` (the others are None)."""

    value: np.ndarray | None
    gradients: Arrays | None
    hvp: Arrays | None


@dataclass(frozen=True)
class HessianResult:
    value: np.ndarray
    gradients: Arrays
    hessian: dict[str, Arrays]


@dataclass(frozen=True)
class JvpResult:
    values: dict[str, np.ndarray]
    tangents: dict[str, np.ndarray]


@dataclass(frozen=True)
class MinimizeResult:
    value: np.ndarray
    variables: dict[str, np.ndarray]
    iterations: int
    converged: bool
    reason: str | None
    gradient_norm: float
    history: list[float] | None


# ----- flows -----

def register_flow(url: str, fn: Function, args: tuple[Any, ...], kwargs: Mapping[str, Any]
                  ) -> Flow[str]:
    """Register the traced graph (once per server and signature); its graph_id."""
    inputs = fn.inputs(args, kwargs)
    return _register(url, fn, fn.trace(inputs), _signature(inputs))


def _register(url: str, fn: Function, traced: Traced, signature: Signature) -> Flow[str]:
    key = (url, signature)
    found = fn._graph_ids.get(key)
    if found is None:
        answer = yield Call("POST", "/graphs", traced.graph)
        found = fn._graph_ids[key] = str(answer["graph_id"])
    return found


def _query(url: str, fn: Function, args: tuple[Any, ...], kwargs: Mapping[str, Any],
           route: str, extra: Callable[[Traced], dict[str, Any]]
           ) -> Flow[tuple[Traced, dict[str, Any]]]:
    """POST /v1/<route> on the registered graph (registering it again if the server has
    forgotten it)."""
    inputs = fn.inputs(args, kwargs)
    signature = _signature(inputs)
    traced = fn.trace(inputs)
    body = {"inputs": {n: _codec.encode(a) for n, a in inputs.items()}, "encoding": "base64",
            **extra(traced)}
    for attempt in (0, 1):
        body["graph_id"] = yield from _register(url, fn, traced, signature)
        try:
            answer: dict[str, Any] = yield Call("POST", f"/{route}", body)
        except NotFoundError:
            if attempt:
                raise
            fn._graph_ids.pop((url, signature), None)  # evicted: register it again
            continue
        return traced, answer
    raise AssertionError("unreachable")


def _typed(traced: Traced, values: Mapping[str, Any], what: str) -> dict[str, Any]:
    """Vectors or tangents by input name, in the dtype of that input."""
    out = {}
    for name, value in values.items():
        if name not in traced.dtypes:
            raise ValueError(f"{what} names {name!r}, which is not a parameter; parameters: "
                             f"{', '.join(traced.dtypes)}")
        array = value.numpy() if isinstance(value, Tensor) else value
        out[name] = _codec.encode(np.asarray(array, dtype=traced.dtypes[name]))
    return out


def _target(traced: Traced, target: Any) -> Any:
    return target if target is not None else traced.outputs[0]


def _options(**given: Any) -> dict[str, Any]:
    return {k: v for k, v in given.items() if v is not None}


def _arrays(tree: Any) -> Any:
    return _codec.decode_tree(tree)


def evaluate_flow(url: str, fn: Function, args: tuple[Any, ...], kwargs: Mapping[str, Any]
                  ) -> Flow[Any]:
    traced, answer = yield from _query(url, fn, args, kwargs, "evaluate",
                                       lambda t: {"outputs": t.outputs})
    values = {k: _codec.decode(v) for k, v in answer["values"].items()}
    structure = traced.structure
    if isinstance(structure, dict):
        return {k: values[v] for k, v in structure.items()}
    if isinstance(structure, list | tuple):
        return type(structure)(values[v] for v in structure)
    return values[structure]


def gradient_flow(url: str, fn: Function, args: tuple[Any, ...], kwargs: Mapping[str, Any],
                  sources: list[str] | None, target: Any, output_gradients: Any,
                  unconnected: str) -> Flow[GradientResult]:
    def extra(t: Traced) -> dict[str, Any]:
        tgt = _target(t, target)
        body = _options(target=tgt, sources=sources, unconnected_gradients=unconnected)
        if output_gradients is not None:
            body["output_gradients"] = _cotangent(output_gradients, isinstance(tgt, list))
        return body

    _, answer = yield from _query(url, fn, args, kwargs, "gradient", extra)
    return GradientResult(_arrays(answer["value"]), _arrays(answer["gradients"]))


def _cotangent(value: Any, several: bool) -> Any:
    if several:
        return {k: np.asarray(v).tolist() for k, v in value.items()}
    return np.asarray(value).tolist()


def jacobian_flow(url: str, fn: Function, args: tuple[Any, ...], kwargs: Mapping[str, Any],
                  sources: list[str] | None, target: str | None, unconnected: str
                  ) -> Flow[JacobianResult]:
    _, answer = yield from _query(url, fn, args, kwargs, "jacobian", lambda t: _options(
        target=_target(t, target), sources=sources, unconnected_gradients=unconnected))
    return JacobianResult(_codec.decode(answer["value"]), _arrays(answer["jacobian"]))


def hvp_flow(url: str, fn: Function, args: tuple[Any, ...], kwargs: Mapping[str, Any],
             vectors: Mapping[str, Any], sources: list[str] | None, target: str | None,
             include: list[str] | None) -> Flow[HvpResult]:
    _, answer = yield from _query(url, fn, args, kwargs, "hvp", lambda t: _options(
        target=_target(t, target), sources=sources, include=include,
        vectors=_typed(t, vectors, "vectors")))
    return HvpResult(_arrays(answer.get("value")), _arrays(answer.get("gradients")),
                     _arrays(answer.get("hvp")))


def hessian_flow(url: str, fn: Function, args: tuple[Any, ...], kwargs: Mapping[str, Any],
                 sources: list[str] | None, target: str | None) -> Flow[HessianResult]:
    _, answer = yield from _query(url, fn, args, kwargs, "hessian", lambda t: _options(
        target=_target(t, target), sources=sources))
    return HessianResult(_codec.decode(answer["value"]), _arrays(answer["gradients"]),
                         _arrays(answer["hessian"]))


def jvp_flow(url: str, fn: Function, args: tuple[Any, ...], kwargs: Mapping[str, Any],
             tangents: Mapping[str, Any]) -> Flow[JvpResult]:
    _, answer = yield from _query(url, fn, args, kwargs, "jvp", lambda t: {
        "tangents": _typed(t, tangents, "tangents"), "outputs": t.outputs})
    return JvpResult(_arrays(answer["values"]), _arrays(answer["tangents"]))


def minimize_flow(url: str, fn: Function, args: tuple[Any, ...], kwargs: Mapping[str, Any],
                  variables: list[str] | None, method: str, learning_rate: float | None,
                  options: Mapping[str, Any] | None, max_iterations: int, tolerance: float,
                  history: bool, target: str | None) -> Flow[MinimizeResult]:
    def extra(t: Traced) -> dict[str, Any]:
        floats = [n for n, d in t.dtypes.items() if d.startswith("float")]
        return _options(target=_target(t, target), variables=variables or floats,
                        method=method, learning_rate=learning_rate,
                        options=dict(options) if options else None,
                        max_iterations=max_iterations, tolerance=tolerance,
                        history=history or None)

    _, answer = yield from _query(url, fn, args, kwargs, "minimize", extra)
    norm = answer["gradient_norm"]
    return MinimizeResult(_codec.decode(answer["value"]), _arrays(answer["variables"]),
                          int(answer["iterations"]), bool(answer["converged"]),
                          answer.get("reason"), float(norm), answer.get("history"))
