"""Every op in `engine.ops.OPS`, driven by the table, in the spirit of JAX's lax_autodiff_test.

Each op has a spec below: input generators on a domain where it is defined and smooth, the
attributes to use (non-default ones where it has any) and an independent NumPy oracle. From it:
forward values against the oracle (float64, plus float32 for a few ops), reverse-mode gradients
with a random cotangent against central differences, Hessian-vector products against central
differences of the gradient, gradients cut by non-differentiable ops, and GET /v1/ops.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from engine.cache import CompileCache
from engine.compute import Bound, Engine
from engine.graph import parse_graph
from engine.ops import OPS

Gen = Callable[[np.random.Generator], np.ndarray]
X, V, M = (2, 3), (3,), (3, 3)

# ----- input generators -----


def U(shape: tuple[int, ...], lo: float = -2.0, hi: float = 2.0) -> Gen:
    return lambda r: r.uniform(lo, hi, shape)


def away(shape: tuple[int, ...], lo: float = 0.3, hi: float = 2.0) -> Gen:
    """Either sign, lo <= |x| <= hi: away from the kink or pole at 0."""
    return lambda r: r.choice([-1.0, 1.0], shape) * r.uniform(lo, hi, shape)


def sep(shape: tuple[int, ...]) -> Gen:
    """Distinct values at least 0.5 apart: no ties for sort, max, argmax."""
    n = math.prod(shape)
    return lambda r: (r.permutation(n) * 0.7 - 1.5 + r.uniform(-0.1, 0.1, n)).reshape(shape)


def grid(shape: tuple[int, ...]) -> Gen:
    """Floats in {0, 1, 2}: comparisons see ties."""
    return lambda r: r.integers(0, 3, shape).astype(np.float64)


def ints(shape: tuple[int, ...], hi: int) -> Gen:
    return lambda r: r.integers(0, hi, shape).astype(np.int32)


def bools(shape: tuple[int, ...]) -> Gen:
    return lambda r: r.random(shape) < 0.5


def fixed(value: Any, dtype: Any = np.float64) -> Gen:
    return lambda r: np.array(value, dtype)


def spd(n: int, flip: bool = False) -> Gen:
    """Symmetric positive definite (condition ~10); `flip` swaps two rows (det < 0)."""
    def gen(r: np.random.Generator) -> np.ndarray:
        a = r.normal(size=(n, n))
        s = a @ a.T / n + np.eye(n)
        return s[[1, 0, *range(2, n)]] if flip else s
    return gen


def lower(n: int) -> Gen:
    return lambda r: np.tril(r.uniform(-0.5, 0.5, (n, n)), -1) + np.diag(r.uniform(1, 2, n))


@dataclass(frozen=True)
class Lit:
    """A constant in the node's args instead of a named input: a Python scalar, or a generator
    whose array is sent as a tensor object."""

    value: Any


# ----- oracles -----


def fn(params: list[str], outputs: list[str], *nodes: tuple[Any, ...]) -> dict[str, Any]:
    """A function object: nodes as (id, op, args...)."""
    return {"params": params, "outputs": outputs,
            "nodes": [{"id": n[0], "op": n[1], "args": list(n[2:])} for n in nodes]}


def _iterate(f: Callable[[np.ndarray], np.ndarray], x: np.ndarray, times: int) -> np.ndarray:
    for _ in range(times):
        x = f(x)
    return x


def _scan_oracle(c: np.ndarray, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ys = []
    for x in xs:
        y = c * x
        c = y + np.sin(c)
        ys.append(y)
    return c, np.stack(ys)


def vec(f: Callable[[float], float]) -> Callable[[np.ndarray], np.ndarray]:
    return np.vectorize(f, otypes=[np.float64])


def _digamma(x: float) -> float:
    acc = 0.0
    while x < 8.0:  # psi(x) = psi(x + 1) - 1/x, then the asymptotic series
        acc -= 1.0 / x
        x += 1.0
    t = 1.0 / (x * x)
    series = t * (1 / 12 - t * (1 / 120 - t * (1 / 252 - t * (1 / 240 - t / 132))))
    return acc + math.log(x) - 0.5 / x - series


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _same_pads(size: int, k: int, stride: int, lower: bool = False) -> tuple[int, int]:
    """TensorFlow's SAME rule: ceil(size / stride) outputs, the odd extra pad on the high side
    (on the low side for SAME_LOWER)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + k - size, 0)
    small, big = total // 2, total - total // 2
    return (big, small) if lower else (small, big)


def np_conv(x: np.ndarray, w: np.ndarray, strides: Any = None, pads: Any = None,
            dilation: Any = None, groups: int = 1) -> np.ndarray:
    """Cross-correlation of NC... x with OI... w by explicit loops over output positions and
    kernel taps (each tap a matrix-vector product over one group's channels)."""
    n = x.ndim - 2
    strides = strides or (1,) * n
    dilation = dilation or (1,) * n
    pads = pads or ((0, 0),) * n
    xp = np.pad(x, ((0, 0), (0, 0), *pads))
    out_channels, per_group, kernel = w.shape[0], w.shape[1], w.shape[2:]
    size = [(xp.shape[2 + i] - (kernel[i] - 1) * dilation[i] - 1) // strides[i] + 1
            for i in range(n)]
    y = np.zeros((x.shape[0], out_channels, *size))
    for o in range(out_channels):
        g = o // (out_channels // groups)
        channels = slice(g * per_group, (g + 1) * per_group)
        for pos in np.ndindex(*size):
            for tap in np.ndindex(*kernel):
                at = tuple(pos[i] * strides[i] + tap[i] * dilation[i] for i in range(n))
                y[(slice(None), o, *pos)] += xp[(slice(None), channels, *at)] @ w[(o, slice(None), *tap)]
    return y


def np_pool(x: np.ndarray, window: Any, strides: Any, pads: Any, how: str) -> np.ndarray:
    """Max or mean over each window of the spatial axes of an NC... x, by explicit loops;
    padded cells are NaN and left out ('mean') or counted as zeros ('mean_with_pads')."""
    n = x.ndim - 2
    xp = np.pad(x, ((0, 0), (0, 0), *pads), constant_values=np.nan)
    size = [(xp.shape[2 + i] - window[i]) // strides[i] + 1 for i in range(n)]
    y = np.zeros((*x.shape[:2], *size))
    for pos in np.ndindex(*size):
        cells = xp[(slice(None), slice(None), *(slice(p * s, p * s + k) for p, s, k in
                                                zip(pos, strides, window, strict=True)))]
        flat = cells.reshape(*x.shape[:2], -1)
        if how == "max":
            y[(slice(None), slice(None), *pos)] = np.nanmax(flat, -1)
        elif how == "mean":
            y[(slice(None), slice(None), *pos)] = np.nanmean(flat, -1)
        else:
            y[(slice(None), slice(None), *pos)] = np.nansum(flat, -1) / flat.shape[-1]
    return y


def np_batch_norm(x: np.ndarray, scale: np.ndarray, bias: np.ndarray, mean: np.ndarray,
                  var: np.ndarray, eps: float) -> np.ndarray:
    y = np.empty_like(x)
    for c in range(x.shape[1]):
        y[:, c] = (x[:, c] - mean[c]) / math.sqrt(var[c] + eps) * scale[c] + bias[c]
    return y


SELU_ALPHA, SELU_SCALE = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946


# ----- the spec table -----


@dataclass(frozen=True)
class Spec:
    oracle: Callable[..., Any]
    args: tuple[Gen | Lit, ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    rtol: float = 1e-10  # forward, float64
    atol: float = 1e-12
    grad_tol: float = 1e-6  # relative and (x 0.1) absolute, gradient vs finite differences
    fd_step: float = 1e-6


def S(oracle: Callable[..., Any], *args: Gen | Lit, **kw: Any) -> Spec:
    return Spec(oracle, args, **kw)


def un(oracle: Callable[..., Any], gen: Gen | None = None, **kw: Any) -> Spec:
    return Spec(oracle, (gen or U(X),), **kw)


def bin_(oracle: Callable[..., Any], gx: Gen | None = None, gy: Gen | None = None,
         **kw: Any) -> Spec:
    """Binary elementwise: x is (2, 3), y is (3,), so broadcasting is exercised."""
    return Spec(oracle, (gx or U(X), gy or U(V)), **kw)


POS = U(X, 0.5, 3.0)

SPECS: dict[str, Spec] = {
    # elementwise binary
    "add": bin_(np.add),
    "subtract": bin_(np.subtract),
    "multiply": bin_(np.multiply),
    "divide": bin_(np.divide, gy=away(V, 0.5)),
    "floor_divide": bin_(np.floor_divide, away(X, 0.2, 5.0), away(V, 0.7)),
    "power": bin_(np.power, POS, U(V, -1.5, 1.5)),
    "maximum": bin_(np.maximum),
    "minimum": bin_(np.minimum),
    "mod": bin_(np.mod, away(X, 0.2, 5.0), away(V, 0.7)),
    "arctan2": bin_(np.arctan2, gy=away(V, 0.5)),
    "hypot": bin_(np.hypot, away(X), away(V)),
    "logaddexp": bin_(lambda x, y: np.log(np.exp(x) + np.exp(y))),
    "squared_difference": bin_(lambda x, y: (x - y) ** 2),
    "add_n": S(lambda x, y, z, c: x + y + z + c, U(X), U(X), U(V), Lit(0.5)),
    # elementwise unary
    "negative": un(np.negative),
    "reciprocal": un(lambda x: 1.0 / x, away(X, 0.5)),
    "square": un(lambda x: x * x),
    "sqrt": un(np.sqrt, POS),
    "rsqrt": un(lambda x: 1.0 / np.sqrt(x), POS),
    "cbrt": un(lambda x: np.sign(x) * np.abs(x) ** (1 / 3), away(X, 0.5)),
    "exp": un(np.exp),
    "exp2": un(lambda x: 2.0 ** x),
    "expm1": un(np.expm1, U(X, -1.0, 1.0)),
    "log": un(np.log, POS),
    "log1p": un(np.log1p, U(X, -0.5, 2.0)),
    "log2": un(lambda x: np.log(x) / math.log(2), POS),
    "log10": un(lambda x: np.log(x) / math.log(10), POS),
    "abs": un(np.abs, away(X)),
    "sign": un(np.sign, away(X)),
    "floor": un(np.floor, U(X, -3.0, 3.0)),
    "ceil": un(np.ceil, U(X, -3.0, 3.0)),
    "round": un(np.round, fixed([[0.5, 1.5, 2.5], [-0.5, -1.4, 2.6]])),  # half to even
    "sin": un(np.sin),
    "cos": un(np.cos),
    "tan": un(np.tan, U(X, -1.2, 1.2)),
    "arcsin": un(np.arcsin, U(X, -0.9, 0.9)),
    "arccos": un(np.arccos, U(X, -0.9, 0.9)),
    "arctan": un(np.arctan),
    "sinh": un(np.sinh),
    "cosh": un(np.cosh),
    "tanh": un(np.tanh),
    "arcsinh": un(lambda x: np.log(x + np.sqrt(x * x + 1))),
    "arccosh": un(lambda x: np.log(x + np.sqrt(x * x - 1)), U(X, 1.1, 3.0)),
    "arctanh": un(lambda x: 0.5 * np.log((1 + x) / (1 - x)), U(X, -0.9, 0.9)),
    "erf": un(vec(math.erf)),
    "erfc": un(vec(math.erfc)),
    "lgamma": un(vec(math.lgamma), U(X, 0.5, 5.0), rtol=1e-9),
    "digamma": un(vec(_digamma), U(X, 0.5, 5.0), rtol=1e-9),
    # activations
    "sigmoid": un(_sigmoid),
    "log_sigmoid": un(lambda x: -np.log1p(np.exp(-x))),
    "softplus": un(lambda x: np.log1p(np.exp(x))),
    "softsign": un(lambda x: x / (1 + np.abs(x)), away(X)),
    "relu": un(lambda x: np.where(x > 0, x, 0.0), away(X)),
    "relu6": un(lambda x: np.minimum(np.maximum(x, 0.0), 6.0),
                fixed([[-1.0, 0.5, 3.0], [5.5, 6.7, 2.2]])),
    "elu": un(lambda x: np.where(x > 0, x, np.expm1(x)), away(X)),
    "selu": un(lambda x: SELU_SCALE * np.where(x > 0, x, SELU_ALPHA * np.expm1(x)), away(X)),
    "gelu": un(lambda x: 0.5 * x * (1 + vec(math.erf)(x / math.sqrt(2))),
               attrs={"approximate": False}),
    "silu": un(lambda x: x * _sigmoid(x)),
    "leaky_relu": un(lambda x: np.where(x >= 0, x, 0.2 * x), away(X),
                     attrs={"negative_slope": 0.2}),
    "softmax": un(lambda x: _softmax(x, 0), attrs={"axis": 0}),
    "log_softmax": un(lambda x: np.log(_softmax(x, 0)), attrs={"axis": 0}),
    "one_hot": un(lambda i: (np.arange(4)[:, None] == i).astype(np.float32), ints(V, 4),
                  attrs={"num_classes": 4, "axis": 0}),
    # comparison and logic
    "equal": bin_(np.equal, grid(X), grid(V)),
    "not_equal": bin_(np.not_equal, grid(X), grid(V)),
    "less": bin_(np.less, grid(X), grid(V)),
    "less_equal": bin_(np.less_equal, grid(X), grid(V)),
    "greater": bin_(np.greater, grid(X), grid(V)),
    "greater_equal": bin_(np.greater_equal, grid(X), grid(V)),
    "logical_and": bin_(lambda x, y: x & y, bools(X), bools(V)),
    "logical_or": bin_(lambda x, y: x | y, bools(X), bools(V)),
    "logical_xor": bin_(lambda x, y: x ^ y, bools(X), bools(V)),
    "logical_not": un(lambda x: ~x, bools(X)),
    "isfinite": un(np.isfinite, fixed([[1.0, np.nan, np.inf], [-np.inf, 0.0, -2.5]])),
    "isnan": un(np.isnan, fixed([[1.0, np.nan, np.inf], [-np.inf, 0.0, -2.5]])),
    "isinf": un(np.isinf, fixed([[1.0, np.nan, np.inf], [-np.inf, 0.0, -2.5]])),
    # selection
    "where": S(np.where, bools(X), U(X), U(V)),
    "clip": S(lambda x, lo, hi: np.minimum(np.maximum(x, lo), hi), U(X), U(V, -1.5, -0.5),
              U(V, 0.5, 1.5)),
    # reductions
    "sum": S(lambda x: x.sum((0, 2)), U((2, 3, 2)), attrs={"axis": [0, 2]}),
    "mean": un(lambda x: x.sum(0) / 2, attrs={"axis": 0}),
    "prod": un(lambda x: x[:, 0] * x[:, 1] * x[:, 2], away(X, 0.5), attrs={"axis": 1}),
    "max": un(lambda x: x.max(1), sep(X), attrs={"axis": 1}),
    "min": un(lambda x: x.min(0, keepdims=True), sep(X), attrs={"axis": 0, "keepdims": True}),
    "logsumexp": un(lambda x: np.log(np.exp(x).sum(1, keepdims=True)),
                    attrs={"axis": 1, "keepdims": True}),
    "var": un(lambda x: ((x - x.mean(1, keepdims=True)) ** 2).sum(1) / 2,
              attrs={"axis": 1, "ddof": 1}),
    "std": un(lambda x: np.sqrt(((x - x.mean(0)) ** 2).sum(0, keepdims=True)),
              attrs={"axis": 0, "keepdims": True, "ddof": 1}),
    "norm": un(lambda x: (np.abs(x) ** 3).sum(1) ** (1 / 3), away(X),
               attrs={"ord": 3, "axis": 1}),
    "all": un(lambda x: x.all(0), bools(X), attrs={"axis": 0}),
    "any": un(lambda x: x.any(1, keepdims=True), bools(X), attrs={"axis": 1, "keepdims": True}),
    "argmax": un(lambda x: x.argmax(1), sep(X), attrs={"axis": 1}),
    "argmin": un(lambda x: x.argmin(0, keepdims=True), sep(X),
                 attrs={"axis": 0, "keepdims": True}),
    "cumsum": un(lambda x: np.stack([x[:, 0], x[:, 0] + x[:, 1], x.sum(1)], 1),
                 attrs={"axis": 1}),
    "cumprod": un(lambda x: np.stack([x[0], x[0] * x[1]]), away(X, 0.5), attrs={"axis": 0}),
    "sort": un(lambda x: np.sort(x, 0), sep((3, 2)), attrs={"axis": 0}),
    # shape and indexing
    "reshape": un(lambda x: x.reshape(3, 2), attrs={"shape": [3, -1]}),
    "transpose": un(lambda x: x.transpose(2, 0, 1), U((2, 3, 2)), attrs={"axes": [2, 0, 1]}),
    "matrix_transpose": un(lambda x: x.swapaxes(1, 2), U((2, 3, 2))),
    "expand_dims": un(lambda x: x.reshape(1, 2, 3, 1), attrs={"axis": [0, 3]}),
    "squeeze": un(lambda x: x.reshape(2, 3, 1), U((2, 1, 3, 1)), attrs={"axis": 1}),
    "broadcast_to": un(lambda x: np.stack([x, x]), U(V), attrs={"shape": [2, 3]}),
    "ravel": un(lambda x: x.reshape(-1)),
    "concatenate": S(lambda x, y: np.hstack([x, y]), U(X), U((2, 1)), attrs={"axis": 1}),
    "stack": S(lambda x, y: np.stack([x, y], 1), U(X), U(X), attrs={"axis": 1}),
    "split": un(lambda x: (x[:, :1], x[:, 1:3], x[:, 3:]), U((2, 4)),
                attrs={"indices_or_sections": [1, 3], "axis": 1}),
    "take": S(lambda x, i: x[:, i], U(X), fixed([[0, 2], [2, 1]], np.int32), attrs={"axis": 1}),
    "gather": S(lambda p, i: p[:, i], U(X), Lit(fixed([2, 0, 2], np.int32)), attrs={"axis": 1}),
    "slice": un(lambda x: x[1:3, :], U((3, 4)), attrs={"begin": [1, 0], "size": [2, -1]}),
    "pad": un(lambda x: np.pad(x, ((1, 0), (0, 2)), constant_values=0.5),
              attrs={"pad_width": [[1, 0], [0, 2]], "constant_values": 0.5}),
    "tile": un(lambda x: np.vstack([np.hstack([x, x])] * 2), U(V), attrs={"reps": [2, 2]}),
    "repeat": un(lambda x: x[:, [0, 0, 1, 1, 2, 2]], attrs={"repeats": 2, "axis": 1}),
    "flip": un(lambda x: x[:, ::-1], attrs={"axis": 1}),
    "roll": un(lambda x: np.roll(np.roll(x, 1, 0), 2, 1), attrs={"shift": [1, 2], "axis": [0, 1]}),
    "moveaxis": un(lambda x: x.transpose(1, 2, 0), U((2, 3, 2)),
                   attrs={"source": 0, "destination": 2}),
    "swapaxes": un(lambda x: x.transpose(2, 1, 0), U((2, 3, 2)), attrs={"axis1": 0, "axis2": 2}),
    "tril": un(lambda x: x * (np.arange(3)[:, None] - np.arange(3) >= 1), U(M), attrs={"k": -1}),
    "triu": un(lambda x: x * (np.arange(3)[None, :] - np.arange(3)[:, None] >= 1), U(M),
               attrs={"k": 1}),
    "diagonal": un(lambda x: np.stack([[m[0, 1], m[1, 2]] for m in x]), U((2, 3, 3)),
                   attrs={"offset": 1, "axis1": 1, "axis2": 2}),
    "diag": un(lambda x: np.pad(np.diagflat(x), ((0, 1), (1, 0))), U(V), attrs={"k": 1}),
    # linear algebra
    "matmul": S(lambda x, y: np.einsum("bij,jk->bik", x, y), U((2, 2, 3)), U((3, 2))),
    "dot": S(lambda x, y: np.einsum("ij,jk->ik", x, y), U(X), U((3, 2))),
    "vdot": S(lambda x, y: (x * y).sum(), U(X), U(X)),
    "inner": S(lambda x, y: np.einsum("ik,jk->ij", x, y), U(X), U((4, 3))),
    "outer": S(lambda x, y: x[:, None] * y[None, :], U(V), U((2,))),
    "tensordot": S(lambda x, y: np.einsum("ij,jk->ik", x, y), U(X), U((3, 2)),
                   attrs={"axes": 1}),
    "einsum": S(lambda x, y: np.einsum("ij,jk->ki", x, y), U(X), U((3, 2)),
                attrs={"subscripts": "ij,jk->ki"}),
    "cross": S(lambda a, b: np.stack([a[:, 1] * b[2] - a[:, 2] * b[1],
                                      a[:, 2] * b[0] - a[:, 0] * b[2],
                                      a[:, 0] * b[1] - a[:, 1] * b[0]], 1), U(X), U(V)),
    "kron": S(lambda x, y: np.block([[x[i, j] * y for j in range(2)] for i in range(2)]),
              U((2, 2)), U((2, 1))),
    "trace": un(lambda x: x[0, 1] + x[1, 2] + x[2, 3], U((3, 4)), attrs={"offset": 1}),
    "inv": un(np.linalg.inv, spd(3)),
    "solve": S(np.linalg.solve, spd(3), U((3, 2))),
    "det": un(np.linalg.det, spd(3, flip=True)),
    "slogdet": un(lambda x: tuple(np.linalg.slogdet(x)), spd(3, flip=True)),
    "logdet": un(lambda x: np.log(abs(np.linalg.det(x))), spd(3, flip=True)),
    "cholesky": un(np.linalg.cholesky, spd(3)),
    "triangular_solve": S(lambda a, b: np.linalg.solve(a.T, b), lower(3), U((3, 2)),
                          attrs={"adjoint": True}),
    # convolution and pooling (NCHW / OIHW)
    "conv": S(lambda x, w: np_conv(x, w, (2, 1), ((1, 0), (2, 1)), (1, 2), 2), U((2, 4, 5, 4)),
              U((4, 2, 3, 2)), attrs={"strides": [2, 1], "padding": [[1, 0], [2, 1]],
                                      "dilation": [1, 2], "groups": 2}),
    "max_pool": un(lambda x: np_pool(x, (2, 3), (2, 1), ((1, 0), (0, 1)), "max"),
                   sep((1, 2, 5, 4)), attrs={"window": [2, 3], "strides": [2, 1],
                                             "padding": [[1, 0], [0, 1]]}),
    "avg_pool": un(lambda x: np_pool(x, (2, 2), (1, 2), ((1, 1), (0, 1)), "mean"),
                   U((2, 2, 3, 5)), attrs={"window": [2, 2], "strides": [1, 2],
                                           "padding": [[1, 1], [0, 1]]}),
    "batch_norm": S(lambda x, g, b, m, v: np_batch_norm(x, g, b, m, v, 0.1), U((2, 3, 4)),
                    U((3,)), U((3,)), U((3,)), U((3,), 0.5, 2.0), attrs={"epsilon": 0.1}),
    # types and gradient control: cast goes through float32, so its (linear) finite
    # differences take a large step and a float32 tolerance
    "cast": un(lambda x: x.astype(np.float32), attrs={"dtype": "float32"}, grad_tol=1e-5,
               fd_step=0.1),
    "identity": un(lambda x: x),
    "stop_gradient": un(lambda x: x),
    "zeros_like": un(np.zeros_like),
    "ones_like": un(np.ones_like),
    # control flow: functions inline in the attrs, oracles in plain NumPy loops
    "call": S(lambda x, y: (np.sin(x) * y,), U(X), U(V),
              attrs={"function": fn(["a", "b"], ["r"], ("s", "sin", "a"),
                                    ("r", "multiply", "s", "b"))}),
    "cond": S(lambda p, x: (np.tanh(x),), Lit(True), U(X),
              attrs={"true": fn(["a"], ["r"], ("r", "tanh", "a")),
                     "false": fn(["a"], ["r"], ("r", "multiply", "a", "a"))}),
    "fori_loop": S(lambda x: (_iterate(lambda c: np.sin(c) + 0.5 * c, x, 3),), U(X),
                   attrs={"lower": 0, "upper": 3,
                          "body": fn(["i", "c"], ["r"], ("s", "sin", "c"),
                                     ("h", "multiply", "c", 0.5), ("r", "add", "s", "h"))}),
    "while_loop": S(lambda x, k: (_iterate(lambda c: np.sin(c) + 0.5 * c, x, 3), np.float64(3)),
                    U(V), Lit(0.0),
                    attrs={"max_iterations": 5,
                           "cond": fn(["c", "k"], ["go"], ("go", "less", "k", 2.5)),
                           "body": fn(["c", "k"], ["r", "k1"], ("s", "sin", "c"),
                                      ("h", "multiply", "c", 0.5), ("r", "add", "s", "h"),
                                      ("k1", "add", "k", 1.0))}),
    "scan": S(_scan_oracle, U(V), U((4, 3)),
              attrs={"num_carry": 1, "body": fn(["c", "x"], ["r", "y"],
                                                ("y", "multiply", "c", "x"), ("s", "sin", "c"),
                                                ("r", "add", "y", "s"))}),
}

# Second order is skipped for piecewise ops: at a kink the second derivative is undefined and
# elsewhere it is zero (abs, relu, relu6, leaky_relu, maximum, minimum, max, min, clip, sort) or
# the op jumps (mod). Non-differentiable ops are covered by test_nondifferentiable_cuts_gradient.
PIECEWISE = {"abs", "relu", "relu6", "leaky_relu", "maximum", "minimum", "max", "min", "clip",
             "mod", "sort"}
FLOAT32_OPS = ["add", "add_n", "where", "exp", "tanh", "logsumexp", "matmul", "softmax", "sort",
               "cholesky", "split", "mean", "conv", "max_pool", "avg_pool", "batch_norm"]
DIFFERENTIABLE = [n for n, o in OPS.items() if o.differentiable]
TWICE = [n for n in DIFFERENTIABLE if n not in PIECEWISE]
NONDIFF = [n for n, o in OPS.items() if not o.differentiable]

# Always eager: for these tiny graphs op-by-op dispatch is much cheaper than compiling every
# query. test_forward_float32 runs the service's default policy (eager, then compiled).
ENGINE = Engine(cache=CompileCache(jit_after=10**9))


# ----- helpers -----


def tensor(value: Any) -> dict[str, Any]:
    a = np.asarray(value)
    data = a.ravel().tolist()
    if a.dtype.kind == "f":
        data = [v if math.isfinite(v) else "NaN" if math.isnan(v) else
                "Infinity" if v > 0 else "-Infinity" for v in data]
    return {"dtype": a.dtype.name, "shape": list(a.shape), "data": data}


@dataclass
class Case:
    node: dict[str, Any]
    inputs: dict[str, np.ndarray]
    want: tuple[np.ndarray, ...]
    outs: tuple[str, ...]

    @property
    def sources(self) -> list[str]:
        return [k for k, v in self.inputs.items() if v.dtype.kind == "f"]

    def float_outs(self) -> dict[str, np.ndarray]:
        return {o: w for o, w in zip(self.outs, self.want, strict=True) if w.dtype.kind == "f"}


def spec_of(name: str) -> Spec:
    if name not in SPECS:
        pytest.fail(f"op {name!r} has no spec in tests/test_ops.py SPECS")
    return SPECS[name]


def make_case(name: str, float_dtype: Any = np.float64) -> Case:
    spec = spec_of(name)
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    args: list[Any] = []
    inputs: dict[str, np.ndarray] = {}
    values: list[Any] = []
    for i, a in enumerate(spec.args):
        if isinstance(a, Lit):
            v = a.value(rng) if callable(a.value) else a.value
            args.append(tensor(v) if isinstance(v, np.ndarray) else v)
        else:
            v = a(rng)
            if v.dtype.kind == "f":
                v = v.astype(float_dtype)
            inputs["abcdefgh"[i]] = v
            args.append("abcdefgh"[i])
        values.append(v)
    hi = [v.astype(np.float64) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v
          for v in values]
    want = spec.oracle(*hi)
    multi = OPS[name].multi_output
    want = tuple(np.asarray(w) for w in (want if multi else (want,)))
    outs = tuple(f"out{k}" for k in range(len(want))) if multi else ("out",)
    node = {"id": list(outs) if multi else "out", "op": name, "args": args,
            "attrs": spec.attrs}
    return Case(node, inputs, want, outs)


def bind(nodes: list[dict[str, Any]], inputs: dict[str, np.ndarray]) -> Bound:
    program = parse_graph({"nodes": nodes}, max_nodes=100, max_elements=10**6)
    return ENGINE.bind(program, {k: tensor(v) for k, v in inputs.items()})


def with_scalar(case: Case, cots: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """The node, then s = sum_k vdot(out_k, cot_k): a scalar whose gradient is the VJP."""
    nodes = [case.node]
    for k, o in enumerate(cots):
        nodes.append({"id": f"p{k}", "op": "vdot", "args": [o, f"cot_{o}"]})
    nodes.append({"id": "s", "op": "add_n", "args": [f"p{k}" for k in range(len(cots))]})
    return nodes


def random_like(rng: np.random.Generator, ref: np.ndarray, dtype: Any = None) -> np.ndarray:
    return rng.normal(size=ref.shape).astype(dtype or ref.dtype)


def check_close(got: Any, want: np.ndarray, rtol: float, atol: float, what: str) -> None:
    got = np.asarray(got)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=what)


# ----- tests -----


def test_every_op_has_a_spec() -> None:
    missing = sorted(set(OPS) - set(SPECS))
    stale = sorted(set(SPECS) - set(OPS))
    assert not missing, f"ops without a spec in tests/test_ops.py: {missing}"
    assert not stale, f"specs for ops that are not in OPS: {stale}"


@pytest.mark.parametrize("name", list(OPS))
def test_forward(name: str) -> None:
    spec = spec_of(name)
    case = make_case(name)
    got = ENGINE.evaluate(bind([case.node], case.inputs))
    assert set(got) == set(case.outs)
    for o, want in zip(case.outs, case.want, strict=True):
        value = np.asarray(got[o])
        assert value.dtype == want.dtype, f"{name}: {o} is {value.dtype}, expected {want.dtype}"
        if want.dtype.kind == "f":
            check_close(value, want, spec.rtol, spec.atol, f"{name} {o}")
        else:
            assert value.shape == want.shape
            np.testing.assert_array_equal(value, want, err_msg=f"{name} {o}")


@pytest.mark.parametrize("name", FLOAT32_OPS)
def test_forward_float32(name: str) -> None:
    """float32 in, float32 out (weak scalar constants included), eagerly and compiled."""
    case = make_case(name, np.float32)
    engine = Engine()  # the default policy: the first call runs eagerly, the second compiles
    program = parse_graph({"nodes": [case.node]}, max_nodes=100, max_elements=10**6)
    inputs = {k: tensor(v) for k, v in case.inputs.items()}
    for run in ("eager", "compiled"):
        got = engine.evaluate(engine.bind(program, inputs))
        for o, want in zip(case.outs, case.want, strict=True):
            assert got[o].dtype == np.float32, f"{name} ({run}): float32 in, {got[o].dtype} out"
            check_close(got[o], want, 1e-5, 1e-6, f"{name} {o} (float32, {run})")
    assert engine.cache.stats.compiles == 1


@pytest.mark.parametrize("name", DIFFERENTIABLE)
def test_gradient(name: str) -> None:
    """Full VJP with a random cotangent against central differences of <cot, f(x)>."""
    spec = spec_of(name)
    case = make_case(name)
    rng = np.random.default_rng(0)
    cots = {o: random_like(rng, w) for o, w in case.float_outs().items()}
    if OPS[name].multi_output:
        target: Any = list(cots)
        output_gradients: Any = {o: tensor(c) for o, c in cots.items()}
    else:
        target, output_gradients = "out", tensor(cots["out"])
    result = ENGINE.gradient(bind([case.node], case.inputs), target, sources=case.sources,
                             output_gradients=output_gradients)

    def contracted(inputs: dict[str, np.ndarray]) -> float:
        values = ENGINE.evaluate(bind([case.node], inputs))
        return sum(float(np.vdot(c.astype(np.float64), np.asarray(values[o], np.float64)))
                   for o, c in cots.items())

    for s in case.sources:
        x = case.inputs[s]
        fd = np.zeros_like(x)
        for i in np.ndindex(x.shape):
            h = spec.fd_step * max(1.0, abs(x[i]))
            plus, minus = x.copy(), x.copy()
            plus[i] += h
            minus[i] -= h
            fd[i] = (contracted({**case.inputs, s: plus}) -
                     contracted({**case.inputs, s: minus})) / (plus[i] - minus[i])
        grad = result["gradients"][s]
        assert grad is not None, f"{name}: no gradient for {s}"
        assert np.asarray(grad).dtype == x.dtype
        check_close(grad, fd, spec.grad_tol, 0.1 * spec.grad_tol, f"{name} d/d{s}")


@pytest.mark.parametrize("name", TWICE)
def test_second_order(name: str) -> None:
    """HVP of s(x) = sum(cot * f(x)) against central differences of its gradient."""
    case = make_case(name)
    rng = np.random.default_rng(1)
    cots = {o: random_like(rng, w, np.float64) for o, w in case.float_outs().items()}
    nodes = with_scalar(case, cots)
    base = {**case.inputs, **{f"cot_{o}": c for o, c in cots.items()}}
    vecs = {s: random_like(rng, case.inputs[s]) for s in case.sources}
    result = ENGINE.hvp(bind(nodes, base), "s", case.sources,
                        {s: tensor(v) for s, v in vecs.items()})
    h = 1e-5

    def grads(sign: float) -> dict[str, Any]:
        moved = {**base, **{s: case.inputs[s] + sign * h * v for s, v in vecs.items()}}
        return ENGINE.gradient(bind(nodes, moved), "s", case.sources)["gradients"]

    plus, minus = grads(1.0), grads(-1.0)
    for s in case.sources:
        fd = (np.asarray(plus[s]) - np.asarray(minus[s])) / (2 * h)
        got = result["hvp"][s]
        assert got is not None, f"{name}: no hvp for {s}"
        check_close(got, fd, 1e-6, 1e-7, f"{name} hvp wrt {s}")


@pytest.mark.parametrize("name", NONDIFF)
def test_nondifferentiable_cuts_gradient(name: str) -> None:
    """float64 sources -> (cast, for bool/int args) -> op -> (cast to float) -> sum: the
    gradient is None, or zeros with unconnected="zero"."""
    case = make_case(name)
    nodes: list[dict[str, Any]] = []
    inputs: dict[str, np.ndarray] = {}
    for k, v in case.inputs.items():
        if v.dtype.kind == "f":
            inputs[k] = v
        else:
            inputs[f"{k}_src"] = v.astype(np.float64)
            nodes.append({"id": k, "op": "cast", "args": [f"{k}_src"],
                          "attrs": {"dtype": v.dtype.name}})
    nodes.append(case.node)
    out = case.outs[0]
    if case.want[0].dtype.kind != "f":
        nodes.append({"id": "outf", "op": "cast", "args": [out], "attrs": {"dtype": "float64"}})
        out = "outf"
    nodes.append({"id": "t", "op": "sum", "args": [out]})
    bound = bind(nodes, inputs)
    none = ENGINE.gradient(bound, "t", sources=list(inputs))["gradients"]
    assert set(none) == set(inputs)
    leaked = {k: g for k, g in none.items() if g is not None}
    assert not leaked, f"{name} let a gradient through: {leaked}"
    zero = ENGINE.gradient(bound, "t", sources=list(inputs), unconnected="zero")["gradients"]
    for k, v in inputs.items():
        assert zero[k] is not None and zero[k].dtype == v.dtype
        np.testing.assert_array_equal(zero[k], np.zeros_like(v))


def test_ops_catalogue() -> None:
    from service.main import create_app

    with TestClient(create_app()) as client:
        response = client.get("/v1/ops")
    assert response.status_code == 200
    entries = response.json()
    assert [e["name"] for e in entries] == list(OPS)
    for entry in entries:
        op = OPS[entry["name"]]
        assert {"name", "aliases", "arity", "attrs", "differentiable", "doc"} <= set(entry)
        assert entry["aliases"] == list(op.aliases)
        assert entry["arity"] == op.arity
        assert set(entry["attrs"]) == set(op.attrs)
        assert entry["differentiable"] is op.differentiable
        doc = entry["doc"]
        assert isinstance(doc, str) and doc.strip() and "\n" not in doc, entry["name"]
