"""gradtape: TensorFlow's GradientTape with the tape held on a gradtape server.

    import gradtape as gt

    client = gt.Client("http://127.0.0.1:8000")      # or GRADTAPE_URL / GRADTAPE_API_KEY
    with client.session() as s:
        x = s.constant([[1.0, 1.0], [1.0, 1.0]])
        with s.GradientTape() as tape:
            tape.watch(x)
            y = gt.reduce_sum(x)
            z = y * y
        print(tape.gradient(z, x).numpy())           # [[8. 8.] [8. 8.]]

Every op of the server's catalogue is a function here (`gt.reduce_sum`, `gt.math.softplus`,
`gt.nn.relu`, `gt.linalg.inv`, ...). Ops are queued and sent as one request when a value is
needed. `gt.Optimizer` keeps an optax optimizer on the server (`minimize(loss, var_list,
tape=tape)` is one request). `gt.function` traces a Python function into a graph for the stateless routes
(`client.gradient`, `jacobian`, `hvp`, `hessian`, `jvp`, `evaluate`, `minimize`).
"""

from __future__ import annotations

from typing import Any

from gradtape import ops as _ops
from gradtape._catalog import CATALOG
from gradtape._http import AsyncClient, Client
from gradtape.errors import (
    AuthenticationError,
    CapacityError,
    ConflictError,
    GradtapeError,
    InvalidGraphError,
    InvalidRequestError,
    InvalidTensorError,
    MalformedRequestError,
    MethodNotAllowedError,
    NonFiniteError,
    NotFoundError,
    ServerError,
    TooLargeError,
    TransportError,
    UnavailableError,
    UnsupportedMediaTypeError,
)
from gradtape.function import (
    Function,
    GradientResult,
    HessianResult,
    HvpResult,
    JacobianResult,
    JvpResult,
    MinimizeResult,
    function,
)
from gradtape.ops import OpFunction, OpNamespace
from gradtape.optimizer import Optimizer as _Optimizer
from gradtape.session import Session
from gradtape.session import Variable as _Variable
from gradtape.tape import GradientTape as _GradientTape
from gradtape.tensor import Tensor, current_builder

__version__ = "0.1.0"

float32 = "float32"
float64 = "float64"
int32 = "int32"
int64 = "int64"
bool_ = "bool"

math: OpNamespace = _ops.NAMESPACES["math"]
nn: OpNamespace = _ops.NAMESPACES["nn"]
linalg: OpNamespace = _ops.NAMESPACES["linalg"]


def _session(what: str) -> Session:
    builder = current_builder()
    if not isinstance(builder, Session):
        raise RuntimeError(f"gt.{what} needs an open session: use it inside "
                           "`with client.session():` (or call s.{what} on the session)")
    return builder


def constant(value: Any, dtype: Any = None) -> Tensor:
    """A constant of the current session or trace (TensorFlow's tf.constant)."""
    builder = current_builder()
    if builder is None:
        raise RuntimeError("gt.constant needs an open session (`with client.session():`) "
                           "or a gt.function being traced")
    return builder.constant(value, dtype)


def Variable(value: Any, trainable: bool = True, name: str | None = None,
             dtype: Any = None) -> _Variable:
    """A variable of the current session (TensorFlow's tf.Variable)."""
    return _session("Variable").Variable(value, trainable=trainable, name=name, dtype=dtype)


def GradientTape(persistent: bool = False,
                 watch_accessed_variables: bool = True) -> _GradientTape:
    """A tape of the current session (TensorFlow's tf.GradientTape)."""
    return _session("GradientTape").GradientTape(persistent, watch_accessed_variables)


def Optimizer(method: str, learning_rate: float, variables: Any = None, name: str | None = None,
              **options: Any) -> _Optimizer:
    """An optimizer held in the current session: optax's `method` (sgd, adam, adamw, rmsprop,
    adagrad) runs on the server; `minimize` and `apply_gradients` as TensorFlow's."""
    return _session("Optimizer").Optimizer(method, learning_rate, variables, name, **options)


def __getattr__(name: str) -> OpFunction:
    """The ops of the catalogue: `gt.reduce_sum`, `gt.tanh`, ..."""
    try:
        return _ops.FUNCTIONS[name]
    except KeyError:
        raise AttributeError(f"module 'gradtape' has no attribute {name!r} (GET /v1/ops "
                             "lists the ops)") from None


def __dir__() -> list[str]:
    return sorted([*globals(), *_ops.FUNCTIONS])


__all__ = [
    "CATALOG",
    "AsyncClient",
    "AuthenticationError",
    "CapacityError",
    "Client",
    "ConflictError",
    "Function",
    "GradientResult",
    "GradientTape",
    "GradtapeError",
    "HessianResult",
    "HvpResult",
    "InvalidGraphError",
    "InvalidRequestError",
    "InvalidTensorError",
    "JacobianResult",
    "JvpResult",
    "MalformedRequestError",
    "MethodNotAllowedError",
    "MinimizeResult",
    "NonFiniteError",
    "NotFoundError",
    "OpFunction",
    "Optimizer",
    "ServerError",
    "Session",
    "Tensor",
    "TooLargeError",
    "TransportError",
    "UnavailableError",
    "UnsupportedMediaTypeError",
    "Variable",
    "constant",
    "function",
    "linalg",
    "math",
    "nn",
]
