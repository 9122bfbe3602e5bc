"""Minimization of a scalar target over some of a graph's inputs, in one compiled loop.

The objective is the program as a pure function of the chosen inputs (the variables), the
other inputs held at their request values. L-BFGS (optax's `lbfgs`, with its zoom line search,
whose function and gradient values the loop reuses) is the default; the first-order methods
are optax's, by name, with optax's hyper-parameter names. The whole loop is one
`lax.while_loop` inside one compiled function, so a request costs one dispatch however many
iterations it runs.

The loop stops at the first of: the gradient's norm at or under `tolerance` ("converged"),
`max_iterations` iterations ("max_iterations"), or a step whose objective or gradient is not
finite ("non_finite"). That last step is not taken: the answer is the last point where both
were finite.

Learning rates, tolerances and the numeric hyper-parameters are arguments of the compiled
function, not constants in it: a new value reuses the compiled loop. Integer and boolean
options change the program, so they are part of its cache key. The loop has no eager form:
a loop over the compile budget is refused (TooLarge) rather than run op by op.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from engine.cache import CompileInfo
from engine.compute import Bound, Engine, _avals_key, check_inline, inline_limit
from engine.cost import human_bytes
from engine.errors import InvalidGraph, TooLarge, clip
from engine.program import Program
from engine.transforms import Query, targets_of

MAX_ITERATIONS = 10_000
"""The most iterations a request may ask for (its `max_iterations`)."""

DEFAULT_MAX_ITERATIONS = 100
DEFAULT_TOLERANCE = 1e-6

METHODS = ("lbfgs", "sgd", "adam", "adamw", "rmsprop", "adagrad")

DEFAULT_LEARNING_RATE = {"sgd": 0.01, "adam": 0.001, "adamw": 0.001, "rmsprop": 0.001,
                         "adagrad": 0.001}
"""The first-order methods' learning rates when a request gives none (Keras' defaults).
L-BFGS takes the line search's step as it is unless a learning rate scales it."""

LBFGS_MEMORY_SIZE = 10
LBFGS_LINESEARCH_STEPS = 20

REASONS = ("converged", "max_iterations", "non_finite")


@dataclass(frozen=True)
class Option:
    """A hyper-parameter a method takes in `options`: a float (an argument of the compiled
    loop), or an int or bool (part of the program), within [low, high]."""

    kind: str
    low: float = 0.0
    high: float = math.inf
    doc: str = ""

    def describe(self) -> str:
        if self.kind == "bool":
            return "a boolean"
        what = "an integer" if self.kind == "int" else "a number"
        high = "" if math.isinf(self.high) else f" and at most {self.high:g}"
        return f"{what} at least {self.low:g}{high}"


_UNIT = Option("float", 0.0, 1.0)
_NONNEGATIVE = Option("float")
_FLAG = Option("bool")
_ADAM = {"b1": _UNIT, "b2": _UNIT, "eps": _NONNEGATIVE, "eps_root": _NONNEGATIVE,
         "nesterov": _FLAG}

OPTIONS: dict[str, dict[str, Option]] = {
    "lbfgs": {"memory_size": Option("int", 1, 100), "max_linesearch_steps": Option("int", 1, 100)},
    "sgd": {"momentum": _UNIT, "nesterov": _FLAG},
    "adam": _ADAM,
    "adamw": {**_ADAM, "weight_decay": _NONNEGATIVE},
    "rmsprop": {"decay": _UNIT, "eps": _NONNEGATIVE, "initial_scale": _NONNEGATIVE,
                "eps_in_sqrt": _FLAG, "centered": _FLAG, "momentum": _UNIT, "nesterov": _FLAG,
                "bias_correction": _FLAG},
    "adagrad": {"initial_accumulator_value": _NONNEGATIVE, "eps": _NONNEGATIVE},
}
"""Each method's options, by optax's names."""


@dataclass(frozen=True)
class Plan:
    """What the compiled loop depends on beyond the program and the argument types."""

    method: str
    static: tuple[tuple[str, Any], ...]  # int and bool options
    numeric: tuple[str, ...]  # names of the float options given (values are arguments)
    scaled: bool  # lbfgs: a learning rate scales the line search's step
    history: int  # size of the history buffer; 0: no history

    @property
    def linesearch_steps(self) -> int:
        return int(dict(self.static).get("max_linesearch_steps", LBFGS_LINESEARCH_STEPS))

    @property
    def memory_size(self) -> int:
        return int(dict(self.static).get("memory_size", LBFGS_MEMORY_SIZE))


class _Carry(NamedTuple):
    params: tuple[Any, ...]
    state: Any
    value: Any
    grad: tuple[Any, ...]
    norm: Any
    count: Any
    bad: Any
    history: Any


def minimize(engine: Engine, bound: Bound, target: str, variables: Sequence[str], *,
             method: str = "lbfgs", learning_rate: float | None = None,
             options: Mapping[str, Any] | None = None,
             max_iterations: int = DEFAULT_MAX_ITERATIONS,
             tolerance: float = DEFAULT_TOLERANCE, history: bool = False,
             max_iterations_cap: int = MAX_ITERATIONS) -> dict[str, Any]:
    """Minimize the scalar `target` over `variables` (floating-point inputs), starting from
    their bound values. Returns value, variables, iterations, converged, reason,
    gradient_norm and (with `history`) the objective after each iteration."""
    names = _variables(bound, variables)
    _scalar_target(bound, target)
    plan, hyper = _plan(method, learning_rate, options or {}, max_iterations, tolerance,
                        history, max_iterations_cap)
    program = bound.program
    query = Query("gradient", (target,), names)
    cost = engine.cost(bound, query)
    engine.admit(bound, query, cost)
    flops = _check_loop(engine, bound, names, cost.flops, cost.peak_bytes, plan,
                        max_iterations)
    key = ("minimize", program.structure_key, query, plan, _avals_key(bound.inputs),
           program.literal_types)
    if inline_limit.get() is not None:
        check_inline(engine.cache.is_compiled(key), flops)
    start = tuple(bound.inputs[n] for n in names)
    info = CompileInfo("minimize", cost.eqns, 1)
    out = engine.cache.call(key, lambda: jax.jit(_build(program, query, plan)),
                            bound.inputs, program.literals, start, hyper,
                            int(max_iterations), float(tolerance), info=info, eager=False)
    params, value, norm, count, bad, converged, trace = out
    iterations = int(count)
    reason = "non_finite" if bool(bad) else "converged" if bool(converged) else "max_iterations"
    answer: dict[str, Any] = {
        "value": np.asarray(value),
        "variables": {n: np.asarray(p) for n, p in zip(names, params, strict=True)},
        "iterations": iterations,
        "converged": reason == "converged",
        "reason": reason,
        "gradient_norm": float(norm),
    }
    if history:
        answer["history"] = [float(v) for v in np.asarray(trace)[:iterations]]
    return answer


# ----- checks


def _variables(bound: Bound, variables: Sequence[str]) -> tuple[str, ...]:
    program = bound.program
    if not variables:
        raise InvalidGraph("variables is empty: name the inputs to minimize over",
                           loc=("variables",))
    seen: set[str] = set()
    for i, name in enumerate(variables):
        loc = ("variables", i)
        if not isinstance(name, str) or name not in program.inputs:
            what = "a node, not an input," if isinstance(name, str) and program.defines(name) \
                else "not an input"
            raise InvalidGraph(f"variable {clip(name)} is {what} of the graph; variables are "
                               f"inputs: {', '.join(program.inputs) or 'none'}", loc=loc)
        if not bound.is_float(name):
            raise InvalidGraph(f"variable {name!r} is {bound.types[name].dtype.name}; only "
                               "floating-point inputs can be minimized over", loc=loc)
        if name in seen:
            raise InvalidGraph(f"variable {name!r} is listed twice", loc=loc)
        seen.add(name)
    return tuple(variables)


def _scalar_target(bound: Bound, target: Any) -> None:
    loc = ("target",)
    if not isinstance(target, str) or not bound.program.defines(target):
        raise InvalidGraph(f"{clip(target)} is not an input or a node of the graph", loc=loc)
    if not bound.is_float(target):
        raise InvalidGraph(f"target {target!r} is {bound.types[target].dtype.name}; minimize "
                           "needs a floating-point target (cast it first)", loc=loc)
    if bound.shape(target) != ():
        raise InvalidGraph(f"minimize needs a scalar target, but {target!r} has shape "
                           f"{list(bound.shape(target))}; reduce it to a scalar (sum, mean)",
                           loc=loc)


def _finite_number(value: Any, loc: tuple[str | int, ...], what: str, low: float = 0.0,
                   high: float = math.inf, strict_low: bool = False) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and \
        math.isfinite(value) and (value > low if strict_low else value >= low) and value <= high
    if not ok:
        bound = f"greater than {low:g}" if strict_low else f"at least {low:g}"
        limit = "" if math.isinf(high) else f" and at most {high:g}"
        raise InvalidGraph(f"{what} must be a finite number {bound}{limit}, not {clip(value)}",
                           loc=loc)
    return float(value)


def _plan(method: str, learning_rate: float | None, options: Mapping[str, Any],
          max_iterations: int, tolerance: float, history: bool,
          cap: int) -> tuple[Plan, dict[str, float]]:
    if method not in OPTIONS:
        raise InvalidGraph(f"unknown method {clip(method)}; the methods: {', '.join(METHODS)}",
                           loc=("method",))
    if isinstance(max_iterations, bool) or not isinstance(max_iterations, int) or \
            not 0 <= max_iterations <= cap:
        raise InvalidGraph(f"max_iterations must be an integer from 0 to {cap} (the server's "
                           f"limit), not {clip(max_iterations)}", loc=("max_iterations",))
    _finite_number(tolerance, ("tolerance",), "tolerance")
    hyper: dict[str, float] = {}
    if learning_rate is not None:
        hyper["learning_rate"] = _finite_number(learning_rate, ("learning_rate",),
                                                "learning_rate", strict_low=True)
    elif method != "lbfgs":
        hyper["learning_rate"] = DEFAULT_LEARNING_RATE[method]
    known = OPTIONS[method]
    static: list[tuple[str, Any]] = []
    for name in sorted(options):
        value = options[name]
        loc = ("options", name)
        spec = known.get(name)
        if spec is None:
            raise InvalidGraph(f"{method} has no option {clip(name)}; its options: "
                               f"{', '.join(known)}", loc=loc)
        if spec.kind == "bool":
            if not isinstance(value, bool):
                raise InvalidGraph(f"option {name!r} of {method} is a boolean, not "
                                   f"{clip(value)}", loc=loc)
            static.append((name, value))
        elif spec.kind == "int":
            if isinstance(value, bool) or not isinstance(value, int) or \
                    not spec.low <= value <= spec.high:
                raise InvalidGraph(f"option {name!r} of {method} is {spec.describe()}, not "
                                   f"{clip(value)}", loc=loc)
            static.append((name, value))
        else:
            hyper[name] = _finite_number(value, loc, f"option {name!r} of {method}", spec.low,
                                         spec.high)
    size = 0
    if history:  # a power of two at least max_iterations: few distinct buffers, few compiles
        size = max(16, 1 << max(max_iterations - 1, 1).bit_length())
    numeric = tuple(sorted(n for n in hyper if n != "learning_rate"))
    plan = Plan(method, tuple(static), numeric,
                method == "lbfgs" and "learning_rate" in hyper, size)
    return plan, hyper


def _check_loop(engine: Engine, bound: Bound, names: tuple[str, ...], eval_flops: int,
                eval_bytes: int, plan: Plan, max_iterations: int) -> int:
    """TooLarge when the whole loop's estimated work or memory is over the limits. Returns
    the estimated work."""
    limits = engine.limits
    size = sum(math.prod(bound.shape(n)) for n in names)
    nbytes = sum(bound.inputs[n].nbytes for n in names)
    if plan.method == "lbfgs":
        evaluations = plan.linesearch_steps + 1  # the line search's, at most, per iteration
        copies = 2 * plan.memory_size + 6  # the memory's pairs, the iterate, gradient, ...
        per_step = 4 * plan.memory_size * size + 10 * size
    else:
        evaluations, copies, per_step = 1, 6, 10 * size
    flops = 1 + max_iterations * (evaluations * eval_flops + per_step) + eval_flops
    peak = eval_bytes + copies * nbytes + plan.history * 8
    if peak > limits.max_request_bytes:
        raise TooLarge(f"the minimization would need about {human_bytes(peak)} of memory at "
                       f"its peak (estimate: one gradient and {copies} copies of the "
                       f"variables, {human_bytes(nbytes)} each); the limit is "
                       f"{human_bytes(limits.max_request_bytes)} (GRADTAPE_MAX_REQUEST_BYTES)."
                       " Minimize over fewer or smaller variables"
                       + (", or use a smaller memory_size" if plan.method == "lbfgs" else ""))
    if flops > limits.max_request_flops:
        per = (f"up to {evaluations} gradient evaluations per iteration (the line search's)"
               if evaluations > 1 else "one gradient evaluation per iteration")
        raise TooLarge(f"the minimization would take up to about {flops:.3g} floating-point "
                       f"operations (estimate: {max_iterations} iterations, {per}, "
                       f"{eval_flops:.3g} each); the limit is {limits.max_request_flops:.3g} "
                       "(GRADTAPE_MAX_REQUEST_FLOPS). Ask for fewer iterations"
                       + (" or fewer line search steps" if evaluations > 1 else ""))
    return flops


# ----- the compiled loop


def _optimizer(plan: Plan, hyper: Mapping[str, Any]) -> optax.GradientTransformationExtraArgs:
    options: dict[str, Any] = {**dict(plan.static), **{n: hyper[n] for n in plan.numeric}}
    if plan.method == "lbfgs":
        linesearch = optax.scale_by_zoom_linesearch(
            max_linesearch_steps=plan.linesearch_steps, initial_guess_strategy="one")
        return optax.lbfgs(learning_rate=hyper["learning_rate"] if plan.scaled else None,
                           memory_size=plan.memory_size, linesearch=linesearch)
    make: Callable[..., optax.GradientTransformationExtraArgs] = getattr(optax, plan.method)
    return make(learning_rate=hyper["learning_rate"], **options)


def _finite(value: Any, grad: tuple[Any, ...]) -> Any:
    ok = jnp.isfinite(value)
    for g in grad:
        ok = ok & jnp.all(jnp.isfinite(g))
    return ok


def _like(new: Any, old: Any) -> Any:
    """`new` with the dtypes of `old` (a while loop's carry keeps its types)."""
    return jax.tree_util.tree_map(lambda n, o: jnp.asarray(n).astype(jnp.result_type(o)),
                                  new, old)


def _build(program: Program, query: Query, plan: Plan) -> Callable[..., Any]:
    f = targets_of(program, query)
    lbfgs = plan.method == "lbfgs"

    def fn(inputs: dict[str, Any], literals: tuple[Any, ...], start: tuple[Any, ...],
           hyper: dict[str, Any], max_iterations: Any, tolerance: Any) -> Any:
        def objective(params: tuple[Any, ...]) -> Any:
            return f(params, inputs, literals)[0]

        value_and_grad = jax.value_and_grad(objective)
        opt = _optimizer(plan, hyper)
        value, grad = value_and_grad(start)
        trace = jnp.zeros((plan.history,), value.dtype)
        init = _Carry(start, opt.init(start), value, grad, optax.tree.norm(grad),
                      jnp.zeros((), jnp.int32), ~_finite(value, grad), trace)

        def cond(c: _Carry) -> Any:
            return ~c.bad & (c.count < max_iterations) & (c.norm > tolerance)

        def body(c: _Carry) -> _Carry:
            if lbfgs:
                updates, state = opt.update(c.grad, c.state, c.params, value=c.value,
                                            grad=c.grad, value_fn=objective)
                params = optax.apply_updates(c.params, updates)
                value = optax.tree.get(state, "value")
                grad = optax.tree.get(state, "grad")
            else:
                updates, state = opt.update(c.grad, c.state, c.params)
                params = optax.apply_updates(c.params, updates)
                value, grad = value_and_grad(params)
            ok = _finite(value, grad)
            step = _like((params, state, value, grad), (c.params, c.state, c.value, c.grad))
            kept = jax.tree_util.tree_map(lambda n, o: jnp.where(ok, n, o), step,
                                          (c.params, c.state, c.value, c.grad))
            norm = jnp.where(ok, optax.tree.norm(kept[3]).astype(c.norm.dtype), c.norm)
            trace = c.history
            if plan.history:  # a step not taken is written past the end of what is answered
                trace = trace.at[c.count].set(kept[2].astype(trace.dtype))
            params, state, value, grad = kept
            return _Carry(params, state, value, grad, norm, c.count + ok.astype(jnp.int32), ~ok,
                          trace)

        out = jax.lax.while_loop(cond, body, init)
        converged = ~out.bad & ~(out.norm > tolerance)
        return out.params, out.value, out.norm, out.count, out.bad, converged, out.history

    return fn
