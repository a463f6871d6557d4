"""The front end's shared vocabulary: values an expression evaluates to (`Tensor`, attribute
values, `POISON` after a reported error) and the `Reporter` that collects diagnostics."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from netc.diagnostics import Diagnostic, Span
from netc.frontend.limits import (
    MAX_DIAGNOSTICS,
    MAX_NAME_LENGTH,
    MAX_PATH_LENGTH,
)
from netc.ir import TensorType
from netc.ops import AttrSpec, OpDef
from netc.ops.apply import (
    KIND_WORDS,
    describe_value,
)

ATTR_TYPES = ("int", "float", "bool", "str")
"""The types a block's attribute parameters may have."""

ARITHMETIC_OPS = {"+": "add", "-": "sub", "*": "mul", "/": "div"}
"""The ops the language itself maps operators to (`/` since v2)."""

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

LAYER_PATH = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")
"""A layer name (v2): a PyTorch module path, `layer1.0.conv1`."""


def is_layer_path(name: str) -> bool:
    """Whether `name` may name a layer (or a block call): a module path within the limits."""
    return bool(LAYER_PATH.fullmatch(name)) and len(name) <= MAX_PATH_LENGTH and \
        all(len(segment) <= MAX_NAME_LENGTH for segment in name.split("."))

# Values -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tensor:
    """A tensor value: the IR node that computes it, its type, and who made it (for errors)."""

    node: str
    type: TensorType
    origin: str


class DimName(str):
    """A named dimension used as a value (`reshape(x, [T, 8, 32])`, `pos[:, :T]`): its name,
    which attributes that take dimensions keep as it is (a size known at run time)."""

    __slots__ = ()


class _Poison:
    """The value of an expression whose error has been reported."""

    def __repr__(self) -> str:
        return "POISON"


POISON = _Poison()

Value = Tensor | int | float | bool | str | DimName | tuple[Any, ...] | _Poison


def describe(value: object) -> str:
    """A value in words, for messages: `the int 3`, `a tensor f32[N, 10]`."""
    if isinstance(value, Tensor):
        return f"a tensor {value.type}"
    if isinstance(value, DimName):
        return f"the named dimension {value}"
    return describe_value(value)


def _kind_words(spec: AttrSpec) -> str:
    return KIND_WORDS.get(spec.kind, spec.kind)


def user_callable(opdef: OpDef) -> bool:
    """Whether `.net` source may call the op: internal ops (the `fused` groups that passes
    build) are in the registry but are not part of the language."""
    return not opdef.internal


def _numel(shape: Iterable[object]) -> int:
    """Elements of a shape, counting a named dimension as 1."""
    count = 1
    for dim in shape:
        if type(dim) is int:
            count *= dim
    return count


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


# Diagnostics ------------------------------------------------------------------------------


class _Abort(Exception):
    """A limit was hit; analysis stops with the diagnostics collected so far plus this one."""

    def __init__(self, diagnostic: Diagnostic):
        super().__init__(diagnostic.message)
        self.diagnostic = diagnostic


class Reporter:
    """Collects diagnostics in discovery order, without duplicates, up to MAX_DIAGNOSTICS."""

    def __init__(self) -> None:
        self.diagnostics: list[Diagnostic] = []
        self._seen: set[tuple[str, Span | None, str]] = set()

    def add(self, diagnostic: Diagnostic) -> None:
        key = (diagnostic.code, diagnostic.span, diagnostic.message)
        if key in self._seen or len(self.diagnostics) >= MAX_DIAGNOSTICS:
            return
        self._seen.add(key)
        self.diagnostics.append(diagnostic)

    def error(self, code: str, message: str, span: Span | None, help: str | None = None,
              notes: Sequence[str] = ()) -> None:
        self.add(Diagnostic(code, message, span, help, tuple(notes)))

    def __len__(self) -> int:
        return len(self.diagnostics)

    def in_source_order(self, files: Iterable[str]) -> list[Diagnostic]:
        """The diagnostics by file (in the order files were read), line and column."""
        rank = {name: index for index, name in enumerate(files)}

        def key(diagnostic: Diagnostic) -> tuple[int, int, int]:
            span = diagnostic.span
            if span is None:
                return (-1, 0, 0)
            return (rank.get(span.file, len(rank)), span.line, span.column)

        return sorted(self.diagnostics, key=key)
