"""Optimizers held in the session: optax's update rules run on the server, with TensorFlow's
optimizer methods.

`minimize(loss, var_list, tape=tape)` is one request: the tape's gradient with `apply`, so the
gradients never come back to the client. `step(loss_fn, *args)` is one request for the whole
step: the function is traced (as `gt.function` traces) and the server runs forward, gradient
and update as one compiled function. `apply_gradients(zip(grads, vars))` sends gradients
the client holds. Either way the variables change on the server, and their values here are
fetched again when next read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from gradtape import _codec
from gradtape._flow import Call, Flow, path
from gradtape.function import Function, _renamed, function
from gradtape.tensor import Tensor

if TYPE_CHECKING:
    from gradtape.session import Session, Variable
    from gradtape.tape import GradientTape

METHODS = ("sgd", "adam", "adamw", "rmsprop", "adagrad")


class Optimizer:
    """An optimizer of a session's variables (`session.Optimizer("adam", 1e-3)`): `method`
    is one of optax's sgd, adam, adamw, rmsprop and adagrad, `options` its keyword
    arguments (momentum, b1, weight_decay, ...). It is created on the server when first used,
    over `variables` (default: every trainable variable the session has then); each variable
    keeps its own state (moments, counts) there."""

    def __init__(self, session: Session, method: str, learning_rate: float,
                 variables: Iterable[Variable] | None = None, name: str | None = None,
                 **options: Any):
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
        self._session = session
        self.method = method
        self.learning_rate = float(learning_rate)
        self.options = options
        self.name = session._variable_name(name or method)
        self._variables = None if variables is None else list(variables)
        self._created = False
        self._functions: dict[Callable[..., Any], Function] = {}
        self.iterations = 0  # updates applied (TensorFlow's optimizer.iterations)

    def __repr__(self) -> str:
        return f"<gt.Optimizer {self.name!r} {self.method} lr={self.learning_rate}>"

    def minimize(self, loss: Tensor, var_list: Iterable[Variable], tape: GradientTape) -> int:
        """One update of `var_list` down the gradient of `loss` that `tape` recorded, in one
        request (the gradients stay on the server). Returns the optimizer's step count."""
        from gradtape.tape import _tensor

        tape._opened("minimize")
        session = self._session
        target = session._ref(_tensor(loss, "loss"))
        variables = self._own(var_list, "var_list")
        sources = [session._ref(v) for v in variables]
        return self._update(variables, lambda: Call(
            "POST", tape._path("gradient"),
            {"target": target, "sources": sources, "apply": self.name, "encoding": "none"}))

    def apply_gradients(self, grads_and_vars: Iterable[tuple[Any, Variable]]) -> int:
        """One update with gradients the client holds (TensorFlow's `apply_gradients`); a
        pair whose gradient is None leaves its variable as it is. Returns the step count."""
        pairs = [(g, v) for g, v in grads_and_vars if g is not None]
        variables = self._own([v for _, v in pairs], "grads_and_vars")
        gradients = {v.name: _codec.encode(_codec.as_array(
            g.numpy() if isinstance(g, Tensor) else g)) for g, v in pairs}
        return self._update(variables, lambda: Call(
            "POST", self._path("apply"), {"gradients": gradients}))

    def step(self, fn: Callable[..., Any], *args: Tensor, repeat: int = 1,
             return_loss: bool = True) -> Any:
        """A whole training step in one request (`POST .../step`): `fn`, a function of the
        session's tensors and variables `args` returning the scalar loss (traced as
        `gt.function` traces), its gradient and this optimizer's update run on the server as
        one compiled function; `repeat` runs that many steps on the same arguments. Returns
        the loss before the update (a list of `repeat` losses).

        With `return_loss=False` (and `repeat` 1) the step asks for nothing back and returns
        None: the server answers once the step is under way and computes it while this
        process prepares the next one, as JAX does in process. A loop that reads its loss
        every tenth step this way runs faster than one that reads it every step."""
        if not 1 <= repeat <= 10_000:
            raise ValueError("repeat must be between 1 and 10000")
        session = self._session
        traced_fn = fn if isinstance(fn, Function) else self._functions.get(fn)
        if traced_fn is None:  # a plain function: traced once per shape, as gt.function's
            traced_fn = self._functions[fn] = function(fn)
        inputs = {p.name: _spec(arg, p.name) for p, arg in zip(traced_fn._params, args,
                                                                strict=False)}
        if len(args) != len(traced_fn._params):
            raise TypeError(f"{traced_fn.fn.__name__} takes {len(traced_fn._params)} "
                            f"arguments; step was given {len(args)}")
        traced = traced_fn.trace(inputs)
        if len(traced.outputs) != 1:
            raise TypeError(f"{traced_fn.fn.__name__} returns {len(traced.outputs)} values; "
                            "a step needs the loss alone")
        for arg in args:
            if arg._builder is not session:
                raise TypeError("step takes tensors and variables of this optimizer's session")
        # constants only the client knows go with the step as its inputs (bound in the
        # session as a run would bind them): a new batch each step is still one request
        carried = [arg for arg in args if not arg._bound and arg._value is not None]
        values = {arg.name: arg._value for arg in carried if arg._value is not None}
        rename = {name: arg.name if arg.name in values else session._ref(arg)
                  for name, arg in zip(inputs, args, strict=True)}
        for node in traced.graph["nodes"]:  # node results: names of their own in the step
            ids = node["id"] if isinstance(node["id"], list) else [node["id"]]
            rename.update({i: f"{STEP_PREFIX}{i}" for i in ids})
        nodes = [_renamed(node, rename) for node in traced.graph["nodes"]]
        target = rename[traced.outputs[0]]
        variables = [a for a in args if _is_variable(a)]
        quiet = not return_loss and repeat == 1
        body = {"nodes": nodes, "target": target, "optimizer": self.name, "repeat": repeat,
                "fetch": [] if quiet else [target]}
        if values:
            body["inputs"] = {name: _codec.encode(value) for name, value in values.items()}
        answer = session._client.run(self._update_flow(
            variables, lambda: Call("POST", session._path("step"), body), keep=True))
        for arg in carried:
            arg._bound = True
        if quiet:
            return None
        if repeat > 1:
            return [float(x) for x in answer["losses"]] if return_loss else None
        return float(_codec.decode(answer["values"][target]))

    # ----- internals -----

    def _own(self, variables: Iterable[Variable], field: str) -> list[Variable]:
        from gradtape.session import Variable

        found = list(variables)
        for v in found:
            if not isinstance(v, Variable) or v._session is not self._session:
                raise TypeError(f"{field} takes variables of this optimizer's session")
        if not found:
            raise ValueError(f"{field} is empty: name the variables to update")
        return found

    def _update(self, variables: list[Variable], call: Any) -> int:
        step: int = self._session._client.run(self._update_flow(variables, call))
        return step

    def _update_flow(self, variables: Iterable[Tensor], call: Any, keep: bool = False
                     ) -> Flow[Any]:
        """Create the optimizer if it is not yet, then make `call`; returns the step count
        (the whole answer with `keep`)."""
        session = self._session
        yield from session._flush_flow([])
        if not self._created:
            body: dict[str, Any] = {"name": self.name, "method": self.method,
                                    "learning_rate": self.learning_rate,
                                    "options": self.options}
            if self._variables is not None:
                body["variables"] = [session._ref(v) for v in self._variables]
            yield Call("POST", session._path("optimizers"), body)
            self._created = True
        answer = yield call()
        for v in variables:  # changed on the server: read again when next needed
            v._value = None
        self.iterations = int(answer["step"])
        return answer if keep else self.iterations

    def _path(self, *parts: str) -> str:
        assert self._session.session_id is not None
        return path("sessions", self._session.session_id, "optimizers", self.name, *parts)


STEP_PREFIX = "_step/"  # a step's node results, apart from the session's names


def _spec(arg: Any, name: str) -> np.ndarray:
    """An array of the argument's dtype and shape, for tracing (a variable's value is not
    fetched for it)."""
    if not isinstance(arg, Tensor):
        raise TypeError(f"step takes session tensors and variables; {name!r} is "
                        f"{type(arg).__name__}")
    if _is_variable(arg):  # its dtype and shape, as a view of one zero (nothing allocated)
        return np.broadcast_to(np.zeros((), arg.dtype), arg.shape)
    return np.asarray(arg.numpy())


def _is_variable(arg: Any) -> bool:
    from gradtape.session import Variable

    return isinstance(arg, Variable)
