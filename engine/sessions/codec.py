"""Session state to bytes and back, for stores outside the process.

Everything but tensor data becomes one JSON document (orjson): names, variables and their
versions, tapes with their records, recorded gradients' specs. Tensor data is stored apart,
one entry per tensor id, as a small header and the raw little-endian bytes, so a replica can
cache tensors by id and fetch only those it lacks. JSON has no tuples, and attributes must
come back as tuples (they key compile caches), so tuples, scalar constants, gradient
specs and functions are tagged.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from engine.dtypes import DTYPES, dtype_name
from engine.graph import Functions, function_document
from engine.program import Function
from engine.sessions.state import (
    Binding,
    Const,
    GradientSpec,
    Optimizer,
    Record,
    Session,
    SourceSpec,
    Tape,
    Values,
    Variable,
)
from engine.tensors import from_little_endian

FORMAT = 1


def _value(v: Any) -> Any:
    if isinstance(v, tuple):
        return {"T": [_value(x) for x in v]}
    if isinstance(v, GradientSpec):
        return {"G": {"records": [_record(r) for r in v.records], "target": v.target,
                      "sources": [_source(s) for s in v.sources],
                      "with_cotangent": v.with_cotangent}}
    if isinstance(v, Const):
        return {"C": v.value}
    if isinstance(v, Function):  # a control-flow op's function, with those it calls inline
        return {"F": [v.name, function_document(v)]}
    return v


def _unvalue(v: Any) -> Any:
    if isinstance(v, dict):
        if "T" in v:
            return tuple(_unvalue(x) for x in v["T"])
        if "G" in v:
            g = v["G"]
            return GradientSpec(tuple(_unrecord(r) for r in g["records"]), g["target"],
                                tuple(_unsource(s) for s in g["sources"]), g["with_cotangent"])
        if "C" in v:
            return Const(v["C"])
        if "F" in v:
            name, document = v["F"]
            return Functions(None).parse(document, name, ())
    return v


def _record(r: Record) -> list[Any]:
    return [r.op, [[k, _value(v)] for k, v in r.attrs], [_value(a) for a in r.args],
            list(r.outs), r.node]


def _unrecord(r: list[Any]) -> Record:
    op, attrs, args, outs, node = r
    return Record(op, tuple((k, _unvalue(v)) for k, v in attrs),
                  tuple(_unvalue(a) for a in args), tuple(outs), node)


def _source(s: SourceSpec) -> list[Any]:
    return [s.label, list(s.shape), s.dtype, s.tensor, s.variable, list(s.versions)]


def _unsource(s: list[Any]) -> SourceSpec:
    label, shape, dtype, tensor, variable, versions = s
    return SourceSpec(label, tuple(shape), dtype, tensor, variable, tuple(versions))


def _tape(t: Tape) -> dict[str, Any]:
    return {"id": t.tape_id, "persistent": t.persistent, "wav": t.watch_accessed_variables,
            "stopped": t.stopped, "paused": t.paused, "used": t.used,
            "records": [_record(r) for r in t.records], "tracked": sorted(t.tracked),
            "watched_tensors": sorted(t.watched_tensors),
            "watched_variables": sorted(t.watched_variables)}


def _untape(d: dict[str, Any]) -> Tape:
    return Tape(d["id"], d["persistent"], d["wav"], d["stopped"], d["paused"], d["used"],
                [_unrecord(r) for r in d["records"]], set(d["tracked"]),
                set(d["watched_tensors"]), set(d["watched_variables"]))


def dump_state(s: Session) -> bytes:
    """Everything of `s` but its tensor data (and `last_used`, which the store keeps)."""
    doc = {
        "format": FORMAT, "id": s.session_id, "ttl": s.ttl_seconds, "created": s.created_at,
        "owner": s.owner, "next_id": s.next_id, "held_bytes": s.held_bytes,
        "tensors": sorted(s.values),
        "version_of": [[t, h] for t, h in s.version_of.items()],
        "names": [[n, b.tensor, b.variable] for n, b in s.names.items()],
        "variables": [[v.handle, v.current, v.trainable] for v in s.variables.values()],
        "tapes": [_tape(t) for t in s.tapes.values()],
        "applied": [[k, *v] for k, v in s.applied.items()],
        "optimizers": [[o.name, o.method, o.learning_rate, _value(o.options),
                        list(o.variables), list(o.labels),
                        [[h, list(t)] for h, t in o.state.items()], o.step]
                       for o in s.optimizers.values()],
    }
    return orjson.dumps(doc)


def load_state(blob: bytes, values: dict[int, np.ndarray], last_used: float) -> Session:
    """The session `dump_state` wrote, with `values` as its tensors."""
    doc = orjson.loads(blob)
    if doc.get("format") != FORMAT:
        raise ValueError(f"session state of format {doc.get('format')}; this server reads "
                         f"format {FORMAT}")
    s = Session(doc["id"], doc["ttl"], doc["created"], last_used, doc["owner"])
    s.values = Values(values)
    s.next_id = doc["next_id"]
    s.held_bytes = doc["held_bytes"]
    s.version_of = {t: h for t, h in doc["version_of"]}
    s.names = {n: Binding(tensor=t, variable=v) for n, t, v in doc["names"]}
    s.variables = {h: Variable(h, c, tr) for h, c, tr in doc["variables"]}
    s.tapes = {d["id"]: _untape(d) for d in doc["tapes"]}
    s.applied = {k: (h, st, body) for k, h, st, body in doc["applied"]}
    s.optimizers = {
        name: Optimizer(name, method, lr, _unvalue(options), tuple(variables), tuple(labels),
                        {h: tuple(t) for h, t in state}, step)
        for name, method, lr, options, variables, labels, state, step
        in doc.get("optimizers", [])}
    return s


def tensor_ids(blob: bytes) -> list[int]:
    ids: list[int] = orjson.loads(blob)["tensors"]
    return ids


def dump_tensor(value: np.ndarray) -> bytes:
    """dtype and shape as a JSON header line, then the raw little-endian row-major bytes."""
    header = orjson.dumps({"dtype": dtype_name(value.dtype), "shape": list(value.shape)})
    data = np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<")).tobytes()
    return header + b"\n" + data


def load_tensor(blob: bytes) -> np.ndarray:
    head, _, data = blob.partition(b"\n")
    meta = orjson.loads(head)
    dtype = DTYPES[meta["dtype"]]
    return from_little_endian(data, dtype, tuple(meta["shape"]))
