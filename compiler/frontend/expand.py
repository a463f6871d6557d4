"""Semantic analysis, phase 3: expanding the chosen network into a flat SSA graph (see
`netc.frontend.sema` for the rules: environments, `repeat`, block calls, naming, applying ops
through `netc.ops.apply`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from netc.diagnostics import Diagnostic, Span, did_you_mean
from netc.frontend import ast
from netc.frontend.check import walk_statements
from netc.frontend.limits import (
    INT_LIMIT,
    MAX_BLOCK_DEPTH,
    MAX_ELEMENTS,
    MAX_EVAL_DEPTH,
    MAX_NAME_LENGTH,
    MAX_NODES,
    MAX_PATH_LENGTH,
    MAX_REPEAT,
    MAX_STATEMENTS,
)
from netc.frontend.load import (
    BlockInfo,
    SourceFile,
)
from netc.frontend.values import (
    ARITHMETIC_OPS,
    POISON,
    DimName,
    Reporter,
    Tensor,
    Value,
    _Abort,
    _count,
    _kind_words,
    _numel,
    describe,
    is_layer_path,
    user_callable,
)
from netc.ir import ALL_DTYPES, FLOAT_DTYPES, Attrs, Graph, Node, TensorType
from netc.ops import REGISTRY, AttrSpec, OpDef, ShapeError
from netc.ops.apply import (
    AttrError,
    DtypeError,
    Naming,
    apply_op,
    bind_attrs,
    coerce_attr,
    missing_attr,
    param_id,
    unknown_attr,
)
from netc.ops.apply import is_int as _is_int
from netc.ops.apply import is_number as _is_number
from netc.ops.arithmetic import number_problem
from netc.ops.verify import verify

# Phase 3: expansion -----------------------------------------------------------------------


@dataclass
class _Scope:
    """One naming scope: the network, or one call of a block."""

    source: SourceFile
    prefix: str
    env: dict[str, Value]
    naming: Naming = field(default_factory=Naming)
    """Unnamed layers of each op in this scope (`<op>_<k>`)."""
    block_counts: dict[str, int] = field(default_factory=dict)


_FAILED = object()
"""What `_coerce` returns after reporting a bad attribute value."""


class Expander:
    """Runs one network's statements and builds its graph."""

    def __init__(self, main: SourceFile, all_blocks: dict[str, BlockInfo], reporter: Reporter):
        self.main = main
        self.all_blocks = all_blocks
        self.reporter = reporter
        self.nodes: list[Node] = []
        self.node_ids: dict[str, Node] = {}
        self.layer_spans: dict[str, Span] = {}
        self.naming = Naming()
        """Node ids of the network (`<op>#<k>`)."""
        self.outputs: list[tuple[str, str]] = []
        self.output_spans: dict[str, Span] = {}
        self.statements = 0
        self.depth = 0
        self.block_stack: list[str] = []
        self.expanded: set[str] = set()
        # The ops source may call, and each one's attributes by position (looked up per call).
        self.ops = {name: opdef for name, opdef in REGISTRY.items() if user_callable(opdef)}
        self.by_position = {name: [spec for spec in opdef.attrs if spec.positional]
                            for name, opdef in self.ops.items()}
        self.dims: dict[str, Span] = {}
        """The network's named dimensions, where each is first declared."""
        self.calls: tuple[tuple[str, str, Span], ...] = ()
        """The block calls being expanded, innermost first: (prefixed name, block, call span)."""

    def error(self, code: str, message: str, span: Span | None, help: str | None = None,
              notes: Sequence[str] = ()) -> None:
        self.reporter.error(code, message, span, help, (*notes, *self._call_notes()))

    def _call_notes(self) -> tuple[str, ...]:
        """Errors inside a block say which call they happened in: the innermost few calls."""
        notes = tuple(f"in `{where}`, the call of block `{block}` at {span}"
                      for where, block, span in self.calls[:4])
        if len(self.calls) > 4:
            notes = (*notes[:3], f"... inside {len(self.calls) - 3} more block calls")
        return notes

    # Entry

    def network(self, network: ast.NetworkDef) -> Graph | None:
        scope = _Scope(self.main, "", {})
        errors_before = len(self.reporter)
        try:
            self._run(network.body, scope)
        except _Abort as abort:
            self.reporter.add(abort.diagnostic)
            return None
        self._check_unexpanded_blocks()
        if len(self.reporter) > errors_before:
            return None
        graph = Graph(network.name.text, tuple(self.nodes), tuple(self.outputs))
        verify(graph)  # an IRError here is a bug in netc, never the user's fault
        return graph

    def train(self, network: ast.NetworkDef, section: ast.TrainDef) -> Graph | None:
        """The training graph of `section` (v2): the network, the section's inputs and its
        loss as the output `loss`. The loss sees the network's inputs and outputs only, and
        must be a float scalar (E0316)."""
        scope = _Scope(self.main, "", {})
        errors_before = len(self.reporter)
        try:
            self._run(network.body, scope)
            visible = [n.id for n in self.nodes if n.op == "input"] + list(self.output_spans)
            section_scope = _Scope(self.main, "", {name: scope.env[name] for name in visible
                                                   if name in scope.env})
            for statement in section.body:
                if isinstance(statement, ast.InputStmt):
                    self._input(statement, section_scope)
            (loss,) = (s for s in section.body
                       if isinstance(s, ast.AssignStmt) and s.target.text == "loss")
            self._loss(loss.value, network, scope, section_scope)
        except _Abort as abort:
            self.reporter.add(abort.diagnostic)
            return None
        if len(self.reporter) > errors_before:
            return None
        graph = Graph(network.name.text, tuple(self.nodes), tuple(self.outputs))
        verify(graph)
        return graph

    def _loss(self, expr: ast.Expr, network: ast.NetworkDef, scope: _Scope,
              section: _Scope) -> None:
        inside = [sub for sub in ast.subexpressions(expr) if isinstance(sub, ast.NameRef)
                  and sub.name not in section.env and sub.name in scope.env]
        if inside:
            first = min(inside, key=lambda sub: (sub.span.line, sub.span.column))
            self.error("E0129", f"`{first.name}` is a value inside network "
                       f"`{network.name.text}`, not one of its outputs", first.span,
                       f"mark it `output {first.name}` in the network to use it in the loss")
            return
        value = self._eval(expr, section)
        if value is POISON:
            return
        if not isinstance(value, Tensor) or value.type.rank != 0 or \
                value.type.dtype not in FLOAT_DTYPES:
            self.error("E0316", f"the loss must be a float scalar (f32[]), got "
                       f"{describe(value)}",
                       expr.span, "reduce it to one number, e.g. `mean(...)` or a loss op with "
                       "its default reduction=\"mean\"")
            return
        if "loss" in self.output_spans:
            self.error("E0129", f"network `{network.name.text}` has an output named `loss`, "
                       "which the train section's loss would shadow",
                       self.output_spans["loss"], "rename the network's output")
            return
        self.outputs.append(("loss", value.node))

    def _add_node(self, node: Node) -> None:
        if len(self.nodes) >= MAX_NODES:
            raise _Abort(Diagnostic(
                "E0504", f"the network has more than {MAX_NODES:,} nodes once repeats are "
                "unrolled and blocks expanded", node.span, notes=self._call_notes()))
        self.nodes.append(node)
        self.node_ids[node.id] = node

    # Statements

    def _run(self, statements: Sequence[ast.Statement], scope: _Scope) -> None:
        for statement in statements:
            self.statements += 1
            if self.statements > MAX_STATEMENTS:
                raise _Abort(Diagnostic(
                    "E0505", f"unrolling runs more than {MAX_STATEMENTS:,} statements",
                    statement.span, "lower the `repeat` counts", self._call_notes()))
            if isinstance(statement, ast.AssignStmt):
                scope.env[statement.target.text] = self._eval(statement.value, scope)
            elif isinstance(statement, ast.InputStmt):
                self._input(statement, scope)
            elif isinstance(statement, ast.ParamStmt):
                self._param(statement, scope)
            elif isinstance(statement, ast.OutputStmt):
                self._output(statement, scope)
            elif isinstance(statement, ast.RepeatStmt):
                self._repeat(statement, scope)
            # A `return` is handled by `_call_block`; phase 2 made sure it is the last statement.

    def _input(self, statement: ast.InputStmt, scope: _Scope) -> None:
        name = statement.name
        if name.text in scope.env or name.text in self.node_ids:
            self.error("E0117", f"`{name.text}` is already defined", name.span,
                       "give the input another name")
            return
        tensor_type = self._tensor_type(statement.type)
        if tensor_type is None:
            scope.env[name.text] = POISON
            return
        self._add_node(Node(name.text, "input", (), Attrs(), tensor_type, name.span))
        scope.env[name.text] = Tensor(name.text, tensor_type, f"input `{name.text}` at {name.span}")
        for dim in statement.type.dims:
            if isinstance(dim, ast.NamedDim):
                self.dims.setdefault(dim.name, dim.span)

    def _param(self, statement: ast.ParamStmt, scope: _Scope) -> None:
        """`param NAME: TYPE [= INIT]`: a free parameter, IR node `param` whose id is its full
        name (the block prefix and NAME) and whose attributes say how to initialise it."""
        name = statement.name
        if name.text in scope.env:
            self.error("E0117", f"`{name.text}` is already defined", name.span,
                       "give the parameter another name")
            return
        scope.env[name.text] = POISON  # until it is made
        tensor_type = self._tensor_type(statement.type, named=False)
        init = self._param_init(statement.init, scope)
        if tensor_type is None or init is None:
            return
        node_id = scope.prefix + name.text
        existing = self.node_ids.get(node_id)
        if existing is not None or node_id in self.layer_spans:
            where = self.layer_spans.get(node_id) or (existing.span if existing else None)
            self.error("E0211", f"parameter `{node_id}` clashes with another layer or value of "
                       "that name", name.span, "give the parameter another name",
                       [f"the other is at {where}"] if where else [])
            return
        self.layer_spans[node_id] = name.span
        self._add_node(Node(node_id, "param", (), init, tensor_type, name.span))
        scope.env[name.text] = Tensor(node_id, tensor_type, f"param `{node_id}` at {name.span}")

    def _param_init(self, written: ast.Expr | None, scope: _Scope) -> Attrs | None:
        """A param's `INIT` as the param node's attributes: `init` is "zeros", "ones",
        "normal" (with `std`) or "uniform" (with `bound`)."""
        if written is None:
            return Attrs(init="normal", std=0.02)
        shown = 'zeros, ones, normal(std=S) or uniform(bound=B)'
        if isinstance(written, ast.NameRef) and written.name in ("zeros", "ones"):
            return Attrs(init=written.name)
        if not isinstance(written, ast.Call) or written.callee.text not in ("normal", "uniform"):
            self.error("E0235", "a param's initialiser is " + shown, written.span,
                       "for example `param pos: f32[1, 16, 64] = normal(std=0.02)`")
            return None
        kind = written.callee.text
        key = "std" if kind == "normal" else "bound"
        if len(written.args) != 1:
            self.error("E0235", f"`{kind}` takes one argument, `{key}`", written.span,
                       f"write `{kind}({key}=...)`")
            return None
        (argument,) = written.args
        if not isinstance(argument, ast.Keyword) or argument.name.text != key:
            # By keyword only: `nn.init.normal_(t, 0.5)` would be the mean, not the std.
            where = argument.name.span if isinstance(argument, ast.Keyword) else argument.span
            self.error("E0235", f"`{kind}` takes `{key}` by keyword", where,
                       f"write `{kind}({key}=...)`")
            return None
        value = self._eval(argument.value, scope)
        if value is POISON:
            return None
        if not _is_number(value) or value < 0 or not math.isfinite(value):
            self.error("E0235", f"`{key}` of `{kind}` is a non-negative number, got "
                       f"{describe(value)}", argument.value.span)
            return None
        return Attrs({"init": kind, key: float(value)})

    def _tensor_type(self, written: ast.TensorTypeExpr, named: bool = True) -> TensorType | None:
        """The type as written; `named=False` (a param's) refuses named dimensions."""
        ok = True
        dtype = written.dtype.text
        if dtype not in ALL_DTYPES:
            self.error("E0301", f"unknown dtype `{dtype}`", written.dtype.span,
                       did_you_mean(dtype, ALL_DTYPES) or
                       "the dtypes are f32, f16, bf16, i32, i64 and bool")
            ok = False
        shape: list[int | str] = []
        for dim in written.dims:
            if isinstance(dim, ast.NamedDim):
                if not named:
                    self.error("E0314", f"a param's shape is fully known; `{dim.name}` is a "
                               "named dimension", dim.span,
                               "give the largest size and index it: `pos[:, :T]`")
                    ok = False
                shape.append(dim.name)
            else:
                if dim.value < 1:
                    self.error("E0302", f"dimensions are positive integers, got {dim.value}",
                               dim.span)
                    ok = False
                shape.append(dim.value)
        if ok and _numel(shape) > MAX_ELEMENTS:
            self.error("E0507", f"the type {dtype}{_shape(shape)} has more than 2^40 elements",
                       written.span)
            ok = False
        return TensorType(dtype, tuple(shape)) if ok else None

    def _output(self, statement: ast.OutputStmt, scope: _Scope) -> None:
        name = statement.name
        if statement.value is not None:
            value = self._eval(statement.value, scope)
            scope.env[name.text] = value
        else:
            value = self._lookup(ast.NameRef(name.text, name.span), scope)
        if name.text in self.output_spans:
            self.error("E0118", f"output `{name.text}` is declared twice", name.span,
                       notes=[f"the first is at {self.output_spans[name.text]}"])
            return
        self.output_spans[name.text] = name.span
        if value is POISON:
            return
        if not isinstance(value, Tensor):
            self.error("E0214", f"output `{name.text}` must be a tensor, got {describe(value)}",
                       statement.value.span if statement.value is not None else name.span)
            return
        self.outputs.append((name.text, value.node))

    def _repeat(self, statement: ast.RepeatStmt, scope: _Scope) -> None:
        count = self._eval(statement.count, scope)
        if count is POISON:
            return
        if not _is_int(count) or count < 0:
            self.error("E0220", f"a repeat count is a non-negative int, got {describe(count)}",
                       statement.count.span)
            return
        assert isinstance(count, int)
        if count > MAX_REPEAT:
            self.error("E0505", f"repeat count {count:,} is over the limit of {MAX_REPEAT:,}",
                       statement.count.span)
            return
        for round_number in range(count):
            errors_before = len(self.reporter)
            nodes_before, statements_before = len(self.nodes), self.statements
            self._run(statement.body, scope)
            if len(self.reporter) > errors_before:
                break  # later rounds would only repeat the same errors
            if round_number == 0 and count > 1:
                # Every round makes the same nodes, so the first tells whether all of them fit:
                # refuse a repeat that would pass a limit now, not after minutes of unrolling.
                self._check_rounds(statement, count, len(self.nodes) - nodes_before,
                                   self.statements - statements_before)

    def _check_rounds(self, statement: ast.RepeatStmt, count: int, nodes: int,
                      statements: int) -> None:
        remaining = count - 1
        if len(self.nodes) + nodes * remaining > MAX_NODES:
            raise _Abort(Diagnostic(
                "E0504", f"this repeat makes {nodes:,} nodes a round, {nodes * count:,} in all: "
                f"the network would have more than {MAX_NODES:,} nodes", statement.count.span,
                "lower the count", self._call_notes()))
        if self.statements + statements * remaining > MAX_STATEMENTS:
            raise _Abort(Diagnostic(
                "E0505", f"this repeat runs {statements:,} statements a round, "
                f"{statements * count:,} in all: unrolling would run more than "
                f"{MAX_STATEMENTS:,} statements", statement.count.span, "lower the count",
                self._call_notes()))

    # Expressions

    def _eval(self, expr: ast.Expr, scope: _Scope) -> Value:
        self.depth += 1
        try:
            if self.depth > MAX_EVAL_DEPTH:
                self.error("E0502", f"expressions and block calls nested more than "
                           f"{MAX_EVAL_DEPTH} deep", expr.span,
                           "split the expression into several statements")
                return POISON
            if isinstance(expr, ast.Call):
                return self._call(expr, scope, None)
            if isinstance(expr, ast.NameRef):
                return self._lookup(expr, scope)
            if isinstance(expr, ast.Pipe):
                return self._pipe(expr, scope)
            if isinstance(expr, ast.BinaryOp):
                return self._binary_chain(expr, scope)
            if isinstance(expr, (ast.IntLiteral, ast.FloatLiteral, ast.BoolLiteral,
                                 ast.StringLiteral)):
                return expr.value
            if isinstance(expr, ast.ListLiteral):
                return self._list(expr, scope)
            if isinstance(expr, ast.Negate):
                return self._negate(expr, scope)
            if isinstance(expr, ast.PathRef):
                return self._path(expr, scope)
            if isinstance(expr, ast.Index):
                return self._index(expr, scope)
            raise TypeError(f"unknown expression {expr!r}")
        finally:
            self.depth -= 1

    def _lookup(self, ref: ast.NameRef, scope: _Scope) -> Value:
        if ref.name in scope.env:
            return scope.env[ref.name]
        if ref.name in self.dims:
            return DimName(ref.name)
        help = did_you_mean(ref.name, scope.env)
        if help is None and (ref.name in REGISTRY or ref.name in scope.source.blocks):
            help = f"`{ref.name}` is an op: call it, `{ref.name}(x)`, or pipe into it, " \
                   f"`x |> {ref.name}`"
        self.error("E0202", f"undefined name `{ref.name}`", ref.span, help)
        scope.env[ref.name] = POISON  # one report per name, not one per use
        return POISON

    def _path(self, ref: ast.PathRef, scope: _Scope) -> Value:
        """`LAYER.PARAM`: a parameter of a layer made earlier in this scope, `LAYER` as written
        here (the scope's prefix is added)."""
        *layer_path, param = ref.segments
        layer = ".".join(layer_path)
        node = self.node_ids.get(scope.prefix + ref.text)
        if node is not None and node.op == "param":
            return Tensor(node.id, node.type, f"parameter `{node.id}` at {ref.span}")
        # Layers of this scope by the name written here (a block call's free parameters count
        # as its own), and each one's parameters.
        layers: dict[str, list[str]] = {}
        for other in self.nodes:
            if other.op == "param" and other.id.startswith(scope.prefix) and "." in other.id:
                owner = other.layer or other.id.rsplit(".", 1)[0]
                layers.setdefault(owner[len(scope.prefix):], []).append(
                    other.id[len(owner) + 1:])
        if layer in layers:
            names = layers[layer]
            self.error("E0234", f"layer `{layer}` has no parameter `{param}`", ref.span,
                       did_you_mean(param, names) or
                       f"its parameters are {', '.join(f'`{n}`' for n in names)}")
        else:
            help = did_you_mean(layer, layers)
            if help is None and layer_path[0] in scope.env:
                help = f"`{layer_path[0]}` is a value; `.` names a parameter of a layer"
            self.error("E0233", f"no layer `{layer}` before this point" +
                       (f" in `{scope.prefix[:-1]}`" if scope.prefix else ""), ref.span,
                       help or "a layer is named by `name=` or `<op>_<k>`, and must come "
                       "before its parameters are used")
        return POISON

    def _index(self, expr: ast.Index, scope: _Scope) -> Value:
        """`x[:, 0]`, `x[..., ::2]`, `pos[:, :T]`: PyTorch's basic indexing, as one `slice`
        of every sliced axis, then a `select` per integer index (highest axis first, so the
        others keep their numbers)."""
        value = self._eval(expr.value, scope)
        items = [self._index_item(item, scope) for item in expr.items]
        if value is POISON or any(item is None for item in items):
            return POISON
        if not isinstance(value, Tensor):
            self.error("E0236", f"only a tensor can be indexed, not {describe(value)}",
                       expr.value.span)
            return POISON
        ellipses = [i for i, item in enumerate(expr.items) if isinstance(item, ast.IndexEllipsis)]
        if len(ellipses) > 1:
            self.error("E0236", "an index holds at most one `...`", expr.items[ellipses[1]].span)
            return POISON
        rank = value.type.rank
        written = len(expr.items) - len(ellipses)
        if written > rank:
            self.error("E0236", f"{written} indices for a tensor {value.type} of rank {rank}",
                       expr.span, "index at most one position or slice per dimension")
            return POISON
        # Each item's axis: the items after a `...` index the last dimensions.
        placed: list[tuple[int, object]] = []
        for position, bounds in enumerate(items):
            if ellipses and position > ellipses[0]:
                placed.append((rank - (len(items) - position), bounds))
            elif bounds != "...":
                placed.append((position, bounds))
        slices: dict[str, list[Any]] = {"axes": [], "starts": [], "ends": [], "steps": []}
        selects: list[tuple[int, int]] = []
        for axis, bounds in placed:
            if isinstance(bounds, int):
                selects.append((axis, bounds))
                continue
            assert isinstance(bounds, tuple)
            start, stop, step = bounds
            if start is None and stop is None and step is None:
                continue  # `:` keeps the whole dimension
            size = value.type.shape[axis]
            problem = None
            if isinstance(size, str):
                problem = (f"cannot slice the named dimension {size} of {value.type}: its size "
                           "is known only at run time")
            elif isinstance(stop, DimName) and (start not in (None, 0) or step not in (None, 1)):
                problem = (f"a slice ending at the named dimension {stop} is `:{stop}` (its "
                           f"length is then {stop}); a start or step beside it is not supported")
            if problem is not None:
                self.error("E0236", problem, expr.span)
                return POISON
            slices["axes"].append(axis)
            slices["starts"].append(0 if start is None else start)
            slices["ends"].append(size if stop is None else stop)
            slices["steps"].append(1 if step is None else step)
        result: Value = value
        if slices["axes"]:
            result = self._apply_builtin("slice", value, {k: tuple(v) for k, v in slices.items()},
                                         expr.span, scope)
        for axis, index in sorted(selects, reverse=True):
            if not isinstance(result, Tensor):
                break
            result = self._apply_builtin("select", result, {"axis": axis, "index": index},
                                         expr.span, scope)
        return result

    def _index_item(self, item: ast.IndexItem, scope: _Scope) -> object:
        """An index item's value: an int, a (start, stop, step) of ints, dimension names or
        None, or "..."; None after reporting what is wrong with it."""
        if isinstance(item, ast.IndexEllipsis):
            return "..."
        if isinstance(item, ast.IndexAt):
            index = self._eval(item.value, scope)
            if index is POISON:
                return None
            if not _is_int(index):
                self.error("E0236", f"an index is an int, got {describe(index)}", item.span,
                           "indexing by a tensor is not supported; `embedding` looks up rows"
                           if isinstance(index, Tensor) else None)
                return None
            return index
        bounds: list[object] = []
        for part in (item.start, item.stop, item.step):
            bound = None if part is None else self._eval(part, scope)
            if bound is POISON:
                return None
            if bound is not None and not _is_int(bound) and \
                    not (isinstance(bound, DimName) and part is item.stop):
                what = "an int or a named dimension" if part is item.stop else "an int"
                self.error("E0236", f"a slice {'end' if part is item.stop else 'bound'} is "
                           f"{what}, got {describe(bound)}",
                           part.span if part is not None else item.span)
                return None
            bounds.append(bound)
        return tuple(bounds)

    def _apply_builtin(self, op: str, tensor: Tensor, values: dict[str, Any], span: Span,
                       scope: _Scope) -> Value:
        """An op the language applies for a construct (indexing), attributes bound by
        `bind_attrs`; a value it refuses is reported at `span`."""
        opdef = REGISTRY[op]
        try:
            attrs = bind_attrs(opdef, values, canonical=False)
        except AttrError as problem:
            self.error(problem.code, problem.message, span, problem.help)
            return POISON
        return self._emit(opdef, [tensor], dict(attrs), span, scope, None)

    def _list(self, expr: ast.ListLiteral, scope: _Scope) -> Value:
        items = [self._eval(item, scope) for item in expr.items]
        if any(item is POISON for item in items):
            return POISON
        for item, written in zip(items, expr.items):
            if isinstance(item, Tensor):
                self.error("E0213", "a list holds numbers, not tensors", written.span,
                           "to join tensors use `concat(a, b, axis=...)`")
                return POISON
        return tuple(items)

    def _pipe(self, expr: ast.Pipe, scope: _Scope) -> Value:
        value = self._eval(expr.head, scope)
        span = expr.head.span
        for stage in expr.stages:
            value = self._call(stage, scope, (value, span))
            span = stage.span
        return value

    def _negate(self, expr: ast.Negate, scope: _Scope) -> Value:
        value = self._eval(expr.operand, scope)
        if value is POISON:
            return POISON
        if isinstance(value, Tensor):
            return self._builtin("neg", [value], expr.span, scope)
        if _is_number(value):
            return -value
        self.error("E0216", f"`-` needs a number or a tensor, got {describe(value)}",
                   expr.operand.span)
        return POISON

    def _binary_chain(self, expr: ast.BinaryOp, scope: _Scope) -> Value:
        # `a + b + c + ...` leans left: walk its spine with a loop, not recursion.
        spine: list[ast.BinaryOp] = []
        node: ast.Expr = expr
        while isinstance(node, ast.BinaryOp):
            spine.append(node)
            node = node.left
        value = self._eval(node, scope)
        for operation in reversed(spine):
            right = self._eval(operation.right, scope)
            value = self._binary(operation, value, right, scope)
        return value

    def _binary(self, expr: ast.BinaryOp, left: Value, right: Value, scope: _Scope) -> Value:
        op = expr.op
        if left is POISON or right is POISON:
            return POISON
        operands = ((left, expr.left), (right, expr.right))
        if isinstance(left, Tensor) or isinstance(right, Tensor):
            if op not in ARITHMETIC_OPS:
                self.error("E0216", f"`{op}` is not defined on tensors", expr.op_span,
                           "`//` divides ints in attribute arithmetic; `/` divides tensors")
                return POISON
            for value, written in operands:
                if not isinstance(value, Tensor) and not _is_number(value):
                    self.error("E0216", f"`{op}` needs tensors or numbers, got "
                               f"{describe(value)}", written.span)
                    return POISON
            tensor = left if isinstance(left, Tensor) else right
            assert isinstance(tensor, Tensor)
            inputs: list[Tensor] = []
            for value, written in operands:
                if isinstance(value, Tensor):
                    inputs.append(value)
                else:
                    assert isinstance(value, (int, float))
                    problem = number_problem(tensor.type.dtype, value)
                    if problem is not None:
                        self.error("E0315", problem, written.span,
                                   f"`cast(x, \"f32\") {op} {value}` computes in float")
                        return POISON
                    inputs.append(self._constant(float(value), tensor, written.span))
            return self._builtin(ARITHMETIC_OPS[op], inputs, expr.span, scope)
        for value, written in operands:
            if not _is_number(value):
                self.error("E0216", f"`{op}` needs numbers or tensors, got {describe(value)}",
                           written.span)
                return POISON
        return self._attribute_arithmetic(expr, left, right)

    def _attribute_arithmetic(self, expr: ast.BinaryOp, left: float, right: float) -> Value:
        op = expr.op
        if op == "/" and _is_int(left) and _is_int(right):
            self.error("E0215", f"`/` on two ints ({left} / {right}); integer division is `//`",
                       expr.span, f"write `{left} // {right}`, or make one side a float")
            return POISON
        if op in ("/", "//") and right == 0:
            self.error("E0217", "division by zero", expr.span)
            return POISON
        result: float
        if op == "+":
            result = left + right
        elif op == "-":
            result = left - right
        elif op == "*":
            result = left * right
        elif op == "/":
            result = left / right
        else:
            result = left // right
        if (_is_int(result) and abs(result) > INT_LIMIT) or not math.isfinite(result):
            self.error("E0501", f"the result of `{op}` is too large ({_clip_number(result)})",
                       expr.span, f"integers are at most {INT_LIMIT:,} (2^40)")
            return POISON
        return result

    def _constant(self, value: float, like: Tensor, span: Span) -> Tensor:
        node_id = self._next_id("constant")
        tensor_type = TensorType(like.type.dtype, ())
        self._add_node(Node(node_id, "constant", (), Attrs(value=value), tensor_type, span))
        return Tensor(node_id, tensor_type, f"the number {value!r} at {span}")

    def _next_id(self, op: str) -> str:
        return self.naming.node(op)

    # Calls

    def _call(self, call: ast.Call, scope: _Scope, piped: tuple[Value, Span] | None) -> Value:
        name = call.callee.text
        block = scope.source.blocks.get(name)
        opdef = None if block is not None else self.ops.get(name)
        if block is None and opdef is None:
            self._unknown_callee(call, scope)
        positional: list[tuple[Value, Span]] = [piped] if piped is not None else []
        keywords: list[tuple[ast.Identifier, Value, Span]] = []
        ok = True
        for argument in call.args:
            if isinstance(argument, ast.Keyword):
                keywords.append((argument.name, self._eval(argument.value, scope),
                                 argument.value.span))
            else:
                value = self._eval(argument, scope)
                if keywords and ok:
                    self.error("E0218", "a positional argument cannot follow keyword arguments",
                               argument.span, "move it before the `key=value` arguments")
                    ok = False
                positional.append((value, argument.span))
        if not ok:
            return POISON
        if block is not None:
            return self._call_block(block, call, positional, keywords, scope)
        if opdef is not None:
            return self._call_op(opdef, call, positional, keywords, scope)
        return POISON

    def _unknown_callee(self, call: ast.Call, scope: _Scope) -> None:
        name = call.callee.text
        known = [*self.ops, *scope.source.blocks]
        help = did_you_mean(name, known)
        if name in self.all_blocks:
            where = self.all_blocks[name].source.name
            help = f"block `{name}` is defined in `{where}`, which this file does not import"
        elif name in scope.env and help is None:
            help = f"`{name}` is a value, not an op"
        self.error("E0201", f"unknown op `{name}`", call.callee.span, help)

    def _split_tensors(self, positional: list[tuple[Value, Span]],
                       most: int | None) -> int:
        """How many leading positional arguments are the tensor inputs."""
        count = 0
        for value, _ in positional:
            # A poisoned argument counts as a tensor while tensors are still expected, so a
            # typo in `dense(x_typo, 8)` does not also complain about the tensor count.
            if isinstance(value, Tensor) or (value is POISON and (most is None or count < most)):
                count += 1
            else:
                break
        return count

    def _call_op(self, opdef: OpDef, call: ast.Call, positional: list[tuple[Value, Span]],
                 keywords: list[tuple[ast.Identifier, Value, Span]], scope: _Scope) -> Value:
        op = opdef.name
        count = self._split_tensors(positional, opdef.max_inputs)
        by_position = self.by_position[op]
        if opdef.max_inputs is not None and count > opdef.max_inputs and by_position:
            # `dense(x, y)`: the extra tensor is in the place of an attribute; say so there.
            count = opdef.max_inputs
        tensors, rest = positional[:count], positional[count:]
        ok = True
        if opdef.max_inputs is not None and count > opdef.max_inputs:
            self.error("E0203", f"`{op}` takes {_count(opdef.max_inputs, 'tensor argument')}, "
                       f"got {count}", positional[opdef.max_inputs][1])
            ok = False
        elif count < opdef.min_inputs:
            if rest:
                value, span = rest[0]
                self.error("E0203", f"argument {count + 1} of `{op}` must be a tensor, got "
                           f"{describe(value)}", span)
            else:
                self.error("E0203", f"`{op}` needs {_count(opdef.min_inputs, 'tensor argument')}"
                           f", got {count}", call.span)
            ok = False
            rest = []
        given: dict[str, tuple[Value, Span]] = {}
        for index, (value, span) in enumerate(rest):
            if index >= len(by_position):
                names = ", ".join(s.name for s in by_position) or "none"
                self.error("E0208", f"too many arguments: `{op}` takes its tensor input then at "
                           f"most {len(by_position)} attributes by position ({names})", span)
                ok = False
                break
            given[by_position[index].name] = (value, span)
        layer_name: str | None = None
        for key, value, span in keywords:
            if key.text == "name":
                if not opdef.has_params:
                    self.error("E0209", f"`{op}` has no parameters, so it is not a layer and "
                               "takes no `name`", key.span)
                    ok = False
                elif layer_name is not None:
                    self.error("E0207", f"`name` of `{op}` is given twice", key.span)
                    ok = False
                else:
                    checked = self._layer_name_value(value, span)
                    ok = ok and checked is not None
                    layer_name = checked
                continue
            spec = opdef.attr(key.text)
            if spec is None:
                problem = unknown_attr(opdef, key.text, ("name",) if opdef.has_params else ())
                self.error(problem.code, problem.message, key.span, problem.help)
                ok = False
            elif key.text in given:
                self.error("E0207", f"attribute `{key.text}` of `{op}` is given twice", key.span)
                ok = False
            else:
                given[key.text] = (value, span)
        attrs: dict[str, Any] = {}
        for spec in opdef.attrs:
            if spec.name in given:
                value, span = given[spec.name]
                coerced = self._coerce(f"`{op}`", spec, value, span)
                if coerced is _FAILED:
                    ok = False
                attrs[spec.name] = coerced
            elif spec.required:
                if ok:  # after another error in this call, a missing attribute is a cascade
                    problem = missing_attr(opdef, spec)
                    self.error(problem.code, problem.message, call.span, problem.help)
                ok = False
            else:
                attrs[spec.name] = spec.default
        if not ok or any(value is POISON for value, _ in tensors):
            return POISON
        inputs = [value for value, _ in tensors]
        assert all(isinstance(value, Tensor) for value in inputs)
        return self._emit(opdef, inputs, attrs, call.span, scope, layer_name)

    def _layer_name_value(self, value: Value, span: Span) -> str | None:
        if value is POISON:
            return None
        if not isinstance(value, str):
            self.error("E0210", f"`name` must be a string, got {describe(value)}", span,
                       'write it in double quotes: `name="fc1"`')
            return None
        if not is_layer_path(value):
            self.error("E0210", f'"{value}" is not a valid layer name', span,
                       _layer_name_help(value))
            return None
        return value

    def _coerce(self, owner: str, spec: AttrSpec, value: Value, span: Span) -> Any:
        """The attribute value in the form the IR keeps (`netc.ops.apply.coerce_attr`, the
        same check every graph builder makes), or _FAILED after reporting why not."""
        if value is POISON:
            return _FAILED
        try:
            # A dimension is named by a name, `arange(T)`, never by a string, `arange("T")`.
            strings = [v for v in (value if isinstance(value, tuple) else (value,))
                       if isinstance(v, str) and not isinstance(v, DimName)]
            if isinstance(value, Tensor) or (spec.kind in ("dim", "dim_list") and strings):
                raise AttrError("E0205", f"attribute `{spec.name}` of {owner} must be "
                                f"{_kind_words(spec)}, got {describe(value)}",
                                f"`{spec.name}`: {spec.help}" if spec.help else None)
            return coerce_attr(owner, spec, value, describe=describe)
        except AttrError as problem:
            self.error(problem.code, problem.message, span, problem.help)
            return _FAILED

    def _emit(self, opdef: OpDef, inputs: list[Tensor], given: dict[str, Any], span: Span,
              scope: _Scope, layer_name: str | None) -> Value:
        """Normalise, infer and add the node (and its parameters) for one op application."""
        op = opdef.name
        types = [t.type for t in inputs]
        layer = None
        if opdef.has_params:
            layer = scope.prefix + (layer_name or scope.naming.layer(op))
        try:
            applied = apply_op(opdef, Attrs(given), types)
        except DtypeError as problem:
            wanted = next(d for d in ("f32", "i64", "bool") if d in opdef.dtypes) \
                if opdef.dtypes else None
            help = f'netc converts no dtype silently: `cast(x, "{wanted}")` converts' \
                if wanted and "cast" in REGISTRY else None
            self._shape_error(str(problem), inputs, span, layer, "E0313", help)
            return POISON
        except ShapeError as problem:
            self._shape_error(str(problem), inputs, span, layer)
            return POISON
        attrs, output = applied.attrs, applied.type
        for shape, what in ((output.shape, "its result"),
                            *((s.shape, f"parameter `{s.name}`") for s in applied.params)):
            if _numel(shape) > MAX_ELEMENTS:
                self.error("E0507", f"`{op}` would make a tensor of more than 2^40 elements "
                           f"({what}: {_shape(shape)})", span)
                return POISON
        param_ids: list[str] = []
        if layer is not None:
            names = opdef.param_names(attrs)
            param_ids = [param_id(layer, name) for name in names]
            if not self._claim_layer(layer, param_ids, span):
                return POISON
            by_name = {spec.name: spec for spec in applied.params}
            dtype = types[0].dtype
            for name, node_id in zip(names, param_ids):
                self._add_node(Node(node_id, "param", (), Attrs(),
                                    TensorType(by_name[name].dtype or dtype, by_name[name].shape),
                                    span, layer))
            node_id = layer
            origin = f"`{layer}` at {span}"
        else:
            node_id = self._next_id(op)
            inside = f" in `{scope.prefix[:-1]}`" if scope.prefix else ""
            origin = f"`{op}`{inside} at {span}"
        # An op with several outputs is read at its output 0 here: the language (v1) has no
        # syntax for the others yet; the node still carries their types.
        self._add_node(Node(node_id, op, (*(t.node for t in inputs), *param_ids), attrs, output,
                            span, layer, extra_types=applied.extra_types))
        return Tensor(node_id, output, origin)

    def _builtin(self, op: str, inputs: list[Tensor], span: Span, scope: _Scope) -> Value:
        """An op the language itself uses for an operator (never a layer)."""
        return self._emit(REGISTRY[op], inputs, {}, span, scope, None)

    def _claim_layer(self, layer: str, param_ids: list[str], span: Span) -> bool:
        if layer in self.layer_spans:
            self.error("E0211", f"two layers are named `{layer}`", span,
                       "give one of them another `name=`",
                       [f"the first is at {self.layer_spans[layer]}"])
            return False
        for node_id in (layer, *param_ids):
            existing = self.node_ids.get(node_id)
            if existing is not None:
                what = f"the input `{node_id}`" if existing.op == "input" else f"`{node_id}`"
                self.error("E0211", f"layer name `{layer}` clashes with {what}", span,
                           "give the layer another `name=`")
                return False
        self.layer_spans[layer] = span
        return True

    def _shape_error(self, message: str, inputs: list[Tensor], span: Span,
                     layer: str | None, code: str = "E0304", help: str | None = None) -> None:
        notes = [f"in layer `{layer}`"] if layer else []
        if len(inputs) == 1:
            notes.append(f"the input {inputs[0].type} comes from {inputs[0].origin}")
        else:
            notes.extend(f"input {index}, {tensor.type}, comes from {tensor.origin}"
                         for index, tensor in enumerate(inputs, 1))
        self.error(code, message, span, help, notes=notes)

    # Blocks

    def _call_block(self, block: BlockInfo, call: ast.Call,
                    positional: list[tuple[Value, Span]],
                    keywords: list[tuple[ast.Identifier, Value, Span]], scope: _Scope) -> Value:
        name = block.name
        if name in self.block_stack:
            cycle = [*self.block_stack[self.block_stack.index(name):], name]
            self.error("E0121", f"block `{name}` calls itself: "
                       + " → ".join(f"`{b}`" for b in cycle), call.callee.span,
                       "blocks cannot be recursive; use `repeat` to apply a block several times")
            return POISON
        if len(self.block_stack) >= MAX_BLOCK_DEPTH:
            self.error("E0506", f"block calls nested more than {MAX_BLOCK_DEPTH} deep",
                       call.callee.span)
            return POISON
        tensor_params, attr_params = block.tensor_params, block.attr_params
        env: dict[str, Value] = {}
        ok = True
        given: dict[str, tuple[Value, Span]] = {}
        prefix_name: str | None = None
        by_name = {p.name.text: p for p in attr_params}
        tensor_names = [p.name.text for p in tensor_params]
        for key, value, span in keywords:
            if key.text == "name":
                checked = self._layer_name_value(value, span)
                ok = ok and checked is not None
                prefix_name = checked
            elif key.text in by_name:
                if key.text in given:
                    self.error("E0207", f"argument `{key.text}` of block `{name}` is given twice",
                               key.span)
                    ok = False
                given[key.text] = (value, span)
            elif key.text in tensor_names:
                self.error("E0219", f"tensor argument `{key.text}` of block `{name}` is given by "
                           "keyword; tensors are passed by position", key.span)
                ok = False
            else:
                help = did_you_mean(key.text, [*by_name, "name"])
                self.error("E0204", f"block `{name}` has no parameter `{key.text}`", key.span,
                           help)
                ok = False
        wanted = len(tensor_params)
        if len(positional) < wanted and ok:
            names = ", ".join(f"`{n}`" for n in tensor_names)
            self.error("E0203", f"block `{name}` needs "
                       f"{_count(wanted, 'tensor argument')} ({names}), got {len(positional)}",
                       call.span)
            ok = False
        for param, (value, span) in zip(tensor_params, positional):
            if value is not POISON and not isinstance(value, Tensor):
                self.error("E0203", f"argument `{param.name.text}` of block `{name}` must be a "
                           f"tensor, got {describe(value)}", span)
                ok = False
            env[param.name.text] = value
        for index, (value, span) in enumerate(positional[wanted:]):
            if index >= len(attr_params):
                self.error("E0208", f"too many arguments: block `{name}` takes "
                           f"{len(tensor_params) + len(attr_params)}", span)
                ok = False
                break
            if attr_params[index].name.text in given:
                self.error("E0207", f"argument `{attr_params[index].name.text}` of block "
                           f"`{name}` is given twice", span)
                ok = False
            given[attr_params[index].name.text] = (value, span)
        for param in attr_params:
            spec = AttrSpec(param.name.text, param.type.text)
            if param.name.text in given:
                value, span = given[param.name.text]
            elif param.default is not None:
                # Defaults are constant expressions, evaluated in an empty environment.
                value = self._eval(param.default, _Scope(block.source, "", {}))
                span = param.default.span
            else:
                if ok:  # after another error in this call, a missing argument is a cascade
                    self.error("E0206", f"block `{name}` needs the argument "
                               f"`{param.name.text}`", call.span, f"add `{param.name.text}=...`")
                ok = False
                continue
            coerced = self._coerce(f"block `{name}`", spec, value, span)
            if coerced is _FAILED:
                ok = False
            env[param.name.text] = coerced
        if not ok or any(v is POISON for v in env.values()):
            return POISON
        if prefix_name is None:
            index = scope.block_counts.get(name, 0)
            scope.block_counts[name] = index + 1
            prefix_name = f"{name}_{index}"
        inner = _Scope(block.source, f"{scope.prefix}{prefix_name}.", env)
        saved_calls = self.calls
        self.calls = ((f"{scope.prefix}{prefix_name}", name, call.span), *saved_calls)
        self.block_stack.append(name)
        self.expanded.add(name)
        try:
            body = block.definition.body
            self._run(body[:-1], inner)
            last = body[-1]
            assert isinstance(last, ast.ReturnStmt)
            result = self._eval(last.value, inner)
            if result is not POISON and not isinstance(result, Tensor):
                self.error("E0214", f"block `{name}` must return a tensor, got "
                           f"{describe(result)}", last.value.span)
                result = POISON
        finally:
            self.block_stack.pop()
            self.calls = saved_calls
        return result

    def _check_unexpanded_blocks(self) -> None:
        """Blocks the network never called still get their op names checked."""
        for info in self.all_blocks.values():
            if info.name in self.expanded:
                continue
            for statement, _ in walk_statements(info.definition.body):
                expressions: list[ast.Expr] = []
                if isinstance(statement, (ast.AssignStmt, ast.ReturnStmt)):
                    expressions.append(statement.value)
                elif isinstance(statement, ast.RepeatStmt):
                    expressions.append(statement.count)
                for expression in expressions:
                    for sub in ast.subexpressions(expression):
                        if (isinstance(sub, ast.Call) and sub.callee.text not in info.source.blocks
                                and sub.callee.text not in self.ops):
                            self._unknown_callee(sub, _Scope(info.source, "", {}))


def _layer_name_help(value: str) -> str:
    """What is wrong with a layer name that is not a PyTorch module path, in words."""
    if not value:
        return 'a name has at least one character: `name="fc1"`'
    if value.startswith(".") or value.endswith(".") or ".." in value:
        return "a layer path is segments joined by single dots, e.g. `layer1.0.conv1`"
    bad = next((c for c in value if not (c.isascii() and (c.isalnum() or c in "_."))), None)
    if bad is not None:
        return (f"`{bad}` cannot appear in a layer name: use letters, digits and `_`, "
                "with `.` between the segments of a path (`layer1.0.conv1`)")
    return (f"a segment is at most {MAX_NAME_LENGTH} characters and a whole path at most "
            f"{MAX_PATH_LENGTH}")


def _shape(shape: Sequence[object]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _clip_number(value: float) -> str:
    text = repr(value)
    return text if len(text) <= 24 else f"{text[:12]}…, {len(text)} digits"
