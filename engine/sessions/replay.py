"""A tape's records, replayed as a Program: a pure function of the sources.

Everything the records read that they did not compute becomes a program input (its value is
taken from the session); sources become inputs or intermediates of that program. A variable
source may have several versions on the tape (it was assigned while recording); each version
then reads `version + eps`, and the gradient with respect to the zero input `eps` is the
variable's gradient, summed over its versions, as TensorFlow sums it over reads.

Names are canonical (`in0`, `v3`, ...) by order of appearance, so the same ops recorded again
with new tensors give the same structure key and reuse the compiled replay.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import jax.numpy as jnp

from engine.errors import InvalidGraph
from engine.ops import OPS
from engine.program import Eqn, Program
from engine.sessions.state import Const, GradientSpec, Record, SourceSpec, TensorId
from engine.transforms import BUILDERS, Query


@dataclass
class Replay:
    """A Program plus the mapping between its names and session tensors."""

    program: Program
    input_tids: dict[str, TensorId]  # program input -> tensor whose value feeds it
    zeros: dict[str, tuple[tuple[int, ...], str]]  # eps inputs and intermediate sources
    target: str
    sources: dict[str, str | None]  # source label -> program name (None: not on the tape)
    produced: dict[str, TensorId]  # program intermediate -> the kept tensor it recomputes


def prune(records: Sequence[Record], targets: Iterable[TensorId]) -> list[Record]:
    """The records that the targets depend on, in order."""
    wanted = set(targets)
    keep: list[Record] = []
    for rec in reversed(records):
        if wanted.intersection(rec.outs):
            keep.append(rec)
            wanted.update(a for a in rec.args if isinstance(a, int))
    keep.reverse()
    return keep


def build(records: Sequence[Record], target: TensorId,
          sources: Sequence[SourceSpec]) -> Replay:
    """Replay `records` as a Program whose output is `target`."""
    kept = prune(records, [target])
    names: dict[TensorId, str] = {}
    inputs: list[str] = []
    input_tids: dict[str, TensorId] = {}
    produced = {o for rec in kept for o in rec.outs}

    def name_of(tid: TensorId) -> str:
        if tid not in names:
            if tid in produced:
                names[tid] = f"v{len(names)}"
            else:
                names[tid] = f"in{len(inputs)}"
                inputs.append(names[tid])
                input_tids[names[tid]] = tid
        return names[tid]

    literals: list[Any] = []
    eqns: list[Eqn] = []
    arg_lists = []
    for rec in kept:
        args: list[str | int] = []
        for a in rec.args:
            if isinstance(a, Const):
                literals.append(a.value)
                args.append(len(literals) - 1)
            else:
                args.append(name_of(a))
        arg_lists.append(args)
        for o in rec.outs:
            name_of(o)
    target_name = name_of(target)

    # variable sources: every version read on the tape becomes `version + eps`
    zeros: dict[str, tuple[tuple[int, ...], str]] = {}
    eps: list[str] = []
    source_names: dict[str, str | None] = {}
    prelude: list[Eqn] = []
    rename: dict[str, str] = {}
    eps_of: dict[int, str] = {}  # variable handle -> its eps input (names may alias)
    for spec in sources:
        if spec.variable is None:
            assert spec.tensor is not None
            name = names.get(spec.tensor)
            source_names[spec.label] = name
            if name is not None and name not in input_tids:
                zeros[name] = (spec.shape, spec.dtype)
            continue
        versions = [names[t] for t in spec.versions if t in names]
        if not versions:
            source_names[spec.label] = None
            continue
        if spec.variable in eps_of:
            source_names[spec.label] = eps_of[spec.variable]
            continue
        eps_name = f"eps{len(eps)}"
        eps.append(eps_name)
        zeros[eps_name] = (spec.shape, spec.dtype)
        for v in versions:
            rename[v] = f"{v}+{eps_name}"
            prelude.append(Eqn(OPS["add"], (), (v, eps_name), (rename[v],), spec.label))
        source_names[spec.label] = eps_of[spec.variable] = eps_name

    for rec, args in zip(kept, arg_lists, strict=True):
        args = [rename.get(a, a) if isinstance(a, str) else a for a in args]
        eqns.append(Eqn(_primitive(rec), rec.attrs if rec.op != "gradient" else (),
                        tuple(args), tuple(names[o] for o in rec.outs), rec.node))
    target_name = rename.get(target_name, target_name)
    program = Program(tuple(inputs) + tuple(eps), tuple(prelude + eqns), (target_name,),
                      tuple(literals))
    produced_names = {names[t]: t for t in produced if t in names}
    return Replay(program, input_tids, zeros, target_name, source_names, produced_names)


def _primitive(rec: Record) -> Any:
    if rec.op == "gradient":
        spec: GradientSpec = dict(rec.attrs)["spec"]
        return RecordedGradient.build(spec)
    op = OPS.get(rec.op)
    if op is None:  # records are written by the engine; this guards a corrupted store
        raise InvalidGraph(f"recorded op {rec.op!r} is unknown", node=rec.node)
    return op


@dataclass(frozen=True)
class RecordedGradient:
    """A gradient computed while a tape was recording, replayed as a differentiable op: its
    arguments are the inner replay's inputs, its results the gradients. Differentiating it
    again differentiates the inner replay twice, so nesting composes to any order."""

    program: Program
    query: Query
    arg_inputs: tuple[str, ...]
    zeros: tuple[tuple[str, tuple[int, ...], str], ...]  # eps inputs, intermediate sources
    name: str = "gradient"
    differentiable: bool = True
    multi_output: bool = True

    @classmethod
    def build(cls, spec: GradientSpec) -> RecordedGradient:
        replay = build(spec.records, spec.target, spec.sources)
        live = tuple(dict.fromkeys(n for n in replay.sources.values() if n is not None))
        program = replay.program
        query = Query("gradient", (replay.target,), live,
                      frozenset(n for n in live if n not in program.inputs),
                      with_cotangents=spec.with_cotangent)
        zeros = tuple((n, tuple(shape), dtype) for n, (shape, dtype) in replay.zeros.items())
        return cls(program, query, tuple(replay.input_tids), zeros)

    def key(self) -> tuple[Any, ...]:
        return ("gradient", self.program.structure_key, self.query, self.arg_inputs, self.zeros)

    def bind(self, *args: Any) -> tuple[Any, ...]:
        cotangents = None
        if self.query.with_cotangents:
            args, cotangents = args[:-1], (args[-1],)
        inputs = dict(zip(self.arg_inputs, args, strict=True))
        zeros = {name: jnp.zeros(shape, dtype) for name, shape, dtype in self.zeros}
        inputs.update((n, z) for n, z in zeros.items() if n in self.program.inputs)
        sources = tuple(inputs[s] if s in inputs else zeros[s] for s in self.query.sources)
        fn = BUILDERS["gradient"](self.program, self.query)
        _, grads = fn(inputs, self.program.literals, sources, cotangents)
        return tuple(grads)
