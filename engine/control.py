"""Control flow on functions: `call`, `cond`, `fori_loop`, `while_loop` and `scan`.

Each op applies its functions with `apply`, the interpreter's read/write loop over a
function's equations, inside JAX's own control flow (`lax.cond`, `lax.fori_loop`, `lax.scan`,
`lax.while_loop`), so JAX differentiates them like any other op. Before tracing them, an op
checks its functions on its arguments' types (how many params, branches of equal types, a
carry the body keeps), so a bad function is a 422 that names the node and the function, not
a JAX error.

A `while_loop` with `max_iterations` is a `lax.scan` of that many steps whose update stops once
`cond` is false (reverse-differentiable, like TensorFlow's `maximum_iterations`); without it a
`lax.while_loop` bounded by `iteration_bound` (GRADTAPE_MAX_ITERATIONS), forward only, whose
reaching the bound is reported through `checkify` (see `engine.compute`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import checkify

from engine.errors import EngineError, InvalidGraph
from engine.interpreter import describe_failure, run_eqns, type_text
from engine.program import Eqn, Function, Program, functions_of

Aval = jax.ShapeDtypeStruct

DEFAULT_ITERATION_BOUND = 10_000
iteration_bound: ContextVar[int] = ContextVar("iteration_bound",
                                              default=DEFAULT_ITERATION_BOUND)
"""The most iterations of a `while_loop` without `max_iterations` (GRADTAPE_MAX_ITERATIONS)."""

BOUND_REACHED = "reached GRADTAPE_MAX_ITERATIONS"


_calls: ContextVar[dict[str, tuple[Function, dict[str, Aval]]] | None] = ContextVar(
    "function_calls", default=None)


def function_calls(eqn: Eqn, args: Sequence[Any]) -> list[tuple[Function, dict[str, Aval]]]:
    """The functions `eqn` applies on these (abstract) arguments, each with the type of every
    name inside it: what cost estimates read (a function's inner types depend on the call)."""
    seen: dict[str, tuple[Function, dict[str, Aval]]] = {}
    token = _calls.set(seen)
    try:
        jax.eval_shape(lambda *a: eqn.prim.bind(*a, **dict(eqn.attrs)), *args)
    finally:
        _calls.reset(token)
    return list(seen.values())


def _abstract(value: Any) -> Aval:
    if hasattr(value, "shape"):
        return Aval(value.shape, value.dtype)
    return Aval((), jnp.result_type(value))


def apply(fn: Function, args: Sequence[Any]) -> tuple[Any, ...]:
    """`fn`'s results on `args`: its equations run in order over an environment of its params.
    An equation that cannot take its arguments is an InvalidGraph naming the function and the
    node."""
    seen = _calls.get()
    if seen is None:
        return _apply(fn, args)
    token = _calls.set(None)  # the calls of this equation's functions, not of theirs
    try:
        env = _apply(fn, args, keep=True)
    finally:
        _calls.reset(token)
    seen[fn.key] = (fn, {n: _abstract(v) for n, v in env.items()})
    return tuple(env[o] for o in fn.program.outputs)


def _apply(fn: Function, args: Sequence[Any], keep: bool = False) -> Any:
    program = fn.program
    if len(args) != len(program.inputs):
        raise InvalidGraph(f"it has {len(program.inputs)} params "
                           f"({', '.join(program.inputs) or 'none'}) but is called with "
                           f"{len(args)} values", path=(("function", fn.name),))
    env = dict(zip(program.inputs, args, strict=True))
    for eqn in program.eqns:
        try:
            run_eqns((eqn,), env, program.literals)
        except EngineError as exc:
            raise exc.within(("function", fn.name), ("node", eqn.node)) from None
        except Exception as exc:  # JAX's shape and dtype errors, as the interpreter reports
            values = [env[a] if isinstance(a, str) else program.literals[a] for a in eqn.args]
            raise InvalidGraph(describe_failure(eqn, values, exc),
                               path=(("function", fn.name), ("node", eqn.node))) from None
    return env if keep else tuple(env[o] for o in program.outputs)


def result_types(fn: Function, args: Sequence[Any]) -> tuple[Aval, ...]:
    """The shapes and dtypes of `fn`'s results on `args` (values or abstract values)."""
    out = jax.eval_shape(lambda *a: apply(fn, a), *args)
    return tuple(out)


def _aval(value: Any) -> Aval:
    if isinstance(value, Aval):
        return value
    found = jax.eval_shape(lambda v: v, value)
    return Aval(found.shape, found.dtype, weak_type=getattr(found, "weak_type", False))


def _types_text(types: Sequence[Any]) -> str:
    return ", ".join(type_text(t) for t in types) or "nothing"


def _carry_types(fn: Function, carry: Sequence[Any], out: Sequence[Aval]) -> tuple[Aval, ...]:
    """The loop's carry types: the initial values', where the body returns them unchanged. A
    weakly typed initial value (a bare number) takes the type the body gives it, as in JAX."""
    init = [_aval(c) for c in carry]
    if len(out) != len(init):
        raise InvalidGraph(f"it returns {len(out)} values ({_types_text(out)}) but the carry "
                           f"has {len(init)} ({_types_text(init)}); a body returns the carry",
                           path=(("function", fn.name),))
    types = []
    for i, (a, b) in enumerate(zip(init, out, strict=True)):
        if a.shape != b.shape or (a.dtype != b.dtype and not a.weak_type):
            raise InvalidGraph(f"it changes carry {i} from {type_text(a)} to {type_text(b)}; a "
                               "body must keep every carry's shape and dtype (cast it, or "
                               "start from a value of the type it ends with)",
                               path=(("function", fn.name),))
        types.append(Aval(b.shape, b.dtype))
    return tuple(types)


def _cast(values: Sequence[Any], types: Sequence[Aval]) -> tuple[Any, ...]:
    """Values as (strongly typed) arrays of these types: what a loop carries."""
    return tuple(jax.lax.convert_element_type(v, t.dtype) for v, t in zip(values, types,
                                                                          strict=True))


def _predicate(fn: Function, carry: Sequence[Any]) -> None:
    out = result_types(fn, carry)
    if len(out) != 1 or out[0].shape != () or out[0].dtype != jnp.bool_:
        raise InvalidGraph(f"a loop condition returns one bool scalar; this one returns "
                           f"{_types_text(out)} (compare with less, greater, ... to make one)",
                           path=(("function", fn.name),))


# ----- the ops -----


def call(*args: Any, function: Function) -> tuple[Any, ...]:
    return apply(function, args)


def cond(pred: Any, *operands: Any, true: Function, false: Function) -> tuple[Any, ...]:
    if jnp.shape(pred) != () or jnp.result_type(pred) != jnp.bool_:
        raise ValueError(f"the predicate (the first argument) must be a bool scalar, got "
                         f"{type_text(_aval(pred))}; compare with less, equal, ... to make one")
    yes, no = result_types(true, operands), result_types(false, operands)
    if [(t.shape, t.dtype) for t in yes] != [(t.shape, t.dtype) for t in no]:
        raise InvalidGraph(f"the branches give different types: the true branch (function "
                           f"{true.name!r}) gives {_types_text(yes)}, the false branch "
                           f"(function {false.name!r}) gives {_types_text(no)}; both must give "
                           "the same shapes and dtypes")
    types = tuple(Aval(t.shape, t.dtype) for t in yes)
    return tuple(jax.lax.cond(pred, lambda *o: _cast(apply(true, o), types),
                              lambda *o: _cast(apply(false, o), types), *operands))


def fori_loop(*carry: Any, body: Function, lower: int, upper: int) -> tuple[Any, ...]:
    index = Aval((), jnp.int32)
    types = _carry_types(body, carry, result_types(body, (index, *carry)))
    return tuple(jax.lax.fori_loop(lower, upper, lambda i, c: _cast(apply(body, (i, *c)), types),
                                   _cast(carry, types)))


def while_loop(*carry: Any, cond: Function, body: Function,
               max_iterations: int | None = None) -> tuple[Any, ...]:
    types = _carry_types(body, carry, result_types(body, carry))
    _predicate(cond, _cast(carry, types))

    def keep_going(c: tuple[Any, ...]) -> Any:
        return apply(cond, c)[0]

    def step(c: tuple[Any, ...]) -> tuple[Any, ...]:
        return _cast(apply(body, c), types)

    init = _cast(carry, types)
    if max_iterations is not None:  # reverse-differentiable: a scan that stops updating
        def masked(state: tuple[Any, Any], _: Any) -> tuple[tuple[Any, Any], None]:
            done, c = state
            go = jnp.logical_and(jnp.logical_not(done), keep_going(c))
            return (jnp.logical_not(go), jax.lax.cond(go, step, lambda c: c, c)), None

        (_, final), _ = jax.lax.scan(masked, (jnp.bool_(False), init), None,
                                     length=max_iterations)
        return tuple(final)
    bound = iteration_bound.get()
    count, final = jax.lax.while_loop(
        lambda s: jnp.logical_and(s[0] < bound, keep_going(s[1])),
        lambda s: (s[0] + 1, step(s[1])), (jnp.int32(0), init))
    checkify.debug_check(jnp.logical_not(jnp.logical_and(count >= bound, keep_going(final))),
                         f"a while_loop without max_iterations {BOUND_REACHED} ({bound}) "
                         "iterations with its condition still true; give it max_iterations "
                         "(it then stops there) or make the condition turn false sooner")
    return tuple(final)


def scan(*args: Any, body: Function, num_carry: int, reverse: bool = False) -> tuple[Any, ...]:
    if num_carry > len(args):
        raise ValueError(f"num_carry is {num_carry}, but there are only {len(args)} arguments "
                         "(carry..., sequences...)")
    carry, xs = args[:num_carry], args[num_carry:]
    if not xs:
        raise ValueError("scan needs at least one sequence after the carry (use fori_loop for "
                         "a loop over the carry alone)")
    lengths = {jnp.shape(x)[0] if jnp.ndim(x) else None for x in xs}
    if None in lengths or len(lengths) != 1:
        raise ValueError(f"the sequences must share their first axis (the steps); their shapes "
                         f"are {', '.join(type_text(_aval(x)) for x in xs)}")
    slices = tuple(Aval(jnp.shape(x)[1:], jnp.result_type(x)) for x in xs)
    out = result_types(body, (*carry, *slices))
    types = _carry_types(body, carry, out[:num_carry])

    def step(c: tuple[Any, ...], x: tuple[Any, ...]) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
        results = apply(body, (*c, *x))
        return _cast(results[:num_carry], types), tuple(results[num_carry:])

    final, ys = jax.lax.scan(step, _cast(carry, types), tuple(xs), reverse=reverse)
    return (*final, *ys)


# ----- what cost estimates and checks read from the op table -----


def fori_trips(attrs: Mapping[str, Any], args: Sequence[Any]) -> int:
    return max(int(attrs["upper"]) - int(attrs["lower"]), 0)


def while_trips(attrs: Mapping[str, Any], args: Sequence[Any]) -> int:
    """Its bound: `max_iterations`, or GRADTAPE_MAX_ITERATIONS without it."""
    bound = attrs.get("max_iterations")
    return int(bound) if bound is not None else iteration_bound.get()


def scan_trips(attrs: Mapping[str, Any], args: Sequence[Any]) -> int:
    seqs = args[int(attrs["num_carry"]):]
    shape = getattr(seqs[0], "shape", ()) if seqs else ()
    return int(shape[0]) if shape else 0


def has_bound(attrs: Mapping[str, Any]) -> bool:
    """Whether a while_loop's bound is written in the graph (reverse mode needs one)."""
    return attrs.get("max_iterations") is not None


def unbounded_loops(program: Program, eqns: Sequence[Eqn] | None = None,
                    path: tuple[str, ...] = ()) -> list[str]:
    """The node paths ("loop", or "outer/body/loop" inside a function) of the loops among
    `eqns` (default: all), or inside their functions, that have no bound in the graph."""
    found: list[str] = []
    for eqn in program.eqns if eqns is None else eqns:
        bounded = getattr(eqn.prim, "bounded", None)
        if bounded is not None and not bounded(dict(eqn.attrs)):
            found.append("/".join((*path, eqn.node)))
        for fn in functions_of(eqn):
            found.extend(unbounded_loops(fn.program, None, (*path, eqn.node, fn.name)))
    return found


def checked(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` with the bound checks of its unbounded loops kept: it returns (error, result)."""
    return checkify.checkify(fn)  # type: ignore[no-any-return]


def raise_reached(error: Any, loops: Sequence[str]) -> None:
    """The 422 of a loop that reached GRADTAPE_MAX_ITERATIONS, if one did."""
    message = error.get()
    if message:
        text = str(message).strip().splitlines()[0].replace(" (`check` failed)", "")
        raise InvalidGraph(text, node=loops[0] if len(loops) == 1 else None)
