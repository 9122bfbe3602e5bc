"""GradientTape, with TensorFlow's methods, recording on the server.

    with s.GradientTape() as tape:
        tape.watch(x)
        y = x * x
    dy_dx = tape.gradient(y, x)

Opening, watching and leaving the block are queued in order with the session's ops (see
`gradtape.session`); a query sends what is queued, then asks the tape. A gradient asked while
another tape records (nested tapes) is saved on the server with `save_as`, so the outer tape
records it and can differentiate it again.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np

from gradtape import _codec
from gradtape._flow import Call, Flow, path
from gradtape.errors import InvalidRequestError
from gradtape.session import _Open, _State, _TapeCall
from gradtape.tensor import Tensor

if TYPE_CHECKING:
    from gradtape.session import Session, Variable

UNCONNECTED = ("none", "zero")


def flatten(structure: Any) -> list[Any]:
    """The leaves of a nested list, tuple or dict (tensors, arrays, None)."""
    if isinstance(structure, list | tuple):
        return [leaf for item in structure for leaf in flatten(item)]
    if isinstance(structure, dict):
        return [leaf for item in structure.values() for leaf in flatten(item)]
    return [structure]


def pack(structure: Any, leaves: Iterator[Any]) -> Any:
    """`structure` with its leaves replaced, in order, by `leaves`."""
    if isinstance(structure, list | tuple):
        packed = [pack(item, leaves) for item in structure]
        return packed if isinstance(structure, list) else tuple(packed)
    if isinstance(structure, dict):
        return {k: pack(v, leaves) for k, v in structure.items()}
    return next(leaves)


class GradientTape:
    """TensorFlow's GradientTape, held in a session: records the ops run inside its `with`
    block on the tensors it watches (and on trainable variables, unless
    `watch_accessed_variables=False`). A tape that is not `persistent` answers one query."""

    def __init__(self, session: Session, persistent: bool = False,
                 watch_accessed_variables: bool = True):
        self._session = session
        self.persistent = persistent
        self.watch_accessed_variables = watch_accessed_variables
        self._id: str | None = None
        self._state = "new"  # what the user sees: new, recording, paused, stopped
        self._target = "new"  # the state the sent queue has reached
        self._server = "new"  # the state the server has

    def __repr__(self) -> str:
        return f"<gt.GradientTape {self._id or '(not opened yet)'} {self._state}>"

    # ----- recording -----

    def __enter__(self) -> GradientTape:
        if self._state != "new":
            raise RuntimeError("a tape records in one `with` block; open a new tape")
        self._session._check_open()
        self._session._queue.append(_Open(self))
        self._session._tapes.append(weakref.ref(self))
        self._state = "recording"
        return self

    def __exit__(self, *exc: object) -> None:
        if self._state in ("recording", "paused"):
            self._state = "stopped"
            self._session._queue.append(_State(self, "stopped"))

    def watch(self, tensor: Any) -> None:
        """Record the ops on `tensor` (a tensor, a variable, or a nested list of them) from
        now on."""
        self._opened("watch")
        session = self._session
        names = []
        for t in flatten(tensor):
            if not isinstance(t, Tensor):
                raise TypeError(f"watch takes tensors, not {type(t).__name__}")
            names.append(session._ref(t))
        session._watch(self, names)

    @contextmanager
    def stop_recording(self) -> Iterator[None]:
        """Ops inside this block are not recorded (TensorFlow's stop_recording)."""
        if self._state != "recording":
            raise RuntimeError("stop_recording needs a tape that is recording (inside its "
                               "`with` block)")
        self._session._queue.append(_State(self, "paused"))
        self._state = "paused"
        try:
            yield
        finally:
            if self._state == "paused":
                self._session._queue.append(_State(self, "recording"))
                self._state = "recording"

    def reset(self) -> None:
        """Forget everything recorded and watched (the tape keeps recording if it was)."""
        self._opened("reset")
        self._session._queue.append(_TapeCall(self, "reset"))

    def watched_variables(self) -> tuple[Variable, ...]:
        """The variables this tape watches (explicitly, or because it recorded an op on
        them)."""
        from gradtape.session import Variable

        self._opened("watched_variables")
        session = self._session
        session.flush()
        info = session._client.request("GET", self._path())
        found = []
        for name in info["watched"]:
            var = session._variables.get(name)
            if isinstance(var, Variable):
                found.append(var)
        return tuple(found)

    # ----- queries -----

    def gradient(self, target: Any, sources: Any, output_gradients: Any = None,
                 unconnected_gradients: str = "none") -> Any:
        """d target / d sources, in the structure of `sources` (a tensor, or a nested list,
        tuple or dict of them). A list of targets gets the gradient of their sum;
        `output_gradients` weights the target (a vector-Jacobian product). An unwatched or
        unconnected source gets None, or zeros with `unconnected_gradients="zero"`."""
        self._opened("gradient")
        _check_unconnected(unconnected_gradients)
        session = self._session
        targets = flatten(target)
        target_names = [session._ref(_tensor(t, "target")) for t in targets]
        leaves = flatten(sources)
        names = [session._ref(_tensor(s, "sources")) for s in leaves]
        unique = list(dict.fromkeys(names))
        body: dict[str, Any] = {
            "target": target_names[0] if isinstance(target, Tensor) else target_names,
            "sources": unique, "unconnected_gradients": unconnected_gradients,
            "encoding": "base64"}
        if output_gradients is not None:
            body["output_gradients"] = _cotangents(target, targets, target_names,
                                                   output_gradients)
        record = bool(session.recording_tapes()) and isinstance(target, Tensor)
        grads = session._client.run(self._gradient_flow(body, record))
        return pack(sources, iter(grads[n] for n in names))

    def _gradient_flow(self, body: dict[str, Any], record: bool) -> Flow[dict[str, Any]]:
        session = self._session
        yield from session._flush_flow([], sync_tapes=record)
        saved = {n: session._new_name("gradient") for n in body["sources"]} if record else {}
        while True:
            if saved:
                body["save_as"] = saved
            else:
                body.pop("save_as", None)
            try:
                answer = yield Call("POST", self._path("gradient"), body)
            except InvalidRequestError as exc:
                # a null gradient (unwatched, unconnected, integer) has nothing to save
                loc = exc.loc or []
                if len(loc) == 3 and loc[:2] == ["body", "save_as"] and loc[2] in saved:
                    del saved[str(loc[2])]
                    continue
                raise
            break
        out: dict[str, Any] = {}
        for name, raw in answer["gradients"].items():
            if raw is None:
                out[name] = None
            elif name in saved:
                out[name] = Tensor(session, saved[name], _codec.decode(raw))
            else:
                out[name] = Tensor(session, session._new_name("gradient"), _codec.decode(raw),
                                   bound=False)
        return out

    def jacobian(self, target: Any, sources: Any, unconnected_gradients: str = "none",
                 parallel_iterations: int | None = None,
                 experimental_use_pfor: bool = True) -> Any:
        """Full Jacobians d target / d source, shaped target.shape + source.shape, in the
        structure of `sources` (the last two arguments are TensorFlow's, and unused)."""
        return self._query("jacobian", target, sources, unconnected_gradients)

    def batch_jacobian(self, target: Any, source: Any, unconnected_gradients: str = "none",
                       parallel_iterations: int | None = None,
                       experimental_use_pfor: bool = True) -> Any:
        """Per-example Jacobians [batch, target..., source...] (examples independent)."""
        return self._query("batch_jacobian", target, source, unconnected_gradients)

    def hessian(self, target: Any, sources: Any, unconnected_gradients: str = "none") -> Any:
        """Hessian of a scalar target: for one source a tensor shaped source.shape * 2, for
        a list of sources a list of lists of blocks d2 target / da db."""
        return self._query("hessian", target, sources, unconnected_gradients)

    def hvp(self, target: Any, sources: Any, vectors: Any,
            unconnected_gradients: str = "none") -> Any:
        """Hessian-vector products of a scalar target, one per source, with `vectors`
        shaped like `sources` (forward-over-reverse on the server; no Hessian is built)."""
        return self._query("hvp", target, sources, unconnected_gradients, vectors)

    def _query(self, route: str, target: Any, sources: Any, unconnected: str,
               vectors: Any = None) -> Any:
        self._opened(route)
        _check_unconnected(unconnected)
        session = self._session
        target_name = session._ref(_tensor(target, "target"))
        leaves = flatten(sources)
        names = [session._ref(_tensor(s, "sources")) for s in leaves]
        unique = list(dict.fromkeys(names))
        body: dict[str, Any] = {"target": target_name, "sources": unique,
                                "unconnected_gradients": unconnected, "encoding": "base64"}
        if route == "hvp":
            vecs = flatten(vectors)
            if len(vecs) != len(leaves):
                raise ValueError("hvp needs one vector per source")
            body["vectors"] = {n: like(v, s) for n, v, s in zip(names, vecs, leaves, strict=True)}
            body["include"] = ["hvp"]
        answer = session._client.run(self._query_flow(route, body))
        key = {"jacobian": "jacobian", "batch_jacobian": "jacobian", "hessian": "hessian",
               "hvp": "hvp"}[route]
        blocks = answer[key]
        if route == "hessian":
            rows = [[self._result(blocks[a][b]) for b in names] for a in names]
            return rows[0][0] if isinstance(sources, Tensor) else rows
        return pack(sources, iter(self._result(blocks[n]) for n in names))

    def _query_flow(self, route: str, body: dict[str, Any]) -> Flow[dict[str, Any]]:
        yield from self._session._flush_flow([])
        answer: dict[str, Any] = yield Call("POST", self._path(route), body)
        return answer

    def _result(self, raw: Any) -> Tensor | None:
        if raw is None:
            return None
        session = self._session
        return Tensor(session, session._new_name("gradient"), _codec.decode(raw), bound=False)

    # ----- helpers -----

    def _opened(self, what: str) -> None:
        self._session._check_open()
        if self._state == "new":
            raise RuntimeError(f"{what}: the tape is not open yet; use it in a `with` block")

    def _tape_id(self) -> str:
        assert self._id is not None, "the tape is opened before it is used"
        return self._id

    def _path(self, *parts: str) -> str:
        session = self._session
        assert session.session_id is not None
        return path("sessions", session.session_id, "tapes", self._tape_id(), *parts)


def _tensor(value: Any, field: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{field} must be tensors of the session, not {type(value).__name__}")
    return value


def _check_unconnected(value: str) -> None:
    if value not in UNCONNECTED:
        raise ValueError(f"unconnected_gradients is 'none' or 'zero', not {value!r}")


def like(value: Any, tensor: Tensor) -> Any:
    """`value` as a request tensor of `tensor`'s dtype: exact bytes when that dtype is known
    here, else a bare nested list that the server reads in the dtype it expects."""
    array = value.numpy() if isinstance(value, Tensor) else np.asarray(value)
    if tensor._value is not None:
        return _codec.encode(array.astype(tensor._value.dtype))
    if isinstance(value, Tensor) or array.dtype.kind not in "fiub":
        return _codec.encode(_codec.as_array(array))
    return array.tolist()


def _cotangents(target: Any, targets: list[Any], names: list[str],
                output_gradients: Any) -> Any:
    if isinstance(target, Tensor):
        return like(output_gradients, target)
    given = flatten(output_gradients)
    if len(given) != len(names):
        raise ValueError("output_gradients needs one tensor per target")
    return {n: like(g, t) for n, g, t in zip(names, given, targets, strict=True)}
