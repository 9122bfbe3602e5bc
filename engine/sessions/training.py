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
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from engine.cache import CompileInfo
from engine.compute import _avals_key, check_indices, check_inline, inline_limit
from engine.errors import InvalidGraph, TooLarge, clip
from engine.interpreter import run_eqns
from engine.program import Program
from engine.sessions.runtime import MAX_KEPT_EQNS, SessionRuntime, _RunPlan, digest, reread
from engine.sessions.state import TENSOR_OVERHEAD, Handle, Optimizer, Session
from engine.transforms import Query

MAX_REPEAT = 10_000


@dataclass(frozen=True)
class StepPlan:
    """What a step's nodes mean for a session, kept while the session's names keep meaning
    the same: the next step with the same body only looks its tensors up and calls the
    compiled function."""

    program: Program
    reads: tuple[tuple[str, Handle | None, str], ...]  # as _RunPlan.reads
    avals: tuple[Any, ...]  # of the program's inputs
    leaf_avals: tuple[Any, ...]  # of the optimiser's state
    variables: tuple[tuple[Handle, str], ...]  # what the optimiser updates, by input
    optimizer: tuple[Any, ...]  # the optimiser's rule and variables when planned
    wanted: tuple[str, ...]
    updates: tuple[Any, ...]  # a pure update per variable
    types: Mapping[str, Any]
    query: Query
    flops: int
    eqns: int
    key: tuple[Any, ...]  # of the compiled function
    reusable: bool  # False when the nodes hold array literals (new tensors each time)

    def inputs(self, s: Session, opt: Optimizer) -> tuple[dict[str, Any], Leaves] | None:
        """The program's input values and the optimiser's state in `s` now, or None when
        the plan no longer holds."""
        if _rule_of(opt) != self.optimizer:
            return None
        tids = reread(s, self.reads)
        if tids is None:
            return None
        values = {local: s.array(tid) for local, tid in tids.items()}
        if _avals_key(values) != self.avals:
            return None
        leaves = _leaves(s, opt, self.variables)
        return (values, leaves) if _avals_key_nested(leaves) == self.leaf_avals else None


def train_step(rt: SessionRuntime, s: Session, nodes: Sequence[Mapping[str, Any]],
               inputs: Mapping[str, Any], target: str, optimizer: str,
               fetch: Sequence[str] | None, repeat: int, max_nodes: int) -> dict[str, Any]:
    """Bind `inputs`, then run `nodes` and update the optimiser's variables `repeat` times."""
    opt = rt.optimizer_named(s, optimizer, ("optimizer",))
    if not 1 <= repeat <= MAX_REPEAT:
        raise InvalidGraph(f"repeat must be between 1 and {MAX_REPEAT}", loc=("repeat",))
    if not nodes:
        raise InvalidGraph("nodes is empty: give the nodes of the forward pass",
                           loc=("nodes",))
    if len(nodes) > max_nodes:
        raise TooLarge(f"{len(nodes)} nodes; the limit is {max_nodes} (GRADTAPE_MAX_NODES)",
                       loc=("nodes",))
    # a batch stays bound, as a PUT would bind it: the one change made before the compute
    # may find itself too heavy for the event loop (`Offload`), and run again in a worker
    # thread, it binds the same values
    for name, raw in inputs.items():
        rt.put_tensor(s, name, raw)
    body = digest(nodes)
    key = None if body is None else (s.session_id, body, target, optimizer,
                                     tuple(fetch or ()), repeat)
    plan = rt.step_plans.get(key) if key is not None else None
    found = plan.inputs(s, opt) if plan is not None else None
    if plan is None or found is None:
        plan, values = _plan(rt, s, nodes, target, opt, fetch, repeat)
        leaves = _leaves(s, opt, plan.variables)
        if key is not None and plan.reusable and len(plan.program.eqns) <= MAX_KEPT_EQNS:
            rt.step_plans.put(key, plan)
    else:
        values, leaves = found
        if plan.program.indexing:
            check_indices(plan.program, values, plan.types)
    rt.byte_budget(s, sum(s.values.raw(s.variables[h].current).nbytes + TENSOR_OVERHEAD +
                          sum(leaf.nbytes + TENSOR_OVERHEAD for leaf in ls)
                          for (h, _), ls in zip(plan.variables, leaves, strict=True)))
    if inline_limit.get() is not None:
        check_inline(rt.engine.cache.is_compiled(plan.key), plan.flops * repeat)
    names = {n for _, n in plan.variables}
    others = {n: v for n, v in values.items() if n not in names}
    start = tuple(values[n] for _, n in plan.variables)
    query = plan.query
    losses, fetched, new_values, new_leaves = rt.engine.cache.call(
        plan.key, lambda: jax.jit(_build(plan.program, query, list(plan.updates), repeat)),
        start, others, plan.program.literals, leaves, info=CompileInfo("step", plan.eqns, 1),
        eager=False)
    rt._updated(s, opt, [h for h, _ in plan.variables], new_values, new_leaves, steps=repeat,
                flops=plan.flops * repeat)
    answer: dict[str, Any] = {"values": dict(zip(plan.wanted, (np.asarray(v) for v in fetched),
                                                 strict=True)),
                              "step": opt.step}
    if repeat > 1:
        answer["losses"] = [float(x) for x in np.asarray(losses)]
    return answer


Leaves = tuple[tuple[Any, ...], ...]


def _leaves(s: Session, opt: Optimizer, variables: Sequence[tuple[Handle, str]]) -> Leaves:
    return tuple(tuple(s.array(t) for t in opt.state[h]) for h, _ in variables)


def _rule_of(opt: Optimizer) -> tuple[Any, ...]:
    return (opt.method, opt.learning_rate, opt.options, opt.variables)


def _avals_key_nested(leaves: Leaves) -> tuple[Any, ...]:
    return tuple(_avals_key(ls) for ls in leaves)


def _plan(rt: SessionRuntime, s: Session, nodes: Sequence[Mapping[str, Any]], target: str,
          opt: Optimizer, fetch: Sequence[str] | None, repeat: int
          ) -> tuple[StepPlan, dict[str, Any]]:
    """Plan the step's nodes against the session (every check a first step makes)."""
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
                           f"{opt.name!r} ({', '.join(opt.labels)})", loc=("target",))
    rules = [rt._rule(s, opt.options, opt.method, opt.learning_rate, h) for h, _ in variables]
    leaves = _leaves(s, opt, variables)
    query = Query("step", (loss, *(local[f] for f in wanted)), tuple(n for _, n in variables))
    gradient = Query("gradient", (loss,), query.sources)
    cost = rt.engine.cost(bound, gradient)
    rt.engine.admit(bound, gradient, cost)
    if cost.flops * repeat > rt.engine.limits.max_request_flops:
        raise TooLarge(f"{repeat} steps would take about {cost.flops * repeat:.3g} "
                       f"floating-point operations (estimate); the limit is "
                       f"{rt.engine.limits.max_request_flops:.3g} (GRADTAPE_MAX_REQUEST_FLOPS):"
                       " ask for fewer repeats per request", loc=("repeat",))
    key = (program.structure_key, "step", query, repeat, opt.method, opt.learning_rate,
           opt.options, _avals_key(values), _avals_key_nested(leaves),
           program.literal_types)
    return StepPlan(program, tuple(plan.reads), _avals_key(values), _avals_key_nested(leaves),
                    tuple(variables), _rule_of(opt), tuple(wanted),
                    tuple(pure for _, _, pure in rules), bound.types, query, cost.flops,
                    cost.eqns, key, reusable=not plan.new_constants), values


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
