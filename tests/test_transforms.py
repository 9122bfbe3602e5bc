"""The engine's transforms checked against JAX itself.

Random graphs of smooth ops are built twice from one node list: as a serialized graph for the
engine, and as a plain `jax.numpy` function (the oracle) that never touches the engine's
interpreter or op table. Every query (evaluate, gradient, jacobian, hvp, hessian, jvp) is then
compared with `jax.grad`, `jax.jacfwd`/`jax.jacrev`, `jax.hessian`, `jax.jvp` and `jax.vjp` of
the oracle. A first query runs eagerly; for a few graphs each query is asked again with new
input values, so the compiled code is checked too. Then the TensorFlow-style semantics (lists of
targets, output_gradients, unconnected and integer sources, forward vs reverse Jacobians), the
compile cache's policy, and weak typing of literals.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from engine.cache import CompileCache
from engine.compute import Bound, Engine
from engine.graph import parse_graph
from engine.program import Program
from engine.transforms import Query

# ----- helpers -----


def parse(graph: Mapping[str, Any]) -> Program:
    return parse_graph(graph, max_nodes=1000, max_elements=1_000_000)


def tensor(x: Any) -> dict[str, Any]:
    """A wire tensor object holding exactly x's values and dtype."""
    x = np.asarray(x)
    return {"dtype": x.dtype.name, "shape": list(x.shape), "data": x.tolist()}


def bind(engine: Engine, program: Program, values: Mapping[str, Any]) -> Bound:
    return engine.bind(program, {k: tensor(v) for k, v in values.items()})


def tol(dtype: Any) -> float:
    return 1e-10 if np.dtype(dtype) == np.float64 else 1e-5


def close(actual: Any, expected: Any, rtol: float, what: str = "") -> None:
    """Same shape, same dtype, equal up to rtol (relative to the larger of 1 and the biggest
    expected magnitude, so entries that cancel to ~0 are not held to a relative bound)."""
    assert actual is not None, f"{what}: got None"
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    scale = max(1.0, float(np.max(np.abs(expected)))) if expected.size else 1.0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale, err_msg=what)


def query_modes(engine: Engine, kind: str) -> list[str]:
    """The modes of the cached queries of one kind (the cache key holds the Query)."""
    return [part.mode for key in engine.cache._entries for part in key
            if isinstance(part, Query) and part.kind == kind]


# ----- the random-graph generator and its oracle -----

def _sigmoid(x: Any) -> Any:
    return 1.0 / (1.0 + jnp.exp(-x))


def _softplus(x: Any) -> Any:
    return jnp.logaddexp(x, 0.0)


# The oracle's own meaning of each op name, written with jax.numpy.
ORACLE: dict[str, Callable[..., Any]] = {
    "sin": jnp.sin,
    "cos": jnp.cos,
    "tanh": jnp.tanh,
    "exp": jnp.exp,
    "sigmoid": _sigmoid,
    "softplus": _softplus,
    "square": lambda x: x * x,
    "log1p": jnp.log1p,
    "sum": jnp.sum,
    "mean": jnp.mean,
    "add": lambda x, y: x + y,
    "subtract": lambda x, y: x - y,
    "multiply": lambda x, y: x * y,
    "matmul": jnp.matmul,
}
BOUNDED = ("sin", "cos", "tanh", "sigmoid")  # results in [-1, 1]
MAX_BOUND = 50.0  # keep every value small, so no op overflows or saturates


@dataclass(frozen=True)
class Lit:
    """A constant argument: a Python float, or a (3, 3) matrix sent as a tensor object."""

    value: Any


@dataclass
class RandomGraph:
    dtype: str
    inputs: dict[str, tuple[int, ...]]
    nodes: list[tuple[str, str, tuple[Any, ...]]] = field(default_factory=list)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def out(self) -> str:
        return self.nodes[-1][0]

    @property
    def node_ids(self) -> list[str]:
        return [n for n, _, _ in self.nodes]

    def graph(self) -> dict[str, Any]:
        nodes = []
        for ident, op, args in self.nodes:
            wire = []
            for a in args:
                if isinstance(a, str):
                    wire.append(a)
                elif isinstance(a.value, float):
                    wire.append(a.value)
                else:
                    wire.append(tensor(np.asarray(a.value, dtype=self.dtype)))
            nodes.append({"id": ident, "op": op, "args": wire})
        inputs = {n: {"dtype": self.dtype, "shape": list(s)} for n, s in self.inputs.items()}
        return {"inputs": inputs, "nodes": nodes, "outputs": [self.out]}

    def env(self, values: Mapping[str, Any],
            override: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Every name's value, computed with jax.numpy; `override` replaces named nodes'
        results (the rest of the graph then reads the replacement)."""
        env = dict(values)
        for ident, op, args in self.nodes:
            vals = [env[a] if isinstance(a, str) else
                    (a.value if isinstance(a.value, float) else jnp.asarray(a.value, self.dtype))
                    for a in args]
            env[ident] = ORACLE[op](*vals)
            if override is not None and ident in override:
                env[ident] = override[ident]
        return env

    def fn(self, *names: str) -> Callable[..., Any]:
        """f(*inputs) -> the named values (one value when one name)."""
        order = list(self.inputs)

        def f(*xs: Any) -> Any:
            env = self.env(dict(zip(order, xs, strict=True)))
            out = tuple(env[n] for n in names)
            return out[0] if len(out) == 1 else out

        return f

    def draw_inputs(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {n: rng.uniform(-1.0, 1.0, s).astype(self.dtype) for n, s in self.inputs.items()}


def random_graph(seed: int, dtype: str = "float64") -> RandomGraph:
    """5-15 smooth nodes over inputs a, b of shape (3,), ending in a scalar sum that every
    node feeds."""
    rng = np.random.default_rng(seed)
    g = RandomGraph(dtype, {"a": (3,), "b": (3,)})
    pool: list[tuple[str, tuple[int, ...], float]] = [("a", (3,), 1.0), ("b", (3,), 1.0)]
    used: set[str] = set()

    def emit(op: str, *args: Any, shape: tuple[int, ...], bound: float) -> str:
        ident = f"n{len(g.nodes)}"
        g.nodes.append((ident, op, args))
        g.shapes[ident] = shape
        used.update(a for a in args if isinstance(a, str))
        pool.append((ident, shape, bound))
        return ident

    def pick() -> tuple[str, tuple[int, ...], float]:
        weights = np.arange(1, len(pool) + 1, dtype=float) ** 2  # favour recent: deep graphs
        return pool[rng.choice(len(pool), p=weights / weights.sum())]

    body = int(rng.integers(5, 13))
    emit(str(rng.choice(BOUNDED)), "a", shape=(3,), bound=1.0)  # one vector intermediate
    while len(g.nodes) < body:
        name, shape, bound = pick()
        kind = rng.choice(["unary", "exp_tanh", "log1p_square", "binary", "literal", "matmul",
                           "reduce"])
        if kind == "unary":
            op = str(rng.choice([*BOUNDED, "softplus", "square"]))
            new = {"softplus": bound + 1.0, "square": bound * bound}.get(op, 1.0)
            if new <= MAX_BOUND:
                emit(op, name, shape=shape, bound=new)
        elif kind == "exp_tanh":
            t = emit("tanh", name, shape=shape, bound=1.0)
            emit("exp", t, shape=shape, bound=float(np.e))
        elif kind == "log1p_square":
            s = emit("square", name, shape=shape, bound=bound * bound)
            emit("log1p", s, shape=shape, bound=float(np.log1p(bound * bound)))
        elif kind == "binary":
            other, other_shape, other_bound = pick()
            op = str(rng.choice(["add", "subtract", "multiply"]))
            new = other_bound * bound if op == "multiply" else other_bound + bound
            if new <= MAX_BOUND:
                out_shape = (3,) if (3,) in (shape, other_shape) else ()
                emit(op, name, other, shape=out_shape, bound=new)
        elif kind == "literal":
            c = float(np.round(rng.uniform(-2.0, 2.0), 3))
            op = str(rng.choice(["add", "multiply"]))
            args = (name, Lit(c)) if rng.random() < 0.5 else (Lit(c), name)
            new = bound + abs(c) if op == "add" else bound * abs(c)
            emit(op, *args, shape=shape, bound=new)
        elif kind == "matmul" and shape == (3,):
            if rng.random() < 0.5:
                m = np.round(rng.uniform(-0.5, 0.5, (3, 3)), 3)
                emit("matmul", Lit(m), name, shape=(3,), bound=1.5 * bound)
            else:
                other, other_shape, other_bound = pick()
                if other_shape == (3,) and 3 * bound * other_bound <= MAX_BOUND:
                    emit("matmul", name, other, shape=(), bound=3 * bound * other_bound)
        elif kind == "reduce" and shape == (3,):
            op = str(rng.choice(["sum", "mean"]))
            emit(op, name, shape=(), bound=3 * bound if op == "sum" else bound)
    dangling = [n for n, _, _ in pool if n not in used]  # make every value reach the output
    acc = dangling[0]
    for other in dangling[1:]:
        shape = (3,) if (3,) in (g.shapes.get(acc, (3,)), g.shapes.get(other, (3,))) else ()
        acc = emit("add", acc, other, shape=shape, bound=0.0)
    emit("sum", acc, shape=(), bound=0.0)
    return g


SEEDS = list(range(6))
CASES = [*[(s, "float64") for s in SEEDS], (100, "float32")]
COMPILED = {(0, "float64")}  # also asked a second time, compiled (slow)


@dataclass
class Case:
    g: RandomGraph
    program: Program
    rng: np.random.Generator
    calls: int  # 1: the eager first run only; 2: then the compiled code, on new values


@pytest.fixture(params=CASES, ids=[f"{d}-seed{s}" for s, d in CASES])
def case(request: pytest.FixtureRequest) -> Case:
    seed, dtype = request.param
    g = random_graph(seed, dtype)
    assert 5 <= len(g.nodes) <= 20
    return Case(g, parse(g.graph()), np.random.default_rng(seed + 1000),
                2 if request.param in COMPILED else 1)


def depends_on(g: RandomGraph, name: str) -> set[str]:
    """The inputs that `name` reads, following the node list."""
    deps: dict[str, set[str]] = {n: {n} for n in g.inputs}
    for ident, _, args in g.nodes:
        deps[ident] = set().union(*(deps[a] for a in args if isinstance(a, str)))
    return deps[name]


def vector_node(g: RandomGraph) -> str:
    """A vector intermediate (a Jacobian target): the latest one that reads both inputs, or
    else the latest one."""
    vectors = [n for n in g.node_ids if g.shapes[n] == (3,)]
    both = [n for n in vectors if depends_on(g, n) == {"a", "b"}]
    return (both or vectors)[-1]


def test_generator_is_seeded_and_varied() -> None:
    assert random_graph(3).graph() == random_graph(3).graph()
    graphs = {parse(random_graph(s).graph()).structure_key for s in SEEDS}
    assert len(graphs) == len(SEEDS)
    ops = {op for s in SEEDS for _, op, _ in random_graph(s).nodes}
    assert {"matmul", "exp", "log1p", "multiply", "sum"} <= ops


# ----- each transform vs JAX, on random graphs (eager; COMPILED cases then compiled) -----

def test_evaluate_every_node(case: Case) -> None:
    g, program, rng = case.g, case.program, case.rng
    engine = Engine()
    for _ in range(case.calls):
        values = g.draw_inputs(rng)
        got = engine.evaluate(bind(engine, program, values), outputs=g.node_ids)
        want = g.env({k: jnp.asarray(v) for k, v in values.items()})
        for n in g.node_ids:
            close(got[n], want[n], tol(g.dtype), n)


def test_gradient(case: Case) -> None:
    g, program, rng = case.g, case.program, case.rng
    engine = Engine()
    for _ in range(case.calls):
        values = g.draw_inputs(rng)
        got = engine.gradient(bind(engine, program, values), g.out, ["a", "b"])
        value, grads = jax.value_and_grad(g.fn(g.out), argnums=(0, 1))(values["a"], values["b"])
        close(got["value"], value, tol(g.dtype), "value")
        close(got["gradients"]["a"], grads[0], tol(g.dtype), "d/da")
        close(got["gradients"]["b"], grads[1], tol(g.dtype), "d/db")
    assert engine.cache.stats.compiles == case.calls - 1


def test_jacobian_of_vector_intermediate(case: Case) -> None:
    g, program, rng = case.g, case.program, case.rng
    engine = Engine()
    target = vector_node(g)
    for _ in range(case.calls):
        values = g.draw_inputs(rng)
        got = engine.jacobian(bind(engine, program, values), target, ["a", "b"],
                              unconnected="zero")
        args = (values["a"], values["b"])
        close(got["value"], g.fn(target)(*args), tol(g.dtype), "value")
        for jac in (jax.jacfwd, jax.jacrev):
            want = jac(g.fn(target), argnums=(0, 1))(*args)
            close(got["jacobian"]["a"], want[0], tol(g.dtype), f"{jac.__name__} d/da")
            close(got["jacobian"]["b"], want[1], tol(g.dtype), f"{jac.__name__} d/db")


def test_hessian(case: Case) -> None:
    g, program, rng = case.g, case.program, case.rng
    engine = Engine()
    for _ in range(case.calls):
        values = g.draw_inputs(rng)
        got = engine.hessian(bind(engine, program, values), g.out, ["a", "b"])
        args = (values["a"], values["b"])
        want = jax.hessian(g.fn(g.out), argnums=(0, 1))(*args)
        grads = jax.grad(g.fn(g.out), argnums=(0, 1))(*args)
        close(got["value"], g.fn(g.out)(*args), tol(g.dtype), "value")
        for i, a in enumerate("ab"):
            close(got["gradients"][a], grads[i], tol(g.dtype), f"d/d{a}")
            for j, b in enumerate("ab"):
                close(got["hessian"][a][b], want[i][j], tol(g.dtype), f"d2/d{a}d{b}")


def test_hvp(case: Case) -> None:
    g, program, rng = case.g, case.program, case.rng
    engine = Engine()
    for _ in range(case.calls):
        values = g.draw_inputs(rng)
        vectors = g.draw_inputs(rng)
        got = engine.hvp(bind(engine, program, values), g.out, ["a", "b"],
                         {k: tensor(v) for k, v in vectors.items()})
        grads, hvp = jax.jvp(jax.grad(g.fn(g.out), argnums=(0, 1)),
                             (values["a"], values["b"]), (vectors["a"], vectors["b"]))
        for i, a in enumerate("ab"):
            close(got["gradients"][a], grads[i], tol(g.dtype), f"d/d{a}")
            close(got["hvp"][a], hvp[i], tol(g.dtype), f"hvp {a}")


def test_jvp(case: Case) -> None:
    g, program, rng = case.g, case.program, case.rng
    engine = Engine()
    outs = [g.out, vector_node(g)]
    for _ in range(case.calls):
        values = g.draw_inputs(rng)
        tangents = g.draw_inputs(rng)
        got = engine.jvp(bind(engine, program, values),
                         {k: tensor(v) for k, v in tangents.items()}, outputs=outs)
        primals, touts = jax.jvp(g.fn(*outs), (values["a"], values["b"]),
                                 (tangents["a"], tangents["b"]))
        for n, p, t in zip(outs, primals, touts, strict=True):
            close(got["values"][n], p, tol(g.dtype), f"value {n}")
            close(got["tangents"][n], t, tol(g.dtype), f"tangent {n}")


def test_gradient_wrt_intermediate(case: Case) -> None:
    """Source = a node id: the gradient of the rest of the graph, as a function of that node's
    value; the input's gradient alongside it is still the total derivative."""
    g, program, rng = case.g, case.program, case.rng
    engine = Engine()
    body = g.node_ids[:-1]
    mid = body[len(body) // 2]
    for _ in range(case.calls):
        values = g.draw_inputs(rng)
        inputs = {k: jnp.asarray(v) for k, v in values.items()}
        at = g.env(inputs)[mid]

        def rest(v: Any, inputs: dict[str, Any] = inputs) -> Any:
            return g.env(inputs, override={mid: v})[g.out]

        got = engine.gradient(bind(engine, program, values), g.out, [mid, "a"])
        close(got["gradients"][mid], jax.grad(rest)(at), tol(g.dtype), f"d/d{mid}")
        close(got["gradients"]["a"], jax.grad(g.fn(g.out))(values["a"], values["b"]),
              tol(g.dtype), "d/da")


# ----- the tutorial -----

TUTORIAL = {"inputs": {"x": {"dtype": "float32"}},
            "nodes": [{"id": "y", "op": "reduce_sum", "args": ["x"]},
                      {"id": "z", "op": "multiply", "args": ["y", "y"]}]}


def test_tutorial() -> None:
    engine = Engine()
    x = np.ones((2, 2), np.float32)
    bound = bind(engine, parse(TUTORIAL), {"x": x})
    eights = np.full((2, 2), 8.0, np.float32)
    close(engine.gradient(bound, "z", ["x"])["gradients"]["x"], eights, 0, "dz/dx")
    close(engine.gradient(bound, "z", ["y"])["gradients"]["y"], np.float32(8.0), 0, "dz/dy")
    hvp = engine.hvp(bound, "z", ["x"], {"x": tensor(x)})
    close(hvp["hvp"]["x"], eights, 0, "hvp")
    close(hvp["gradients"]["x"], eights, 0, "hvp gradient")
    hess = engine.hessian(bound, "z", ["x"])["hessian"]["x"]["x"]
    close(hess, np.full((2, 2, 2, 2), 2.0, np.float32), 0, "hessian")
    close(engine.evaluate(bound)["z"], np.float32(16.0), 0, "z")


# ----- TensorFlow-style semantics -----

def test_list_of_targets_is_gradient_of_their_total() -> None:
    g = random_graph(5)
    program, values = parse(g.graph()), g.draw_inputs(np.random.default_rng(0))
    vec, mid = vector_node(g), g.node_ids[len(g.nodes) // 2]
    engine = Engine()
    got = engine.gradient(bind(engine, program, values), [vec, mid, g.out], ["a", "b"])

    def total(a: Any, b: Any) -> Any:
        env = g.env({"a": a, "b": b})
        return jnp.sum(env[vec]) + jnp.sum(env[mid]) + env[g.out]

    want = jax.grad(total, argnums=(0, 1))(values["a"], values["b"])
    close(got["gradients"]["a"], want[0], 1e-10, "d/da")
    close(got["gradients"]["b"], want[1], 1e-10, "d/db")
    assert set(got["value"]) == {vec, mid, g.out}
    close(got["value"][vec], g.fn(vec)(values["a"], values["b"]), 1e-10, "value")


def test_output_gradients_is_a_vjp() -> None:
    g = random_graph(6)
    program, rng = parse(g.graph()), np.random.default_rng(1)
    vec = vector_node(g)
    assert depends_on(g, vec) == {"a", "b"}
    engine = Engine()
    for _ in range(2):  # eager, then compiled with new values and cotangents
        values = g.draw_inputs(rng)
        w, w_out = rng.normal(size=3), rng.normal()
        bound = bind(engine, program, values)
        args = (values["a"], values["b"])

        got = engine.gradient(bound, vec, ["a", "b"], output_gradients=tensor(w))
        _, pullback = jax.vjp(g.fn(vec), *args)
        want = pullback(jnp.asarray(w))
        close(got["gradients"]["a"], want[0], 1e-10, "vjp a")
        close(got["gradients"]["b"], want[1], 1e-10, "vjp b")

        got = engine.gradient(bound, [vec, g.out], ["a", "b"],
                              output_gradients={vec: tensor(w), g.out: tensor(np.float64(w_out))})
        _, pullback = jax.vjp(g.fn(vec, g.out), *args)
        want = pullback((jnp.asarray(w), jnp.asarray(w_out)))
        close(got["gradients"]["a"], want[0], 1e-10, "vjp a (two targets)")
        close(got["gradients"]["b"], want[1], 1e-10, "vjp b (two targets)")
    assert engine.cache.stats.compiles == 2


UNCONNECTED = {"inputs": {"x": {"dtype": "float64"}, "u": {"dtype": "float64"}},
               "nodes": [{"id": "s", "op": "sin", "args": ["x"]},
                         {"id": "y", "op": "sum", "args": ["s"]},
                         {"id": "v", "op": "cos", "args": ["u"]},
                         {"id": "frozen", "op": "stop_gradient", "args": ["x"]},
                         {"id": "w", "op": "sum", "args": ["frozen"]}]}


def test_unconnected_sources() -> None:
    engine = Engine()
    x, u = np.array([0.1, 0.2, 0.3]), np.array([1.0, 2.0])
    bound = bind(engine, parse(UNCONNECTED), {"x": x, "u": u})
    assert engine.gradient(bound, "y", ["x", "u"])["gradients"]["u"] is None
    assert engine.gradient(bound, "y", ["v"])["gradients"]["v"] is None  # a later node
    assert engine.gradient(bound, "w", ["x"])["gradients"]["x"] is None  # stop_gradient

    got = engine.gradient(bound, "y", ["x", "u"], unconnected="zero")["gradients"]
    close(got["x"], np.cos(x), 1e-12, "connected")
    close(got["u"], np.zeros(2), 0, "unconnected zero")

    jac = engine.jacobian(bound, "s", ["x", "u"])["jacobian"]
    close(jac["x"], np.diag(np.cos(x)), 1e-12, "jacobian")
    assert jac["u"] is None
    jac = engine.jacobian(bound, "s", ["x", "u"], unconnected="zero")["jacobian"]
    close(jac["u"], np.zeros((3, 2)), 0, "jacobian unconnected zero")

    hess = engine.hessian(bound, "y", ["x", "u"])["hessian"]
    close(hess["x"]["x"], np.diag(-np.sin(x)), 1e-12, "hessian")
    assert hess["x"]["u"] is None and hess["u"]["x"] is None and hess["u"]["u"] is None
    hess = engine.hessian(bound, "y", ["x", "u"], unconnected="zero")["hessian"]
    close(hess["x"]["u"], np.zeros((3, 2)), 0, "hessian block x,u")
    close(hess["u"]["x"], np.zeros((2, 3)), 0, "hessian block u,x")
    close(hess["u"]["u"], np.zeros((2, 2)), 0, "hessian block u,u")


INT_SOURCE = {"inputs": {"p": {"dtype": "float64"}, "i": {"dtype": "int64"}},
              "nodes": [{"id": "k", "op": "argmax", "args": ["p"]},
                        {"id": "e", "op": "take", "args": ["p", "i"]},
                        {"id": "f", "op": "take", "args": ["p", "k"]},
                        {"id": "z", "op": "multiply", "args": ["e", "f"]}]}


def test_integer_sources_give_none() -> None:
    engine = Engine()
    p = np.array([0.5, 3.0, -1.0, 2.0])
    bound = bind(engine, parse(INT_SOURCE), {"p": p, "i": np.int64(2)})
    for unconnected in ("none", "zero"):
        got = engine.gradient(bound, "z", ["p", "i", "k"], unconnected=unconnected)
        assert got["gradients"]["i"] is None
        assert got["gradients"]["k"] is None
        close(got["gradients"]["p"], np.array([0.0, -1.0, 3.0, 0.0]), 0, "d/dp")
    assert engine.gradient(bound, "z")["gradients"].keys() == {"p"}  # default: float inputs


def _jacobian_case(n_in: int, n_out: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(n_out, n_in))
    graph = {"inputs": {"x": {"dtype": "float64", "shape": [n_in]}},
             "nodes": [{"id": "s", "op": "sin", "args": ["x"]},
                       {"id": "h", "op": "matmul", "args": [tensor(w), "s"]},
                       {"id": "y", "op": "tanh", "args": ["h"]}]}
    x = rng.normal(size=n_in)

    def f(x: Any) -> Any:
        return jnp.tanh(jnp.asarray(w) @ jnp.sin(x))

    engine = Engine()
    got = engine.jacobian(bind(engine, parse(graph), {"x": x}), "y", ["x"])
    assert got["jacobian"]["x"].shape == (n_out, n_in)
    close(got["jacobian"]["x"], jax.jacfwd(f)(x), 1e-10, "vs jacfwd")
    close(got["jacobian"]["x"], jax.jacrev(f)(x), 1e-10, "vs jacrev")
    close(got["value"], f(x), 1e-10, "value")
    return query_modes(engine, "jacobian")


def test_jacobian_wide_uses_reverse_mode() -> None:
    assert _jacobian_case(n_in=9, n_out=2, seed=0) == ["rev"]


def test_jacobian_tall_uses_forward_mode() -> None:
    assert _jacobian_case(n_in=2, n_out=9, seed=1) == ["fwd"]


# ----- mixed precision: the dtype of a result must not depend on how it was computed -----

def _cast_then_tile(n_out: int) -> dict[str, Any]:
    """float64 x -> float32 sin(x), tiled n_out times: a float32 target of a float64 source."""
    return {"inputs": {"x": {"dtype": "float64", "shape": [2]}},
            "nodes": [{"id": "s", "op": "sin", "args": ["x"]},
                      {"id": "c", "op": "cast", "args": ["s"], "attrs": {"dtype": "float32"}},
                      {"id": "t", "op": "tile", "args": ["c"], "attrs": {"reps": [n_out]}}]}


@pytest.mark.parametrize("n_out", [1, 5], ids=["wide-rev", "tall-fwd"])
def test_jacobian_dtype_is_the_sources_in_both_modes(n_out: int) -> None:
    """The Jacobian of a float32 target w.r.t. a float64 source is float64 and unrounded
    whatever its shape: forward mode would carry the target's precision, so the engine keeps
    reverse mode for a narrower target even when the Jacobian is tall."""
    x = np.array([0.1, 0.7])

    def f(x: Any) -> Any:
        return jnp.tile(jnp.sin(x).astype(jnp.float32), n_out)

    engine = Engine()
    bound = bind(engine, parse(_cast_then_tile(n_out)), {"x": x})
    got = engine.jacobian(bound, "t", ["x"])
    assert query_modes(engine, "jacobian") == ["rev"]
    close(got["value"], f(x), 0, "value")
    grad = engine.gradient(bound, "t", ["x"])["gradients"]["x"]
    assert grad.dtype == np.float64
    close(got["jacobian"]["x"], jax.jacrev(f)(x), 1e-12, "jacobian (source dtype)")


def test_hessian_unconnected_zero_blocks_have_jax_dtypes() -> None:
    """BUG: with unconnected="zero", a structurally missing Hessian block [a][b] gets b's
    dtype, while every computed block (and jax.hessian) has a's dtype: d(grad_a)/db."""
    graph = {"inputs": {"x": {"dtype": "float64"}, "u": {"dtype": "float32"},
                        "w": {"dtype": "float32"}},
             "nodes": [{"id": "s", "op": "sin", "args": ["x"]},
                       {"id": "c", "op": "cos", "args": ["u"]},
                       {"id": "c64", "op": "cast", "args": ["c"], "attrs": {"dtype": "float64"}},
                       {"id": "m", "op": "multiply", "args": ["s", "c64"]},
                       {"id": "z", "op": "sum", "args": ["m"]}]}
    values = {"x": np.array([0.1, 0.2]), "u": np.array([0.3, 0.4], np.float32),
              "w": np.array([1.0], np.float32)}

    def f(x: Any, u: Any, w: Any) -> Any:
        return jnp.sum(jnp.sin(x) * jnp.cos(u).astype(jnp.float64))

    engine = Engine()
    got = engine.hessian(bind(engine, parse(graph), values), "z", ["x", "u", "w"],
                         unconnected="zero")["hessian"]
    want = jax.hessian(f, argnums=(0, 1, 2))(values["x"], values["u"], values["w"])
    for i, a in enumerate("xuw"):
        for j, b in enumerate("xuw"):
            close(got[a][b], want[i][j], 1e-6, f"block {a},{b}")


def test_jvp_of_an_integer_output_is_encodable() -> None:
    """BUG: the tangent of an integer output (argmax here) is JAX's float0 array, which the
    wire encoder cannot write: POST /v1/jvp with outputs ["k"] answers 500. It should be None
    or zeros of a wire dtype."""
    from engine.dtypes import DTYPES
    from engine.tensors import encode

    engine = Engine()
    p = np.array([0.5, 3.0, -1.0, 2.0])
    bound = bind(engine, parse(INT_SOURCE), {"p": p, "i": np.int64(2)})
    got = engine.jvp(bound, {"p": tensor(np.ones(4))}, outputs=["z", "k"])
    close(got["tangents"]["z"], np.float64(p[2] + p[1]), 0, "tangent z")
    close(got["values"]["k"], np.int64(1), 0, "value k")
    tangent = got["tangents"]["k"]
    if tangent is not None:
        tangent = np.asarray(tangent)
        assert tangent.dtype.name in DTYPES, f"tangent of an int output has dtype {tangent.dtype}"
        assert tangent.shape == () and not tangent.any()
        encode(tangent)


# ----- the compile cache -----

SIN_SCALED = {"inputs": {"x": {"dtype": "float64"}},
              "nodes": [{"id": "m", "op": "multiply", "args": ["x", 2.0]},
                        {"id": "s", "op": "sin", "args": ["m"]},
                        {"id": "z", "op": "sum", "args": ["s"]}]}


def with_constant(c: float) -> dict[str, Any]:
    graph = {**SIN_SCALED, "nodes": [dict(n) for n in SIN_SCALED["nodes"]]}
    graph["nodes"][0]["args"] = ["x", c]
    return graph


def test_cache_compiles_once_for_new_values() -> None:
    engine = Engine()
    program = parse(SIN_SCALED)
    rng = np.random.default_rng(0)
    for _ in range(5):
        x = rng.normal(size=4)
        got = engine.gradient(bind(engine, program, {"x": x}), "z", ["x"])
        close(got["gradients"]["x"], 2 * np.cos(2 * x), 1e-12, "d/dx")
    stats = engine.cache.stats
    assert (stats.compiles, stats.eager_runs, stats.misses, stats.hits) == (1, 1, 1, 4)

    for _ in range(2):  # a new shape is a new key: eager once, then compiled
        x = rng.normal(size=(2, 3))
        got = engine.gradient(bind(engine, program, {"x": x}), "z", ["x"])
        close(got["gradients"]["x"], 2 * np.cos(2 * x), 1e-12, "d/dx, new shape")
    assert (stats.compiles, stats.eager_runs) == (2, 2)


def test_cache_shares_code_across_constant_values() -> None:
    two, three = parse(with_constant(2.0)), parse(with_constant(3.0))
    assert two.structure_key == three.structure_key
    engine = Engine()
    x = np.array([0.3, -1.2, 2.0])
    for program, c in [(two, 2.0), (two, 2.0), (three, 3.0), (two, 2.0), (three, 3.0)]:
        got = engine.gradient(bind(engine, program, {"x": x}), "z", ["x"])
        close(got["gradients"]["x"], c * np.cos(c * x), 1e-12, f"d/dx with c={c}")
        close(got["value"], np.sum(np.sin(c * x)), 1e-12, f"value with c={c}")
    assert engine.cache.stats.compiles == 1
    assert engine.cache.stats.eager_runs == 1


def test_cache_shares_code_across_array_constants() -> None:
    def graph(m: np.ndarray) -> dict[str, Any]:
        return {"inputs": {"x": {"dtype": "float64"}},
                "nodes": [{"id": "h", "op": "matmul", "args": [tensor(m), "x"]},
                          {"id": "t", "op": "tanh", "args": ["h"]},
                          {"id": "z", "op": "sum", "args": ["t"]}]}

    rng = np.random.default_rng(3)
    mats = [rng.normal(size=(2, 3)) for _ in range(3)]
    engine = Engine()
    x = rng.normal(size=3)
    for m in [mats[0], *mats]:
        got = engine.gradient(bind(engine, parse(graph(m)), {"x": x}), "z", ["x"])
        want = jax.grad(lambda x, m=m: jnp.sum(jnp.tanh(m @ x)))(x)
        close(got["gradients"]["x"], want, 1e-12, "d/dx")
    assert (engine.cache.stats.compiles, engine.cache.stats.eager_runs) == (1, 1)


def test_cache_lru_evicts() -> None:
    engine = Engine(cache=CompileCache(capacity=2))
    x = np.array([0.1, 0.2])
    for op in ("sin", "cos", "tanh"):
        graph = {"nodes": [{"id": "s", "op": op, "args": ["x"]},
                           {"id": "z", "op": "sum", "args": ["s"]}]}
        got = engine.gradient(bind(engine, parse(graph), {"x": x}), "z", ["x"])
        want = jax.grad(lambda x, op=op: jnp.sum(getattr(jnp, op)(x)))(x)
        close(got["gradients"]["x"], want, 1e-12, op)
    assert engine.cache.stats.evictions >= 1
    assert len(engine.cache) == 2


def test_cache_jit_after_zero_compiles_first_call() -> None:
    engine = Engine(cache=CompileCache(jit_after=0))
    x = np.array([0.5, 1.5])
    got = engine.gradient(bind(engine, parse(SIN_SCALED), {"x": x}), "z", ["x"])
    close(got["gradients"]["x"], 2 * np.cos(2 * x), 1e-12, "d/dx")
    assert (engine.cache.stats.compiles, engine.cache.stats.eager_runs) == (1, 0)


# ----- weak typing of literals -----

@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_float_literal_keeps_input_dtype(dtype: str) -> None:
    graph = {"inputs": {"x": {"dtype": dtype}},
             "nodes": [{"id": "m", "op": "multiply", "args": ["x", 2.0]},
                       {"id": "i", "op": "multiply", "args": [3, "m"]},
                       {"id": "z", "op": "sum", "args": ["i"]}]}
    program = parse(graph)
    engine = Engine()
    for k in range(2):  # eager, then compiled
        x = np.array([1.0, -2.0, 0.25 + k], dtype)
        bound = bind(engine, program, {"x": x})
        assert bound.types["m"].dtype == np.dtype(dtype)
        got = engine.evaluate(bound, outputs=["m", "i", "z"])
        close(got["m"], (2 * x).astype(dtype), 0, "m")
        close(got["i"], (6 * x).astype(dtype), 0, "i")
        close(got["z"], np.asarray(6 * x.sum(), dtype), tol(dtype), "z")
        grad = engine.gradient(bound, "z", ["x"])["gradients"]["x"]
        close(grad, np.full(3, 6.0, dtype), 0, "d/dx")
    assert engine.cache.stats.compiles == 2


def test_take_with_integer_literal() -> None:
    engine = Engine()
    programs = {k: parse({"inputs": {"p": {"dtype": "float32"}},
                          "nodes": [{"id": "t", "op": "take", "args": ["p", k]},
                                    {"id": "z", "op": "square", "args": ["t"]}]})
                for k in (0, 2)}
    p = np.array([1.5, -2.0, 4.0], np.float32)
    for k in (0, 0, 2, 0):  # eager, compiled, and a different index on the same code
        bound = bind(engine, programs[k], {"p": p})
        close(engine.evaluate(bound, outputs=["t"])["t"], p[k], 0, "take")
        grad = engine.gradient(bound, "z", ["p"])["gradients"]["p"]
        close(grad, np.where(np.arange(3) == k, 2 * p[k], 0).astype(np.float32), 0, "d/dp")
    assert engine.cache.stats.compiles == 2  # evaluate and gradient, once each


def test_background_compile_keeps_calls_eager_until_it_is_ready() -> None:
    """With background compiles the second call does not wait for XLA: it runs eagerly while
    the compile goes on, and once that is done calls use the compiled code."""
    from engine.cache import CompileCache

    engine = Engine(cache=CompileCache(background=True))
    program = parse({"nodes": [{"id": "y", "op": "sin", "args": ["x"]},
                               {"id": "z", "op": "sum", "args": ["y"]}]})
    for step in range(3):
        x = np.linspace(0.0, 1.0, 5) + step
        got = engine.gradient(bind(engine, program, {"x": x}), "z", ["x"])["gradients"]["x"]
        close(got, np.cos(x), tol(np.float64))
    engine.cache.wait()
    eager = engine.cache.stats.eager_runs
    assert engine.cache.stats.compiles == 1 and eager >= 2  # the second call did not wait
    x = np.linspace(-1.0, 0.0, 5)
    got = engine.gradient(bind(engine, program, {"x": x}), "z", ["x"])["gradients"]["x"]
    close(got, np.cos(x), tol(np.float64))
    assert engine.cache.stats.compiles == 1 and engine.cache.stats.eager_runs == eager


# ----- the backward pass alone, from kept intermediates -----

CHAIN: dict[str, Any] = {
    "inputs": {"x": {"dtype": "float32", "shape": [4, 3]},
               "w1": {"dtype": "float32", "shape": [3, 5]},
               "w2": {"dtype": "float32", "shape": [5, 2]}},
    "nodes": [{"id": "h", "op": "matmul", "args": ["x", "w1"]},
              {"id": "a", "op": "tanh", "args": ["h"]},
              {"id": "o", "op": "matmul", "args": ["a", "w2"]},
              {"id": "loss", "op": "reduce_sum", "args": ["o"]}],
    "outputs": ["loss"],
}


def _chain() -> tuple[Engine, Bound, dict[str, np.ndarray]]:
    rng = np.random.default_rng(7)
    engine = Engine(cache=CompileCache())
    values = {"x": rng.normal(size=(4, 3)).astype(np.float32),
              "w1": rng.normal(size=(3, 5)).astype(np.float32),
              "w2": rng.normal(size=(5, 2)).astype(np.float32)}
    bound = engine.bind_values(parse(CHAIN), values)
    kept = engine.evaluate(bound, ["h", "a", "o", "loss"])
    return engine, bound, {k: np.asarray(v) for k, v in kept.items()}


@pytest.mark.parametrize("sources", [["w1", "w2"], ["x", "w2", "a"], ["h"]])
def test_backward_from_kept_intermediates_matches_jax(sources: list[str]) -> None:
    engine, bound, kept = _chain()
    got = engine.gradient(bound, "loss", sources, stored=kept)

    def f(x: Any, w1: Any, w2: Any, dh: Any, da: Any) -> Any:
        h = x @ w1 + dh
        a = jnp.tanh(h) + da
        return jnp.sum(a @ w2)

    inputs = dict(bound.inputs)
    grads = jax.grad(f, argnums=(0, 1, 2, 3, 4))(inputs["x"], inputs["w1"], inputs["w2"],
                                                 jnp.zeros((4, 5)), jnp.zeros((4, 5)))
    oracle = dict(zip(["x", "w1", "w2", "h", "a"], grads, strict=True))
    np.testing.assert_allclose(got["value"], kept["loss"], rtol=1e-6)
    for s in sources:
        np.testing.assert_allclose(got["gradients"][s], oracle[s], rtol=1e-5, atol=1e-6)
    # and the same as the gradient that runs the forward pass again
    again = engine.gradient(bound, "loss", sources)
    for s in sources:
        np.testing.assert_allclose(got["gradients"][s], again["gradients"][s], rtol=1e-6)


def test_backward_from_kept_intermediates_skips_the_forward_matmuls() -> None:
    from engine.transforms import BUILDERS

    _, bound, kept = _chain()
    program = bound.program
    sources = ("w1", "w2")

    def dots(query: Query, inputs: dict[str, Any]) -> int:
        fn = BUILDERS["gradient"](program, query)
        values = tuple(inputs[s] for s in sources)
        text = jax.jit(fn).lower(inputs, program.literals, values, None).compile().as_text()
        return text.count(" dot(")

    full = dots(Query("gradient", ("loss",), sources), dict(bound.inputs))
    backward = dots(Query("gradient", ("loss",), sources, stored=tuple(sorted(kept))),
                    {**bound.inputs, **kept})
    # forward: x@w1, a@w2; backward: dw2 = a^T g, da = g w2^T, dw1 = x^T dh
    assert (full, backward) == (5, 3)
