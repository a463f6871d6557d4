"""The unparser: an IR graph written back as readable `.net` text (what `netc import` writes).

`render_net(graph, names, comments)` gives one `network` with an `input` line per input, a
binding per layer (PyTorch-style names kept, infix `+ - *` for arithmetic, attributes only
where they differ from the op's default) and an `output` line per output. Names from outside
(an ONNX file's node and initializer names) are made valid identifiers by `NameTable`; any
other text from outside goes only into comments, through `comment_text`, which keeps one
printable ASCII line, bounded, so that it can never become a statement.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from netc.frontend.parser import RESERVED_WORDS
from netc.frontend.values import ARITHMETIC_OPS, is_layer_path  # the front end's own check
from netc.ir import INTEGER_DTYPES, Graph, Node
from netc.ops import REGISTRY
from netc.ops.windows import Window

_RESERVED = RESERVED_WORDS
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_MAX_NAME = 64


# Names ------------------------------------------------------------------------------------


def is_valid_name(name: str) -> bool:
    """Whether `name` may be used as it is in a `.net` file."""
    return bool(_NAME.match(name)) and len(name) <= _MAX_NAME and name not in _RESERVED


class NameTable:
    """Hands out valid, unique `.net` names: a valid name is kept, any other is sanitised
    (invalid characters to `_`, a leading digit prefixed, reserved words suffixed, long names
    shortened with a hash) and then made unique with a numeric suffix."""

    def __init__(self, taken: Sequence[str] = ()) -> None:
        self.taken: set[str] = set(taken)

    @staticmethod
    def sanitise(name: str, fallback: str = "v") -> str:
        text = re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_") or fallback
        if text[0].isdigit():
            text = f"{fallback}_{text}"
        if text in _RESERVED:
            text += "_"
        if len(text) > _MAX_NAME:
            digest = hashlib.sha1(name.encode()).hexdigest()[:8]
            text = f"{text[:_MAX_NAME - 9].rstrip('_')}_{digest}"
        return text

    def claim(self, name: str, fallback: str = "v", *, path: bool = False) -> str:
        """A unique name from `name`; with `path`, a layer path (`layer1.0.conv1`) is kept."""
        valid = is_layer_path(name) if path else is_valid_name(name)
        base = name if valid else self.sanitise(name, fallback)
        candidate, count = base, 0
        while candidate in self.taken:
            count += 1
            suffix = f"_{count}"
            candidate = base[:_MAX_NAME - len(suffix)] + suffix
        self.taken.add(candidate)
        return candidate


# Rendering an IR graph as `.net` text ------------------------------------------------------


def format_number(value: float) -> str:
    """A float as the shortest `.net` literal that reads back as the same float32."""
    if not math.isfinite(value):
        raise ValueError(f"{value} has no `.net` literal")
    text = str(np.float32(value))
    if text.lstrip("-").isdigit():  # NumPy prints some integral values without a point
        text += ".0"
    return text


def _user_value(node: Node, name: str, kind: str, value: Any) -> str | None:
    """An attribute in the form a user writes it, or None where it is the default."""
    if value is None:  # an optional attribute left unset (a comparison's `other`)
        return None
    if name == "axis" and node.op in ("softmax", "log_softmax") and value == node.type.rank - 1:
        value = -1  # the canonical axis is positive; the last one reads best as the default
    if name == "stride" and node.op in ("maxpool2d", "avgpool2d") and \
            tuple(value) == tuple(node.attrs["kernel"]):
        return None
    if kind == "padding" or (name == "padding" and isinstance(value, tuple) and len(value) == 4):
        top, left, bottom, right = value
        if (top, left) == (bottom, right):
            value = (top, left)
        else:
            same = Window.from_attrs(node.op, node.attrs.replace(padding="same")) \
                if tuple(node.attrs.get("stride", (1, 1))) == (1, 1) else None
            if same is not None and same.padding == tuple(value):
                return '"same"'
            return "[" + ", ".join(str(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        if kind in ("int_pair", "padding") and len(value) == 2 and value[0] == value[1]:
            return str(value[0])
        return "[" + ", ".join(str(v) for v in value) + "]"
    if isinstance(value, float):
        return format_number(value)
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def _call_arguments(node: Node) -> list[str]:
    opdef = REGISTRY[node.op]
    arguments: list[str] = []
    positional = True
    for spec in opdef.attrs:
        value = node.attrs.get(spec.name)
        text = _user_value(node, spec.name, spec.kind, value)
        default = None if spec.required or spec.default is None else \
            _user_value(node, spec.name, spec.kind, _default_form(spec.kind, spec.default))
        if text is None or (not spec.required and text == default):
            positional = False
            continue
        if positional and spec.required:
            arguments.append(text)
        else:
            arguments.append(f"{spec.name}={text}")
        positional = False
    if node.layer is not None:
        if not is_layer_path(node.layer):
            raise ValueError(f"the layer name `{comment_text(node.layer, 80)}` is not a "
                             "PyTorch module path, so `.net` cannot name it")
        arguments.append(f'name="{node.layer}"')
    return arguments


def _default_form(kind: str, default: Any) -> Any:
    if kind == "int_pair" and isinstance(default, int) and not isinstance(default, bool):
        return (default, default)
    if kind == "padding" and isinstance(default, int):
        return (default,) * 4
    return default


_INFIX = {op: symbol for symbol, op in ARITHMETIC_OPS.items()}

COMMENT_FIELD_LIMIT = 80
"""Characters of one piece of file text (a producer name, a node name) quoted in a comment."""

COMMENT_LIMIT = 400
"""Characters of one comment line."""


def comment_text(text: str, limit: int = COMMENT_LIMIT) -> str:
    """`text` made safe for a `#` comment: printable ASCII only, on one line, at most `limit`.

    ONNX metadata is file text: a newline in `producer_name` would end the comment and start
    statements of the attacker's choosing (issue 9), and control or bidirectional characters
    are an error (E0003) or hide what the line says. Anything else than printable ASCII is
    written as a visible Python-style escape (`\\n`, `\\u202e`), so the reader sees it and
    nothing can act on it.
    """
    escaped = "".join(char if " " <= char <= "~" else
                      char.encode("unicode_escape").decode("ascii") for char in text)
    return escaped if len(escaped) <= limit else escaped[:limit - 3] + "..."


def _param_init(node: Node) -> str:
    """` = normal(std=0.02)`: a free parameter's initialiser as written (nothing if unknown)."""
    init = node.attrs.get("init")
    if init in ("zeros", "ones"):
        return f" = {init}"
    if init in ("normal", "uniform"):
        key = "std" if init == "normal" else "bound"
        return f" = {init}({key}={format_number(float(node.attrs[key]))})"
    return ""


def render_net(graph: Graph, names: Mapping[str, str] | None = None,
               comments: Sequence[str] = ()) -> str:
    """`graph` as a `.net` network: one statement per compute node, in graph order.

    `names` proposes a variable name for node ids (sanitised and made unique here); scalar
    `constant` nodes are written inline as numbers, layers get `name="<layer>"`.
    """
    proposed = dict(names or {})
    table = NameTable()
    variables: dict[str, str] = {}
    for node in graph.inputs:
        variables[node.id] = table.claim(node.id, "input")
    # Outputs first, so that a value that is an output is named after it.
    for output_name, node_id in graph.outputs:
        if node_id not in variables and graph[node_id].op not in ("input", "param", "constant"):
            variables[node_id] = table.claim(output_name, "output")
    for node in graph.compute_nodes:
        if node.id not in variables:
            variables[node.id] = table.claim(proposed.get(node.id, node.id), node.op)

    # Free parameters (`param NAME: TYPE = INIT`, no layer owns them) are variables; a
    # layer's parameter read by another op (weight tying) is written `LAYER.PARAM`.
    free = [node for node in graph.params if node.layer is None]
    for node in free:
        if not is_valid_name(node.id):
            raise ValueError(f"the free parameter `{node.id}` has no `.net` form outside "
                             "the block that made it")
        variables[node.id] = table.claim(node.id, "param")

    def operand(value_id: str) -> str:
        node = graph[value_id]
        if node.op == "constant":  # an integer tensor's number is an int literal
            value = float(node.attrs["value"])
            text = str(int(value)) if node.type.dtype in INTEGER_DTYPES else format_number(value)
            return f"({text})" if text.startswith("-") else text
        if node.op == "param" and value_id not in variables:
            return value_id
        return variables[value_id]

    lines = [f"network {graph.name} {{"]
    lines.extend(f"    # {comment_text(comment)}" for comment in comments)
    for node in graph.inputs:
        lines.append(f"    input {variables[node.id]}: {node.type}")
    for node in free:
        lines.append(f"    param {variables[node.id]}: {node.type}{_param_init(node)}")
    for node in graph.compute_nodes:
        opdef = REGISTRY[node.op]
        tensors = node.inputs[:len(node.inputs) - len(opdef.param_names(node.attrs))]
        if node.op in _INFIX:
            left, right = (operand(i) for i in tensors)
            expression = f"{left} {_INFIX[node.op]} {right}"
        elif node.op == "neg":
            expression = f"-{operand(tensors[0])}"
        else:
            arguments = [operand(i) for i in tensors] + _call_arguments(node)
            expression = f"{node.op}({', '.join(arguments)})"
        lines.append(f"    {variables[node.id]} = {expression}")
    output_table = NameTable()
    for output_name, node_id in graph.outputs:
        name = output_table.claim(output_name, "output")
        if variables.get(node_id) == name:
            lines.append(f"    output {name}")
        else:
            lines.append(f"    output {name} = {operand(node_id)}")
    lines.append("}")
    return "\n".join(lines) + "\n"
