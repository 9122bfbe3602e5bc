"""A training step in one request: forward, gradient and an optimiser's update as one
compiled function of the variables, their optimiser state and the batch.

The nodes are planned as a session `run` is (names resolve to the session's tensors), but
nothing is recorded on the client's tapes and no node result is kept: only the variables'
new values and the optimiser's new state are. `repeat` runs several steps on the same inputs
inside the compiled function (`lax.scan`). Like any loop, it has no eager form: past the
compile budget it is refused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from engine.cache import CompileInfo
from engine.compute import Offload, _avals_key, check_inline, inline_limit
from engine.errors import InvalidGraph, TooLarge, clip
from engine.interpreter import run_eqns
from engine.program import Program
from engine.sessions.state import TENSOR_OVERHEAD, Handle, Session
from engine.transforms import Query

if TYPE_CHECKING:
    from engine.sessions.runtime import SessionRuntime

MAX_REPEAT = 10_000


def train_step(rt: SessionRuntime, s: Session, nodes: Sequence[Mapping[str, Any]],
               inputs: Mapping[str, Any], target: str, optimizer: str,
               fetch: Sequence[str] | None, repeat: int, max_nodes: int) -> dict[str, Any]:
    """Bind `inputs`, then run `nodes` and update the optimiser's variables `repeat` times."""
    from engine.sessions.runtime import _RunPlan

    if inputs and inline_limit.get() is not None:
        raise Offload  # a batch to decode: a worker thread, before anything changes
    opt = rt.optimizer_named(s, optimizer, ("optimizer",))
    if not 1 <= repeat <= MAX_REPEAT:
        raise InvalidGraph(f"repeat must be between 1 and {MAX_REPEAT}", loc=("repeat",))
    if not nodes:
        raise InvalidGraph("nodes is empty: give the nodes of the forward pass",
                           loc=("nodes",))
    if len(nodes) > max_nodes:
        raise TooLarge(f"{len(nodes)} nodes; the limit is {max_nodes} (GRADTAPE_MAX_NODES)",
                       loc=("nodes",))
    for name, raw in inputs.items():  # a batch stays bound, as a PUT would bind it
        rt.put_tensor(s, name, raw)
    plan = _RunPlan(s, rt.engine.limits)
    for i, node in enumerate(nodes):
        plan.add(node, i)
        if plan.steps[-1].assigns is not None:
            raise InvalidGraph("a training step updates its variables with the optimizer; "
                               "assign ops are not allowed in it", node=plan.steps[-1].label,
                               loc=("nodes", i, "op"))
    local = {name: out for step in plan.steps for name, out in zip(step.ids, step.outs,
                                                                   strict=True)}
    if target not in local:
        raise InvalidGraph(f"target {clip(target)} is not a node of this step",
                           loc=("target",))
    wanted = list(fetch or ())
    for i, name in enumerate(wanted):
        if name not in local:
            raise InvalidGraph(f"fetch names {clip(name)}, which is not a node of this step "
                               "(node results are not kept in the session)", loc=("fetch", i))
    program = plan.program()
    values = plan.input_values()
    bound = rt.engine.bind_values(program, values)
    loss = local[target]
    if bound.types[loss].shape != () or bound.types[loss].dtype.kind != "f":
        raise InvalidGraph(f"target {clip(target)} must be a floating-point scalar (reduce it "
                           "with sum or mean)", loc=("target",))
    # the optimiser's variables this step reads, by program input
    variables: list[tuple[Handle, str]] = []
    for handle in opt.variables:
        if handle in s.variables:
            read = plan._local_of_tid.get(s.variables[handle].current)
            if read is not None:
                variables.append((handle, read))
    connected = program.connected((loss,), [n for _, n in variables], bound.is_float)
    variables = [(h, n) for h, n in variables if n in connected]
    if not variables:
        raise InvalidGraph(f"the target does not depend on any variable of optimizer "
                           f"{optimizer!r} ({', '.join(opt.labels)})", loc=("target",))
    rules = [rt._rule(s, opt.options, opt.method, opt.learning_rate, h)
             for h, _ in variables]
    leaves = tuple(tuple(s.values[t] for t in opt.state[h]) for h, _ in variables)
    query = Query("step", (loss, *(local[f] for f in wanted)), tuple(n for _, n in variables))
    gradient = Query("gradient", (loss,), query.sources)
    cost = rt.engine.cost(bound, gradient)
    rt.engine.admit(bound, gradient, cost)
    if cost.flops * repeat > rt.engine.limits.max_request_flops:
        raise TooLarge(f"{repeat} steps would take about {cost.flops * repeat:.3g} "
                       f"floating-point operations (estimate); the limit is "
                       f"{rt.engine.limits.max_request_flops:.3g} (GRADTAPE_MAX_REQUEST_FLOPS):"
                       " ask for fewer repeats per request", loc=("repeat",))
    rt.byte_budget(s, sum(s.values[s.variables[h].current].nbytes + TENSOR_OVERHEAD +
                          sum(leaf.nbytes + TENSOR_OVERHEAD for leaf in ls)
                          for (h, _), ls in zip(variables, leaves, strict=True)))
    key = (program.structure_key, "step", query, repeat, opt.method, opt.learning_rate,
           opt.options, _avals_key(values), tuple(_avals_key(ls) for ls in leaves),
           program.literal_types)
    if inline_limit.get() is not None:
        check_inline(rt.engine.cache.is_compiled(key), cost.flops * repeat)
    names = {n for _, n in variables}
    others = {n: v for n, v in values.items() if n not in names}
    start = tuple(values[n] for _, n in variables)
    info = CompileInfo("step", cost.eqns, 1)
    losses, fetched, new_values, new_leaves = rt.engine.cache.call(
        key, lambda: jax.jit(_build(program, query, [pure for _, _, pure in rules], repeat)),
        start, others, program.literals, leaves, info=info, eager=False)
    for (handle, _), value, state in zip(variables, new_values, new_leaves, strict=True):
        var = s.variables[handle]
        var.current = rt._store(s, np.asarray(value))
        s.version_of[var.current] = handle
        opt.state[handle] = tuple(rt._store(s, np.asarray(leaf)) for leaf in state)
    opt.step += repeat
    rt._collect(s)
    answer: dict[str, Any] = {"values": dict(zip(wanted, (np.asarray(v) for v in fetched),
                                                 strict=True)),
                              "step": opt.step}
    if repeat > 1:
        answer["losses"] = [float(x) for x in np.asarray(losses)]
    return answer


def _build(program: Program, query: Query, updates: list[Any], repeat: int) -> Any:
    loss, *fetched = query.targets
    names = query.sources
    eqns = program.needed(query.targets)

    def forward(vs: tuple[Any, ...], others: dict[str, Any], literals: tuple[Any, ...]
                ) -> tuple[Any, tuple[Any, ...]]:
        env = {**others, **dict(zip(names, vs, strict=True))}
        run_eqns(eqns, env, literals)
        return env[loss], tuple(env[f] for f in fetched)

    grad = jax.value_and_grad(forward, has_aux=True)

    def one(carry: tuple[Any, Any], others: dict[str, Any], literals: tuple[Any, ...]
            ) -> tuple[tuple[Any, Any], tuple[Any, tuple[Any, ...]]]:
        vs, leaves = carry
        (value, out), grads = grad(vs, others, literals)
        stepped = [update(v, g, *ls) for update, v, g, ls in zip(updates, vs, grads, leaves,
                                                                 strict=True)]
        return ((tuple(v for v, _ in stepped), tuple(tuple(ls) for _, ls in stepped)),
                (value, out))

    def fn(vs: tuple[Any, ...], others: dict[str, Any], literals: tuple[Any, ...],
           leaves: tuple[tuple[Any, ...], ...]) -> Any:
        if repeat == 1:
            (vs2, leaves2), (value, out) = one((vs, leaves), others, literals)
            return value[None], out, vs2, leaves2
        (vs2, leaves2), (values, outs) = jax.lax.scan(
            lambda c, _: one(c, others, literals), (vs, leaves), None, length=repeat)
        return values, tuple(o[-1] for o in outs), vs2, leaves2

    return fn
