"""Applying an op: the one place that binds and checks attributes, puts them in canonical
form, infers the output type, lists the parameters and names the new node.

Both ways of building the IR go through here: the front end (`netc.frontend.sema`, which turns
an `AttrError` or `ShapeError` into a diagnostic at the span of the attribute or call) and
`GraphBuilder` (tests, the ONNX importer, decompositions), which lets them propagate. So a
`.net` file and the graph the ONNX importer builds for it agree on every attribute and id.

Attribute values arrive in a user-level form (`registry.ATTR_KINDS`): an int, a float, a bool,
a string or a tuple (a list in the source). `coerce_attr` checks the form, turns an int given
for a float into a float and a list into a tuple, and checks `choices` (a `padding` string
must be "same") and `minimum`. `apply_op` then runs the op's `normalize`, `infer` and `params`.

Node ids follow the front end's rule: a layer (an op with parameters) is named `name=` or
`<op>_<k>`, its parameters `<layer>.<param>`, every other node `<op>#<k>` (a `#` cannot occur
in a user name, so ids never clash).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from netc.diagnostics import did_you_mean
from netc.ir import FLOAT_DTYPES, Attrs, TensorType
from netc.ops.registry import AttrSpec, OpDef, ParamSpec, ShapeError

KIND_WORDS = {
    "int": "an int",
    "float": "a number",
    "bool": "true or false",
    "str": "a string",
    "int_pair": "an int or a list [h, w] of two ints",
    "int_list": "a list of ints",
    "padding": 'an int, a list [h, w] of two ints, or "same"',
    "axes": "an int or a list of ints",
    "dim_list": "a list of ints and dimension names",
    "dim": "an int or a dimension name",
}
"""Each attribute kind's user-level forms, in words for messages."""


class AttrError(ValueError):
    """An attribute value an op does not take; `code` is the diagnostic code the front end
    reports it under (E0204 unknown, E0205 wrong form, E0206 missing, E0212 out of range)."""

    def __init__(self, code: str, message: str, help: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.help = help


class DtypeError(ShapeError):
    """A tensor input of a dtype the op does not take (`OpDef.dtypes`); the front end reports
    it as E0313, everyone else may treat it as the `ShapeError` it is."""


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def format_value(value: object) -> str:
    """A value as `.net` source writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    return repr(value)


def describe_value(value: object) -> str:
    """A plain value in words, for messages: `the int 3`, `the list [1, 2]`."""
    if isinstance(value, bool):
        return f"the bool {format_value(value)}"
    if isinstance(value, int):
        return f"the int {value}"
    if isinstance(value, float):
        return f"the float {value!r}"
    if isinstance(value, str):
        return f'the string "{value}"'
    if isinstance(value, tuple):
        return f"the list {format_value(value)}"
    return "an invalid value"


def fits(kind: str, value: object, canonical: bool = False) -> bool:
    """Whether `value` has a user-level form of an attribute kind; with `canonical`, also the
    form the IR keeps (a window's padding as a 4-tuple), so a record read back from the IR
    applies again unchanged."""
    if isinstance(value, list):
        value = tuple(value)
    if kind == "int":
        return is_int(value)
    if kind == "float":
        return is_number(value)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    pair = isinstance(value, tuple) and len(value) == 2 and all(is_int(v) for v in value)
    # A window's padding is kept as (top, left, bottom, right).
    four = canonical and isinstance(value, tuple) and len(value) == 4 and \
        all(is_int(v) for v in value)
    if kind == "int_pair":
        return is_int(value) or pair or four
    if kind == "padding":
        return is_int(value) or pair or four or isinstance(value, str)
    if kind == "int_list":
        return isinstance(value, tuple) and all(is_int(v) for v in value)
    if kind == "axes":
        return is_int(value) or (isinstance(value, tuple) and all(is_int(v) for v in value))
    if kind == "dim_list":
        return isinstance(value, tuple) and all(
            is_int(v) or (isinstance(v, str) and v.isidentifier()) for v in value)
    if kind == "dim":
        return is_int(value) or (isinstance(value, str) and value.isidentifier())
    return True  # a kind newer than this check: the op's normalize checks it


def coerce_attr(owner: str, spec: AttrSpec, value: Any, *,
                describe: Callable[[Any], str] = describe_value,
                canonical: bool = False) -> Any:
    """`value` for attribute `spec` of `owner` (`` `conv2d` `` or `` block `b` ``) in the form
    the IR keeps; raises `AttrError` (E0205 or E0212) saying why it does not fit."""
    kind = spec.kind
    if not fits(kind, value, canonical):
        raise AttrError("E0205", f"attribute `{spec.name}` of {owner} must be "
                        f"{KIND_WORDS.get(kind, kind)}, got {describe(value)}",
                        f"`{spec.name}`: {spec.help}" if spec.help else None)
    if isinstance(value, list):
        value = tuple(value)
    if kind == "axes" and is_int(value):
        value = (value,)
    result = float(value) if kind == "float" else value
    choices = spec.choices or (("same",) if kind == "padding" else ())
    if isinstance(result, str) and choices and result not in choices:
        listed = ", ".join(f'"{c}"' for c in choices)
        raise AttrError("E0212", f"attribute `{spec.name}` of {owner} must be one of {listed}, "
                        f'got "{result}"', did_you_mean(result, choices))
    if spec.minimum is not None and not isinstance(result, str):
        values = result if isinstance(result, tuple) else (result,)
        if any(is_number(v) and v < spec.minimum for v in values):
            raise AttrError("E0212", f"attribute `{spec.name}` of {owner} must be at least "
                            f"{spec.minimum}, got {format_value(result)}",
                            f"`{spec.name}`: {spec.help}" if spec.help else None)
    return result


def missing_attr(opdef: OpDef, spec: AttrSpec) -> AttrError:
    hint = f" ({spec.help})" if spec.help else ""
    return AttrError("E0206", f"`{opdef.name}` needs the attribute `{spec.name}`",
                     f"add `{spec.name}=...`{hint}")


def unknown_attr(opdef: OpDef, name: str, also: Sequence[str] = ()) -> AttrError:
    """`name` is no attribute of `opdef`; `also` lists other keywords the caller takes
    (the front end's `name=` of a layer)."""
    choices = [spec.name for spec in opdef.attrs] + list(also)
    help = did_you_mean(name, choices)
    if help is None:
        help = (f"`{opdef.name}` takes " + ", ".join(f"`{c}`" for c in choices)
                if choices else f"`{opdef.name}` takes no attributes")
    return AttrError("E0204", f"`{opdef.name}` has no attribute `{name}`", help)


def bind_attrs(opdef: OpDef, values: Mapping[str, Any], *, canonical: bool = True) -> Attrs:
    """Every attribute of `opdef` from `values` (by name), defaults filled in, each checked by
    `coerce_attr`; raises `AttrError` on the first problem."""
    unknown = sorted(set(values) - {spec.name for spec in opdef.attrs})
    if unknown:
        raise unknown_attr(opdef, unknown[0])
    bound: dict[str, Any] = {}
    for spec in opdef.attrs:
        if spec.name in values and values[spec.name] is None and spec.default is None:
            bound[spec.name] = None  # a default of None ("= kernel"), given explicitly
        elif spec.name in values:
            bound[spec.name] = coerce_attr(f"`{opdef.name}`", spec, values[spec.name],
                                           canonical=canonical)
        elif spec.required:
            raise missing_attr(opdef, spec)
        else:
            bound[spec.name] = spec.default
    return Attrs(bound)


@dataclass(frozen=True)
class Application:
    """One op applied to typed inputs: the canonical attributes, the output type and the
    parameters the layer needs (in IR order)."""

    attrs: Attrs
    type: TensorType
    params: tuple[ParamSpec, ...]
    extra_types: tuple[TensorType, ...] = ()
    """The types of outputs 1, 2, ... of an op with several outputs (`Node.extra_types`)."""


def apply_op(opdef: OpDef, attrs: Attrs, inputs: Sequence[TensorType]) -> Application:
    """Normalises `attrs` (already bound), infers the output type and lists the parameters;
    raises `ShapeError` when the inputs do not fit."""
    count = len(inputs)
    if count < opdef.min_inputs or (opdef.max_inputs is not None and count > opdef.max_inputs):
        most = "or more" if opdef.max_inputs is None else f"to {opdef.max_inputs}"
        wanted = str(opdef.min_inputs) if opdef.max_inputs == opdef.min_inputs else \
            f"{opdef.min_inputs} {most}"
        raise ShapeError(f"`{opdef.name}` takes {wanted} tensor inputs, got {count}")
    for index, tensor in enumerate(inputs, 1):
        if tensor.dtype not in opdef.dtypes:
            which = f"input {index}" if count > 1 else "its input"
            raise DtypeError(f"`{opdef.name}` takes {_dtype_words(opdef.dtypes)}, but {which} "
                             f"is {tensor}")
    canonical = opdef.normalize(attrs, inputs)
    output = opdef.infer(canonical, inputs)
    params = opdef.params(canonical, inputs) if opdef.has_params else ()
    extra = opdef.infer_extra(canonical, inputs) if opdef.infer_extra is not None else ()
    # Buffers the op never reads are no IR inputs (they live in the weights only).
    operands = tuple(spec for spec in params if spec.operand)
    return Application(canonical, output, operands, tuple(extra))


def _dtype_words(dtypes: Sequence[str]) -> str:
    """`float tensors (f32, f16, bf16)`, `i32 or i64 tensors`."""
    if tuple(dtypes) == FLOAT_DTYPES:
        return "float tensors (f32, f16, bf16)"
    return (" or ".join(dtypes) if len(dtypes) <= 2 else
            ", ".join(dtypes[:-1]) + " or " + dtypes[-1]) + " tensors"


@dataclass
class Naming:
    """Hands out node ids and layer names by the rule in the module docstring. The front end
    keeps one per naming scope for layers (block calls open a scope) and one per network for
    node ids."""

    layer_counts: Counter[str] = field(default_factory=Counter)
    node_counts: Counter[str] = field(default_factory=Counter)

    def layer(self, op: str) -> str:
        """`<op>_<k>`: the next unnamed layer of `op`."""
        index = self.layer_counts[op]
        self.layer_counts[op] += 1
        return f"{op}_{index}"

    def node(self, op: str) -> str:
        """`<op>#<k>`: the next node of `op` that is not a layer (or a `constant`)."""
        index = self.node_counts[op]
        self.node_counts[op] += 1
        return f"{op}#{index}"


def param_id(layer: str, name: str) -> str:
    return f"{layer}.{name}"
