"""Session state as plain data: arrays, ids, names and records. No closures, so that a
session can be serialized and served by any replica; the only JAX objects are device arrays,
held beside a value's NumPy form (`Session.device`) or a compiled call's in its place until
it is read (a pending value, `Values`), and neither is ever serialized as such."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from operator import attrgetter
from typing import Any

import jax
import numpy as np

TensorId = int
Handle = int
_nbytes = attrgetter("nbytes")
# bytes past which a tensor is big: kept aligned and as its device array for compiled calls
# to read in place; under it, copying is cheaper than the objects that avoid the copy
BIG = 65_536

# What a session holds beside tensor data, in bytes, measured with tracemalloc on CPython 3.11
# (tests/test_limits.py checks the accounting against a measurement): a NumPy array object and
# its slots in the session's dicts; a recorded op with its tuples; one argument or result of a
# record; a name and its binding; a variable.
TENSOR_OVERHEAD = 200
RECORD_OVERHEAD = 300
ARG_OVERHEAD = 40
NAME_OVERHEAD = 150
VARIABLE_OVERHEAD = 150


@functools.cache
def on_accelerator() -> bool:
    """Whether compiled calls run on an accelerator (JAX's default backend is not the CPU)."""
    return jax.default_backend() != "cpu"


def host(value: np.ndarray) -> np.ndarray:
    """A compiled call's result as a session keeps it: a small result viewing a JAX buffer is
    copied, as the view keeps the buffer and its wrappers alive (ten times the size of a
    scalar's data and its array)."""
    if value.base is not None and value.nbytes <= BIG:
        return np.array(value)
    return value


class Values(dict[TensorId, Any]):
    """A session's tensor data by id, as NumPy arrays.

    A compiled call's result may be kept before the call has finished (`pending`): JAX
    computes asynchronously, and a training loop's next request can be read, checked and
    planned while its last step still runs. Such a value is held as the call's own array
    until something reads it here, which waits for it and keeps its NumPy form from then on.
    `Session.array`, which feeds compiled calls, hands a pending array on without waiting
    (JAX orders the calls), and `raw` gives one whose size alone is needed (`nbytes`,
    `shape` and `dtype` are known before the compute ends). `under_way` is the estimated
    floating-point work of the call that computes the pending values (unknown: infinite),
    for a caller to judge how long reading one may wait.

    Only the last such call may still be computing (`start` waits for the one before), so
    `ready` asks its arrays alone. A big value of an earlier call stays as its array once
    computed, until it is read: its NumPy form is a copy from the accelerator where there is
    one, and a compiled call reads the array itself (`Session.device`)."""

    under_way: float = 0.0
    # what the last call keeps here, as (id, array): what may still be computing
    last: tuple[tuple[TensorId, Any], ...] = ()

    def __getitem__(self, tid: TensorId) -> np.ndarray:
        value = dict.__getitem__(self, tid)
        return value if isinstance(value, np.ndarray) else self._settle(tid, value)

    def get(self, tid: TensorId, default: Any = None) -> Any:  # type: ignore[override]
        return self[tid] if dict.__contains__(self, tid) else default

    def values(self) -> Any:  # type: ignore[override]
        self.settle()
        return dict.values(self)

    def items(self) -> Any:  # type: ignore[override]
        self.settle()
        return dict.items(self)

    def pop(self, tid: TensorId, *default: Any) -> Any:  # type: ignore[override]
        if dict.__contains__(self, tid):
            value = self[tid]
            dict.__delitem__(self, tid)
            return value
        return dict.pop(self, tid, *default)

    def copy(self) -> Values:  # type: ignore[override]
        """A shallow copy that keeps pending values pending."""
        copy = Values(dict.items(self))
        copy.under_way, copy.last = self.under_way, self.last
        return copy

    def hold(self, tid: TensorId, array: Any) -> None:
        """Keep a compiled call's array as it is, pending, among the last call's (`start`)."""
        dict.__setitem__(self, tid, array)
        self.last = (*self.last, (tid, array))

    def raw(self, tid: TensorId) -> Any:
        """The value as held: a NumPy array, or a pending compiled call's array."""
        return dict.__getitem__(self, tid)

    def held(self) -> Any:
        """Every value as held, without waiting for pending ones (for their sizes)."""
        return dict.values(self)

    def pending(self) -> list[TensorId]:
        return [tid for tid, v in dict.items(self) if not isinstance(v, np.ndarray)]

    def ready(self) -> bool:
        """Whether reading any value here would not wait (no pending value is still being
        computed)."""
        return all(array.is_ready() for _, array in self.last)

    def settle(self) -> None:
        """Wait for every pending value and keep its NumPy form."""
        for tid in self.pending():
            self._settle(tid, dict.__getitem__(self, tid))

    def start(self, flops: float) -> None:
        """Before a new call's results are kept pending: wait for the last call's (so one
        call at most is still computing, and a client that sends work faster than it computes
        has at most two calls under way per session, not a queue that grows), then note the
        new call's estimated work. The last call's small values take their NumPy form now;
        big ones stay as their arrays until read."""
        for tid, array in self.last:
            if array.nbytes <= BIG and dict.get(self, tid) is array:
                self._settle(tid, array)
            else:
                array.block_until_ready()
        self.last, self.under_way = (), flops

    def _settle(self, tid: TensorId, array: Any) -> np.ndarray:
        # np.asarray waits for the call that computes the array; on a CPU the NumPy form
        # shares its memory
        value = host(np.asarray(array))
        dict.__setitem__(self, tid, value)
        return value


@dataclass(frozen=True)
class Const:
    """A scalar constant argument, kept as a Python number (weakly typed, as in JAX)."""

    value: bool | int | float


Arg = TensorId | Const


@dataclass(frozen=True)
class Record:
    """One op a tape recorded: `outs = op(*args, **attrs)`.

    `op` is an op-table name, or `"gradient"` for a gradient computed while the tape was
    recording; its attrs then hold the inner tape's records and query (`GradientSpec`)."""

    op: str
    attrs: tuple[tuple[str, Any], ...]
    args: tuple[Arg, ...]
    outs: tuple[TensorId, ...]
    node: str


@dataclass(frozen=True)
class SourceSpec:
    """What a source name meant when a gradient was asked: a tensor, or a variable whose
    versions (values before and after assignments) all receive its gradient."""

    label: str
    shape: tuple[int, ...]
    dtype: str
    tensor: TensorId | None = None
    variable: Handle | None = None
    versions: tuple[TensorId, ...] = ()


@dataclass(frozen=True)
class GradientSpec:
    """A recorded gradient: d target / d sources over `records`, as plain data."""

    records: tuple[Record, ...]
    target: TensorId
    sources: tuple[SourceSpec, ...]
    with_cotangent: bool = False  # the record's last argument is output_gradients


@dataclass
class Variable:
    handle: Handle
    current: TensorId
    trainable: bool


@dataclass
class TapeSummary:
    """The bytes and the tensors read of a tape's first `count` records, brought up to date
    as the tape grows: a tape's records are only appended to, or replaced by a new list
    (reset, a used tape letting go), so a session's bookkeeping after each request costs
    what that request recorded, not the tape's whole length."""

    records: list[Record]  # the list summed (another list: summed again from the start)
    count: int = 0
    nbytes: int = 0
    reads: set[TensorId] = field(default_factory=set)


@dataclass
class Tape:
    tape_id: str
    persistent: bool
    watch_accessed_variables: bool
    stopped: bool = False
    paused: bool = False
    used: bool = False
    records: list[Record] = field(default_factory=list)
    tracked: set[TensorId] = field(default_factory=set)  # watched, or made by recorded ops
    watched_tensors: set[TensorId] = field(default_factory=set)
    watched_variables: set[Handle] = field(default_factory=set)
    summary_: TapeSummary | None = field(default=None, repr=False, compare=False)

    def copy(self) -> Tape:
        """A copy with containers of its own, as a snapshot keeps it: several times cheaper
        than `dataclasses.replace` (no `__init__`), which counts in a session holding many
        tapes, since every writing request snapshots them all."""
        new = object.__new__(Tape)
        new.__dict__.update(self.__dict__)
        new.records = list(self.records)
        new.tracked = set(self.tracked)
        new.watched_tensors = set(self.watched_tensors)
        new.watched_variables = set(self.watched_variables)
        return new

    def summary(self) -> TapeSummary:
        found = self.summary_
        if found is None or found.records is not self.records or \
                found.count > len(self.records):
            found = self.summary_ = TapeSummary(self.records)
        for rec in self.records[found.count:]:
            found.nbytes += record_bytes(rec)
            found.reads.update(a for a in rec.args if isinstance(a, int))
        found.count = len(self.records)
        return found

    @property
    def recording(self) -> bool:
        return not self.stopped and not self.paused

    def tracks(self, tid: TensorId, handle: Handle | None) -> bool:
        return tid in self.tracked or (handle is not None and handle in self.watched_variables)


@dataclass
class Optimizer:
    """An optimiser of some variables: its rule (method, learning rate, options) and, per
    variable, the tensors holding its optax state's leaves; `labels` are the variables'
    names when it was created."""

    name: str
    method: str
    learning_rate: float
    options: tuple[tuple[str, Any], ...]
    variables: tuple[Handle, ...]
    labels: tuple[str, ...]
    state: dict[Handle, tuple[TensorId, ...]] = field(default_factory=dict)
    step: int = 0


@dataclass
class Binding:
    """What a name means: a tensor, or a variable (whose value changes on assignment)."""

    tensor: TensorId | None = None
    variable: Handle | None = None


def record_bytes(rec: Record) -> int:
    """What one record holds: itself, its arguments and results, its node label, and for a
    recorded gradient the plain data of its spec (whose inner records are shared with the
    tape, so only their tuple is counted)."""
    size = RECORD_OVERHEAD + ARG_OVERHEAD * (len(rec.args) + len(rec.outs)) + len(rec.node)
    for _, value in rec.attrs:
        if isinstance(value, GradientSpec):
            size += 8 * len(value.records) + RECORD_OVERHEAD * (1 + len(value.sources))
            size += sum(ARG_OVERHEAD * len(spec.versions) for spec in value.sources)
    return size


@dataclass
class Session:
    session_id: str
    ttl_seconds: float
    created_at: float
    last_used: float
    owner: str | None = None  # a digest of the API key that created it
    values: Values = field(default_factory=Values)
    version_of: dict[TensorId, Handle] = field(default_factory=dict)
    names: dict[str, Binding] = field(default_factory=dict)
    variables: dict[Handle, Variable] = field(default_factory=dict)
    tapes: dict[str, Tape] = field(default_factory=dict)
    next_id: int = 1
    held_bytes: int = 0  # the last `footprint()`, kept up to date under the session's lock
    # Idempotency-Key -> (digest of the request, status, answer) of requests applied lately
    applied: dict[str, tuple[str, int, str]] = field(default_factory=dict)
    optimizers: dict[str, Optimizer] = field(default_factory=dict)
    # values a compiled call produced, as that call's arrays (on the accelerator where there
    # is one), beside their NumPy form in `values`, and on an accelerator the big values a
    # call read (`array`): a later call reads them from here without a copy. Never
    # serialized nor counted (on a CPU the two share their memory).
    device: dict[TensorId, Any] = field(default_factory=dict, repr=False, compare=False)
    # the snapshot of the request under way (see `snapshot`); never serialized
    taken: Snapshot | None = field(default=None, repr=False, compare=False)

    def array(self, tid: TensorId) -> Any:
        """A tensor's value for a compiled call: its device array when a call made it. On an
        accelerator, a big NumPy value (a batch bound once, a data set) is copied there by
        the first call that reads it and kept, as JAX keeps an array it has put on a device;
        on a CPU, a compiled call reads it in place."""
        found = self.device.get(tid)
        if found is not None:
            return found
        value = self.values.raw(tid)
        if type(value) is np.ndarray and value.nbytes > BIG and on_accelerator():
            found = self.device[tid] = jax.device_put(value)
            return found
        return value

    @property
    def expires_at(self) -> float:
        return self.last_used + self.ttl_seconds

    @property
    def nbytes(self) -> int:
        """Bytes of tensor data alone."""
        return sum(v.nbytes for v in self.values.values())

    def snapshot(self) -> Snapshot:
        """What `restore` needs to undo a request that failed halfway: shallow copies of the
        containers a request changes (the arrays themselves are never changed in place).

        A tape that is not recording changes only through a request that names it, which
        finds it with `SessionRuntime.tape` and so `touch`es it first: it is copied then,
        not here. A session that keeps many finished tapes (a client that never deletes
        one) pays for the tapes a request uses, not for all of them."""
        tapes, untouched = {}, set()
        for i, t in self.tapes.items():
            if t.recording:
                tapes[i] = t.copy()
            else:
                tapes[i] = t
                untouched.add(i)
        snap = Snapshot(self.values.copy(), dict(self.version_of), dict(self.names),
                        {h: replace(v) for h, v in self.variables.items()}, tapes,
                        self.next_id, self.held_bytes, dict(self.applied),
                        {n: replace(o, state=dict(o.state)) for n, o in self.optimizers.items()},
                        untouched)
        self.taken = snap
        return snap

    def touch(self, tape: Tape) -> Tape:
        """`tape`, about to change: the snapshot taken for this request keeps its state as it
        is now (a copy) if it holds the tape itself."""
        snap = self.taken
        if snap is not None and tape.tape_id in snap.untouched and \
                snap.tapes.get(tape.tape_id) is tape:
            snap.tapes[tape.tape_id] = tape.copy()
            snap.untouched.discard(tape.tape_id)
        return tape

    def drop_snapshot(self) -> None:
        """The request is over (done or undone): its snapshot is no longer kept."""
        self.taken = None

    def restore(self, snap: Snapshot) -> None:
        self.taken = None
        self.values, self.version_of, self.names = snap.values, snap.version_of, snap.names
        self.variables, self.tapes, self.applied = snap.variables, snap.tapes, snap.applied
        self.optimizers = snap.optimizers
        self.device = {t: a for t, a in self.device.items() if t in self.values}
        self.held_bytes = snap.held_bytes  # ids stay unique: next_id never goes back
        self.next_id = max(self.next_id, snap.next_id)

    def footprint(self) -> int:
        """Everything the session holds, in bytes: tensor data and the objects around it,
        names, variables and their versions, tapes and their records."""
        size = sum(map(_nbytes, self.values.held())) + TENSOR_OVERHEAD * len(self.values)
        size += sum(map(len, self.names)) + NAME_OVERHEAD * len(self.names)
        size += VARIABLE_OVERHEAD * len(self.variables) + ARG_OVERHEAD * len(self.version_of)
        for tape in self.tapes.values():
            size += RECORD_OVERHEAD + ARG_OVERHEAD * (
                len(tape.tracked) + len(tape.watched_tensors) + len(tape.watched_variables))
            if tape.records:
                size += tape.summary().nbytes
        size += sum(NAME_OVERHEAD + len(k) + len(v[2]) for k, v in self.applied.items())
        size += sum(RECORD_OVERHEAD + ARG_OVERHEAD * sum(map(len, o.state.values()))
                    for o in self.optimizers.values())
        return size

    def new_id(self) -> TensorId:
        tid = self.next_id
        self.next_id += 1
        return tid


@dataclass(frozen=True)
class Snapshot:
    values: Values
    version_of: dict[TensorId, Handle]
    names: dict[str, Binding]
    variables: dict[Handle, Variable]
    tapes: dict[str, Tape]
    next_id: int
    held_bytes: int
    applied: dict[str, tuple[str, int, str]]
    optimizers: dict[str, Optimizer]
    untouched: set[str] = field(default_factory=set)  # tapes held as themselves, not copies
