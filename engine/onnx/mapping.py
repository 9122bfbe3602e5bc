"""The ONNX mapping table: one declaration per ONNX op type, as `engine/ops.py` has one per op.

A declaration names the op type, the opsets it covers (the first and the last it was checked
against; where a later opset moved an attribute into an input, the declaration reads both),
what it maps to, and the function that emits it through a `NodeContext`. That function returns
the name (or constant) bound to the node's output, or None when it bound the outputs itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from onnx import TensorProto, numpy_helper

if TYPE_CHECKING:
    from engine.onnx.translate import NodeContext

LATEST = 28
"""The newest ONNX opset the declarations were checked against."""

ML = "ai.onnx.ml"
ML_LATEST = 5
"""The newest opset of the ai.onnx.ml domain (classical machine learning: scikit-learn models
exported by skl2onnx) the declarations were checked against."""

Convert = Callable[["NodeContext"], Any]


@dataclass(frozen=True)
class Mapping:
    op_type: str
    opsets: tuple[int, int]
    maps_to: str
    convert: Convert
    domain: str = ""

    def describe(self) -> dict[str, Any]:
        return {"domain": self.domain or "ai.onnx", "op_type": self.op_type,
                "opsets": list(self.opsets), "maps_to": self.maps_to}


MAPPINGS: dict[tuple[str, str], Mapping] = {}


def onnx_op(op_type: str, first: int, maps_to: str, convert: Convert, *, last: int = LATEST,
            domain: str = "") -> None:
    """Declare the mapping of `op_type` in `domain` ("" for the default domain, ai.onnx),
    checked against the domain's opsets `first` to `last`."""
    if (domain, op_type) in MAPPINGS:
        raise RuntimeError(f"ONNX op type {op_type!r} of domain {domain or 'ai.onnx'!r} "
                           "declared twice")
    MAPPINGS[(domain, op_type)] = Mapping(op_type, (first, last), maps_to, convert, domain)


# ----- helpers shared by the declarations


def unary(op: str, **attrs: Any) -> Convert:
    return lambda n: n.emit(op, [n.arg(0)], attrs)


def binary(op: str) -> Convert:
    return lambda n: n.emit(op, [n.arg(0), n.arg(1)])


def chain(op: str) -> Convert:
    """A variadic op (Max, Min) as a chain of binary ones."""
    def convert(n: NodeContext) -> Any:
        args = n.args()
        result = args[0]
        for other in args[1:]:
            result = n.emit(op, [result, other])
        return result
    return convert


def _axes(n: NodeContext, since: int) -> list[int] | None:
    """Axes of a reduction or (un)squeeze: an attribute before opset `since`, then the
    optional input 1."""
    if n.opset < since:
        axes = n.attr("axes")
        return None if axes is None else [int(a) for a in axes]
    return n.ints(1, "axes") if n.has(1) else None


def _spatial_pairs(pads: list[int], count: int) -> list[list[int]]:
    """ONNX pads [x1_begin, x2_begin, ..., x1_end, x2_end] as [[begin, end], ...]."""
    return [[pads[i], pads[i + count]] for i in range(count)]


def _window_padding(n: NodeContext, count: int) -> Any:
    auto_pad = n.attr("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER", "VALID"):
        return {"SAME_UPPER": "SAME", "SAME_LOWER": "SAME_LOWER", "VALID": "VALID"}[auto_pad]
    if auto_pad != "NOTSET":
        raise n.fail(f"auto_pad {auto_pad!r} is not one of NOTSET, SAME_UPPER, SAME_LOWER, "
                     "VALID")
    pads = [int(p) for p in n.attr("pads", [0] * 2 * count)]
    if len(pads) != 2 * count or min(pads, default=0) < 0:
        raise n.fail(f"pads needs {2 * count} non-negative entries, got {pads}")
    return _spatial_pairs(pads, count)


def _coerced(op: str) -> Convert:
    """Softmax and LogSoftmax: over one axis from opset 13; before, over the input coerced to
    2-D at `axis` (every axis from it on)."""
    def convert(n: NodeContext) -> Any:
        x = n.arg(0)
        if n.opset >= 13:
            return n.emit(op, [x], {"axis": int(n.attr("axis", -1))})
        rank = n.rank(0)
        axis = int(n.attr("axis", 1)) % max(rank, 1)
        if axis == rank - 1:
            return n.emit(op, [x], {"axis": -1})
        shape = n.static_shape(0)
        flat = n.emit("reshape", [x], {"shape": [math.prod(shape[:axis]), -1]})
        result = n.emit(op, [flat], {"axis": -1})
        return n.emit("reshape", [result], {"shape": list(shape)})
    return convert


def _reduce(op: str, since: int, before: str | None = None, after: str | None = None
            ) -> Convert:
    """ReduceX(data, axes?): `before` applied to each element, `after` to the result."""
    def convert(n: NodeContext) -> Any:
        x = n.arg(0)
        axes = _axes(n, since)
        if not axes and n.attr("noop_with_empty_axes", 0):
            return n.emit("identity", [x])
        if before is not None:
            x = n.emit(before, [x])
        attrs: dict[str, Any] = {"keepdims": bool(n.attr("keepdims", 1))}
        if axes:
            attrs["axis"] = axes
        result = n.emit(op, [x], attrs)
        return n.emit(after, [result]) if after is not None else result
    return convert


# ----- declarations, by section as in engine/ops.py

# Binary elementwise (NumPy broadcasting from opset 7)
onnx_op("Add", 7, "add", binary("add"))
onnx_op("Sub", 7, "subtract", binary("subtract"))
onnx_op("Mul", 7, "multiply", binary("multiply"))


def _div(n: NodeContext) -> Any:
    floats = (TensorProto.FLOAT, TensorProto.DOUBLE)
    if n.t.types.get(n.node.input[0], (TensorProto.FLOAT, None))[0] not in floats:
        raise n.fail("integer Div rounds toward zero, which the op table has no op for; only "
                     "floating-point Div is mapped (integer shape arithmetic on constants is "
                     "computed at import)")
    return n.emit("divide", [n.arg(0), n.arg(1)])


onnx_op("Div", 7, "divide (floating-point)", _div)
onnx_op("Pow", 7, "power", binary("power"))
onnx_op("Max", 8, "maximum (chained)", chain("maximum"))
onnx_op("Min", 8, "minimum (chained)", chain("minimum"))
onnx_op("Sum", 8, "add_n", lambda n: n.emit("add_n", n.args()))
onnx_op("Mean", 8, "add_n, divide",
        lambda n: n.emit("divide", [n.emit("add_n", n.args()), float(len(n.args()))]))
onnx_op("Equal", 7, "equal", binary("equal"))
onnx_op("Less", 7, "less", binary("less"))
onnx_op("LessOrEqual", 12, "less_equal", binary("less_equal"))
onnx_op("Greater", 7, "greater", binary("greater"))
onnx_op("GreaterOrEqual", 12, "greater_equal", binary("greater_equal"))
onnx_op("And", 7, "logical_and", binary("logical_and"))
onnx_op("Or", 7, "logical_or", binary("logical_or"))
onnx_op("Xor", 7, "logical_xor", binary("logical_xor"))
onnx_op("Not", 1, "logical_not", unary("logical_not"))
onnx_op("Where", 9, "where", lambda n: n.emit("where", [n.arg(0), n.arg(1), n.arg(2)]))

# Unary math
for _type, _op in [("Neg", "negative"), ("Abs", "abs"), ("Reciprocal", "reciprocal"),
                   ("Sqrt", "sqrt"), ("Exp", "exp"), ("Log", "log"), ("Floor", "floor"),
                   ("Ceil", "ceil"), ("Sign", "sign"), ("Tanh", "tanh"), ("Sigmoid", "sigmoid"),
                   ("Relu", "relu")]:
    onnx_op(_type, 6, _op, unary(_op))
for _type, _op in [("Sin", "sin"), ("Cos", "cos"), ("Tan", "tan"), ("Asin", "arcsin"),
                   ("Acos", "arccos"), ("Atan", "arctan")]:
    onnx_op(_type, 7, _op, unary(_op))
for _type, _op in [("Sinh", "sinh"), ("Cosh", "cosh"), ("Asinh", "arcsinh"),
                   ("Acosh", "arccosh"), ("Atanh", "arctanh"), ("Erf", "erf")]:
    onnx_op(_type, 9, _op, unary(_op))
onnx_op("Round", 11, "round", unary("round"))

# Activations
onnx_op("Softplus", 1, "softplus", unary("softplus"))
onnx_op("Softsign", 1, "softsign", unary("softsign"))
onnx_op("LeakyRelu", 6, "leaky_relu",
        lambda n: n.emit("leaky_relu", [n.arg(0)], {"negative_slope": float(n.attr("alpha", 0.01))}))


def _elu(n: NodeContext, alpha: float, x: Any) -> Any:
    """x if x > 0 else alpha * (e^x - 1), as relu(x) + alpha * min(elu(x), 0) so that no
    branch overflows into the gradient."""
    if alpha == 1.0:
        return n.emit("elu", [x])
    low = n.emit("minimum", [n.emit("elu", [x]), 0.0])
    return n.emit("add", [n.emit("relu", [x]), n.emit("multiply", [low, alpha])])


onnx_op("Elu", 6, "elu (relu, minimum, multiply, add when alpha != 1)",
        lambda n: _elu(n, float(n.attr("alpha", 1.0)), n.arg(0)))
onnx_op("Selu", 6, "elu, multiply",
        lambda n: n.emit("multiply", [_elu(n, float(n.attr("alpha", 1.6732632423543772)),
                                           n.arg(0)), float(n.attr("gamma", 1.0507009873554805))]))
onnx_op("HardSigmoid", 6, "multiply, add, clip",
        lambda n: n.emit("clip", [n.emit("add", [n.emit("multiply", [
            n.arg(0), float(n.attr("alpha", 0.2))]), float(n.attr("beta", 0.5))]), 0.0, 1.0]))
onnx_op("PRelu", 9, "less, multiply, where", lambda n: n.emit("where", [
    n.emit("less", [n.arg(0), 0.0]), n.emit("multiply", [n.arg(1), n.arg(0)]), n.arg(0)]))
onnx_op("Gelu", 20, "gelu", lambda n: n.emit(
    "gelu", [n.arg(0)], {"approximate": n.attr("approximate", "none") == "tanh"}))
onnx_op("Softmax", 1, "softmax (reshape around it before opset 13)", _coerced("softmax"))
onnx_op("LogSoftmax", 1, "log_softmax (reshape around it before opset 13)",
        _coerced("log_softmax"))


def _clip(n: NodeContext) -> Any:
    x = n.arg(0)
    if n.opset < 11:
        lo, hi = n.attr("min"), n.attr("max")  # an infinite bound is no bound
        low = None if lo is None or not math.isfinite(lo) else float(lo)
        high = None if hi is None or not math.isfinite(hi) else float(hi)
    else:
        low = n.arg(1) if n.has(1) else None
        high = n.arg(2) if n.has(2) else None
    if low is None and high is None:
        return n.emit("identity", [x])
    if low is not None:
        x = n.emit("maximum", [x, low])
    return n.emit("minimum", [x, high]) if high is not None else x


onnx_op("Clip", 6, "maximum, minimum", _clip)

# Linear algebra
onnx_op("MatMul", 1, "matmul", binary("matmul"))


def _gemm(n: NodeContext) -> Any:
    a, b = n.arg(0), n.arg(1)
    if n.attr("transA", 0):
        a = n.emit("transpose", [a])
    if n.attr("transB", 0):
        b = n.emit("transpose", [b])
    y = n.emit("matmul", [a, b])
    alpha, beta = float(n.attr("alpha", 1.0)), float(n.attr("beta", 1.0))
    if alpha != 1.0:
        y = n.emit("multiply", [y, alpha])
    if n.has(2):
        c = n.arg(2)
        if beta != 1.0:
            c = n.emit("multiply", [c, beta])
        y = n.emit("add", [y, c])
    return y


onnx_op("Gemm", 7, "transpose, matmul, multiply, add", _gemm)
onnx_op("Einsum", 12, "einsum", lambda n: n.emit(
    "einsum", n.args(), {"subscripts": n.attr("equation").replace(" ", "")}))

# Convolution, pooling, normalisation (NCHW)


def _conv(n: NodeContext) -> Any:
    count = n.rank(1, "the kernel") - 2
    if count < 1:
        raise n.fail("the kernel needs at least one spatial axis")
    attrs: dict[str, Any] = {
        "strides": [int(s) for s in n.attr("strides", [1] * count)],
        "padding": _window_padding(n, count),
        "dilation": [int(d) for d in n.attr("dilations", [1] * count)],
        "groups": int(n.attr("group", 1))}
    y = n.emit("conv", [n.arg(0), n.arg(1)], attrs)
    if not n.has(2):
        return y
    bias = n.emit("reshape", [n.arg(2)], {"shape": [-1] + [1] * count})
    return n.emit("add", [y, bias])


onnx_op("Conv", 1, "conv (reshape, add for the bias)", _conv)


def _pool(op: str) -> Convert:
    def convert(n: NodeContext) -> Any:
        window = [int(k) for k in n.attr("kernel_shape")]
        if n.attr("ceil_mode", 0):
            raise n.fail("ceil_mode=1 is not supported; export with ceil_mode=0 (the "
                         "default)")
        if any(int(d) != 1 for d in n.attr("dilations", [])):
            raise n.fail("dilated pooling is not supported")
        attrs: dict[str, Any] = {
            "window": window, "strides": [int(s) for s in n.attr("strides", [1] * len(window))],
            "padding": _window_padding(n, len(window))}
        if op == "avg_pool" and n.attr("count_include_pad", 0):
            attrs["count_include_pad"] = True
        return n.emit(op, [n.arg(0)], attrs)
    return convert


onnx_op("MaxPool", 1, "max_pool", _pool("max_pool"))
onnx_op("AveragePool", 1, "avg_pool", _pool("avg_pool"))


def _global(op: str) -> Convert:
    return lambda n: n.emit(op, [n.arg(0)], {"axis": list(range(2, n.rank(0))),
                                             "keepdims": True})


onnx_op("GlobalAveragePool", 1, "mean over the spatial axes", _global("mean"))
onnx_op("GlobalMaxPool", 1, "max over the spatial axes", _global("max"))


def _batch_norm(n: NodeContext) -> Any:
    if n.attr("training_mode", 0):
        raise n.fail("training_mode=1 is not supported: the import computes the inference "
                     "form (running mean and variance)")
    if not n.attr("spatial", 1):
        raise n.fail("spatial=0 is not supported")
    return n.emit("batch_norm", [n.arg(i) for i in range(5)],
                  {"epsilon": float(n.attr("epsilon", 1e-5))})


onnx_op("BatchNormalization", 7, "batch_norm", _batch_norm)


def _layer_norm(n: NodeContext) -> Any:
    rank = n.rank(0)
    axes = list(range(int(n.attr("axis", -1)) % rank, rank))
    x = n.arg(0)
    centred = n.emit("subtract", [x, n.emit("mean", [x], {"axis": axes, "keepdims": True})])
    variance = n.emit("mean", [n.emit("square", [centred])], {"axis": axes, "keepdims": True})
    scale = n.emit("rsqrt", [n.emit("add", [variance, float(n.attr("epsilon", 1e-5))])])
    y = n.emit("multiply", [n.emit("multiply", [centred, scale]), n.arg(1)])
    return n.emit("add", [y, n.arg(2)]) if n.has(2) else y


onnx_op("LayerNormalization", 17, "mean, subtract, square, rsqrt, multiply, add", _layer_norm)

# Reductions
onnx_op("ReduceSum", 1, "sum", _reduce("sum", 13))
onnx_op("ReduceMean", 1, "mean", _reduce("mean", 18))
onnx_op("ReduceMax", 1, "max", _reduce("max", 18))
onnx_op("ReduceMin", 1, "min", _reduce("min", 18))
onnx_op("ReduceProd", 1, "prod", _reduce("prod", 18))
onnx_op("ReduceLogSumExp", 1, "logsumexp", _reduce("logsumexp", 18))
onnx_op("ReduceSumSquare", 1, "square, sum", _reduce("sum", 18, before="square"))
onnx_op("ReduceL1", 1, "abs, sum", _reduce("sum", 18, before="abs"))
onnx_op("ReduceL2", 1, "square, sum, sqrt", _reduce("sum", 18, before="square", after="sqrt"))


def _arg_reduce(op: str) -> Convert:
    def convert(n: NodeContext) -> Any:
        if n.attr("select_last_index", 0):
            raise n.fail("select_last_index=1 is not supported")
        return n.emit(op, [n.arg(0)], {"axis": int(n.attr("axis", 0)),
                                       "keepdims": bool(n.attr("keepdims", 1))})
    return convert


onnx_op("ArgMax", 1, "argmax", _arg_reduce("argmax"))
onnx_op("ArgMin", 1, "argmin", _arg_reduce("argmin"))

# Shapes and indexing


def _flatten(n: NodeContext) -> Any:
    shape = n.shape(0)
    if shape is None:
        raise n.fail("the rank of the input is not known; export the model with shapes")
    axis = int(n.attr("axis", 1))
    axis = axis + len(shape) if axis < 0 else axis
    before, after = shape[:axis], shape[axis:]
    known_before = None not in before
    known_after = None not in after
    if not (known_before or known_after):
        raise n.fail(f"needs the axes before or after axis {axis} to be static, got "
                     f"{['?' if d is None else d for d in shape]}")
    target = [math.prod(before) if known_before else -1,  # type: ignore[arg-type]
              math.prod(after) if known_after and not known_before else -1]  # type: ignore[arg-type]
    return n.emit("reshape", [n.arg(0)], {"shape": target})


onnx_op("Flatten", 1, "reshape", _flatten)


def _reshape(n: NodeContext) -> Any:
    if n.dynamic(1):
        return _reshape_to_inferred(n)
    target = n.ints(1, "shape")
    if not n.attr("allowzero", 0) and 0 in target:
        shape = n.shape(0)
        for i, d in enumerate(target):
            if d == 0:
                if shape is None or i >= len(shape) or shape[i] is None:
                    raise n.fail(f"shape entry {i} is 0 (copy the input's dimension), which "
                                 "is not static here; export the model with fixed shapes")
                target[i] = int(shape[i])  # type: ignore[arg-type]
    return n.emit("reshape", [n.arg(0)], {"shape": target})


def _reshape_to_inferred(n: NodeContext) -> Any:
    """A target computed from a dynamic shape (Shape, Slice, Concat of a batch axis): the
    output shape that shape inference tells, with -1 for its one unknown dimension."""
    from engine.onnx.translate import _shape_text

    shape = n.output_shape()
    if shape is None or sum(d is None for d in shape) > 1:
        raise n.fail("the target shape is computed from a shape that is not static here, and "
                     "shape inference leaves more than one dimension of the output unknown "
                     f"({_shape_text(shape)}); export the model with fixed shapes")
    return n.emit("reshape", [n.arg(0)], {"shape": [-1 if d is None else d for d in shape]})


onnx_op("Reshape", 5, "reshape", _reshape)
onnx_op("Transpose", 1, "transpose", lambda n: n.emit(
    "transpose", [n.arg(0)],
    {"axes": [int(p) for p in n.attr("perm")]} if n.attr("perm") is not None else None))
onnx_op("Concat", 4, "concatenate",
        lambda n: n.emit("concatenate", n.args(), {"axis": int(n.attr("axis"))}))


def _squeeze(n: NodeContext) -> Any:
    axes = _axes(n, 13)
    return n.emit("squeeze", [n.arg(0)], {"axis": axes} if axes else None)


onnx_op("Squeeze", 1, "squeeze", _squeeze)
onnx_op("Unsqueeze", 1, "expand_dims",
        lambda n: n.emit("expand_dims", [n.arg(0)], {"axis": _axes(n, 13)}))
onnx_op("Gather", 1, "take", lambda n: n.emit("take", [n.arg(0), n.arg(1)],
                                              {"axis": int(n.attr("axis", 0))}))


def _slice(n: NodeContext) -> Any:
    if n.opset < 10:
        starts, ends = list(n.attr("starts")), list(n.attr("ends"))
        axes = list(n.attr("axes", range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts, ends = n.ints(1, "starts"), n.ints(2, "ends")
        axes = n.ints(3, "axes") if n.has(3) else list(range(len(starts)))
        steps = n.ints(4, "steps") if n.has(4) else [1] * len(starts)
    if any(s != 1 for s in steps):
        raise n.fail(f"steps other than 1 are not supported, got {steps}")
    shape = n.shape(0)
    if shape is None:
        raise n.fail("the rank of the input is not known; export the model with shapes")
    begin, size = [0] * len(shape), [-1] * len(shape)
    for start, end, axis in zip(starts, ends, axes, strict=True):
        axis %= len(shape)
        dim = shape[axis]
        if dim is None:
            raise n.fail(f"slices axis {axis}, whose size is not static here")
        lo = min(max(start + dim if start < 0 else start, 0), dim)
        hi = min(max(end + dim if end < 0 else end, 0), dim)
        begin[axis], size[axis] = lo, max(hi - lo, 0)
    return n.emit("slice", [n.arg(0)], {"begin": begin, "size": size})


onnx_op("Slice", 1, "slice", _slice)


def _split(n: NodeContext) -> Any:
    outputs = n.outputs
    if not all(outputs):
        raise n.fail("every output of Split must be named")
    # the sizes: an attribute before opset 13, then an optional input
    sizes = n.attr("split") if n.opset < 13 else n.ints(1, "split") if n.has(1) else None
    sections: Any = len(outputs)
    if sizes:
        sections = [int(s) for s in np.cumsum(sizes)[:-1]]
    n.emit("split", [n.arg(0)], {"indices_or_sections": sections,
                                 "axis": int(n.attr("axis", 0))}, out=list(outputs))
    return None


onnx_op("Split", 2, "split", _split)
onnx_op("Expand", 8, "broadcast_to", lambda n: n.emit("broadcast_to", [n.arg(0)], {
    "shape": list(np.broadcast_shapes(n.static_shape(0), tuple(n.ints(1, "shape"))))}))
onnx_op("Tile", 6, "tile", lambda n: n.emit("tile", [n.arg(0)], {"reps": n.ints(1, "repeats")}))


def _pad(n: NodeContext) -> Any:
    if n.attr("mode", "constant") != "constant":
        raise n.fail(f"mode {n.attr('mode')!r} is not supported; only constant padding is")
    if n.opset < 11:
        pads, value = [int(p) for p in n.attr("pads")], float(n.attr("value", 0.0))
    else:
        pads = n.ints(1, "pads")
        value = float(n.const(2, "constant_value").reshape(-1)[0]) if n.has(2) else 0.0
    rank = n.rank(0)
    axes = n.ints(3, "axes") if n.has(3) else list(range(rank))
    if min(pads, default=0) < 0:
        raise n.fail("negative pads (cropping) are not supported")
    width = [[0, 0] for _ in range(rank)]
    for i, axis in enumerate(axes):
        width[axis % rank] = [pads[i], pads[i + len(axes)]]
    return n.emit("pad", [n.arg(0)], {"pad_width": width, "constant_values": value})


onnx_op("Pad", 2, "pad", _pad)


def _shape(n: NodeContext) -> Any:
    shape = n.shape(0)
    dims = None if shape is None else shape[slice(n.attr("start", 0), n.attr("end", None))]
    if dims is None or None in dims:
        n.t.dynamic.add(n.out)  # only a Reshape may read it (or what is computed from it)
    else:
        n.t.static[n.out] = np.array(dims, np.int64)
    return None


onnx_op("Shape", 1, "a constant (a dynamic axis: only for a Reshape's target)", _shape)


def _constant(n: NodeContext) -> Any:
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32),
                       ("value_int", np.int64), ("value_ints", np.int64)):
        if key in n.attrs:
            n.t.static[n.out] = np.array(n.attrs[key], dtype)
            return None
    if "value" not in n.attrs:
        raise n.fail("only value, value_float(s) and value_int(s) constants are supported")
    n.t.static[n.out] = numpy_helper.to_array(n.attrs["value"])
    return None


onnx_op("Constant", 1, "a constant", _constant)

# Types and gradient control


def _cast(n: NodeContext) -> Any:
    from engine.onnx.translate import _dtype

    return n.emit("cast", [n.arg(0)], {"dtype": _dtype(int(n.attr("to")), "the Cast target")})


onnx_op("Cast", 6, "cast", _cast)
onnx_op("Identity", 1, "identity", unary("identity"))
onnx_op("Dropout", 7, "identity (inference)", unary("identity"))

# ----- ai.onnx.ml: the classical models that skl2onnx exports. Their weights are attributes,
# which become inputs with defaults named after the node (`<node>/coefficients`,
# `<node>/intercepts`), so that they can be differentiated as initializers are. As the domain
# specifies, they read float, double and integer tensors and compute in float32.


def _float_input(n: NodeContext) -> Any:
    x = n.arg(0)
    if n.t.types.get(n.node.input[0], (TensorProto.FLOAT, None))[0] == TensorProto.FLOAT:
        return x
    return n.emit("cast", [x], {"dtype": "float32"})


_POST_TRANSFORMS = {"NONE": None, "LOGISTIC": "sigmoid", "SOFTMAX": "softmax"}


def _post_transform(n: NodeContext, scores: Any) -> Any:
    name = n.attr("post_transform", "NONE")
    if name not in _POST_TRANSFORMS:
        raise n.fail(f"post_transform {name!r} is not supported; NONE, LOGISTIC and SOFTMAX "
                     "are")
    op = _POST_TRANSFORMS[name]
    if op is None:
        return scores
    return n.emit(op, [scores], {"axis": -1} if op == "softmax" else None)


def _linear(n: NodeContext, rows: int) -> Any:
    """x @ coefficients.T + intercepts, with coefficients of shape [rows, features]."""
    count = len(n.attr("coefficients", []))
    shape = n.shape(0)
    features = shape[-1] if shape else None
    if rows < 1 or count == 0 or count % rows or (features and count != rows * features):
        raise n.fail(f"coefficients has {count} values, not one row of "
                     f"{features or 'the input features'} per output ({rows} outputs)")
    y = n.emit("matmul", [_float_input(n), n.emit(
        "transpose", [n.weight("coefficients", (rows, count // rows))])])
    if n.attr("intercepts") is not None:
        y = n.emit("add", [y, n.weight("intercepts", (rows,))])
    return y


onnx_op("LinearRegressor", 1, "matmul, add (the post_transform: sigmoid, softmax)",
        lambda n: _post_transform(n, _linear(n, int(n.attr("targets", 1)))),
        last=ML_LATEST, domain=ML)


def _linear_classifier(n: NodeContext) -> Any:
    """Outputs: the label (argmax of the scores, as a class label) and the scores."""
    if n.attr("classlabels_strings") is not None:
        raise n.fail("string class labels are not supported (the op table has no strings); "
                     "train the model with integer class labels")
    labels = np.asarray(n.attr("classlabels_ints", []), np.int64)
    count, shape = len(n.attr("coefficients", [])), n.shape(0)
    rows = count // shape[-1] if shape and shape[-1] else labels.size
    if labels.size < 2 or rows != labels.size:
        raise n.fail(f"needs one row of coefficients per class: {labels.size} class labels "
                     f"and {count} coefficients (the binary form with one row is not "
                     "supported; export a row per class)")
    raw = _linear(n, labels.size)
    label, scores = [*n.outputs, ""][:2]
    if label:
        index = n.emit("argmax", [raw], {"axis": -1, "keepdims": False})
        n.emit("take", [n.literal(labels), index], {"axis": 0}, out=label)
    if scores:
        n.emit("identity", [_post_transform(n, raw)], out=scores)
    return None


onnx_op("LinearClassifier", 1, "matmul, add, sigmoid or softmax; argmax, take (the label)",
        _linear_classifier, last=ML_LATEST, domain=ML)


def _normalizer(n: NodeContext) -> Any:
    """Each row divided by its max, L1 or L2 norm; a row whose norm is 0 is left as is."""
    x = _float_input(n)
    norm = n.attr("norm", "MAX")
    if norm == "MAX":
        scale = n.emit("max", [x], {"axis": -1, "keepdims": True})
    elif norm == "L1":
        scale = n.emit("sum", [n.emit("abs", [x])], {"axis": -1, "keepdims": True})
    elif norm == "L2":
        scale = n.emit("sqrt", [n.emit("sum", [n.emit("square", [x])],
                                       {"axis": -1, "keepdims": True})])
    else:
        raise n.fail(f"norm {norm!r} is not one of MAX, L1, L2")
    safe = n.emit("where", [n.emit("equal", [scale, 0.0]), 1.0, scale])
    return n.emit("divide", [x, safe])


onnx_op("Normalizer", 1, "max, abs, sum, square, sqrt, where, divide", _normalizer,
        last=ML_LATEST, domain=ML)


def _array_feature_extractor(n: NodeContext) -> Any:
    """The entries of the last axis at the indices given (a 1-D input gives a row)."""
    index = n.emit("reshape", [n.arg(1)], {"shape": [-1]})
    y = n.emit("take", [n.arg(0), index], {"axis": -1})
    return n.emit("reshape", [y], {"shape": [1, -1]}) if n.rank(0) == 1 else y


onnx_op("ArrayFeatureExtractor", 1, "reshape, take", _array_feature_extractor,
        last=ML_LATEST, domain=ML)
