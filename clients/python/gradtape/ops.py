"""Every op of the server's catalogue as a function, built from the one table in `_catalog`.

`gt.reduce_sum(x, axis=0)`, `gt.math.softplus(x)`, `gt.concat([a, b], 0)`: each name and alias
of the catalogue is a function; a dotted alias (`math.softplus`) lives in a namespace
(`gt.math`). Tensors are the positional arguments; attributes are keywords, or the positional
arguments after the tensors, in the catalogue's order (`gt.reduce_sum(x, 1)` as TensorFlow
reads it). Ops with several results (`split`, `slogdet`) return a tuple.
"""

from __future__ import annotations

from typing import Any

from gradtape._catalog import CATALOG
from gradtape.tensor import Tensor, apply


class OpFunction:
    """One op of the catalogue, callable on tensors (and Python or NumPy values)."""

    def __init__(self, spec: dict[str, Any], name: str):
        self.spec = spec
        self.op = str(spec["name"])
        self.__name__ = name.rsplit(".", 1)[-1]
        self.__qualname__ = name
        self.__doc__ = _docstring(spec, name)

    def __repr__(self) -> str:
        return f"<gt op {self.__qualname__} ({self.op})>"

    def __call__(self, *args: Any, name: str | None = None, **attrs: Any) -> Any:
        """Apply the op; `name` is accepted for TensorFlow's signatures and not used."""
        tensors, extra = self._split(list(args), attrs)
        order = [a for a in self.spec["attrs"] if a not in attrs]
        if len(extra) > len(order):
            raise TypeError(f"{self.__qualname__} takes {_arity(self.spec)} and the attributes "
                            f"{', '.join(self.spec['attrs']) or '(none)'}; got "
                            f"{len(args)} positional arguments")
        attrs.update(zip(order, extra, strict=False))
        low, high = self.spec["min_args"], self.spec["max_args"]
        if len(tensors) < low or (high is not None and len(tensors) > high):
            raise TypeError(f"{self.__qualname__} takes {_arity(self.spec)}, got "
                            f"{len(tensors)}")
        unknown = sorted(set(attrs) - set(self.spec["attrs"]))
        if unknown:
            raise TypeError(f"{self.__qualname__} has no attribute {unknown[0]!r}; its "
                            f"attributes: {', '.join(self.spec['attrs']) or 'none'}")
        results = apply(self.op, tensors, attrs, _count_results(self.spec, attrs))
        return tuple(results) if self.spec["multi_output"] else results[0]

    def _split(self, args: list[Any], attrs: dict[str, Any]) -> tuple[list[Any], list[Any]]:
        """(tensor arguments, positional attributes)."""
        strings = [k for k, a in self.spec["attrs"].items() if a["type"] == "string"]
        if args and isinstance(args[0], str) and strings and strings[0] not in attrs:
            attrs[strings[0]] = args.pop(0)  # einsum('ij,jk->ik', a, b)
        if self.spec["max_args"] is None:
            if args and isinstance(args[0], list | tuple) and \
                    any(isinstance(a, Tensor) for a in args[0]):
                return list(args[0]), args[1:]  # concat([a, b], axis)
            return args, []
        high = int(self.spec["max_args"])
        return args[:high], args[high:]


def _count_results(spec: dict[str, Any], attrs: dict[str, Any]) -> int:
    if not spec["multi_output"]:
        return 1
    if "indices_or_sections" in spec["attrs"]:
        sections = attrs.get("indices_or_sections")
        return len(sections) + 1 if isinstance(sections, list | tuple) else int(sections or 0)
    if spec["name"] == "slogdet":
        return 2
    raise NotImplementedError(f"the client does not know how many results op "
                              f"{spec['name']!r} has")


def _arity(spec: dict[str, Any]) -> str:
    low, high = spec["min_args"], spec["max_args"]
    if low == high:
        return f"{low} tensor argument{'s' if low != 1 else ''}"
    if high is None:
        return f"at least {low} tensor argument{'s' if low != 1 else ''}"
    return f"{low} to {high} tensor arguments"


def _docstring(spec: dict[str, Any], name: str) -> str:
    lines = [str(spec["doc"]), "", f"Op `{spec['name']}`: {_arity(spec)}."]
    for key, attr in spec["attrs"].items():
        default = "required" if attr["required"] else f"default {attr.get('default')!r}"
        lines.append(f"  {key} ({attr['type']}, {default}){': ' + attr['doc'] if attr.get('doc') else ''}")
    others = [n for n in (spec["name"], *spec["aliases"]) if n != name]
    if others:
        lines.append(f"Also: {', '.join(others)}.")
    if not spec["differentiable"]:
        lines.append("No gradient flows through it.")
    return "\n".join(lines)


class OpNamespace:
    """Ops under a dotted prefix: `gt.math.softplus`, `gt.nn.relu`, `gt.linalg.inv`."""

    def __init__(self, prefix: str):
        self._prefix = prefix
        self._functions: dict[str, OpFunction] = {}

    def __getattr__(self, name: str) -> OpFunction:
        try:
            return self._functions[name]
        except KeyError:
            raise AttributeError(f"gt.{self._prefix} has no op {name!r}") from None

    def __dir__(self) -> list[str]:
        return sorted(self._functions)

    def __repr__(self) -> str:
        return f"<gt.{self._prefix}: {len(self._functions)} ops>"


FUNCTIONS: dict[str, OpFunction] = {}
"""Every top-level op function by name: canonical names and undotted aliases."""
NAMESPACES: dict[str, OpNamespace] = {}


def _build() -> None:
    for spec in CATALOG:
        for name in (spec["name"], *spec["aliases"]):
            function = OpFunction(spec, name)
            if "." in name:
                prefix, short = name.rsplit(".", 1)
                NAMESPACES.setdefault(prefix, OpNamespace(prefix))._functions[short] = function
            else:
                FUNCTIONS[name] = function


_build()


def op_function(name: str) -> OpFunction:
    """The function of an op by any of its names (`reduce_sum`, `math.softplus`)."""
    if "." in name:
        prefix, short = name.rsplit(".", 1)
        return getattr(NAMESPACES[prefix], short)  # type: ignore[no-any-return]
    return FUNCTIONS[name]
