"""Optimizers held in the session: optax's update rules run on the server, with TensorFlow's
optimizer methods.

`minimize(loss, var_list, tape=tape)` is one request: the tape's gradient with `apply`, so the
gradients never come back to the client. `apply_gradients(zip(grads, vars))` sends gradients
the client holds. Either way the variables change on the server, and their values here are
fetched again when next read.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from gradtape import _codec
from gradtape._flow import Call, Flow, path
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

    def _update_flow(self, variables: list[Variable], call: Any) -> Flow[int]:
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
        return self.iterations

    def _path(self, *parts: str) -> str:
        assert self._session.session_id is not None
        return path("sessions", self._session.session_id, "optimizers", self.name, *parts)
