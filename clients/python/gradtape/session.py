"""Sessions: a server-side eager workspace, driven lazily.

Nothing is sent when an op is written. The session keeps an ordered queue of what the user
did (ops, variables, tapes opened, watched, stopped, paused, resumed) and sends it when a
value is needed: consecutive ops go as one `POST .../run` that fetches only the values
wanted, the rest in order, so the server's tapes record exactly the ops that ran while they
recorded. What never needs sending is not sent:

- the session is created on the first flush (a session that computes nothing costs nothing);
- a constant is bound on the server only when an op, a watch or a query names it, as a node
  of the run that needs it;
- a tape's recording state (the end of its `with`, `stop_recording`) is sent only before
  the next op runs or the next gradient is recorded on other tapes, so a tape asked only for
  gradients after its block never pays for `stop`, and a pause with nothing run in it is
  never sent;
- names of results no longer referenced are reused for later results of the same op, so a
  loop does not pile up tensors on the server.

Errors in queued ops surface at the flush that sends them (as with TensorFlow's asynchronous
execution); `Session.flush()` sends the queue at once.
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from gradtape import _codec
from gradtape._flow import Call, Flow, path
from gradtape.errors import GradtapeError, NotFoundError
from gradtape.tensor import Builder, Tensor, _current, literal

if TYPE_CHECKING:
    from contextvars import Token

    from gradtape._http import Client
    from gradtape.optimizer import Optimizer
    from gradtape.tape import GradientTape as Tape


@dataclass
class _Run:
    """One `POST .../run`: constants bound, then names watched, then the nodes run."""

    inputs: dict[str, dict[str, Any] | _codec.Raw] = field(default_factory=dict)
    watch: dict[Tape, list[str]] = field(default_factory=dict)
    nodes: list[dict[str, Any]] = field(default_factory=list)

    def mentions(self, name: str) -> bool:
        return any(name in names for names in self.watch.values()) or any(
            name in node["args"] for node in self.nodes)


@dataclass
class _Put:
    variable: Variable
    value: np.ndarray


@dataclass
class _Open:
    tape: Tape


@dataclass
class _State:
    """The tape's recording state from here on: 'recording', 'paused' or 'stopped'."""

    tape: Tape
    state: str


@dataclass
class _TapeCall:
    """A tape request whose place in the order matters (reset, delete)."""

    tape: Tape
    action: str


@dataclass
class _Release:
    """Delete a tape its user no longer holds (its object was collected): by id, since the
    object is gone."""

    tape_id: str


Command = _Run | _Put | _Open | _State | _TapeCall | _Release


class Session(Builder):
    """A gradtape session: `with client.session() as s:`; deleted when the block ends.

    Inside the block, `gt.constant`, `gt.Variable` and `gt.GradientTape` use this session
    too, and ops whose arguments hold no tensor run in it.
    """

    def __init__(self, client: Client, ttl_seconds: float | None = None):
        self._client = client
        self._ttl = ttl_seconds
        self.session_id: str | None = None
        self._queue: list[Command] = []
        self._counters: dict[str, int] = {}
        self._free: dict[str, list[str]] = {}
        self._taken: set[str] = set()
        # tapes opened in this session that their user still holds (weakly: a tape dropped
        # is deleted on the server, as TensorFlow frees a tape when it is collected)
        self._tapes: list[weakref.ref[Tape]] = []
        self._variables: weakref.WeakValueDictionary[str, Variable] = \
            weakref.WeakValueDictionary()
        self._closed = False
        self._tokens: list[Token[tuple[Builder, ...]]] = []

    # ----- the block -----

    def __enter__(self) -> Session:
        self._tokens.append(_current.set((*_current.get(), self)))
        return self

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        _current.reset(self._tokens.pop())
        try:
            self.close()
        except GradtapeError:
            if kind is None:
                raise  # a failure to delete is worth raising only if nothing else failed

    def close(self) -> None:
        """Delete the session on the server (queued work that nothing asked for is
        dropped)."""
        self._queue.clear()
        self._closed = True
        if self.session_id is not None:
            sid, self.session_id = self.session_id, None
            self._client.request("DELETE", path("sessions", sid))

    @property
    def client(self) -> Client:
        return self._client

    # ----- making tensors -----

    def constant(self, value: Any, dtype: Any = None) -> Tensor:
        """A constant tensor (TensorFlow's tf.constant): floats become float32, ints int32
        unless `dtype` says otherwise; NumPy arrays keep their dtype."""
        self._check_open()
        array = value.numpy() if isinstance(value, Tensor) else value
        return Tensor(self, self._new_name("const"), _codec.as_array(array, dtype),
                      bound=False)

    def Variable(self, value: Any, trainable: bool = True, name: str | None = None,
                 dtype: Any = None) -> Variable:
        """A variable (TensorFlow's tf.Variable): assignable in place; a trainable one is
        watched by tapes that use it."""
        self._check_open()
        array = _codec.as_array(value.numpy() if isinstance(value, Tensor) else value, dtype)
        var = Variable(self, self._variable_name(name or "Variable"), array, trainable)
        self._queue.append(_Put(var, array))
        self._variables[var.name] = var
        return var

    def GradientTape(self, persistent: bool = False,
                     watch_accessed_variables: bool = True) -> Tape:
        """A tape of this session (see `gt.GradientTape`)."""
        from gradtape.tape import GradientTape

        return GradientTape(self, persistent, watch_accessed_variables)

    def Optimizer(self, method: str, learning_rate: float, variables: Any = None,
                  name: str | None = None, **options: Any) -> Optimizer:
        """An optimizer of this session's variables (see `gt.Optimizer`)."""
        from gradtape.optimizer import Optimizer

        self._check_open()
        return Optimizer(self, method, learning_rate, variables, name, **options)

    def flush(self) -> None:
        """Send every queued op and tape change now."""
        self._client.run(self._flush_flow([]))

    # ----- Builder -----

    def _ref(self, tensor: Tensor) -> str:
        if tensor._builder is not self:
            raise ValueError(f"tensor {tensor.name!r} belongs to another session or trace")
        self._check_open()
        if not tensor._bound:
            assert tensor._value is not None
            tail = self._queue[-1] if self._queue else None
            if not isinstance(tail, _Run) or tail.mentions(tensor.name):
                tail = _Run()
                self._queue.append(tail)
            tail.inputs[tensor.name] = _codec.encode(tensor._value)
            tensor._bound = True
        return tensor.name

    def _add(self, op: str, args: list[Any], attrs: dict[str, Any], n_out: int) -> list[Tensor]:
        self._check_open()
        names = [self._new_name(op) for _ in range(n_out)]
        node: dict[str, Any] = {"id": names[0] if n_out == 1 else names, "op": op,
                                "args": args}
        if attrs:
            node["attrs"] = attrs
        self._node(node)
        return [Tensor(self, n) for n in names]

    def _value(self, tensor: Tensor) -> np.ndarray:
        if tensor._value is None:
            self._check_open()
            self._client.run(self._flush_flow([tensor]))
        assert tensor._value is not None
        return tensor._value

    def _release(self, tensor: Tensor) -> None:
        if self._closed or isinstance(tensor, Variable):
            return
        op = tensor.name.rsplit(":", 1)[0]
        self._free.setdefault(op, []).append(tensor.name)

    # ----- names and the queue -----

    def _new_name(self, op: str) -> str:
        free = self._free.get(op)
        if free:
            return free.pop()
        count = self._counters.get(op, 0) + 1
        self._counters[op] = count
        return f"{op}:{count}"

    def _variable_name(self, base: str) -> str:
        name, k = base, 0
        while name in self._taken:
            k += 1
            name = f"{base}_{k}"
        self._taken.add(name)
        return name

    def _node(self, node: dict[str, Any]) -> None:
        tail = self._queue[-1] if self._queue else None
        if isinstance(tail, _Run):
            tail.nodes.append(node)
        else:
            self._queue.append(_Run(nodes=[node]))

    def _watch(self, tape: Tape, names: list[str]) -> None:
        """Queue a watch: part of the next run, before its nodes."""
        tail = self._queue[-1] if self._queue else None
        if not isinstance(tail, _Run) or tail.nodes:
            tail = _Run()
            self._queue.append(tail)
        watched = tail.watch.setdefault(tape, [])
        watched.extend(n for n in names if n not in watched)

    def _arg(self, value: Any) -> Any:
        """An op argument: a tensor's name, or a constant's wire form."""
        return self._ref(value) if isinstance(value, Tensor) else literal(value)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the session is closed (its `with` block ended)")

    def _path(self, *parts: str) -> str:
        assert self.session_id is not None
        return path("sessions", self.session_id, *parts)

    # ----- sending -----

    def _flush_flow(self, want: list[Tensor], sync_tapes: bool = False) -> Flow[None]:
        """Send the queue in order, fetching the values of `want` with the last run.
        With `sync_tapes`, every tape's recording state on the server is made the client's
        (before a query whose result other tapes must record)."""
        queue, self._queue = self._queue, []
        wanted = list({t.name: t for t in want if t._value is None}.values())
        if not queue and not wanted and not (sync_tapes and self._unsynced()):
            return
        if self.session_id is None:
            created = yield Call("POST", "/sessions",
                                 {"ttl_seconds": self._ttl} if self._ttl is not None else {})
            self.session_id = created["session_id"]
        last_run = max((i for i, c in enumerate(queue) if isinstance(c, _Run)), default=-1)
        for i, command in enumerate(queue):
            if isinstance(command, _Run):
                yield from self._sync_flow()
                run: dict[str, Any] = {"nodes": command.nodes, "encoding": "base64",
                                       "fetch": [t.name for t in wanted] if i == last_run
                                       else []}
                if command.inputs:
                    run["inputs"] = command.inputs
                if command.watch:
                    run["watch"] = {tape._tape_id(): names
                                    for tape, names in command.watch.items()}
                answer = yield Call("POST", self._path("run"), run)
                for t in wanted if i == last_run else ():
                    t._value = _codec.decode(answer["values"][t.name])
            elif isinstance(command, _Put):
                var = command.variable
                yield Call("PUT", self._path("tensors", var.name), {
                    "value": _codec.encode(command.value), "variable": True,
                    "trainable": var.trainable})
            elif isinstance(command, _Open):
                tape = command.tape
                answer = yield Call("POST", self._path("tapes"), {
                    "persistent": tape.persistent,
                    "watch_accessed_variables": tape.watch_accessed_variables})
                tape._id = answer["tape_id"]
                tape._server = tape._target = "recording"
                weakref.finalize(tape, _release, weakref.ref(self), tape._id)
            elif isinstance(command, _Release):
                with contextlib.suppress(NotFoundError):  # deleted by other means already
                    yield Call("DELETE", self._path("tapes", command.tape_id))
            elif isinstance(command, _State):
                command.tape._target = command.state
            else:
                if command.action == "delete":
                    yield Call("DELETE", command.tape._path())
                else:
                    yield Call("POST", command.tape._path(command.action))
        if sync_tapes:
            yield from self._sync_flow()
        if last_run < 0:
            for t in wanted:
                answer = yield Call("GET", self._path("tensors", t.name),
                                    params={"encoding": "base64"})
                t._value = _codec.decode(answer)

    def _live_tapes(self) -> list[Tape]:
        """The tapes of this session their user still holds, in the order they were
        opened."""
        live = [t for t in (ref() for ref in self._tapes) if t is not None]
        if len(live) < len(self._tapes):
            self._tapes = [weakref.ref(t) for t in live]
        return live

    def _unsynced(self) -> list[Tape]:
        return [t for t in self._live_tapes() if t._id is not None and t._server != t._target]

    def _sync_flow(self) -> Flow[None]:
        """Bring each tape's recording state on the server to what the queue reached."""
        for tape in self._unsynced():
            action = {"paused": "pause", "stopped": "stop", "recording": "resume"}[tape._target]
            yield Call("POST", tape._path(action))
            tape._server = tape._target

    def recording_tapes(self) -> list[Tape]:
        """Tapes inside their `with` block and not paused, innermost last."""
        return [t for t in self._live_tapes() if t._state == "recording"]


class Variable(Tensor):
    """A session variable (TensorFlow's tf.Variable). Ops read its value at the point they
    run; `assign`, `assign_add` and `assign_sub` update it in place (they are not recorded
    on tapes, as in TensorFlow)."""

    def __init__(self, session: Session, name: str, value: np.ndarray, trainable: bool):
        super().__init__(session, name, value)
        self.trainable = trainable
        self._session = session
        self._shape = tuple(value.shape)
        self._dtype = value.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def dtype(self) -> str:
        return str(self._dtype.name)

    def assign(self, value: Any) -> Variable:
        """Set the value (broadcast and cast to the variable's shape and dtype)."""
        return self._update("assign", value)

    def assign_add(self, delta: Any) -> Variable:
        """Add `delta` in place."""
        return self._update("assign_add", delta)

    def assign_sub(self, delta: Any) -> Variable:
        """Subtract `delta` in place."""
        return self._update("assign_sub", delta)

    def _update(self, op: str, value: Any) -> Variable:
        session = self._session
        session._check_open()
        session._node({"id": self.name, "op": op, "args": [self.name, session._arg(value)]})
        if op == "assign" and not isinstance(value, Tensor):
            known = _codec.as_array(value)
            self._value = np.broadcast_to(known, self._shape).astype(self._dtype)
        else:
            self._value = None
        return self

    def __repr__(self) -> str:
        value = "" if self._value is None else f" {self._value!r}"
        return f"<gt.Variable {self.name!r} shape={list(self._shape)} " \
               f"dtype={self._dtype.name}{value}>"


def _release(session_ref: weakref.ref[Session], tape_id: str) -> None:
    """A tape object was collected: delete it on the server with the session's next
    requests (nothing is sent from here; a closed session is gone with its tapes)."""
    session = session_ref()
    if session is not None and not session._closed:
        session._queue.append(_Release(tape_id))
