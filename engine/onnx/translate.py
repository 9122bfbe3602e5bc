"""The translation loop: read the model, infer its shapes, and map node after node.

Like the interpreter, the loop never switches on op types: it looks each node up in the
mapping table and lets the declaration emit ops of the op table through a `NodeContext`.
What is known before any request (Constant outputs, static shapes, integer initializers) is
kept as values, and a node whose inputs are all such values is evaluated here, once, by ONNX's
reference evaluator: shape arithmetic (Shape, Gather, Concat, ...) never reaches the graph.
Shape arithmetic on a shape that is not known here (a dynamic batch axis) is not computed: its
values are marked dynamic, and only a Reshape may read them, taking its target from shape
inference instead (the pattern a Flatten exported by tf2onnx leaves).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper, numpy_helper

from engine.errors import EngineError, InvalidGraph, TooLarge, clip
from engine.onnx.mapping import MAPPINGS, Mapping
from engine.tensors import encode

DTYPES: dict[int, str] = {TensorProto.FLOAT: "float32", TensorProto.DOUBLE: "float64",
          TensorProto.INT32: "int32", TensorProto.INT64: "int64", TensorProto.BOOL: "bool"}
"""ONNX element types the op table computes in."""

DEFAULT_DOMAINS = ("", "ai.onnx")
INLINE_ELEMENTS = 16  # constants up to this size are written as data, larger ones as bytes


def translate_model(blob: bytes, *, max_elements: int, max_nodes: int | None = None
                    ) -> dict[str, Any]:
    model = _read(blob)
    if max_nodes is not None and len(model.graph.node) > max_nodes:
        raise InvalidGraph(f"the model has {len(model.graph.node)} nodes; the limit is "
                           f"{max_nodes} (GRADTAPE_MAX_NODES)", loc=("graph", "node"))
    return Translation(model, max_elements).run()


def _read(blob: bytes) -> onnx.ModelProto:
    model = onnx.ModelProto()
    try:
        model.ParseFromString(blob)
    except (DecodeError, ValueError, RuntimeError):
        raise InvalidGraph("the body is not a serialized ONNX model (ModelProto): it does not "
                           "parse as one; send the bytes of a .onnx file") from None
    if not model.HasField("graph") or not model.graph.node:
        raise InvalidGraph("the body is not an ONNX model with a graph: it has no nodes; send "
                           "the bytes of a .onnx file", loc=("graph",))
    return model


def _opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in DEFAULT_DOMAINS:
            return int(entry.version)
    raise InvalidGraph("the model imports no opset of the default ONNX domain (opset_import); "
                       "export it with an opset", loc=("opset_import",))


def _dtype(elem_type: int, what: str) -> str:
    name = DTYPES.get(elem_type)
    if name is None:
        onnx_name = TensorProto.DataType.Name(elem_type) if elem_type in \
            TensorProto.DataType.values() else str(elem_type)
        raise InvalidGraph(f"{what} has element type {onnx_name}; the op table computes in "
                           f"{', '.join(DTYPES.values())}: cast it when exporting")
    return name


def _literal(value: np.ndarray) -> dict[str, Any]:
    """A constant as a tensor object: small ones readable, large ones as raw bytes."""
    if value.size <= INLINE_ELEMENTS:
        tensor = encode(value)
        data = tensor["data"]
        return {**tensor, "data": data.tolist() if isinstance(data, np.ndarray | np.generic)
                else data}
    return encode(value, encoding="base64")


class Translation:
    """One model's translation: the JSON graph built so far and what is known statically."""

    def __init__(self, model: onnx.ModelProto, max_elements: int):
        self.opset = _opset(model)
        self.opsets = {e.domain or "": int(e.version) for e in model.opset_import}
        self.max_elements = max_elements
        self.graph = model.graph
        self.inputs: dict[str, dict[str, Any]] = {}
        self.nodes: list[dict[str, Any]] = []
        self.defined: set[str] = set()
        self.static: dict[str, np.ndarray] = {}  # Constant outputs and values folded here
        self.dynamic: set[str] = set()  # values computed from a shape not static here
        self.initializers: dict[str, onnx.TensorProto] = {t.name: t for t in
                                                          self.graph.initializer}
        self.types = _infer_types(model)
        self.taken = {v for n in self.graph.node for v in (*n.input, *n.output)} | \
            {v.name for v in (*self.graph.input, *self.graph.output)} | set(self.initializers)
        self._fresh = 0

    def run(self) -> dict[str, Any]:
        for value in self.graph.input:
            if value.name not in self.initializers:
                self._declare_input(value)
        for index, node in enumerate(self.graph.node):
            try:
                NodeContext(self, node, index).translate()
            except EngineError:
                raise
            except Exception as exc:  # a model that the declarations did not foresee
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else \
                    type(exc).__name__
                label = clip(node.name or f"#{index}")
                raise InvalidGraph(f"ONNX node {label} ({clip(node.op_type)}): cannot be "
                                   f"translated: {clip(reason, 300)}", node=node.name or
                                   f"#{index}", loc=("graph", "node", index)) from None
        try:
            return self._finish()
        except EngineError:
            raise
        except Exception as exc:
            raise InvalidGraph(f"the model's outputs cannot be translated: "
                               f"{clip(str(exc) or type(exc).__name__, 300)}",
                               loc=("graph", "output")) from None

    def _finish(self) -> dict[str, Any]:
        outputs = []
        for i, value in enumerate(self.graph.output):
            name = value.name
            if name not in self.defined:
                if name in self.static:
                    self.nodes.append({"id": name, "op": "identity",
                                       "args": [_literal(self.static[name])]})
                    self.defined.add(name)
                elif name in self.initializers:
                    self.use_initializer(name)
                else:
                    raise InvalidGraph(f"graph output {clip(name)} is not produced by any node",
                                       loc=("graph", "output", i))
            outputs.append(name)
        if not self.nodes:
            raise InvalidGraph("the model computes nothing from its inputs: every output is "
                               "a constant", loc=("graph",))
        return {"inputs": self.inputs, "nodes": self.nodes, "outputs": outputs}

    def _declare_input(self, value: onnx.ValueInfoProto) -> None:
        tensor = value.type.tensor_type
        if not value.type.HasField("tensor_type"):
            raise InvalidGraph(f"graph input {clip(value.name)} is not a tensor",
                               loc=("graph", "input"))
        spec: dict[str, Any] = {"dtype": _dtype(tensor.elem_type,
                                                f"graph input {clip(value.name)}")}
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        if tensor.HasField("shape") and None not in dims:
            spec["shape"] = dims
        self.inputs[value.name] = spec
        self.defined.add(value.name)

    def use_initializer(self, name: str) -> str:
        """An initializer read as a tensor: an input whose default is its value."""
        array = numpy_helper.to_array(self.initializers[name])
        _dtype(self.initializers[name].data_type, f"initializer {clip(name)}")
        return self._weight(name, array, f"initializer {clip(name)}")

    def use_weight(self, base: str, array: np.ndarray) -> str:
        """A weight that a node holds in an attribute (the coefficients of an ai.onnx.ml
        LinearClassifier), read as a tensor: an input named `base` (or a fresh name when the
        model uses it) whose default is its value, as for an initializer."""
        name = base if base not in self.taken else self.fresh(base)
        self.taken.add(name)
        _dtype(_onnx_type(array), f"weight {clip(name)}")
        return self._weight(name, array, f"weight {clip(name)}")

    def _weight(self, name: str, array: np.ndarray, what: str) -> str:
        self._check_size(array, what)
        self.inputs[name] = {"dtype": str(array.dtype), "shape": list(array.shape),
                             "default": encode(array, encoding="base64")}
        self.defined.add(name)
        return name

    def use_static(self, name: str) -> str:
        """A value known here, read as a tensor: a node holding it as a constant."""
        value = self.static[name]
        _dtype(_onnx_type(value), f"constant {clip(name)}")
        self.nodes.append({"id": name, "op": "identity", "args": [_literal(value)]})
        self.defined.add(name)
        return name

    def fresh(self, base: str) -> str:
        """A node id not used by the model."""
        while True:
            self._fresh += 1
            name = f"{base}/{self._fresh}"
            if name not in self.taken:
                self.taken.add(name)
                return name

    def _check_size(self, array: np.ndarray, what: str) -> None:
        if array.size > self.max_elements:
            raise TooLarge(f"{what} has {array.size} elements; the limit is "
                           f"{self.max_elements} (GRADTAPE_MAX_ELEMENTS)")


def _onnx_type(value: np.ndarray) -> int:
    return int(helper.np_dtype_to_tensor_dtype(value.dtype))


def _infer_types(model: onnx.ModelProto) -> dict[str, tuple[int, tuple[int | None, ...] | None]]:
    """Element type and shape (None for an unknown dimension, or for an unknown rank) of every
    value ONNX's shape inference can tell."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # an inconsistent model: translate what can be, fail where it cannot
        inferred = model
    graph = inferred.graph
    types: dict[str, tuple[int, tuple[int | None, ...] | None]] = {}
    for value in (*graph.input, *graph.value_info, *graph.output):
        if not value.type.HasField("tensor_type"):
            continue
        tensor = value.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") else None
                      for d in tensor.shape.dim) if tensor.HasField("shape") else None
        types[value.name] = (tensor.elem_type, shape)
    for init in graph.initializer:
        types[init.name] = (init.data_type, tuple(init.dims))
    return types


class NodeContext:
    """What a mapping declaration sees of one ONNX node: its attributes, its inputs (as names,
    or as constant values), their inferred shapes, and a way to emit ops."""

    def __init__(self, translation: Translation, node: onnx.NodeProto, index: int):
        self.t = translation
        self.node = node
        self.index = index
        self.label = node.name or f"#{index}"
        self.op_type = node.op_type
        self.domain = node.domain or ""
        self.opset = translation.opsets.get(self.domain, translation.opset) if \
            self.domain not in DEFAULT_DOMAINS else translation.opset
        self.attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        self.out = node.output[0] if node.output else ""
        self.outputs = list(node.output)

    # ----- the loop's side

    def translate(self) -> None:
        mapping = self._mapping()
        if self._fold():
            return
        if mapping is None:
            where = f" (domain {self.domain!r})" if self.domain not in DEFAULT_DOMAINS else ""
            raise self.error(f"op type {self.op_type!r}{where} has no mapping to the op table; "
                             "ONNX import maps the op types listed in docs/ONNX.md")
        lo, hi = mapping.opsets
        if not lo <= self.opset <= hi:
            raise self.error(f"op type {self.op_type!r} at opset {self.opset} is not covered: "
                             f"its mapping covers opsets {lo} to {hi}")
        result = mapping.convert(self)
        if result is not None:
            self._finish(result)

    def _mapping(self) -> Mapping | None:
        domain = "" if self.domain in DEFAULT_DOMAINS else self.domain
        return MAPPINGS.get((domain, self.op_type))

    def _fold(self) -> bool:
        """Evaluate the node here when every input is known (shape arithmetic)."""
        names = [n for n in self.node.input if n]
        if self.op_type == "Constant" or not names or not all(
                n in self.t.static or n in self.t.dynamic or self._integer_initializer(n)
                for n in names):
            return False
        if any(n in self.t.dynamic for n in names):
            if self.op_type == "Reshape":
                return False  # its mapping reads the target from shape inference
            self.t.dynamic.update(out for out in self.outputs if out)
            return True  # arithmetic on a shape not known here: nothing to compute yet
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
               for a in self.node.attribute):
            return False  # control flow: never run a model's loops here
        for out in self.outputs:
            shape = self.t.types.get(out, (0, None))[1]
            if shape is None or None in shape or \
                    math.prod(d or 0 for d in shape) > self.t.max_elements:
                return False  # unknown or too big to compute here
        from onnx.reference import ReferenceEvaluator

        feeds = {n: self.t.static[n] if n in self.t.static else
                 numpy_helper.to_array(self.t.initializers[n]) for n in names}
        try:
            evaluator = ReferenceEvaluator(self.node, opsets={"": self.t.opset})
            results = evaluator.run(None, feeds)
        except Exception:
            return False  # not foldable here: map it as any other node
        for out, value in zip(self.outputs, results, strict=False):
            if out:
                self.t.static[out] = np.asarray(value)
        return True

    def _integer_initializer(self, name: str) -> bool:
        init = self.t.initializers.get(name)
        return init is not None and init.data_type in (TensorProto.INT64, TensorProto.INT32)

    def _finish(self, result: Any) -> None:
        """Bind the node's (first) output to `result`: the last node emitted is renamed when
        it is that result, else an identity node binds it."""
        nodes = self.t.nodes
        if isinstance(result, str) and nodes and nodes[-1]["id"] == result and \
                result.startswith(f"{self.out}/"):
            nodes[-1]["id"] = self.out
            self.t.defined.discard(result)
        else:
            nodes.append({"id": self.out, "op": "identity", "args": [result]})
        self.t.defined.add(self.out)

    def error(self, detail: str) -> InvalidGraph:
        name = clip(self.label)
        return InvalidGraph(f"ONNX node {name} ({self.op_type}): {detail}", node=self.label,
                            loc=("graph", "node", self.index))

    # ----- the declarations' side

    def attr(self, name: str, default: Any = None) -> Any:
        value = self.attrs.get(name, default)
        return value.decode() if isinstance(value, bytes) else value

    def has(self, i: int) -> bool:
        return len(self.node.input) > i and bool(self.node.input[i])

    @property
    def num_inputs(self) -> int:
        return len(self.node.input)

    def arg(self, i: int) -> Any:
        """Input i as an argument: the name of an input or earlier node (an initializer
        becomes an input with a default; a constant, a node holding it)."""
        if not self.has(i):
            raise self.error(f"input {i} is required")
        name = self.node.input[i]
        if name in self.t.defined:
            return name
        if name in self.t.initializers:
            return self.t.use_initializer(name)
        if name in self.t.static:
            return self.t.use_static(name)
        if name in self.t.dynamic:
            raise self.error(f"input {clip(name)} is computed from a shape that is not static "
                             "here (a dynamic axis), which only a Reshape's target may be; "
                             "export the model with fixed shapes")
        raise self.error(f"input {clip(name)} is not produced by an earlier node (or is an "
                         "output that the import does not compute, such as a mask or the "
                         "statistics of a training-mode node)")

    def args(self) -> list[Any]:
        return [self.arg(i) for i in range(self.num_inputs) if self.has(i)]

    def const(self, i: int, what: str) -> np.ndarray:
        """Input i as a value known before any request (an initializer or a constant): the
        op needs it to fix a shape, an axis or a bound."""
        name = self.node.input[i] if self.has(i) else ""
        if name in self.t.static:
            return self.t.static[name]
        if name in self.t.initializers:
            return numpy_helper.to_array(self.t.initializers[name])
        if name in self.t.dynamic:
            raise self.error(f"input {i} ({what}) is computed from a shape that is not static "
                             "here (a dynamic axis); export the model with fixed shapes")
        raise self.error(f"input {i} ({what}) must be a constant (an initializer or a "
                         "Constant, or computed from static shapes), not a computed tensor")

    def dynamic(self, i: int) -> bool:
        """Whether input i is computed from a shape that is not static here."""
        return self.has(i) and self.node.input[i] in self.t.dynamic

    def output_shape(self) -> tuple[int | None, ...] | None:
        """The (first) output's shape from shape inference (None entries unknown), or None."""
        return self.t.types.get(self.out, (0, None))[1]

    def weight(self, attr: str, shape: Sequence[int]) -> str:
        """A float attribute holding a weight, as an input with a default named after the node
        and the attribute: it is differentiable like an initializer."""
        values = np.asarray(self.attr(attr, []), np.float32)
        if values.size != math.prod(shape):
            raise self.error(f"{attr} has {values.size} values, {math.prod(shape)} expected "
                             f"(shape {list(shape)})")
        return self.t.use_weight(f"{self.label}/{attr}", values.reshape(shape))

    def ints(self, i: int, what: str) -> list[int]:
        return [int(v) for v in np.asarray(self.const(i, what)).reshape(-1)]

    def shape(self, i: int) -> tuple[int | None, ...] | None:
        """Input i's shape from shape inference (None entries unknown), or None."""
        name = self.node.input[i] if self.has(i) else ""
        if name in self.t.static:
            return tuple(self.t.static[name].shape)
        return self.t.types.get(name, (0, None))[1]

    def rank(self, i: int, what: str = "the input") -> int:
        shape = self.shape(i)
        if shape is None:
            raise self.error(f"the rank of {what} is not known; export the model with shapes "
                             "(or run onnx.shape_inference on it)")
        return len(shape)

    def static_shape(self, i: int, what: str = "the input") -> tuple[int, ...]:
        shape = self.shape(i)
        if shape is None or None in shape:
            raise self.error(f"needs the shape of {what}, which is not static here "
                             f"({_shape_text(shape)}); export the model with fixed shapes")
        return tuple(int(d) for d in shape)  # type: ignore[arg-type]

    def emit(self, op: str, args: Sequence[Any], attrs: dict[str, Any] | None = None,
             out: str | list[str] | None = None) -> str:
        """Append a node of the op table; returns its id (a fresh one unless `out`)."""
        ident = out if out is not None else self.t.fresh(self.out or self.label)
        node: dict[str, Any] = {"id": ident, "op": op, "args": list(args)}
        if attrs:
            node["attrs"] = attrs
        self.t.nodes.append(node)
        for name in [ident] if isinstance(ident, str) else ident:
            self.t.defined.add(name)
        return ident if isinstance(ident, str) else ident[0]

    def literal(self, value: np.ndarray) -> dict[str, Any]:
        """A constant known here, as a tensor object an op reads as an argument."""
        _dtype(_onnx_type(value), "a constant")
        return _literal(value)

    def fail(self, detail: str) -> InvalidGraph:
        return self.error(detail)


def _shape_text(shape: tuple[int | None, ...] | None) -> str:
    if shape is None:
        return "unknown rank"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"
