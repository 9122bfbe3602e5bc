"""Serialized graphs: structural validation, canonical form and content address.

`parse_graph` checks everything that needs no shapes (names, ops, arity, attributes, limits)
and builds a `Program`; `engine.interpreter.infer` then checks shapes and dtypes. Every error
names the node and the field at fault and says how to fix it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from engine.attrs import AttrError, FunctionRef
from engine.dtypes import DTYPES
from engine.errors import EngineError, InvalidGraph, InvalidTensor, TooLarge, clip
from engine.ops import Op, lookup, suggest
from engine.program import Eqn, Function, Program
from engine.tensors import decode, encode, is_tensor_object


@dataclass(frozen=True)
class ResolvedNode:
    """A node whose op, ids and attributes are checked; its args are not resolved yet."""

    op: Op
    outs: tuple[str, ...]
    attrs: tuple[tuple[str, Any], ...]
    args: Sequence[Any]
    node: str


def node_label(node: Mapping[str, Any], index: int) -> str:
    """How errors name a node: its id (cut short when long), or its position."""
    ident = node.get("id")
    label = None
    if isinstance(ident, str):
        label = ident
    elif isinstance(ident, list) and ident and all(isinstance(i, str) for i in ident):
        label = ",".join(ident)
    if label is None:
        return f"#{index}"
    return label if len(label) <= 200 else f"{label[:190]}... (#{index})"


def resolve_node(node: Mapping[str, Any], loc: Sequence[str | int], index: int,
                 max_args: int | None = None, functions: Functions | None = None
                 ) -> ResolvedNode:
    """Check one node's id, op, arity and attributes (function-valued ones resolved by
    `functions`: the graph's functions, or none)."""
    label = node_label(node, index)
    ident = node.get("id")
    outs = (ident,) if isinstance(ident, str) else tuple(ident or ())
    if not outs or not all(isinstance(o, str) and o for o in outs):
        raise InvalidGraph("node id must be a non-empty string, or a list of them for an op "
                           "with several results", node=label, loc=(*loc, "id"))
    name = node.get("op")
    op = lookup(name) if isinstance(name, str) else None
    if op is None:
        hint = suggest(name) if isinstance(name, str) else []
        did_you_mean = f"; did you mean {' or '.join(map(repr, hint))}?" if hint else ""
        raise InvalidGraph(f"unknown op {clip(name)}{did_you_mean} GET /v1/ops lists every op",
                           node=label, loc=(*loc, "op"))
    if len(outs) > 1 and not op.multi_output:
        raise InvalidGraph(f"op {op.name!r} has one result, but the id lists {len(outs)} names",
                           node=label, loc=(*loc, "id"))
    args = node.get("args", [])
    if not isinstance(args, list):
        raise InvalidGraph("args must be a list", node=label, loc=(*loc, "args"))
    if max_args is not None and len(args) > max_args:
        raise TooLarge(f"{len(args)} arguments; the limit is {max_args} per node "
                       "(GRADTAPE_MAX_ARGS_PER_NODE): combine them in several steps",
                       node=label, loc=(*loc, "args"))
    if len(args) < op.min_args or (op.max_args is not None and len(args) > op.max_args):
        raise InvalidGraph(f"op {op.name!r} takes {_arity_text(op)}, got {len(args)}",
                           node=label, loc=(*loc, "args"))
    attrs = check_attrs(op, node.get("attrs") or {}, label, loc,
                        functions if functions is not None else Functions({}))
    return ResolvedNode(op, outs, attrs, args, label)


def _arity_text(op: Op) -> str:
    if op.max_args == op.min_args:
        return f"{op.min_args} argument{'s' if op.min_args != 1 else ''}"
    if op.max_args is None:
        return f"at least {op.min_args} argument{'s' if op.min_args != 1 else ''}"
    return f"{op.min_args} to {op.max_args} arguments"


def check_attrs(op: Op, attrs: Any, label: str, loc: Sequence[str | int],
                functions: Functions) -> tuple[tuple[str, Any], ...]:
    if not isinstance(attrs, dict):
        raise InvalidGraph("attrs must be an object", node=label, loc=(*loc, "attrs"))
    unknown = sorted(set(attrs) - set(op.attrs))
    if unknown:
        allowed = ", ".join(op.attrs) or "none"
        raise InvalidGraph(f"op {op.name!r} has no attribute {clip(unknown[0])}; its attributes: "
                           f"{allowed}", node=label, loc=(*loc, "attrs", unknown[0]))
    out = []
    for key, spec in op.attrs.items():
        if key not in attrs:
            if spec.required:
                raise InvalidGraph(f"op {op.name!r} needs the attribute {key!r} "
                                   f"({spec.kind})", node=label, loc=(*loc, "attrs"))
            continue
        try:
            value = attrs[key]
            if isinstance(spec, FunctionRef):
                value = functions.resolve(value, key, label, (*loc, "attrs", key))
            out.append((key, spec.check(value)))
        except AttrError as exc:
            raise InvalidGraph(f"attribute {key!r} of op {op.name!r}: {exc}", node=label,
                               loc=(*loc, "attrs", key)) from None
    return tuple(out)


def decode_literal(value: Any, loc: Sequence[str | int], max_elements: int) -> Any:
    """A constant argument. Bare numbers stay Python scalars, weakly typed as in JAX, so
    `multiply(x, 2.0)` keeps the dtype of x and `take(p, 0)` gets an integer."""
    if isinstance(value, bool | int | float):
        return value
    return decode(value, loc, max_elements=max_elements)


def parse_graph(graph: Mapping[str, Any], *, max_nodes: int, max_elements: int,
                max_args: int | None = None, max_edges: int | None = None) -> Program:
    """Check a graph's structure and build its Program.

    >>> p = parse_graph({"nodes": [{"id": "y", "op": "reduce_sum", "args": ["x"]}]},
    ...                 max_nodes=10, max_elements=100)
    >>> p.inputs, p.outputs
    (('x',), ('y',))
    """
    nodes = graph.get("nodes")
    if not isinstance(nodes, list) or not nodes:
        raise InvalidGraph("a graph needs a non-empty list of nodes", loc=("nodes",))
    if len(nodes) > max_nodes:
        raise TooLarge(f"the graph has {len(nodes)} nodes; the limit is {max_nodes} "
                       "(GRADTAPE_MAX_NODES)", loc=("nodes",))
    if max_edges is not None:
        edges = sum(len(n["args"]) for n in nodes
                    if isinstance(n, dict) and isinstance(n.get("args"), list))
        if edges > max_edges:
            raise TooLarge(f"the graph's nodes have {edges} arguments in all; the limit is "
                           f"{max_edges} (GRADTAPE_MAX_EDGES)", loc=("nodes",))
    functions = Functions(graph.get("functions"), max_nodes=max_nodes,
                          max_elements=max_elements, max_args=max_args)
    declared = graph.get("inputs")
    inputs, dtypes, shapes, defaults = _parse_inputs(declared, max_elements)
    defined: set[str] = set(inputs)
    eqns, literals = _parse_nodes(nodes, ("nodes",), inputs, defined, declared is None,
                                  max_elements, max_args, functions)
    if len(nodes) + functions.nodes > max_nodes:
        raise TooLarge(f"the graph and its functions have {len(nodes) + functions.nodes} nodes; "
                       f"the limit is {max_nodes} (GRADTAPE_MAX_NODES)", loc=("nodes",))
    outputs = _parse_outputs(graph.get("outputs"), defined, eqns)
    return Program(tuple(inputs), tuple(eqns), outputs, tuple(literals), dtypes, shapes,
                   defaults, functions.declared_functions())


def _parse_nodes(nodes: list[Any], where: tuple[str | int, ...], inputs: list[str],
                 defined: set[str], implicit_inputs: bool, max_elements: int,
                 max_args: int | None, functions: Functions,
                 scope: str = "graph") -> tuple[list[Eqn], list[Any]]:
    """The equations and constants of a graph's (or a function's) nodes. `defined` holds the
    names they may read (inputs, or a function's params) and grows with their ids; with
    `implicit_inputs`, a name no node defines becomes an input."""
    later = {o for n in nodes if isinstance(n, dict) for o in _ids(n.get("id"))}
    literals: list[Any] = []
    eqns: list[Eqn] = []
    for i, node in enumerate(nodes):
        loc = (*where, i)
        if not isinstance(node, dict):
            raise InvalidGraph("a node must be an object with id, op and args", loc=loc)
        res = resolve_node(node, loc, i, max_args, functions)
        args: list[str | int] = []
        for j, arg in enumerate(res.args):
            if isinstance(arg, str):
                if arg not in defined:
                    if implicit_inputs and arg not in later:
                        inputs.append(arg)
                        defined.add(arg)
                    else:
                        raise InvalidGraph(_undefined(arg, res.node, later, implicit_inputs,
                                                      scope),
                                           node=res.node, loc=(*loc, "args", j))
                args.append(arg)
            elif arg is None or (isinstance(arg, dict) and not is_tensor_object(arg)):
                raise InvalidGraph("an argument is a name (string) or a constant (number, "
                                   "array or tensor object)", node=res.node,
                                   loc=(*loc, "args", j))
            else:
                literals.append(decode_literal(arg, (*loc, "args", j), max_elements))
                args.append(len(literals) - 1)
        for out in res.outs:
            if out in defined:
                what = ("an input" if scope == "graph" else "a param") if out in inputs \
                    else "an earlier node"
                raise InvalidGraph(f"id {clip(out)} is already {what}; node ids are unique in a "
                                   f"{scope} (rename this node)", node=res.node,
                                   loc=(*loc, "id"))
            defined.add(out)
        eqns.append(Eqn(res.op, res.attrs, tuple(args), res.outs, res.node))
    return eqns, literals


FUNCTION_FIELDS = ("params", "nodes", "outputs")


class Functions:
    """The functions a graph declares (`"functions": {name: function}`), each parsed once, on
    first use (one may call another declared after it), and function objects written inline
    in an attribute, parsed where they stand. A function is checked as a graph is, but sees
    only its params: no inputs of its own, no names from outside."""

    def __init__(self, declared: Any, *, max_nodes: int = 10_000,
                 max_elements: int = 50_000_000, max_args: int | None = None):
        if declared is not None and not isinstance(declared, dict):
            raise InvalidGraph("functions must be an object {name: {params, nodes, outputs}}",
                               loc=("functions",))
        self.declared: dict[str, Any] = dict(declared or {})
        self.max_nodes = max_nodes
        self.max_elements = max_elements
        self.max_args = max_args
        self.nodes = 0  # nodes of every function parsed, for the graph's node limit
        self._parsed: dict[str, Function] = {}
        self._parsing: list[str] = []
        for name in self.declared:
            self.named(name)

    def declared_functions(self) -> dict[str, Function]:
        return {name: self._parsed[name] for name in self.declared}

    def named(self, name: str) -> Function:
        """The graph-level function `name` (parsed on first use)."""
        found = self._parsed.get(name)
        if found is not None:
            return found
        if name in self._parsing:
            cycle = " -> ".join(map(repr, [*self._parsing[self._parsing.index(name):], name]))
            raise InvalidGraph(f"functions call each other in a cycle ({cycle}); recursion is "
                               "not supported: use fori_loop, while_loop or scan",
                               loc=("functions", name), path=(("function", name),))
        self._parsing.append(name)
        try:
            fn = self.parse(self.declared[name], name, ("functions", name), ref=name)
        finally:
            self._parsing.pop()
        self._parsed[name] = fn
        return fn

    def resolve(self, value: Any, attr: str, label: str, loc: tuple[str | int, ...]
                ) -> Any:
        """An attribute's function: by the name of a graph-level one, or inline. Anything
        else is left for the attribute's own check to refuse."""
        if isinstance(value, str):
            if value not in self.declared:
                known = ", ".join(map(repr, self.declared)) or "none"
                raise InvalidGraph(f"attribute {attr!r} names function {clip(value)}, which the "
                                   f"graph does not declare under functions (declared: {known})",
                                   node=label, loc=loc)
            try:
                return self.named(value)
            except EngineError as exc:  # first parsed from here: say where it was called
                raise (exc.within(("node", label)) if exc.path else exc) from None
        if isinstance(value, dict):
            try:
                return self.parse(value, attr, loc)
            except EngineError as exc:
                raise (exc.within(("node", label)) if exc.path else exc) from None
        return value

    def parse(self, spec: Any, name: str, loc: tuple[str | int, ...],
              ref: str | None = None) -> Function:
        """Check one function object `{"params", "nodes", "outputs"}` and build it."""
        at = (("function", name),)
        if not isinstance(spec, dict):
            raise InvalidGraph("a function is an object {\"params\": [names], \"nodes\": [...], "
                               "\"outputs\": [names]}", loc=loc, path=at)
        unknown = sorted(set(spec) - set(FUNCTION_FIELDS))
        if unknown:
            raise InvalidGraph(f"unknown function field {clip(unknown[0])}; a function has "
                               "params, nodes and outputs", loc=(*loc, unknown[0]), path=at)
        params = spec.get("params")
        if not isinstance(params, list) or not all(isinstance(p, str) and p for p in params):
            raise InvalidGraph("params must be a list of names (the function's arguments, in "
                               "order)", loc=(*loc, "params"), path=at)
        if len(set(params)) != len(params):
            twice = next(p for p in params if params.count(p) > 1)
            raise InvalidGraph(f"param {clip(twice)} is listed twice", loc=(*loc, "params"),
                               path=at)
        nodes = spec.get("nodes")
        if not isinstance(nodes, list) or not nodes:
            raise InvalidGraph("a function needs a non-empty list of nodes",
                               loc=(*loc, "nodes"), path=at)
        if len(nodes) > self.max_nodes:
            raise TooLarge(f"function {name!r} has {len(nodes)} nodes; the limit is "
                           f"{self.max_nodes} (GRADTAPE_MAX_NODES)", loc=(*loc, "nodes"))
        self.nodes += len(nodes)
        defined = set(params)
        try:
            eqns, literals = _parse_nodes(nodes, (*loc, "nodes"), list(params), defined, False,
                                          self.max_elements, self.max_args, self,
                                          scope="function")
        except EngineError as exc:
            raise exc.within(*at) from None
        outputs = spec.get("outputs")
        if isinstance(outputs, str):
            outputs = [outputs]
        if not isinstance(outputs, list) or not outputs or \
                not all(isinstance(o, str) for o in outputs):
            raise InvalidGraph("outputs must be a non-empty list of names (the function's "
                               "results, in order)", loc=(*loc, "outputs"), path=at)
        for i, out in enumerate(outputs):
            if out not in defined:
                raise InvalidGraph(f"output {clip(out)} is not a param or a node id of the "
                                   "function", loc=(*loc, "outputs", i), path=at)
        program = Program(tuple(params), tuple(eqns), tuple(outputs), tuple(literals))
        source = {"params": list(params), "nodes": _canonical_nodes(program, "source"),
                  "outputs": list(outputs)}
        keyed = {**source, "nodes": _canonical_nodes(program, "key")}
        blob = orjson.dumps(keyed, option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY)
        return Function(name, program, source, hashlib.sha256(blob).hexdigest(), ref)


def function_document(fn: Function) -> dict[str, Any]:
    """A function as one self-contained object (the functions it calls written inline), to
    be parsed again with `Functions(None).parse(document, name, ())`."""
    return {"params": list(fn.params), "nodes": _canonical_nodes(fn.program, "inline"),
            "outputs": list(fn.program.outputs)}


def _ids(ident: Any) -> tuple[str, ...]:
    if isinstance(ident, str):
        return (ident,)
    if isinstance(ident, list):
        return tuple(i for i in ident if isinstance(i, str))
    return ()


def _undefined(name: str, node: str, later: set[str], implicit: bool,
               scope: str = "graph") -> str:
    if name in later:
        return (f"{clip(name)} is used before the node that defines it; nodes run in list order, "
                "so move that node earlier")
    if scope == "function":
        return (f"undefined name {clip(name)}: a function sees only its params and its own "
                "nodes; add it to params and pass it in")
    fix = "define it in an earlier node" if implicit else \
        "declare it under inputs or define it in an earlier node"
    return f"undefined name {clip(name)}: {fix}"


def _parse_inputs(declared: Any, max_elements: int
                  ) -> tuple[list[str], dict[str, str | None], dict[str, tuple[int, ...] | None],
                             dict[str, np.ndarray]]:
    if declared is None:
        return [], {}, {}, {}
    if not isinstance(declared, dict):
        raise InvalidGraph("inputs must be an object: {name: {dtype, shape}}", loc=("inputs",))
    dtypes: dict[str, str | None] = {}
    shapes: dict[str, tuple[int, ...] | None] = {}
    defaults: dict[str, np.ndarray] = {}
    for name, spec in declared.items():
        spec = spec or {}
        if not isinstance(spec, dict):
            raise InvalidGraph("an input spec is an object {dtype?, shape?, default?}",
                               loc=("inputs", name))
        unknown = set(spec) - {"dtype", "shape", "default"}
        if unknown:
            raise InvalidGraph(f"unknown input field(s) {clip(sorted(unknown))}; an input has dtype, "
                               "shape and default", loc=("inputs", name))
        dtype = spec.get("dtype")
        if dtype is not None and (not isinstance(dtype, str) or dtype not in DTYPES):
            raise InvalidGraph(f"unknown dtype {clip(dtype)}; use one of {', '.join(DTYPES)}",
                               loc=("inputs", name, "dtype"))
        shape = spec.get("shape")
        if shape is not None and not (isinstance(shape, list) and all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
            raise InvalidGraph("shape must be a list of non-negative integers",
                               loc=("inputs", name, "shape"))
        dtypes[name] = dtype
        shapes[name] = tuple(shape) if shape is not None else None
        if spec.get("default") is not None:
            defaults[name] = _parse_default(name, spec["default"], dtype, shapes[name],
                                            max_elements)
    return list(declared), dtypes, shapes, defaults


def _parse_default(name: str, value: Any, dtype: str | None, shape: tuple[int, ...] | None,
                   max_elements: int) -> np.ndarray:
    """An input's default value, checked against its declared dtype and shape; read-only,
    since every request that leaves the input out shares it."""
    loc = ("inputs", name, "default")
    try:
        array = decode(value, loc, dtype=dtype, max_elements=max_elements)
    except InvalidTensor as exc:
        raise InvalidGraph(f"the default of input {clip(name)}: {exc.detail}", loc=exc.loc
                           ) from None
    if shape is not None and array.shape != shape:
        raise InvalidGraph(f"the default of input {clip(name)} has shape {list(array.shape)}, "
                           f"but the input is declared with shape {list(shape)}", loc=loc)
    array.flags.writeable = False
    return array


def _parse_outputs(outputs: Any, defined: set[str], eqns: list[Eqn]) -> tuple[str, ...]:
    if outputs is None:
        return eqns[-1].outs
    if isinstance(outputs, str):
        outputs = [outputs]
    if not isinstance(outputs, list) or not all(isinstance(o, str) for o in outputs):
        raise InvalidGraph("outputs must be a list of names", loc=("outputs",))
    for i, name in enumerate(outputs):
        if name not in defined:
            raise InvalidGraph(f"output {clip(name)} is not an input or a node id",
                               loc=("outputs", i))
    return tuple(outputs)


def canonical_form(graph: Mapping[str, Any], program: Program) -> dict[str, Any]:
    """A normal form of the graph: canonical op names, attributes with defaults dropped,
    constants as explicit tensor objects, declared inputs (with their default values as raw
    bytes, where they have one), explicit outputs, and its functions (only when it declares
    some: the ids of graphs without functions stay as they were)."""
    inputs: dict[str, dict[str, Any]] = {
        n: {"dtype": program.input_dtypes.get(n),
            "shape": list(s) if (s := program.input_shapes.get(n)) is not None else None}
        for n in program.inputs}
    for name, value in program.input_defaults.items():  # only then: other ids stay as they were
        inputs[name]["default"] = encode(value, encoding="base64")
    form = {"inputs": inputs, "nodes": _canonical_nodes(program, "source"),
            "outputs": list(program.outputs)}
    if program.functions:
        form["functions"] = {name: dict(fn.source) for name, fn in program.functions.items()}
    return form


def _canonical_nodes(program: Program, functions: str) -> list[dict[str, Any]]:
    """The program's nodes in canonical form. A function attribute is written as the graph
    does (`functions="source"`: its graph-level name, or its own canonical form inline), as
    its digest (`"key"`: what its compiled code depends on), or inline throughout
    (`"inline"`)."""
    nodes = []
    for eqn in program.eqns:
        args: list[Any] = []
        for a in eqn.args:
            if isinstance(a, str):
                args.append(a)
            else:
                lit = program.literals[a]
                args.append(lit if isinstance(lit, bool | int | float) else
                            _plain(encode(np.asarray(lit))))
        node: dict[str, Any] = {"id": eqn.outs[0] if len(eqn.outs) == 1 else list(eqn.outs),
                                "op": eqn.prim.name, "args": args}
        specs = getattr(eqn.prim, "attrs", {})
        attrs = {k: v for k, v in eqn.attrs if k not in specs or v != specs[k].default}
        for k, v in attrs.items():
            if isinstance(v, Function):
                if functions == "key":
                    attrs[k] = v.key
                elif functions == "inline":
                    attrs[k] = function_document(v)
                else:
                    attrs[k] = v.ref if v.ref is not None else dict(v.source)
        if attrs:
            node["attrs"] = attrs
        nodes.append(node)
    return nodes


def _plain(tensor: dict[str, Any]) -> dict[str, Any]:
    data = tensor["data"]
    return {**tensor, "data": data.tolist() if isinstance(data, np.ndarray | np.generic) else data}


def graph_id(canonical: Mapping[str, Any]) -> str:
    """Content address of a canonical graph: the same graph always gets the same id."""
    blob = orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY)
    return "g_" + hashlib.sha256(blob).hexdigest()[:32]
