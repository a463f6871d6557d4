"""The syntax tree of a `.net` file: frozen dataclasses, each with the `Span` it came from.

The tree is what the parser saw, nothing more: names are not resolved, calls are not checked
against the op registry and blocks are not expanded (that is `sema`'s job). Two shapes differ
from a textbook tree on purpose, so that no stage needs deep recursion on long inputs:

* a pipe chain `x |> f |> g(2)` is one `Pipe` holding its stages in order;
* a left-associative chain `a + b - c` is a left-leaning `BinaryOp` tree that `sema` walks
  down its left spine with a loop.
"""

from __future__ import annotations

from dataclasses import dataclass

from netc.diagnostics import Span


@dataclass(frozen=True)
class Identifier:
    """A name as written, with its own span (callee names, targets, parameter names)."""

    text: str
    span: Span


# Expressions ------------------------------------------------------------------------------


@dataclass(frozen=True)
class IntLiteral:
    value: int
    span: Span


@dataclass(frozen=True)
class FloatLiteral:
    value: float
    span: Span


@dataclass(frozen=True)
class BoolLiteral:
    value: bool
    span: Span


@dataclass(frozen=True)
class StringLiteral:
    value: str
    span: Span


@dataclass(frozen=True)
class ListLiteral:
    items: tuple[Expr, ...]
    span: Span


@dataclass(frozen=True)
class NameRef:
    name: str
    span: Span


@dataclass(frozen=True)
class Keyword:
    """`key=value` inside a call's parentheses."""

    name: Identifier
    value: Expr
    span: Span


@dataclass(frozen=True)
class Call:
    """`callee(args)`; as a pipe stage, `x |> callee(args)` gets `x` as its first argument."""

    callee: Identifier
    args: tuple[Argument, ...]
    span: Span


@dataclass(frozen=True)
class Pipe:
    head: Expr
    stages: tuple[Call, ...]
    span: Span


@dataclass(frozen=True)
class BinaryOp:
    op: str
    """One of `+ - * / //`."""
    left: Expr
    right: Expr
    span: Span
    op_span: Span


@dataclass(frozen=True)
class Negate:
    operand: Expr
    span: Span


@dataclass(frozen=True)
class PathRef:
    """`wte.weight`, `layer1.0.conv1.weight`: a parameter of an earlier layer (v2). The last
    segment is the parameter, the others the layer's name as written in that scope."""

    segments: tuple[str, ...]
    span: Span

    @property
    def text(self) -> str:
        return ".".join(self.segments)


@dataclass(frozen=True)
class IndexAt:
    """`x[..., 0]`: one position, which drops the dimension."""

    value: Expr
    span: Span


@dataclass(frozen=True)
class IndexSlice:
    """`x[:, 1:5:2]`: a slice; a missing bound is None, as in Python."""

    start: Expr | None
    stop: Expr | None
    step: Expr | None
    span: Span


@dataclass(frozen=True)
class IndexEllipsis:
    """`x[..., 0]`: as many full slices as the other items leave."""

    span: Span


IndexItem = IndexAt | IndexSlice | IndexEllipsis


@dataclass(frozen=True)
class Index:
    """`value[items]` (v2): PyTorch's basic indexing."""

    value: Expr
    items: tuple[IndexItem, ...]
    span: Span


Expr = (IntLiteral | FloatLiteral | BoolLiteral | StringLiteral | ListLiteral | NameRef | Call
        | Pipe | BinaryOp | Negate | PathRef | Index)
Argument = Expr | Keyword


# Types ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SizeDim:
    value: int
    span: Span


@dataclass(frozen=True)
class NamedDim:
    name: str
    span: Span


Dim = SizeDim | NamedDim


@dataclass(frozen=True)
class TensorTypeExpr:
    """`f32[N, 3, 224, 224]`; the dtype is kept as written so sema can suggest a fix."""

    dtype: Identifier
    dims: tuple[Dim, ...]
    span: Span


# Statements -------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputStmt:
    name: Identifier
    type: TensorTypeExpr
    span: Span


@dataclass(frozen=True)
class ParamStmt:
    """`param pos: f32[1, 1024, 256] = normal(std=0.02)` (v2); `init` is None for the
    default."""

    name: Identifier
    type: TensorTypeExpr
    init: Expr | None
    span: Span


@dataclass(frozen=True)
class FreezeStmt:
    """`freeze conv1, layer1.0` in a `train` section (parsed only: training is not supported
    yet)."""

    names: tuple[Expr, ...]
    span: Span


@dataclass(frozen=True)
class AssignStmt:
    target: Identifier
    value: Expr
    span: Span


@dataclass(frozen=True)
class OutputStmt:
    name: Identifier
    value: Expr | None
    span: Span


@dataclass(frozen=True)
class RepeatStmt:
    count: Expr
    body: tuple[Statement, ...]
    span: Span


@dataclass(frozen=True)
class ReturnStmt:
    value: Expr
    span: Span


Statement = (InputStmt | ParamStmt | AssignStmt | OutputStmt | RepeatStmt | ReturnStmt
             | FreezeStmt)


# Definitions ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorParam:
    name: Identifier
    span: Span


@dataclass(frozen=True)
class AttrParam:
    name: Identifier
    type: Identifier
    """As written; sema checks it is `int`, `float` or `bool`."""
    default: Expr | None
    span: Span


Param = TensorParam | AttrParam


@dataclass(frozen=True)
class BlockDef:
    name: Identifier
    params: tuple[Param, ...]
    body: tuple[Statement, ...]
    span: Span


@dataclass(frozen=True)
class NetworkDef:
    name: Identifier
    body: tuple[Statement, ...]
    span: Span


@dataclass(frozen=True)
class TrainDef:
    """`train NETWORK { ... }` (v2): parsed so that sema can say it is not supported yet."""

    network: Identifier
    body: tuple[Statement, ...]
    span: Span


@dataclass(frozen=True)
class ImportStmt:
    path: str
    span: Span


Definition = ImportStmt | BlockDef | NetworkDef | TrainDef


@dataclass(frozen=True)
class Module:
    """One parsed file: its top-level items in source order."""

    file: str
    items: tuple[Definition, ...]

    @property
    def imports(self) -> tuple[ImportStmt, ...]:
        return tuple(item for item in self.items if isinstance(item, ImportStmt))

    @property
    def blocks(self) -> tuple[BlockDef, ...]:
        return tuple(item for item in self.items if isinstance(item, BlockDef))

    @property
    def networks(self) -> tuple[NetworkDef, ...]:
        return tuple(item for item in self.items if isinstance(item, NetworkDef))

    @property
    def trains(self) -> tuple[TrainDef, ...]:
        return tuple(item for item in self.items if isinstance(item, TrainDef))


def subexpressions(expr: Expr) -> list[Expr]:
    """`expr` and every expression inside it, without recursion (chains can be long)."""
    found: list[Expr] = []
    pending: list[Expr] = [expr]
    while pending:
        current = pending.pop()
        found.append(current)
        if isinstance(current, ListLiteral):
            pending.extend(current.items)
        elif isinstance(current, Call):
            pending.extend(a.value if isinstance(a, Keyword) else a for a in current.args)
        elif isinstance(current, Pipe):
            pending.append(current.head)
            pending.extend(current.stages)
        elif isinstance(current, BinaryOp):
            pending.extend((current.left, current.right))
        elif isinstance(current, Negate):
            pending.append(current.operand)
        elif isinstance(current, Index):
            pending.append(current.value)
            for item in current.items:
                if isinstance(item, IndexAt):
                    pending.append(item.value)
                elif isinstance(item, IndexSlice):
                    pending.extend(e for e in (item.start, item.stop, item.step) if e is not None)
    return found
