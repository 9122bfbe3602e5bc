"""Session operations with TensorFlow's GradientTape semantics.

Ops run in a session are evaluated as one Program (compiled once their structure repeats) and,
node by node, recorded on every tape that is recording and tracks one of their inputs. A
gradient replays the tape's records as a pure function of the sources (`replay.build`). A
gradient whose results are saved while other tapes record is itself recorded on them as a
`RecordedGradient`, so it can be differentiated again.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
import orjson

from engine import optim
from engine.cache import Lru
from engine.compute import Apply, Bound, Engine, Limits, Offload, inline_limit
from engine.dtypes import is_float
from engine.errors import Conflict, InvalidGraph, NotFound, TooLarge, clip
from engine.graph import Functions, decode_literal, node_label, resolve_node
from engine.program import Eqn, Program
from engine.sessions import replay
from engine.sessions.state import (
    ARG_OVERHEAD,
    BIG,
    NAME_OVERHEAD,
    RECORD_OVERHEAD,
    TENSOR_OVERHEAD,
    VARIABLE_OVERHEAD,
    Binding,
    Const,
    GradientSpec,
    Handle,
    Optimizer,
    Record,
    Session,
    SourceSpec,
    Tape,
    TensorId,
    Variable,
    host,
)
from engine.tensors import aligned, decode
from engine.transforms import Query


@dataclass(frozen=True)
class Assign:
    """A variable update: not an op of the table, never recorded, and its result becomes the
    variable's new value (same shape and dtype)."""

    name: str
    update: Callable[[Any, Any], Any]
    differentiable: bool = False
    multi_output: bool = False

    def bind(self, var: Any, value: Any) -> Any:
        return jnp.broadcast_to(self.update(var, value), jnp.shape(var)).astype(var.dtype)


ASSIGN_OPS: dict[str, Assign] = {
    "assign": Assign("assign", lambda var, value: value),
    "assign_add": Assign("assign_add", jnp.add),
    "assign_sub": Assign("assign_sub", jnp.subtract),
}

ByteBudget = Callable[[Session, int], None]
# an optimiser's update on its own (`apply`), as estimated work per element of its variables:
# optax's rules are elementwise, Adam's the heaviest at about 15 operations an element
UPDATE_FLOPS_PER_ELEMENT = 32
# The last tape query this request prepared: when its work turns out too heavy for the event
# loop (`Offload`), the request runs again in a worker thread, under the session's lock and
# with nothing changed, and finds it here instead of replaying the tape again. A context
# variable: it goes with the request into the thread, and no other request sees it.
_prepared: ContextVar[tuple[Any, _TapeQuery] | None] = ContextVar("prepared", default=None)
T = TypeVar("T")


class SessionRuntime:
    """Carries out session requests on `Session` state; the caller holds the session's lock."""

    def __init__(self, engine: Engine, byte_budget: ByteBudget):
        self.engine = engine
        self.byte_budget = byte_budget
        # plans of repeated requests (training steps, runs), by session and body; plans of
        # deleted sessions stay until pushed out, so each kind is bounded in equations too
        self.step_plans: Lru[Any] = Lru(256, KEPT_PLAN_EQNS, _plan_eqns)
        self.run_plans: Lru[_KeptRun] = Lru(256, KEPT_PLAN_EQNS, _plan_eqns)

    # ----- tensors -----

    def put_tensor(self, s: Session, name: str, raw: Any, variable: bool = False,
                   trainable: bool = True, loc: tuple[str, ...] = ("value",)) -> np.ndarray:
        value = decode(raw, loc, max_elements=self.engine.limits.max_elements)
        if value.nbytes > BIG:  # read by compiled calls, maybe many times: in place
            value = aligned(value)
        old = s.names.get(name)
        freed = s.values.raw(old.tensor).nbytes + TENSOR_OVERHEAD + NAME_OVERHEAD + len(name) \
            if old and old.tensor is not None and old.tensor in s.values else 0
        added = value.nbytes + TENSOR_OVERHEAD + NAME_OVERHEAD + len(name)
        if variable:
            added += VARIABLE_OVERHEAD + ARG_OVERHEAD
        self.byte_budget(s, added - freed)
        tid = self._store(s, value)
        if variable:
            handle = s.new_id()
            s.variables[handle] = Variable(handle, tid, trainable)
            s.version_of[tid] = handle
            s.names[name] = Binding(variable=handle)
        else:
            s.names[name] = Binding(tensor=tid)
        self._collect(s)
        return value

    def get_tensor(self, s: Session, name: str) -> np.ndarray:
        binding = s.names.get(name)
        if binding is None:
            raise NotFound(f"session {s.session_id!r} has no tensor {clip(name)}; PUT it first")
        return s.values[self._tid(s, binding)]

    def answer_tensor(self, s: Session, name: str, respond: Callable[[np.ndarray], T]) -> T:
        """`respond(value)`, in a worker thread when the value is big (encoding it is)."""
        value = self.get_tensor(s, name)
        if value.size > 65_536 and inline_limit.get() is not None:
            raise Offload
        return respond(value)

    def delete_tensor(self, s: Session, name: str) -> None:
        if s.names.pop(name, None) is None:
            raise NotFound(f"session {s.session_id!r} has no tensor {clip(name)}")
        self._collect(s)

    def describe(self, s: Session) -> dict[str, Any]:
        if len(s.names) > 1000 and inline_limit.get() is not None:
            raise Offload  # a long listing is built in a worker thread
        tensors = []
        for name, b in s.names.items():
            value = s.values[self._tid(s, b)]
            var = s.variables.get(b.variable) if b.variable is not None else None
            tensors.append({"name": name, "dtype": value.dtype.name, "shape": list(value.shape),
                            "variable": var is not None,
                            "trainable": var.trainable if var is not None else False})
        return {"session_id": s.session_id, "tensors": tensors,
                "tapes": [self.describe_tape(s, t) for t in s.tapes.values()],
                "bytes": s.held_bytes, "tensor_bytes": s.nbytes, "ttl_seconds": s.ttl_seconds,
                "expires_at": s.expires_at}

    # ----- running ops -----

    def run(self, s: Session, nodes: Sequence[Mapping[str, Any]], fetch: Sequence[str] | None,
            max_nodes: int, inputs: Mapping[str, Any] | None = None,
            watch: Mapping[str, Sequence[str]] | None = None,
            check_numerics: bool = False,
            functions: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
        """Bind `inputs` as constants, let tapes `watch` names, then evaluate `nodes` in order,
        bind their ids and record them on recording tapes (one request for what a client would
        otherwise send as PUTs, watches and a run). `functions` ({name: function}) are what
        the nodes' function attributes may name, as a graph's."""
        if not nodes and not inputs and not watch:
            raise InvalidGraph("nothing to do: give nodes to run (or inputs to bind, or "
                               "tensors to watch)", loc=("nodes",))
        # binding the inputs and watching are the only changes made before the compute may
        # find itself too heavy for the event loop (`Offload`); run again in a worker
        # thread, they bind the same values and watch the same names (the service keeps
        # bodies too big to decode on the loop off it to begin with)
        for name, raw in (inputs or {}).items():
            self.put_tensor(s, name, raw, loc=("inputs", name))
        for tape_id, names in (watch or {}).items():
            tape = s.tapes.get(tape_id)
            if tape is None:
                raise InvalidGraph(f"watch names tape {clip(tape_id)}, which the session does "
                                   "not have; open it first", loc=("watch", tape_id))
            s.touch(tape)
            self.watch(s, tape, names, loc=("watch", tape_id))
        if not nodes:
            return {name: s.values[self._tid(s, self._binding(s, name, ("fetch", i)))]
                    for i, name in enumerate(fetch or ())}
        if len(nodes) > max_nodes:
            raise TooLarge(f"{len(nodes)} nodes; the limit is {max_nodes} "
                           "(GRADTAPE_MAX_NODES)", loc=("nodes",))
        edges = sum(len(n.get("args") or ()) for n in nodes if isinstance(n, Mapping))
        if edges > self.engine.limits.max_edges:
            raise TooLarge(f"the nodes have {edges} arguments in all; the limit is "
                           f"{self.engine.limits.max_edges} (GRADTAPE_MAX_EDGES)",
                           loc=("nodes",))
        plan = self._run_plan(s, nodes, functions)
        program = plan.program()
        known = set(plan.result_names)
        for i, name in enumerate(fetch or ()):
            if name not in known and name not in s.names:
                raise InvalidGraph(f"fetch names {clip(name)}, which is not a tensor of the "
                                   "session nor a node of this run", loc=("fetch", i))
        bound = self.engine.bind_values(program, plan.input_values(),
                                        check_numerics=check_numerics)
        # the session's budget is checked from the inferred types, before anything runs
        recording = sum(1 for t in s.tapes.values() if t.recording)
        self.byte_budget(s, sum(bound.types[o].dtype.itemsize * math.prod(bound.types[o].shape)
                                + TENSOR_OVERHEAD for o in program.outputs)
                         + sum(v.nbytes + TENSOR_OVERHEAD for v in plan.new_constants.values())
                         + sum(NAME_OVERHEAD + len(o) for o in plan.result_names)
                         + RECORD_OVERHEAD * recording * len(plan.steps))
        results = self.engine.evaluate(bound, program.outputs, answered=False)
        work = self.engine.cost(bound, Query("evaluate", tuple(program.outputs))).flops
        return self._commit(s, plan, results, fetch, work)

    def _run_plan(self, s: Session, nodes: Sequence[Mapping[str, Any]],
                  functions: Mapping[str, Any] | None) -> _RunPlan:
        """The nodes planned against the session. A run whose nodes were planned before in
        this session, and whose names still mean what they meant then, reuses that plan
        (a training loop's forward pass, step after step); nodes holding array literals,
        or graph functions, are planned every time."""
        body = None if functions else digest(nodes)
        key = None if body is None else (s.session_id, body)
        kept = self.run_plans.get(key) if key is not None else None
        if kept is not None:
            tids = reread(s, kept.reads)
            if tids is not None:
                return _RunPlan.reused(s, self.engine.limits, kept, tids)
        plan = _RunPlan(s, self.engine.limits, functions)
        for i, node in enumerate(nodes):
            plan.add(node, i)
        if key is not None and not plan.new_constants and len(plan.eqns) <= MAX_KEPT_EQNS:
            self.run_plans.put(key, plan.kept())
        return plan

    def _commit(self, s: Session, plan: _RunPlan, results: Mapping[str, Any],
                fetch: Sequence[str] | None, flops: float) -> dict[str, np.ndarray]:
        """Bind and record a run's results. They are kept pending, as an update's are
        (`_updated`): a run that fetches nothing answers before its compute ends."""
        tids: dict[str, TensorId] = dict(plan.input_tids)
        for tid, value in plan.new_constants.items():
            s.values[tid] = value
        s.values.start(flops)
        for local, value in results.items():
            tids[local] = self._keep(s, value, pending=True)
        for step in plan.steps:
            args = tuple(a if isinstance(a, Const) else tids[a] for a in step.args)
            outs = tuple(tids[o] for o in step.outs)
            if step.assigns is not None:
                var = s.variables[step.assigns]
                var.current = outs[0]
                s.version_of[outs[0]] = var.handle
                s.names[step.label] = Binding(variable=var.handle)
                continue
            for out_name, tid in zip(step.ids, outs, strict=True):
                s.names[out_name] = Binding(tensor=tid)
            self._record(s, Record(step.op, step.attrs, args, outs, step.label))
        self._collect(s)
        wanted = list(fetch) if fetch is not None else list(dict.fromkeys(plan.result_names))
        return {name: s.values[self._tid(s, s.names[name])] for name in wanted}

    def _record(self, s: Session, rec: Record) -> None:
        for tape in s.tapes.values():
            if not tape.recording:
                continue
            hit = False
            for a in rec.args:
                if isinstance(a, Const):
                    continue
                handle = s.version_of.get(a)
                if handle is not None and tape.watch_accessed_variables and \
                        s.variables.get(handle, Variable(0, 0, False)).trainable:
                    tape.watched_variables.add(handle)
                if tape.tracks(a, handle):
                    tape.tracked.add(a)
                    hit = True
            if hit:
                tape.records.append(rec)
                tape.tracked.update(rec.outs)

    # ----- optimisers -----

    def create_optimizer(self, s: Session, name: str, method: Any, learning_rate: Any,
                         options: Mapping[str, Any] | None = None,
                         variables: Sequence[str] | None = None) -> Optimizer:
        """An optimiser of `variables` (default: every trainable variable of the session),
        with a fresh optax state for each."""
        if name in s.optimizers:
            raise Conflict(f"session {s.session_id!r} already has an optimizer "
                           f"{clip(name)}; delete it first or use another name")
        opts = optim.check(method, learning_rate, options or {})
        if variables is None:
            pairs = [(n, b.variable) for n, b in s.names.items() if b.variable is not None
                     and s.variables[b.variable].trainable]
            if not pairs:
                raise InvalidGraph("the session has no trainable variables to optimize; PUT "
                                   "some with \"variable\": true, or name them",
                                   loc=("variables",))
        else:
            pairs = []
            for i, label in enumerate(variables):
                binding = self._binding(s, label, ("variables", i))
                if binding.variable is None:
                    raise InvalidGraph(f"{clip(label)} is a constant; an optimizer updates "
                                       "variables (PUT it with \"variable\": true)",
                                       loc=("variables", i))
                pairs.append((label, binding.variable))
        handles: list[Handle] = []
        labels: list[str] = []
        for i, (label, handle) in enumerate(pairs):
            if handle in handles:
                continue  # two names of one variable: one update
            value = s.values[s.variables[handle].current]
            if not is_float(value.dtype):
                raise InvalidGraph(f"variable {clip(label)} is {value.dtype.name}; an optimizer "
                                   "updates floating-point variables", loc=("variables", i))
            handles.append(handle)
            labels.append(label)
        leaves = {h: self._rule(s, opts, method, learning_rate, h)[0]() for h in handles}
        self.byte_budget(s, sum(leaf.nbytes + TENSOR_OVERHEAD for ls in leaves.values()
                                for leaf in ls))
        opt = Optimizer(name, method, float(learning_rate), opts, tuple(handles), tuple(labels))
        opt.state = {h: tuple(self._store(s, leaf) for leaf in ls) for h, ls in leaves.items()}
        s.optimizers[name] = opt
        self._collect(s)
        return opt

    def optimizer(self, s: Session, name: str) -> Optimizer:
        found = s.optimizers.get(name)
        if found is None:
            raise NotFound(f"session {s.session_id!r} has no optimizer {clip(name)}; create "
                           "it with POST .../optimizers")
        return found

    def optimizer_named(self, s: Session, name: str, loc: tuple[str, ...]) -> Optimizer:
        """The optimizer a request body names: unknown, it is a 422 at that field (the
        URL named something that exists)."""
        try:
            return self.optimizer(s, name)
        except NotFound as exc:
            raise InvalidGraph(exc.detail, loc=loc) from None

    def describe_optimizer(self, s: Session, opt: Optimizer) -> dict[str, Any]:
        return {"name": opt.name, "method": opt.method, "learning_rate": opt.learning_rate,
                "options": dict(opt.options), "variables": list(opt.labels), "step": opt.step}

    def delete_optimizer(self, s: Session, name: str) -> None:
        self.optimizer(s, name)
        del s.optimizers[name]
        self._collect(s)

    def apply_gradients(self, s: Session, name: str, gradients: Mapping[str, Any]
                        ) -> dict[str, Any]:
        """One optax update of the variables named in `gradients` (each a session tensor's
        name or a tensor); the optimiser's other variables keep their values and state."""
        opt = self.optimizer(s, name)
        if not gradients:
            raise InvalidGraph("gradients is empty: give one gradient per variable to update",
                               loc=("gradients",))
        updates: dict[Handle, Any] = {}
        for label, raw in gradients.items():
            handle = self._optimized(s, opt, label, ("gradients", label))
            # shapes and dtypes alone: neither the variable (maybe still being updated) nor
            # a gradient the session holds is waited for or copied from the accelerator
            value = s.values.raw(s.variables[handle].current)
            if isinstance(raw, str):
                grad = s.array(self._tid(s, self._binding(s, raw, ("gradients", label))))
            else:
                grad = decode(raw, ("gradients", label), dtype=value.dtype.name,
                              max_elements=self.engine.limits.max_elements)
            if grad.shape != value.shape or not is_float(grad.dtype):
                raise InvalidGraph(f"the gradient for {clip(label)} is {grad.dtype.name}"
                                   f"{list(grad.shape)}; the variable is {value.dtype.name}"
                                   f"{list(value.shape)}", loc=("gradients", label))
            updates[handle] = grad
        return self._apply(s, opt, updates)

    @staticmethod
    def _optimized(s: Session, opt: Optimizer, label: str, loc: tuple[str | int, ...]
                   ) -> Handle:
        """The variable `label` names, which must be one that `opt` updates."""
        binding = s.names.get(label)
        handle = binding.variable if binding is not None else None
        if handle is None or handle not in opt.state:
            raise InvalidGraph(f"{clip(label)} is not a variable of optimizer {opt.name!r}; its "
                               f"variables: {', '.join(opt.labels)}", loc=loc)
        return handle

    def _apply(self, s: Session, opt: Optimizer, updates: Mapping[Handle, Any]
               ) -> dict[str, Any]:
        """One compiled update of the variables in `updates` (checked gradients, NumPy or
        device arrays) and their optimiser state."""
        handles = list(updates)
        values, leaves = self._update_inputs(s, opt, handles)
        update = optim.rule_many(opt.method, float(opt.learning_rate), opt.options,
                                 tuple((tuple(v.shape), v.dtype.name) for v in values))
        new_values, new_leaves = update(values, tuple(updates[h] for h in handles),
                                        leaves)  # one compiled call
        # an elementwise update: a few dozen operations per element at most
        work = UPDATE_FLOPS_PER_ELEMENT * sum(math.prod(v.shape) for v in values)
        return self._updated(s, opt, handles, new_values, new_leaves, flops=work)

    def _update_inputs(self, s: Session, opt: Optimizer, handles: Sequence[Handle]
                       ) -> tuple[tuple[Any, ...], tuple[tuple[Any, ...], ...]]:
        """The values and optimiser state an update of `handles` reads, once the session's
        byte budget has room for their new versions."""
        held = s.values.raw  # sizes alone: a pending value's need not wait
        self.byte_budget(s, sum(held(s.variables[h].current).nbytes + TENSOR_OVERHEAD +
                                sum(held(t).nbytes + TENSOR_OVERHEAD for t in opt.state[h])
                                for h in handles))
        return (tuple(s.array(s.variables[h].current) for h in handles),
                tuple(tuple(s.array(t) for t in opt.state[h]) for h in handles))

    def _updated(self, s: Session, opt: Optimizer, handles: Sequence[Handle],
                 new_values: Sequence[Any], new_leaves: Sequence[Sequence[Any]],
                 steps: int = 1, flops: float = math.inf) -> dict[str, Any]:
        """Keep an update's results (of `steps` steps) as the variables' new versions and
        state.

        They are kept pending (`Values`): the request can answer while the update is still
        computed, and a training loop's next request is read and planned meanwhile. What the
        session still holds pending is waited for first (`Values.start`), after this
        update's call was made. `flops`: the update's estimated work."""
        s.values.start(flops)
        for handle, value, leaves in zip(handles, new_values, new_leaves, strict=True):
            var = s.variables[handle]
            var.current = self._keep(s, value, pending=True)
            s.version_of[var.current] = handle
            opt.state[handle] = tuple(self._keep(s, leaf, pending=True) for leaf in leaves)
        opt.step += steps
        self._collect(s)
        return {"step": opt.step}

    @staticmethod
    def _rule(s: Session, options: tuple[tuple[str, Any], ...], method: str,
              learning_rate: float, handle: Handle) -> Any:
        value = s.values.raw(s.variables[handle].current)  # its shape and dtype
        return optim.rule(method, float(learning_rate), options, tuple(value.shape),
                          value.dtype.name)

    # ----- tapes -----

    def open_tape(self, s: Session, persistent: bool, watch_accessed_variables: bool) -> Tape:
        tape = Tape(f"t_{uuid.uuid4().hex[:12]}", persistent, watch_accessed_variables)
        s.tapes[tape.tape_id] = tape
        return tape

    def tape(self, s: Session, tape_id: str) -> Tape:
        tape = s.tapes.get(tape_id)
        if tape is None:
            raise NotFound(f"session {s.session_id!r} has no tape {clip(tape_id)} (deleted, or "
                           "never opened)")
        return s.touch(tape)  # a request that names a tape may change it

    def watch(self, s: Session, tape: Tape, names: Sequence[str],
              loc: tuple[str, ...] = ("tensors",)) -> None:
        for i, name in enumerate(names):
            binding = self._binding(s, name, (*loc, i))
            if binding.variable is not None:
                tape.watched_variables.add(binding.variable)
            tid = self._tid(s, binding)
            tape.watched_tensors.add(tid)
            tape.tracked.add(tid)

    def reset(self, s: Session, tape: Tape) -> None:
        tape.records = []  # a new list, never cleared in place (TapeSummary)
        tape.tracked.clear()
        tape.watched_tensors.clear()
        tape.watched_variables.clear()
        tape.used = False
        self._collect(s)

    def delete_tape(self, s: Session, tape_id: str) -> None:
        self.tape(s, tape_id)
        del s.tapes[tape_id]
        self._collect(s)

    def describe_tape(self, s: Session, tape: Tape) -> dict[str, Any]:
        watched = [n for n, b in s.names.items()
                   if (b.variable is not None and b.variable in tape.watched_variables)
                   or (b.tensor is not None and b.tensor in tape.watched_tensors)]
        return {"tape_id": tape.tape_id, "persistent": tape.persistent,
                "recording": tape.recording, "stopped": tape.stopped, "paused": tape.paused,
                "watch_accessed_variables": tape.watch_accessed_variables,
                "watched": watched, "ops_recorded": len(tape.records), "used": tape.used}

    # ----- derivatives -----

    def gradient(self, s: Session, tape: Tape, target: str | Sequence[str],
                 sources: Sequence[str] | None, output_gradients: Any = None,
                 unconnected: str = "none",
                 save_as: Mapping[str, str] | None = None, apply: str | None = None,
                 fetch_gradients: bool = False, check_numerics: bool = False
                 ) -> dict[str, Any]:
        """d target / d sources; a list of targets gets the gradient of their total, as
        TensorFlow's `tape.gradient` gives it. With `apply`, the gradients with respect to
        that optimiser's variables (the default sources) are applied as one update, and the
        answer is the optimiser's step (and the gradients, with `fetch_gradients`)."""
        if apply is not None:
            opt = self.optimizer_named(s, apply, ("apply",))
            if not sources:
                sources = [self._name_of(s, h, label)
                           for h, label in zip(opt.variables, opt.labels, strict=True)]
        if not sources:
            raise InvalidGraph("sources is empty: name the tensors to differentiate with "
                               "respect to", loc=("sources",))
        save_as = dict(save_as or {})
        for label in save_as:
            if label not in sources:
                raise InvalidGraph(f"save_as names {clip(label)}, which is not a source",
                                   loc=("save_as", label))
        if isinstance(target, str):
            if isinstance(output_gradients, dict) and set(output_gradients) == {target}:
                output_gradients = output_gradients[target]  # {target: tensor}
            if apply is not None and not save_as and not check_numerics:
                fused = self._gradient_apply(s, tape, target, sources, output_gradients,
                                             unconnected, apply, fetch_gradients)
                if fused is not None:
                    return fused
            grads, query, cotangent = self._gradient(
                s, tape, target, sources, output_gradients, ("target",), check_numerics,
                host=apply is None or fetch_gradients or bool(save_as))
        else:
            grads, query, cotangent = self._total_gradient(s, tape, list(target), sources,
                                                           output_gradients, bool(save_as),
                                                           check_numerics)
        grads = {label: g if g is not None else self._zeros(s, query, label, (), unconnected)
                 for label, g in grads.items()}
        if save_as:
            self._save(s, tape, query, grads, save_as, cotangent)
        self._use(s, tape)
        if apply is None:
            return {"gradients": grads}
        # as TensorFlow's apply_gradients, a variable without a gradient is left as it is
        opt = self.optimizer(s, apply)
        updates: dict[Handle, Any] = {}
        for i, (label, g) in enumerate(grads.items()):
            if g is not None:
                updates[self._optimized(s, opt, label, ("sources", i))] = g
        if not updates:
            raise InvalidGraph("no source has a gradient to apply (none is watched or "
                               "connected to the target)", loc=("sources",))
        answer = self._apply(s, opt, updates)
        if not fetch_gradients:
            return answer
        return {**answer, "gradients": {k: None if g is None else np.asarray(g)
                                        for k, g in grads.items()}}

    @staticmethod
    def _name_of(s: Session, handle: Handle, label: str) -> str:
        """A name the variable has now (the one it was known by, if it still has it)."""
        found = s.names.get(label)
        if found is not None and found.variable == handle:
            return label
        for name, binding in s.names.items():
            if binding.variable == handle:
                return name
        raise Conflict(f"variable {label!r} of the optimizer has no name in the session any "
                       "more; name the sources explicitly")

    def _gradient_apply(self, s: Session, tape: Tape, target: str, sources: Sequence[str],
                        output_gradients: Any, unconnected: str, apply: str,
                        fetch_gradients: bool) -> dict[str, Any] | None:
        """A tape's gradient with an optimiser's update of the variables it reaches, in one
        compiled call (the backward pass and the update; the gradients are not kept). None
        when a source would get a zero gradient for not being connected (`"zero"`): that
        update, of a variable the tape does not reach, goes the way of `apply_gradients`."""
        query = self._prepare(s, tape, target, sources, loc=("target",))
        if unconnected == "zero" and any(query.floats[label] and label not in query.live
                                         for label in sources):
            return None
        cotangent = self._cotangent(s, target, output_gradients, ("target",))
        opt = self.optimizer(s, apply)
        handles: dict[Handle, str] = {}  # variable -> its program source (labels may alias)
        for i, label in enumerate(sources):
            if label in query.live:
                handles.setdefault(self._optimized(s, opt, label, ("sources", i)),
                                   query.live[label])
        if not handles:
            raise InvalidGraph("no source has a gradient to apply (none is watched or "
                               "connected to the target)", loc=("sources",))
        values, leaves = self._update_inputs(s, opt, list(handles))
        update = Apply(opt.method, float(opt.learning_rate), opt.options,
                       tuple(handles.values()), values, leaves, gradients=fetch_gradients)
        out = self.engine.gradient(*query.ready, query.live_names, cotangent, "none",
                                   stored=self._kept(s, query), host=False, apply=update)
        self._use(s, tape)
        new_values, new_leaves = out["updated"]
        answer = self._updated(s, opt, list(handles), new_values, new_leaves,
                               flops=out["flops"])
        if not fetch_gradients:
            return answer
        found = out["gradients"]
        return {**answer, "gradients": {
            label: np.asarray(found[query.live[label]]) if label in query.live else
            self._zeros(s, query, label, (), unconnected) for label in sources}}

    def _cotangent(self, s: Session, target: str, output_gradients: Any,
                   loc: tuple[str | int, ...]) -> np.ndarray | None:
        """`output_gradients` for `target`, decoded and checked against its shape."""
        if output_gradients is None:
            return None
        where = ("output_gradients",) if len(loc) == 1 else ("output_gradients", target)
        tvalue = s.values.raw(self._tid(s, s.names[target]))  # its shape and dtype
        cotangent = decode(output_gradients, where, dtype=tvalue.dtype.name,
                           max_elements=self.engine.limits.max_elements)
        if cotangent.shape != tvalue.shape:
            raise InvalidGraph(f"output_gradients has shape {list(cotangent.shape)}; the "
                               f"target {clip(target)} has shape {list(tvalue.shape)}",
                               loc=where)
        return cotangent

    def _gradient(self, s: Session, tape: Tape, target: str, sources: Sequence[str],
                  output_gradients: Any, loc: tuple[str | int, ...],
                  check_numerics: bool = False, host: bool = True
                  ) -> tuple[dict[str, Any], _TapeQuery, np.ndarray | None]:
        """`host=False`: the gradients stay the compiled call's arrays (for an update)."""
        query = self._prepare(s, tape, target, sources, loc=loc, check_numerics=check_numerics)
        grads: dict[str, Any] = {label: None for label in sources}
        cotangent = self._cotangent(s, target, output_gradients, loc)
        if query.live:
            out = self.engine.gradient(*query.ready, query.live_names, cotangent, "none",
                                       stored=self._kept(s, query), host=host)
            for label, name in query.live.items():
                grads[label] = out["gradients"][name]
        return grads, query, cotangent

    def _total_gradient(self, s: Session, tape: Tape, targets: list[str],
                        sources: Sequence[str], output_gradients: Any, saving: bool,
                        check_numerics: bool = False
                        ) -> tuple[dict[str, Any], _TapeQuery, None]:
        if not targets:
            raise InvalidGraph("target is an empty list: name one target or several",
                               loc=("target",))
        if saving:
            raise InvalidGraph("save_as needs one target (a name, not a list): ask once per "
                               "target to save each gradient", loc=("save_as",))
        if len(set(targets)) != len(targets):
            raise InvalidGraph("a target is listed twice", loc=("target",))
        if output_gradients is not None and not (
                isinstance(output_gradients, dict) and set(output_gradients) == set(targets)):
            raise InvalidGraph("with a list of targets, output_gradients is a map "
                               "{target: tensor} with one entry per target",
                               loc=("output_gradients",))
        total: dict[str, Any] = {label: None for label in sources}
        query = None
        for i, target in enumerate(targets):
            cot = output_gradients[target] if output_gradients is not None else None
            grads, query, _ = self._gradient(s, tape, target, sources, cot, ("target", i),
                                             check_numerics)
            for label, g in grads.items():
                if g is not None:
                    total[label] = g if total[label] is None else np.add(total[label], g)
        assert query is not None
        return total, query, None

    def jacobian(self, s: Session, tape: Tape, target: str, sources: Sequence[str],
                 unconnected: str = "none", batch: bool = False,
                 check_numerics: bool = False) -> dict[str, Any]:
        """The Jacobian of `target` with respect to each source; with `batch`, TensorFlow's
        batch_jacobian: [batch, target..., source...], the examples (axis 0 of the target and
        of every source) being independent."""
        query = self._prepare(s, tape, target, sources, check_numerics=check_numerics)
        tshape = tuple(self._value(s, target).shape)
        if batch:
            self._check_batch(s, target, sources, tshape)
        jac: dict[str, Any] = {label: None for label in sources}
        value: Any = self._value(s, target)
        if query.live:
            out = self._per_example_jacobian(query, value) if batch else None
            if out is None and batch:  # rows that interact, or shapes that name the batch
                out = self._blocked_batch_jacobian(query, value)
            if out is None:
                out = self.engine.jacobian(*query.ready, query.live_names)
                if batch:  # small enough: the diagonal blocks of the full Jacobian
                    out["jacobian"] = {n: _batch_diagonal(j, len(tshape))
                                       for n, j in out["jacobian"].items()}
            value = out["value"]
            for label, name in query.live.items():
                jac[label] = out["jacobian"][name]
        for label in sources:
            spec = query.specs[label]
            if jac[label] is None and unconnected == "zero" and query.floats[label]:
                shape = tshape + spec.shape[1:] if batch else tshape + spec.shape
                jac[label] = np.zeros(shape, spec.dtype)
        self._use(s, tape)
        return {"value": value, "jacobian": jac}

    def _blocked_batch_jacobian(self, query: _TapeQuery, value: np.ndarray
                                ) -> dict[str, Any] | None:
        """batch_jacobian by blocks of examples, when the full Jacobian would be over the
        element limit (else None: that one is cheaper): forward mode along the directions of
        a block of examples' source rows at once, keeping only each example's own target
        row, so at most one block's directions are ever held."""
        bound, target = query.ready
        limit = self.engine.limits.max_elements
        size = value.shape[0]
        t_size = value.size
        names = query.live_names
        if sum(t_size * math.prod(bound.shape(n)) for n in names) <= limit:
            return None
        jac: dict[str, np.ndarray] = {}
        for name in names:
            shape = bound.shape(name)
            row = math.prod(shape[1:])
            # one block's tangents and its pushed-forward targets stay under the limit
            block = max(1, min(size, limit // max(1, row * (t_size + math.prod(shape)))))
            rows = np.empty((size, row, *value.shape[1:]), value.dtype)
            for start in range(0, size, block):
                examples = np.arange(start, min(start + block, size))
                basis = np.zeros((block * row, size, row), bound.types[name].dtype)
                k = np.arange(len(examples) * row)
                basis[k, np.repeat(examples, row), np.tile(np.arange(row), len(examples))] = 1
                pushed = self.engine.jvp_stack(bound, name, basis.reshape(-1, *shape), target)
                pushed = pushed[:len(examples) * row].reshape(len(examples), row, *value.shape)
                rows[examples] = pushed[np.arange(len(examples)), :, examples]
            # [batch, source row, target row...] -> [batch, target row..., source row...]
            moved = np.moveaxis(rows, 1, -1)
            jac[name] = moved.reshape(value.shape + shape[1:])
        return {"value": value, "jacobian": jac}

    def _per_example_jacobian(self, query: _TapeQuery, value: np.ndarray
                              ) -> dict[str, Any] | None:
        """batch_jacobian without the full Jacobian: the replay mapped over the examples
        (`vmap`), each seeing its own row of every input that has the batch's leading size
        (kept as an axis of size 1) and the whole of the others. The replay allows it when its
        types check so and the examples' values, together, are the target's: otherwise its
        rows interact (a sum over the batch, say), and this is None."""
        bound, target = query.ready
        size = value.shape[0]
        rows = tuple(n for n in bound.program.inputs
                     if bound.inputs[n].ndim and bound.inputs[n].shape[0] == size)
        values = {n: v.reshape(size, 1, *v.shape[1:]) if n in rows else v
                  for n, v in bound.inputs.items()}
        try:
            each = self.engine.bind_values(bound.program, values, rows, bound.check_numerics)
        except InvalidGraph:
            return None
        if each.shape(target) != (1, *value.shape[1:]):
            return None
        each.labels.update(bound.labels)
        out = self.engine.jacobian(each, target, query.live_names)
        found = np.reshape(out["value"], value.shape)
        tolerance = float(np.finfo(value.dtype).eps) ** 0.5
        if not np.allclose(found, value, rtol=tolerance, atol=tolerance, equal_nan=True):
            return None
        return {"value": found,
                "jacobian": {n: np.reshape(j, value.shape + bound.shape(n)[1:])
                             for n, j in out["jacobian"].items()}}

    def hvp(self, s: Session, tape: Tape, target: str, sources: Sequence[str],
            vectors: Mapping[str, Any], unconnected: str = "none",
            include: Sequence[str] | None = None, check_numerics: bool = False
            ) -> dict[str, Any]:
        query = self._prepare(s, tape, target, sources, scalar="hvp",
                              check_numerics=check_numerics)
        parts = [p for p in ("value", "gradients", "hvp") if include is None or p in include]
        for label in sources:
            if label not in vectors:
                raise InvalidGraph(f"no vector for source {label!r}: vectors needs one tensor "
                                   "per source, shaped like it", loc=("vectors",))
        grads: dict[str, Any] = {label: None for label in sources}
        hvps: dict[str, Any] = {label: None for label in sources}
        value: Any = self._value(s, target)
        if query.live:
            vecs = {name: vectors[label] for label, name in query.live.items()}
            out = self.engine.hvp(*query.ready, query.live_names, vecs, include=parts)
            value = out.get("value", value)
            for label, name in query.live.items():
                grads[label] = out["gradients"][name] if "gradients" in out else None
                hvps[label] = out["hvp"][name] if "hvp" in out else None
        self._use(s, tape)
        answer = {"value": value,
                  "gradients": {k: v if v is not None else self._zeros(s, query, k, (), unconnected)
                                for k, v in grads.items()},
                  "hvp": {k: v if v is not None else self._zeros(s, query, k, (), unconnected)
                          for k, v in hvps.items()}}
        return {p: answer[p] for p in parts}

    def hessian(self, s: Session, tape: Tape, target: str, sources: Sequence[str],
                unconnected: str = "none", check_numerics: bool = False) -> dict[str, Any]:
        query = self._prepare(s, tape, target, sources, scalar="hessian",
                              check_numerics=check_numerics)
        value: Any = self._value(s, target)
        grads: dict[str, Any] = {label: None for label in sources}
        hess: dict[str, dict[str, Any]] = {a: {b: None for b in sources} for a in sources}
        if query.live:
            out = self.engine.hessian(*query.ready, query.live_names)
            value = out["value"]
            for a, na in query.live.items():
                grads[a] = out["gradients"][na]
                for b, nb in query.live.items():
                    hess[a][b] = out["hessian"][na][nb]
        for a in sources:
            if grads[a] is None:
                grads[a] = self._zeros(s, query, a, (), unconnected)
            for b in sources:
                if hess[a][b] is None and unconnected == "zero" and \
                        query.floats[a] and query.floats[b]:
                    hess[a][b] = np.zeros(query.specs[a].shape + query.specs[b].shape,
                                          query.specs[b].dtype)
        self._use(s, tape)
        return {"value": value, "gradients": grads, "hessian": hess}

    # ----- helpers -----

    def _prepare(self, s: Session, tape: Tape, target: str, sources: Sequence[str],
                 scalar: str | None = None, loc: tuple[str | int, ...] = ("target",),
                 check_numerics: bool = False) -> _TapeQuery:
        if tape.used and not tape.persistent:
            raise Conflict(f"tape {tape.tape_id!r} is not persistent and has already answered "
                           "once; open the tape with \"persistent\": true to ask it more than "
                           "once")
        target_binding = self._binding(s, target, loc)
        target_tid = self._tid(s, target_binding)
        tvalue = s.values.raw(target_tid)  # its dtype and shape: no need to wait
        if not is_float(tvalue.dtype):
            raise InvalidGraph(f"target {target!r} is {tvalue.dtype.name}; gradients need a "
                               "floating-point target (cast it first)", loc=loc)
        key = (s.session_id, tape.tape_id, target, tuple(sources), scalar, check_numerics,
               s.next_id, len(s.names), len(tape.records), len(tape.tracked))
        found = _prepared.get()
        if found is not None and found[0] == key:
            _prepared.set(None)
            return found[1]
        if scalar and tvalue.shape != ():
            raise InvalidGraph(f"{scalar} needs a scalar target, but {target!r} has shape "
                               f"{list(tvalue.shape)}; reduce it to a scalar (sum, mean) or "
                               "use jacobian", loc=loc)
        if not sources:
            raise InvalidGraph("sources is empty: name the tensors to differentiate with "
                               "respect to", loc=("sources",))
        specs: dict[str, SourceSpec] = {}
        tracked: dict[str, bool] = {}
        arg_tids = tape.summary().reads  # every tensor its records read
        for i, label in enumerate(sources):
            if label in specs:
                raise InvalidGraph(f"source {label!r} is listed twice", loc=("sources", i))
            binding = self._binding(s, label, ("sources", i))
            value = s.values.raw(self._tid(s, binding))  # its dtype and shape
            if binding.variable is not None:
                var = s.variables[binding.variable]
                versions = tuple(sorted({t for t in arg_tids
                                         if s.version_of.get(t) == var.handle} | {var.current}))
                specs[label] = SourceSpec(label, tuple(value.shape), value.dtype.name,
                                          variable=var.handle, versions=versions)
                tracked[label] = var.handle in tape.watched_variables or \
                    any(v in tape.tracked for v in versions)
            else:
                tid = self._tid(s, binding)
                specs[label] = SourceSpec(label, tuple(value.shape), value.dtype.name,
                                          tensor=tid)
                tracked[label] = tid in tape.tracked
        floats = {label: is_float(np.dtype(spec.dtype)) for label, spec in specs.items()}
        handle = target_binding.variable
        if not tape.tracks(target_tid, handle):
            return _TapeQuery(None, None, {}, specs, floats, target_tid)
        candidates = [specs[label] for label in sources if tracked[label] and floats[label]]
        rep = replay.build(tape.records, target_tid, candidates)
        values = {name: s.array(tid) for name, tid in rep.input_tids.items()}
        values.update((n, zeros(shape, dtype)) for n, (shape, dtype) in rep.zeros.items()
                      if n not in rep.input_tids and n.startswith("eps"))
        bound = self.engine.bind_values(rep.program, values, check_numerics=check_numerics)
        bound.labels.update({rep.target: target})
        named = {label: name for label, name in rep.sources.items() if name is not None}
        connected = rep.program.connected((rep.target,), named.values(), bound.is_float)
        live = {label: name for label, name in named.items() if name in connected}
        bound.labels.update({name: label for label, name in live.items()})
        query = _TapeQuery(bound, rep, live, specs, floats, target_tid)
        _prepared.set((key, query))
        return query

    @staticmethod
    def _kept(s: Session, query: _TapeQuery) -> dict[str, np.ndarray]:
        """The replay's intermediates whose values the session still holds (its runs computed
        them): the gradient reuses them instead of running the forward pass again."""
        assert query.replay is not None
        return {name: s.array(tid) for name, tid in query.replay.produced.items()
                if tid in s.values}

    def _save(self, s: Session, tape: Tape, query: _TapeQuery, grads: Mapping[str, Any],
              save_as: Mapping[str, str], cotangent: np.ndarray | None) -> None:
        for label in save_as:
            if grads[label] is None:
                raise InvalidGraph(f"the gradient for {label!r} is null (the source is not "
                                   "watched or not connected), so there is nothing to save; "
                                   "ask with \"unconnected_gradients\": \"zero\" to save zeros",
                                   loc=("save_as", label))
        self.byte_budget(s, sum(np.asarray(grads[label]).nbytes for label in save_as))
        saved: dict[str, TensorId] = {}
        for label, name in save_as.items():
            saved[label] = self._store(s, np.asarray(grads[label]))
            s.names[name] = Binding(tensor=saved[label])
        if query.replay is not None and query.live:
            # one result per distinct program source (names of one variable share it)
            first_label: dict[str, str] = {}
            for label, name in query.live.items():
                first_label.setdefault(name, label)
            outs = tuple(saved.get(label) or s.new_id() for label in first_label.values())
            spec = GradientSpec(tuple(replay.prune(tape.records, [query.target_tid])),
                                query.target_tid,
                                tuple(query.specs[x] for x in first_label.values()),
                                with_cotangent=cotangent is not None)
            args = tuple(query.replay.input_tids.values())
            if cotangent is not None:
                args += (self._store(s, cotangent),)
            self._record(s, Record("gradient", (("spec", spec),), args, outs, "gradient"))
        self._collect(s)

    def _use(self, s: Session, tape: Tape) -> None:
        tape.used = True
        if not tape.persistent:  # as TensorFlow, a used non-persistent tape lets go
            tape.records = []
            self._collect(s)

    def _zeros(self, s: Session, query: _TapeQuery, label: str, prefix: tuple[int, ...],
               unconnected: str) -> Any:
        spec = query.specs[label]
        if unconnected != "zero" or not query.floats[label]:
            return None
        return np.zeros(prefix + spec.shape, spec.dtype)

    def _check_batch(self, s: Session, target: str, sources: Sequence[str],
                     tshape: tuple[int, ...]) -> None:
        if not tshape:
            raise InvalidGraph("batch_jacobian needs a target with a batch axis first",
                               loc=("target",))
        for i, label in enumerate(sources):
            shape = self._value(s, label).shape
            if not shape or shape[0] != tshape[0]:
                raise InvalidGraph(f"batch_jacobian needs source {label!r} to share the "
                                   f"target's batch size {tshape[0]} on axis 0; it has shape "
                                   f"{list(shape)}", loc=("sources", i))

    def _binding(self, s: Session, name: Any, loc: tuple[str | int, ...]) -> Binding:
        binding = s.names.get(name) if isinstance(name, str) else None
        if binding is None:
            raise InvalidGraph(f"{clip(name)} is not a tensor of this session; PUT it or compute "
                               "it with run first", loc=loc)
        return binding

    def _value(self, s: Session, name: str) -> np.ndarray:
        return s.values[self._tid(s, s.names[name])]

    @staticmethod
    def _tid(s: Session, binding: Binding) -> TensorId:
        if binding.variable is not None:
            return s.variables[binding.variable].current
        assert binding.tensor is not None
        return binding.tensor

    @staticmethod
    def _store(s: Session, value: np.ndarray) -> TensorId:
        tid = s.new_id()
        s.values[tid] = host(value)
        return tid

    @staticmethod
    def _keep(s: Session, result: Any, pending: bool = False) -> TensorId:
        """Store a compiled call's result; a big one keeps its device array too, so that the
        next call that reads it (a weight, step after step) does not copy it back. With
        `pending`, the result is kept without waiting for the call to finish (`Values`)."""
        tid = s.new_id()
        if pending and isinstance(result, jax.Array):
            s.values.hold(tid, result)
        else:
            s.values[tid] = host(np.asarray(result))
        if isinstance(result, jax.Array) and result.nbytes > BIG:
            s.device[tid] = result
        return tid

    @staticmethod
    def _collect(s: Session) -> None:
        """Drop values that no name, variable or tape record needs."""
        handles = {b.variable for b in s.names.values() if b.variable is not None}
        for h in list(s.variables):
            if h not in handles:
                del s.variables[h]
        handles.update(h for o in s.optimizers.values() for h in o.state)
        keep = {b.tensor for b in s.names.values() if b.tensor is not None}
        keep.update(v.current for v in s.variables.values())
        for opt in s.optimizers.values():
            for leaves in opt.state.values():
                keep.update(leaves)
        for tape in s.tapes.values():
            if tape.records:  # a finished tape (most of them, in a long loop) reads nothing
                keep |= tape.summary().reads
        for tid in [t for t in s.values if t not in keep]:
            del s.values[tid]
        for tid in [t for t in s.version_of if t not in keep]:
            del s.version_of[tid]
        for tid in [t for t in s.device if t not in keep]:
            del s.device[tid]
        s.held_bytes = s.footprint()


@dataclass
class _TapeQuery:
    bound: Bound | None
    replay: replay.Replay | None
    live: dict[str, str]  # source label -> program name, for connected float sources
    specs: dict[str, SourceSpec]
    floats: dict[str, bool]
    target_tid: TensorId

    @property
    def ready(self) -> tuple[Bound, str]:
        """The replay's bound program and target name (set when the target is on the tape)."""
        assert self.bound is not None and self.replay is not None
        return self.bound, self.replay.target

    @property
    def live_names(self) -> list[str]:
        return list(dict.fromkeys(self.live.values()))


SHARED_ZEROS_MAX_BYTES = 64 * 1024**2


def zeros(shape: tuple[int, ...], dtype: str) -> Any:
    """A zero array for a replay's `eps` input (a variable source's perturbation). Up to
    SHARED_ZEROS_MAX_BYTES it is one read-only device array per type, shared by every query:
    a tape's gradient step after step neither allocates its variables' worth of zeros nor
    copies them to the device. Bigger ones are made for the query and freed after it."""
    if math.prod(shape) * np.dtype(dtype).itemsize > SHARED_ZEROS_MAX_BYTES:
        return np.zeros(shape, dtype)
    return _shared_zeros(shape, dtype)


@lru_cache(maxsize=64)
def _shared_zeros(shape: tuple[int, ...], dtype: str) -> Any:
    return jnp.zeros(shape, dtype)


def _batch_diagonal(jac: np.ndarray, target_ndim: int) -> np.ndarray:
    """[B, t..., B, s...] -> [B, t..., s...]: TensorFlow's batch_jacobian, examples being
    independent."""
    jac = np.asarray(jac)
    batch = jac.shape[0]
    moved = np.moveaxis(jac, target_ndim, 1)  # [B, B, t..., s...]
    return moved[np.arange(batch), np.arange(batch)]


def reread(s: Session, reads: Sequence[tuple[str, Handle | None, str]]
           ) -> dict[str, TensorId] | None:
    """The tensors a plan's `reads` name in `s` now, by program input; None when a name no
    longer means what it meant (another variable, a variable become a tensor or the reverse,
    gone), or when the inputs it told apart are one tensor now or the reverse."""
    tids: dict[str, TensorId] = {}
    for name, handle, local in reads:
        binding = s.names.get(name)
        if binding is None:
            return None
        if handle is not None:
            if binding.variable != handle:
                return None
            tid = s.variables[handle].current
        elif binding.tensor is None:
            return None
        else:
            tid = binding.tensor
        if tids.setdefault(local, tid) != tid:
            return None
    return tids if len(set(tids.values())) == len(tids) else None


def digest(nodes: Sequence[Mapping[str, Any]]) -> bytes | None:
    """A digest of request nodes; an array among them (a tensor of the request's binary
    part) counts by its dtype, shape and bytes. None for nodes holding what JSON cannot
    (an integer past 64 bits, from a caller other than the service's parser): their plan
    is not kept."""
    def array(obj: Any) -> Any:
        if isinstance(obj, np.ndarray):
            data = np.ascontiguousarray(obj)  # hashed where it lies, not copied
            return [obj.dtype.str, list(obj.shape),
                    hashlib.blake2b(data.data, digest_size=16).hexdigest()]
        raise TypeError(f"{type(obj).__name__} in a request's nodes")

    try:
        return hashlib.blake2b(orjson.dumps(nodes, default=array), digest_size=16).digest()
    except TypeError:  # orjson's JSONEncodeError included
        return None


# the plans of runs and steps up to this size are kept; planning a bigger one costs little
# beside its compute. Each kind keeps plans of KEPT_PLAN_EQNS equations in all (a plan takes
# ~400 bytes an equation: ~40 MB each)
MAX_KEPT_EQNS = 2_000
KEPT_PLAN_EQNS = 100_000


def _plan_eqns(plan: Any) -> int:
    return len(plan.program.eqns)


@dataclass(frozen=True)
class _KeptRun:
    """What planning a run's nodes found, apart from the tensors its names read: the same
    nodes in the same session, their names still meaning the same variables and tensors
    (`reread`), make the same program and steps."""

    program: Program
    steps: tuple[_Step, ...]
    result_names: tuple[str, ...]
    reads: tuple[tuple[str, Handle | None, str], ...]
    local_names: tuple[str, ...]  # program inputs, in order


@dataclass
class _Step:
    op: str
    attrs: tuple[tuple[str, Any], ...]
    args: tuple[str | Const, ...]  # program names or scalar constants
    outs: tuple[str, ...]
    ids: tuple[str, ...]
    label: str
    assigns: Handle | None = None


class _RunPlan:
    """Turns a list of session nodes into one Program over canonical names."""

    def __init__(self, s: Session, limits: Limits, functions: Mapping[str, Any] | None = None):
        self.s = s
        self.limits = limits
        self.max_elements = limits.max_elements
        self.functions = Functions(functions, max_nodes=limits.max_nodes,
                                   max_elements=limits.max_elements,
                                   max_args=limits.max_args_per_node)
        self.input_tids: dict[str, TensorId] = {}
        self._local_of_tid: dict[TensorId, str] = {}
        self.overlay: dict[str, str] = {}  # name -> program name bound in this run
        self.overlay_var: dict[str, Handle] = {}
        self.pending_version: dict[Handle, str] = {}
        self.literals: list[Any] = []
        self.eqns: list[Eqn] = []
        self.steps: list[_Step] = []
        self.new_constants: dict[TensorId, np.ndarray] = {}
        self.result_names: list[str] = []
        # what the plan read of the session: (name, its variable's handle or None, input)
        self.reads: list[tuple[str, Handle | None, str]] = []
        self._count = 0
        self._program: Program | None = None  # made once every node is added

    @classmethod
    def reused(cls, s: Session, limits: Limits, kept: _KeptRun,
               tids: Mapping[str, TensorId]) -> _RunPlan:
        """A plan from `kept`, its program inputs read from the tensors `tids` names."""
        plan = cls(s, limits)
        plan.input_tids = {local: tids[local] for local in kept.local_names}
        plan._local_of_tid = {tid: local for local, tid in plan.input_tids.items()}
        plan.steps = list(kept.steps)
        plan.result_names = list(kept.result_names)
        plan.reads = list(kept.reads)
        plan._program = kept.program
        return plan

    def kept(self) -> _KeptRun:
        return _KeptRun(self.program(), tuple(self.steps), tuple(self.result_names),
                        tuple(self.reads), tuple(self.input_tids))

    def _fresh(self) -> str:
        self._count += 1
        return f"v{self._count}"

    def _input(self, tid: TensorId) -> str:
        if tid not in self._local_of_tid:
            name = f"in{len(self.input_tids)}"
            self._local_of_tid[tid] = name
            self.input_tids[name] = tid
        return self._local_of_tid[tid]

    def _resolve(self, name: str, label: str, loc: tuple[str | int, ...]) -> str:
        """The program name that `name` reads now (a variable: its newest value)."""
        if name in self.overlay:
            return self.overlay[name]
        handle = self.overlay_var.get(name)
        binding = self.s.names.get(name)
        if handle is None and binding is not None:
            handle = binding.variable
        if handle is not None:
            if handle in self.pending_version:
                return self.pending_version[handle]
            local = self._input(self.s.variables[handle].current)
        elif binding is None:
            raise InvalidGraph(f"undefined name {name!r}: PUT it as a tensor or compute it in "
                               "an earlier node", node=label, loc=loc)
        else:
            assert binding.tensor is not None
            local = self._input(binding.tensor)
        self.reads.append((name, handle, local))
        return local

    def _arg(self, arg: Any, label: str, loc: tuple[str | int, ...]) -> tuple[str | Const,
                                                                              str | int]:
        """One argument as (what a record keeps, what the program reads): a name resolves to
        a program input or an earlier result; a scalar stays a weakly typed literal; an array
        constant becomes a new session tensor."""
        if isinstance(arg, str):
            local = self._resolve(arg, label, loc)
            return local, local
        if isinstance(arg, bool | int | float):
            self.literals.append(arg)
            return Const(arg), len(self.literals) - 1
        value = decode_literal(arg, loc, self.max_elements)
        tid = self.s.new_id()
        self.new_constants[tid] = value
        local = self._input(tid)
        return local, local

    def add(self, node: Mapping[str, Any], i: int) -> None:
        loc: tuple[str | int, ...] = ("nodes", i)
        if not isinstance(node, Mapping):
            raise InvalidGraph("a node is an object with id, op and args", loc=loc)
        assign = ASSIGN_OPS.get(node.get("op", ""))
        if assign is not None:
            self._add_assign(node, i, assign, loc)
            return
        res = resolve_node(node, loc, i, self.limits.max_args_per_node, self.functions)
        pairs = [self._arg(a, res.node, (*loc, "args", j)) for j, a in enumerate(res.args)]
        args = [step for step, _ in pairs]
        prog_args = [prog for _, prog in pairs]
        outs = tuple(self._fresh() for _ in res.outs)
        self.eqns.append(Eqn(res.op, res.attrs, tuple(prog_args), outs, res.node))
        self.steps.append(_Step(res.op.name, res.attrs, tuple(args), outs, res.outs, res.node))
        for name, local in zip(res.outs, outs, strict=True):
            self.overlay[name] = local
            self.overlay_var.pop(name, None)
            self.result_names.append(name)

    def _add_assign(self, node: Mapping[str, Any], i: int, assign: Assign,
                    loc: tuple[str | int, ...]) -> None:
        label = node_label(node, i)
        ident, args = node.get("id"), node.get("args", [])
        if not isinstance(ident, str) or not ident:
            raise InvalidGraph("node id must be a non-empty string", node=label,
                               loc=(*loc, "id"))
        if not isinstance(args, list) or len(args) != 2:
            raise InvalidGraph(f"{assign.name} takes 2 arguments (the variable, the value)",
                               node=label, loc=(*loc, "args"))
        if node.get("attrs"):
            raise InvalidGraph("assign ops take no attributes", node=label, loc=(*loc, "attrs"))
        target = args[0]
        handle = None
        if isinstance(target, str) and target not in self.overlay:
            handle = self.overlay_var.get(target)
            binding = self.s.names.get(target)
            if handle is None and binding is not None:
                handle = binding.variable
        if handle is None:
            raise InvalidGraph(f"{assign.name} needs a variable as its first argument; "
                               f"{target!r} is not one (PUT it with \"variable\": true)",
                               node=label, loc=(*loc, "args", 0))
        var_local = self._resolve(target, label, (*loc, "args", 0))
        _, value_arg = self._arg(args[1], label, (*loc, "args", 1))
        out = self._fresh()
        self.eqns.append(Eqn(assign, (), (var_local, value_arg), (out,), label))
        self.steps.append(_Step(assign.name, (), (), (out,), (ident,), ident, assigns=handle))
        self.pending_version[handle] = out
        self.overlay.pop(ident, None)
        self.overlay_var[ident] = handle
        self.result_names.append(ident)

    def program(self) -> Program:
        if self._program is None:
            outs = tuple(o for e in self.eqns for o in e.outs)
            self._program = Program(tuple(self.input_tids), tuple(self.eqns), outs,
                                    tuple(self.literals))
        return self._program

    def input_values(self) -> dict[str, np.ndarray]:
        return {name: self.new_constants[tid] if tid in self.new_constants
                else self.s.array(tid) for name, tid in self.input_tids.items()}
