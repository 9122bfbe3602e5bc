"""The op table: every op the engine knows, one declaration each.

An op is a name, the `jax.numpy`-level function that computes it, how many tensor arguments it
takes, its static attributes, whether gradients flow through it, TensorFlow's names for it,
and a one-line formula. JAX differentiates the functions, so no op needs a hand-written
derivative. The interpreter, the validator, `GET /v1/ops` and the op tests all read this table;
adding an op is adding one line here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import jax.scipy.special as jss
import numpy as np

from engine import control
from engine.attrs import (
    Attr,
    Axes,
    Bool,
    DType,
    Float,
    FunctionRef,
    Int,
    IntList,
    IntOrIntList,
    NormOrd,
    Padding,
    Str,
)

VARIADIC = None  # max arity of an op that takes any number of tensors


@dataclass(frozen=True)
class Op:
    """One operation. `fn(*tensors, **attrs)` computes it; `min_args`/`max_args` bound the
    number of tensor arguments (`max_args=None`: any number)."""

    name: str
    fn: Callable[..., Any]
    min_args: int
    max_args: int | None
    doc: str
    attrs: Mapping[str, Attr] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    differentiable: bool = True
    multi_output: bool = False
    category: str = ""
    work: str = "elementwise"  # how its cost grows: see engine/cost.py
    indices: int | None = None  # the argument holding integer indices into args[0]
    eager: bool = True  # False: control flow, which runs compiled only (see engine/cache.py)
    # loops: how many times its functions run, from its attrs and argument types
    trips: Callable[[Mapping[str, Any], Sequence[Any]], int] | None = None
    # loops whose bound may be left out: whether these attrs give one (reverse mode needs it)
    bounded: Callable[[Mapping[str, Any]], bool] | None = None

    def bind(self, *args: Any, **attrs: Any) -> Any:
        return self.fn(*args, **attrs)

    @property
    def arity(self) -> int | str:
        if self.max_args == self.min_args:
            return self.min_args
        return f"{self.min_args}+" if self.max_args is None else f"{self.min_args}-{self.max_args}"

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "aliases": list(self.aliases),
            "arity": self.arity,
            "min_args": self.min_args,
            "max_args": self.max_args,
            "attrs": {k: a.describe() for k, a in self.attrs.items()},
            "differentiable": self.differentiable,
            "multi_output": self.multi_output,
            "category": self.category,
            "doc": self.doc,
        }


_TABLE: list[Op] = []
_category = ""


def section(name: str) -> None:
    global _category
    _category = name


def op(name: str, fn: Callable[..., Any], arity: int | tuple[int, int | None], doc: str,
       *aliases: str, attrs: Mapping[str, Attr] | None = None, diff: bool = True,
       multi: bool = False, work: str = "elementwise", indices: int | None = None,
       eager: bool = True, trips: Callable[[Mapping[str, Any], Sequence[Any]], int] | None = None,
       bounded: Callable[[Mapping[str, Any]], bool] | None = None) -> None:
    lo, hi = (arity, arity) if isinstance(arity, int) else arity
    _TABLE.append(Op(name, fn, lo, hi, doc, dict(attrs or {}), aliases, diff, multi, _category,
                     work, indices, eager, trips, bounded))


AXIS = {"axis": Axes(None, "axis or axes to reduce; null reduces all"),
        "keepdims": Bool(False, "keep reduced axes with size 1")}
ONE_AXIS = {"axis": Axes(None, "axis; null flattens first", allow_list=False),
            "keepdims": Bool(False)}
LAST_AXIS = {"axis": Axes(-1, "axis to normalise over")}


def _slice(x: Any, begin: tuple[int, ...], size: tuple[int, ...]) -> Any:
    if len(begin) != x.ndim or len(size) != x.ndim:
        raise ValueError(f"begin and size need one entry per axis ({x.ndim}); "
                         f"got {len(begin)} and {len(size)}")
    return x[tuple(slice(b, None if s == -1 else b + s) for b, s in zip(begin, size, strict=True))]


def _norm(x: Any, ord: Any = None, axis: Any = None, keepdims: bool = False) -> Any:
    order = {"inf": jnp.inf, "-inf": -jnp.inf}.get(ord, ord) if isinstance(ord, str) else ord
    return jnp.linalg.norm(x, ord=order, axis=axis, keepdims=keepdims)


def _split(x: Any, indices_or_sections: Any, axis: int = 0) -> tuple[Any, ...]:
    return tuple(jnp.split(x, indices_or_sections, axis=axis))


def _triangular_solve(a: Any, b: Any, lower: bool = True, adjoint: bool = False) -> Any:
    return jsl.solve_triangular(a, b, lower=lower, trans=1 if adjoint else 0)


# ----- windows (convolution, pooling): NCHW / OIHW by default, NHWC / HWIO when channels_last

LAYOUTS = ("channels_first", "channels_last")


def _spatial(x: Any, layout: str, what: str) -> int:
    """The number of spatial axes of an N, C, spatial... (or N, spatial..., C) tensor."""
    if x.ndim < 3:
        raise ValueError(f"{what} takes a tensor with batch, channel and at least one spatial "
                         f"axis ({'NCW' if layout == 'channels_first' else 'NWC'}, ...); got "
                         f"{x.ndim} axes")
    return int(x.ndim) - 2


def _per_axis(name: str, value: tuple[int, ...] | None, n: int, default: int | tuple[int, ...]
              ) -> tuple[int, ...]:
    if value is None:
        return (default,) * n if isinstance(default, int) else default
    if len(value) != n:
        raise ValueError(f"attribute {name!r} needs one entry per spatial axis ({n}), got "
                         f"{len(value)}")
    return tuple(value)


def _pads(padding: Any, n: int) -> Any:
    if isinstance(padding, str):
        return padding
    if len(padding) != n:
        raise ValueError(f"attribute 'padding' needs one [lo, hi] pair per spatial axis ({n}), "
                         f"got {len(padding)}")
    return tuple(tuple(p) for p in padding)


def _conv(x: Any, w: Any, strides: tuple[int, ...] | None = None, padding: Any = "VALID",
          dilation: tuple[int, ...] | None = None, groups: int = 1,
          layout: str = "channels_first") -> Any:
    n = _spatial(x, layout, "conv")
    if w.ndim != x.ndim:
        raise ValueError(f"the kernel needs {x.ndim} axes like the input "
                         f"({'O, I' if layout == 'channels_first' else 'spatial..., I, O'} and "
                         f"{n} spatial), got {w.ndim}")
    first = layout == "channels_first"
    channels = x.shape[1] if first else x.shape[-1]
    per_group, out_channels = (w.shape[1], w.shape[0]) if first else (w.shape[-2], w.shape[-1])
    if channels != per_group * groups or out_channels % groups:
        raise ValueError(f"attribute 'groups' ({groups}): the input's {channels} channels must "
                         f"be groups x the kernel's input channels ({per_group}), and the "
                         f"kernel's {out_channels} output channels a multiple of groups")
    spatial = tuple(range(2, n + 2))
    io = (0, 1, *spatial) if first else (n + 1, n, *range(n))
    data = (0, 1, *spatial) if first else (0, n + 1, *range(1, n + 1))
    dtype = jnp.result_type(x, w)
    return jax.lax.conv_general_dilated(
        x.astype(dtype), w.astype(dtype), _per_axis("strides", strides, n, 1),
        _pads(padding, n), rhs_dilation=_per_axis("dilation", dilation, n, 1),
        dimension_numbers=jax.lax.ConvDimensionNumbers(data, io, data),
        feature_group_count=groups)


def _window(x: Any, window: tuple[int, ...], strides: tuple[int, ...] | None, padding: Any,
            layout: str, what: str) -> tuple[tuple[int, ...], tuple[int, ...], Any]:
    """Window, strides and pads over every axis of x (1 and none on the batch and channel
    axes); strides default to the window, as in Keras and PyTorch."""
    n = _spatial(x, layout, what)
    window = _per_axis("window", window, n, 1)
    strides = _per_axis("strides", strides, n, window)
    if isinstance(padding, str):
        pads = [tuple(p) for p in jax.lax.padtype_to_pads(
            x.shape[2:] if layout == "channels_first" else x.shape[1:-1], window, strides,
            padding)]
    else:
        pads = list(_pads(padding, n))
    if layout == "channels_first":
        return (1, 1, *window), (1, 1, *strides), ((0, 0), (0, 0), *pads)
    return (1, *window, 1), (1, *strides, 1), ((0, 0), *pads, (0, 0))


def _max_pool(x: Any, window: tuple[int, ...], strides: tuple[int, ...] | None = None,
              padding: Any = "VALID", layout: str = "channels_first") -> Any:
    dims, steps, pads = _window(x, window, strides, padding, layout, "max_pool")
    lowest = -jnp.inf if jnp.issubdtype(x.dtype, jnp.floating) else jnp.iinfo(x.dtype).min
    return jax.lax.reduce_window(x, jnp.array(lowest, x.dtype), jax.lax.max, dims, steps, pads)


def _avg_pool(x: Any, window: tuple[int, ...], strides: tuple[int, ...] | None = None,
              padding: Any = "VALID", count_include_pad: bool = False,
              layout: str = "channels_first") -> Any:
    dims, steps, pads = _window(x, window, strides, padding, layout, "avg_pool")
    total = jax.lax.reduce_window(x, jnp.array(0, x.dtype), jax.lax.add, dims, steps, pads)
    if count_include_pad:
        return total / math.prod(dims)
    # the number of real (unpadded) elements under each window: a constant of the shapes
    ones = np.ones([1 if d == 1 else s for d, s in zip(dims, x.shape, strict=True)])
    counts = jax.lax.reduce_window(ones, 0.0, jax.lax.add, dims, steps, pads)
    return total / counts.astype(total.dtype)


def _batch_norm(x: Any, scale: Any, bias: Any, mean: Any, variance: Any, epsilon: float = 1e-5,
                axis: int = 1) -> Any:
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"attribute 'axis' ({axis}) is out of range for {x.ndim} axes")
    axis %= x.ndim
    shape = [1] * x.ndim
    shape[axis] = x.shape[axis]
    for name, p in (("scale", scale), ("bias", bias), ("mean", mean), ("variance", variance)):
        if jnp.shape(p) not in ((), (x.shape[axis],)):
            raise ValueError(f"{name} has shape {list(jnp.shape(p))}; it needs one entry per "
                             f"channel ({x.shape[axis]}, the size of axis {axis})")

    def per_channel(p: Any) -> Any:
        return jnp.reshape(p, shape) if jnp.ndim(p) else p

    inv = jax.lax.rsqrt(per_channel(variance) + epsilon) * per_channel(scale)
    return (x - per_channel(mean)) * inv + per_channel(bias)


# ----- Binary elementwise (NumPy broadcasting) -----
section("elementwise binary")
op("add", jnp.add, 2, "Elementwise sum: x + y.", "math.add", "addv2")
op("subtract", jnp.subtract, 2, "Elementwise difference: x - y.", "math.subtract", "sub")
op("multiply", jnp.multiply, 2, "Elementwise product: x * y.", "math.multiply", "mul")
op("divide", jnp.divide, 2, "Elementwise quotient: x / y.", "math.divide", "truediv", "realdiv")
op("floor_divide", jnp.floor_divide, 2, "Elementwise floor(x / y).", "math.floordiv", "floordiv",
   diff=False)
op("power", jnp.power, 2, "Elementwise power: x ** y.", "pow", "math.pow")
op("maximum", jnp.maximum, 2, "Elementwise max(x, y).", "math.maximum")
op("minimum", jnp.minimum, 2, "Elementwise min(x, y).", "math.minimum")
op("mod", jnp.mod, 2, "Elementwise remainder with the sign of y: x - floor(x / y) * y.",
   "math.mod", "floormod", "math.floormod", "remainder")
op("arctan2", jnp.arctan2, 2, "Elementwise angle of (y=x1, x=x2): atan2(x1, x2).",
   "math.atan2", "atan2")
op("hypot", jnp.hypot, 2, "Elementwise sqrt(x^2 + y^2).")
op("logaddexp", jnp.logaddexp, 2, "Elementwise log(exp(x) + exp(y)).")
op("squared_difference", lambda x, y: jnp.square(x - y), 2, "Elementwise (x - y)^2.",
   "math.squared_difference")
op("add_n", lambda *xs: sum(xs[1:], xs[0]), (1, VARIADIC), "Sum of all arguments: x1 + ... + xn.",
   "math.add_n")

# ----- Unary math -----
section("elementwise unary")
op("negative", jnp.negative, 1, "Elementwise -x.", "neg", "math.negative")
op("reciprocal", jnp.reciprocal, 1, "Elementwise 1 / x.", "math.reciprocal")
op("square", jnp.square, 1, "Elementwise x^2.", "math.square")
op("sqrt", jnp.sqrt, 1, "Elementwise sqrt(x).", "math.sqrt")
op("rsqrt", jax.lax.rsqrt, 1, "Elementwise 1 / sqrt(x).", "math.rsqrt")
op("cbrt", jnp.cbrt, 1, "Elementwise cube root: x^(1/3).")
op("exp", jnp.exp, 1, "Elementwise e^x.", "math.exp")
op("exp2", jnp.exp2, 1, "Elementwise 2^x.")
op("expm1", jnp.expm1, 1, "Elementwise e^x - 1, accurate near 0.", "math.expm1")
op("log", jnp.log, 1, "Elementwise natural logarithm: ln(x).", "math.log")
op("log1p", jnp.log1p, 1, "Elementwise ln(1 + x), accurate near 0.", "math.log1p")
op("log2", jnp.log2, 1, "Elementwise log2(x).")
op("log10", jnp.log10, 1, "Elementwise log10(x).")
op("abs", jnp.abs, 1, "Elementwise |x|.", "math.abs", "absolute")
op("sign", jnp.sign, 1, "Elementwise sign(x) in {-1, 0, 1}.", "math.sign", diff=False)
op("floor", jnp.floor, 1, "Elementwise floor(x).", "math.floor", diff=False)
op("ceil", jnp.ceil, 1, "Elementwise ceil(x).", "math.ceil", diff=False)
op("round", jnp.round, 1, "Elementwise round half to even.", "math.round", diff=False)
op("sin", jnp.sin, 1, "Elementwise sin(x).", "math.sin")
op("cos", jnp.cos, 1, "Elementwise cos(x).", "math.cos")
op("tan", jnp.tan, 1, "Elementwise tan(x).", "math.tan")
op("arcsin", jnp.arcsin, 1, "Elementwise asin(x).", "math.asin", "asin")
op("arccos", jnp.arccos, 1, "Elementwise acos(x).", "math.acos", "acos")
op("arctan", jnp.arctan, 1, "Elementwise atan(x).", "math.atan", "atan")
op("sinh", jnp.sinh, 1, "Elementwise sinh(x).", "math.sinh")
op("cosh", jnp.cosh, 1, "Elementwise cosh(x).", "math.cosh")
op("tanh", jnp.tanh, 1, "Elementwise tanh(x).", "math.tanh", "nn.tanh")
op("arcsinh", jnp.arcsinh, 1, "Elementwise asinh(x).", "math.asinh", "asinh")
op("arccosh", jnp.arccosh, 1, "Elementwise acosh(x), x >= 1.", "math.acosh", "acosh")
op("arctanh", jnp.arctanh, 1, "Elementwise atanh(x), |x| < 1.", "math.atanh", "atanh")
op("erf", jss.erf, 1, "Elementwise error function: 2/sqrt(pi) * int_0^x exp(-t^2) dt.", "math.erf")
op("erfc", jss.erfc, 1, "Elementwise 1 - erf(x).", "math.erfc")
op("lgamma", jss.gammaln, 1, "Elementwise ln|Gamma(x)|.", "math.lgamma", "gammaln")
op("digamma", jss.digamma, 1, "Elementwise d/dx ln Gamma(x).", "math.digamma")

# ----- Neural-network activations -----
section("activations")
op("sigmoid", jax.nn.sigmoid, 1, "Elementwise 1 / (1 + e^-x).", "math.sigmoid", "nn.sigmoid")
op("log_sigmoid", jax.nn.log_sigmoid, 1, "Elementwise ln(sigmoid(x)).", "math.log_sigmoid")
op("softplus", jax.nn.softplus, 1, "Elementwise ln(1 + e^x).", "math.softplus", "nn.softplus")
op("softsign", jax.nn.soft_sign, 1, "Elementwise x / (1 + |x|).", "nn.softsign", "math.softsign")
op("relu", jax.nn.relu, 1, "Elementwise max(x, 0).", "nn.relu")
op("relu6", jax.nn.relu6, 1, "Elementwise min(max(x, 0), 6).", "nn.relu6")
op("elu", jax.nn.elu, 1, "Elementwise x if x > 0 else e^x - 1.", "nn.elu")
op("selu", jax.nn.selu, 1, "Elementwise scale * (x if x > 0 else alpha * (e^x - 1)).", "nn.selu")
op("gelu", jax.nn.gelu, 1, "Elementwise x * Phi(x) (tanh approximation unless approximate=false).",
   "nn.gelu", attrs={"approximate": Bool(True)})
op("silu", jax.nn.silu, 1, "Elementwise x * sigmoid(x).", "swish", "nn.silu", "nn.swish")
op("leaky_relu", jax.nn.leaky_relu, 1, "Elementwise x if x >= 0 else negative_slope * x.",
   "nn.leaky_relu", attrs={"negative_slope": Float(0.01)})
op("softmax", jax.nn.softmax, 1, "e^x / sum(e^x) along axis.", "nn.softmax", attrs=LAST_AXIS)
op("log_softmax", jax.nn.log_softmax, 1, "x - logsumexp(x) along axis.", "nn.log_softmax",
   attrs=LAST_AXIS)
op("one_hot", lambda x, num_classes, axis=-1: jax.nn.one_hot(x, num_classes, dtype=jnp.float32, axis=axis), 1,
   "float32 indicator of integer x: out[..., k] = (x == k).", "nn.one_hot", diff=False,
   attrs={"num_classes": Int(minimum=1), "axis": Int(-1)})

# ----- Comparisons and logic (bool results, no gradient) -----
section("comparison and logic")
op("equal", jnp.equal, 2, "Elementwise x == y.", "math.equal", diff=False)
op("not_equal", jnp.not_equal, 2, "Elementwise x != y.", "math.not_equal", diff=False)
op("less", jnp.less, 2, "Elementwise x < y.", "math.less", diff=False)
op("less_equal", jnp.less_equal, 2, "Elementwise x <= y.", "math.less_equal", diff=False)
op("greater", jnp.greater, 2, "Elementwise x > y.", "math.greater", diff=False)
op("greater_equal", jnp.greater_equal, 2, "Elementwise x >= y.", "math.greater_equal", diff=False)
op("logical_and", jnp.logical_and, 2, "Elementwise x and y.", "math.logical_and", diff=False)
op("logical_or", jnp.logical_or, 2, "Elementwise x or y.", "math.logical_or", diff=False)
op("logical_xor", jnp.logical_xor, 2, "Elementwise x xor y.", "math.logical_xor", diff=False)
op("logical_not", jnp.logical_not, 1, "Elementwise not x.", "math.logical_not", diff=False)
op("isfinite", jnp.isfinite, 1, "Elementwise x is neither inf nor NaN.", "math.is_finite",
   diff=False)
op("isnan", jnp.isnan, 1, "Elementwise x is NaN.", "math.is_nan", diff=False)
op("isinf", jnp.isinf, 1, "Elementwise x is +inf or -inf.", "math.is_inf", diff=False)

# ----- Selection -----
section("selection")
op("where", jnp.where, 3, "Elementwise cond ? x : y.", "select", "where_v2")
op("clip", jnp.clip, 3, "Elementwise min(max(x, lo), hi).", "clip_by_value")

# ----- Reductions -----
section("reductions")
op("sum", jnp.sum, 1, "Sum over axis: sum_i x_i.", "reduce_sum", "math.reduce_sum", attrs=AXIS)
op("mean", jnp.mean, 1, "Mean over axis: sum_i x_i / n.", "reduce_mean", "math.reduce_mean",
   attrs=AXIS)
op("prod", jnp.prod, 1, "Product over axis: prod_i x_i.", "reduce_prod", "math.reduce_prod",
   attrs=AXIS)
op("max", jnp.max, 1, "Maximum over axis.", "reduce_max", "math.reduce_max", "amax", attrs=AXIS)
op("min", jnp.min, 1, "Minimum over axis.", "reduce_min", "math.reduce_min", "amin", attrs=AXIS)
op("logsumexp", jss.logsumexp, 1, "ln sum_i e^(x_i) over axis, computed stably.",
   "reduce_logsumexp", "math.reduce_logsumexp", attrs=AXIS)
op("var", jnp.var, 1, "Variance over axis: mean((x - mean(x))^2) * n / (n - ddof).",
   "reduce_variance", "math.reduce_variance", attrs={**AXIS, "ddof": Int(0, minimum=0)})
op("std", jnp.std, 1, "Standard deviation over axis: sqrt(var(x)).", "reduce_std",
   "math.reduce_std", attrs={**AXIS, "ddof": Int(0, minimum=0)})
op("norm", _norm, 1, "Vector or matrix norm of order `ord` (default 2 / Frobenius).",
   "linalg.norm", attrs={"ord": NormOrd(None), **AXIS})
op("all", jnp.all, 1, "Logical and over axis.", "reduce_all", "math.reduce_all", attrs=AXIS,
   diff=False)
op("any", jnp.any, 1, "Logical or over axis.", "reduce_any", "math.reduce_any", attrs=AXIS,
   diff=False)
op("argmax", jnp.argmax, 1, "Index of the maximum along axis.", "math.argmax", attrs=ONE_AXIS,
   diff=False)
op("argmin", jnp.argmin, 1, "Index of the minimum along axis.", "math.argmin", attrs=ONE_AXIS,
   diff=False)
op("cumsum", jnp.cumsum, 1, "Running sum along axis: y_i = sum_{j<=i} x_j.", "math.cumsum",
   attrs={"axis": Axes(None, "axis; null flattens first", allow_list=False)})
op("cumprod", jnp.cumprod, 1, "Running product along axis: y_i = prod_{j<=i} x_j.",
   "math.cumprod", attrs={"axis": Axes(None, "axis; null flattens first", allow_list=False)})
op("sort", jnp.sort, 1, "Values sorted ascending along axis.", work="sort",
   attrs={"axis": Axes(-1, allow_list=False)})

# ----- Shape and indexing -----
section("shape and indexing")
op("reshape", jnp.reshape, 1, "Same elements, new shape (one entry may be -1).",
   attrs={"shape": IntList(minimum=-1)})
op("transpose", jnp.transpose, 1, "Permute axes (default: reverse them).",
   attrs={"axes": IntList(None)})
op("matrix_transpose", jnp.matrix_transpose, 1, "Swap the last two axes.",
   "linalg.matrix_transpose")
op("expand_dims", jnp.expand_dims, 1, "Insert a size-1 axis at axis.",
   attrs={"axis": Axes(allow_none=False)})
op("squeeze", jnp.squeeze, 1, "Remove size-1 axes (all of them when axis is null).",
   attrs={"axis": Axes(None)})
op("broadcast_to", jnp.broadcast_to, 1, "Broadcast to shape by NumPy rules.",
   attrs={"shape": IntList(minimum=0)})
op("ravel", jnp.ravel, 1, "Flatten to one axis, row-major.", "flatten")
op("concatenate", lambda *xs, axis=0: jnp.concatenate(xs, axis=axis), (1, VARIADIC),
   "Join tensors along an existing axis.", "concat", attrs={"axis": Int(0)})
op("stack", lambda *xs, axis=0: jnp.stack(xs, axis=axis), (1, VARIADIC),
   "Join tensors along a new axis.", attrs={"axis": Int(0)})
op("split", _split, 1, "Split into equal sections or at indices along axis (several results).",
   multi=True, attrs={"indices_or_sections": IntOrIntList(), "axis": Int(0)})
op("take", jnp.take, 2, "Elements of x at integer indices along axis (null: flattened x).",
   attrs={"axis": Axes(None, allow_list=False)}, indices=1)
op("gather", lambda p, i, axis=0: jnp.take(p, i, axis=axis), 2,
   "Slices of params at integer indices along axis (TensorFlow's gather).",
   attrs={"axis": Int(0)}, indices=1)
op("slice", _slice, 1, "x[begin : begin + size] on every axis (size -1: to the end).",
   attrs={"begin": IntList(minimum=0), "size": IntList(minimum=-1)})
op("pad", jnp.pad, 1, "Pad with constant values: pad_width is [[before, after], ...].",
   attrs={"pad_width": IntList(minimum=0, nested=True), "constant_values": Float(0.0)})
op("tile", jnp.tile, 1, "Repeat the whole tensor reps times along each axis.",
   attrs={"reps": IntList(minimum=0)})
op("repeat", jnp.repeat, 1, "Repeat each element `repeats` times along axis.",
   attrs={"repeats": Int(minimum=0), "axis": Axes(None, allow_list=False)})
op("flip", jnp.flip, 1, "Reverse the order of elements along axis (all axes when null).",
   "reverse", attrs={"axis": Axes(None)})
op("roll", jnp.roll, 1, "Shift elements cyclically by shift along axis.",
   attrs={"shift": IntOrIntList(), "axis": Axes(None)})
op("moveaxis", jnp.moveaxis, 1, "Move axes from source to destination.",
   attrs={"source": IntOrIntList(), "destination": IntOrIntList()})
op("swapaxes", jnp.swapaxes, 1, "Exchange two axes.",
   attrs={"axis1": Int(), "axis2": Int()})
op("tril", jnp.tril, 1, "Lower triangle: zero above the k-th diagonal.", attrs={"k": Int(0)})
op("triu", jnp.triu, 1, "Upper triangle: zero below the k-th diagonal.", attrs={"k": Int(0)})
op("diagonal", jnp.diagonal, 1, "The k-th diagonal over axis1 and axis2.", "linalg.diag_part",
   attrs={"offset": Int(0), "axis1": Int(0), "axis2": Int(1)})
op("diag", jnp.diag, 1, "A vector's diagonal matrix, or a matrix's diagonal.", "linalg.diag",
   attrs={"k": Int(0)})

# ----- Linear algebra -----
section("linear algebra")
op("matmul", jnp.matmul, 2, "Matrix product, batched over leading axes: x @ y.", "linalg.matmul",
   work="matmul")
op("dot", jnp.dot, 2, "NumPy dot: sum over the last axis of x and the second-to-last of y.",
   work="matmul")
op("vdot", jnp.vdot, 2, "Inner product of the flattened tensors: sum_i x_i y_i.")
op("inner", jnp.inner, 2, "Sum over the last axes: sum_k x[..., k] y[..., k].",
   work="matmul")
op("outer", jnp.outer, 2, "Outer product of flattened vectors: x_i y_j.")
op("tensordot", jnp.tensordot, 2, "Contract x and y over `axes` (a count or a pair of lists).",
   work="contract", attrs={"axes": IntOrIntList(2)})
op("einsum", lambda *xs, subscripts: jnp.einsum(subscripts, *xs), (1, VARIADIC),
   "Einstein summation by subscripts, e.g. 'ij,jk->ik'.", "linalg.einsum", work="contract",
   attrs={"subscripts": Str()})
op("cross", jnp.cross, 2, "Cross product of 3-vectors along the last axis.", "linalg.cross")
op("kron", jnp.kron, 2, "Kronecker product.")
op("trace", jnp.trace, 1, "Sum of the diagonal: sum_i x_ii.", "linalg.trace",
   attrs={"offset": Int(0), "axis1": Int(0), "axis2": Int(1)})
op("inv", jnp.linalg.inv, 1, "Matrix inverse: x^-1 (batched).", "linalg.inv", work="cubic")
op("solve", jnp.linalg.solve, 2, "x such that a @ x = b.", "linalg.solve", work="cubic")
op("det", jnp.linalg.det, 1, "Determinant (batched).", "linalg.det", work="cubic")
op("slogdet", lambda x: tuple(jnp.linalg.slogdet(x)), 1,
   "Sign and ln|det(x)| (two results).", "linalg.slogdet", multi=True, work="cubic")
op("logdet", lambda x: jnp.linalg.slogdet(x)[1], 1, "ln|det(x)|.", "linalg.logdet",
   work="cubic")
op("cholesky", jnp.linalg.cholesky, 1, "Lower factor L of a positive-definite x = L L^T.",
   "linalg.cholesky", work="cubic")
op("triangular_solve", _triangular_solve, 2,
   "x such that a @ x = b for triangular a (a^T @ x = b when adjoint).",
   "linalg.triangular_solve", "solve_triangular", work="cubic",
   attrs={"lower": Bool(True), "adjoint": Bool(False)})

# ----- Convolution and pooling (layout NCHW / OIHW, or NHWC / HWIO with channels_last) -----
section("convolution and pooling")
WINDOW = {"strides": IntList(None, "step per spatial axis (default 1 for conv, the window for "
                             "pools)", minimum=1),
          "padding": Padding("VALID"),
          "layout": Str("channels_first", "NCHW input (OIHW kernel) or NHWC (HWIO)",
                        choices=LAYOUTS)}
op("conv", _conv, 2,
   "N-d cross-correlation: y[n, o, p] = sum_{c, k} x[n, c, p * strides + k * dilation] w[o, c, k] "
   "(c over o's group).", work="conv",
   attrs={**WINDOW, "dilation": IntList(None, "kernel dilation per spatial axis", minimum=1),
          "groups": Int(1, "feature groups (channels for a depthwise conv)", minimum=1)})
op("max_pool", _max_pool, 1, "Maximum over each window of the spatial axes.", work="window",
   attrs={"window": IntList(doc="size per spatial axis", minimum=1), **WINDOW})
op("avg_pool", _avg_pool, 1,
   "Mean over each window of the spatial axes (padding counted only with count_include_pad).",
   work="window",
   attrs={"window": IntList(doc="size per spatial axis", minimum=1), **WINDOW,
          "count_include_pad": Bool(False, "divide by the full window size at the borders")})
op("batch_norm", _batch_norm, 5,
   "Inference batch norm: (x - mean) / sqrt(variance + epsilon) * scale + bias, per channel.",
   attrs={"epsilon": Float(1e-5), "axis": Int(1, "the channel axis")})

# ----- Types and gradient control -----
section("types and gradient control")
op("cast", lambda x, dtype: x.astype(dtype), 1, "x converted to dtype.", "astype",
   attrs={"dtype": DType()})
op("identity", lambda x: x, 1, "x unchanged.")
op("stop_gradient", jax.lax.stop_gradient, 1, "x, with no gradient flowing through.",
   diff=False)
op("zeros_like", jnp.zeros_like, 1, "Zeros with the shape and dtype of x.", diff=False)
op("ones_like", jnp.ones_like, 1, "Ones with the shape and dtype of x.", diff=False)

# ----- Functions and control flow (functions as attrs: a graph-level name or inline) -----
section("control flow")
op("call", control.call, (0, VARIADIC), "The function's results on the arguments: f(args...).",
   multi=True, work="call", attrs={"function": FunctionRef(doc="the function to call")})
op("cond", control.cond, (1, VARIADIC),
   "true(operands...) if pred else false(operands...); args: pred (bool scalar), operands...",
   multi=True, work="call", eager=False,
   attrs={"true": FunctionRef(doc="the branch taken when pred is true"),
          "false": FunctionRef(doc="the branch taken when pred is false; its results have the "
                               "true branch's types")})
op("fori_loop", control.fori_loop, (0, VARIADIC),
   "carry = body(i, carry...) for i from lower to upper - 1; the final carry.",
   multi=True, work="call", eager=False, trips=control.fori_trips,
   attrs={"lower": Int(doc="the first i"), "upper": Int(doc="one past the last i"),
          "body": FunctionRef(doc="function of (i, carry...) returning the carry")})
op("while_loop", control.while_loop, (0, VARIADIC),
   "carry = body(carry...) while cond(carry...), at most max_iterations times; the final carry.",
   multi=True, work="call", eager=False, trips=control.while_trips, bounded=control.has_bound,
   attrs={"cond": FunctionRef(doc="function of the carry returning a bool scalar"),
          "body": FunctionRef(doc="function of the carry returning the carry"),
          "max_iterations": Int(None, "the loop stops after this many iterations (as "
                                "TensorFlow's maximum_iterations); reverse mode needs it",
                                minimum=0)})
op("scan", control.scan, (1, VARIADIC),
   "(carry, y_t) = body(carry..., x_t...) over the sequences' first axis; final carry..., "
   "stacked ys...", multi=True, work="call", eager=False, trips=control.scan_trips,
   attrs={"body": FunctionRef(doc="function of (carry..., x...) returning (carry..., y...)"),
          "num_carry": Int(doc="how many of the arguments (and of the body's results) are the "
                           "carry; the rest are sequences (and stacked outputs)", minimum=0),
          "reverse": Bool(False, "run from the last step to the first")})

OPS: dict[str, Op] = {o.name: o for o in _TABLE}
"""Canonical name -> op."""

_LOOKUP: dict[str, Op] = {}
for _op in _TABLE:
    for _name in (_op.name, *_op.aliases):
        if _name in _LOOKUP:
            raise RuntimeError(f"op name {_name!r} declared twice")
        _LOOKUP[_name] = _op

_PREFIXES = ("tf.", "jnp.", "np.", "jax.numpy.", "numpy.")


def lookup(name: str) -> Op | None:
    """The op called `name` (canonical or alias; prefixes such as `tf.` are ignored)."""
    found = _LOOKUP.get(name)
    if found is not None:
        return found
    for prefix in _PREFIXES:
        if name.startswith(prefix):
            return _LOOKUP.get(name[len(prefix):])
    return None


def suggest(name: str) -> list[str]:
    """Close op names, for 'did you mean' messages (none for names far longer than any op:
    matching costs time in proportion to the name's length)."""
    import difflib

    if len(name) > 64:
        return []

    return difflib.get_close_matches(name, list(_LOOKUP), n=3, cutoff=0.6)
