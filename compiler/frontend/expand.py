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
    MAX_REPEAT,
    MAX_STATEMENTS,
)
from netc.frontend.load import (
    BlockInfo,
    SourceFile,
)
from netc.frontend.values import (
    _NAME,
    ARITHMETIC_OPS,
    POISON,
    Reporter,
    Tensor,
    Value,
    _Abort,
    _count,
    _kind_words,
    _numel,
    describe,
    user_callable,
)
from netc.ir import DTYPES, Attrs, Graph, Node, TensorType
from netc.ops import REGISTRY, AttrSpec, OpDef, ShapeError
from netc.ops.apply import (
    AttrError,
    Naming,
    apply_op,
    coerce_attr,
    missing_attr,
    param_id,
    unknown_attr,
)
from netc.ops.apply import is_int as _is_int
from netc.ops.apply import is_number as _is_number
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

    def _tensor_type(self, written: ast.TensorTypeExpr) -> TensorType | None:
        ok = True
        dtype = written.dtype.text
        if dtype not in DTYPES:
            self.error("E0301", f"unknown dtype `{dtype}`", written.dtype.span,
                       did_you_mean(dtype, DTYPES) or "the dtypes are f32, f16 and bf16")
            ok = False
        shape: list[int | str] = []
        for index, dim in enumerate(written.dims):
            if isinstance(dim, ast.NamedDim):
                if index > 0:
                    self.error("E0303", f"the named dimension `{dim.name}` must come first: in "
                               "version 1 only the batch dimension may be named", dim.span,
                               "give this dimension a size")
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
            raise TypeError(f"unknown expression {expr!r}")
        finally:
            self.depth -= 1

    def _lookup(self, ref: ast.NameRef, scope: _Scope) -> Value:
        if ref.name in scope.env:
            return scope.env[ref.name]
        help = did_you_mean(ref.name, scope.env)
        if help is None and (ref.name in REGISTRY or ref.name in scope.source.blocks):
            help = f"`{ref.name}` is an op: call it, `{ref.name}(x)`, or pipe into it, " \
                   f"`x |> {ref.name}`"
        self.error("E0202", f"undefined name `{ref.name}`", ref.span, help)
        scope.env[ref.name] = POISON  # one report per name, not one per use
        return POISON

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
            constant = self._constant(-1.0, value, expr.span)
            return self._builtin("mul", [value, constant], expr.span, scope)
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
                help = ("multiply by the reciprocal instead: `x * 0.5`" if op == "/"
                        else "`//` divides ints in attribute arithmetic")
                self.error("E0216", f"`{op}` is not defined on tensors", expr.op_span, help)
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
        if not _NAME.fullmatch(value) or len(value) > MAX_NAME_LENGTH:
            self.error("E0210", f'"{value}" is not a valid layer name', span,
                       "use letters, digits and `_`, not starting with a digit, at most "
                       f"{MAX_NAME_LENGTH} characters")
            return None
        return value

    def _coerce(self, owner: str, spec: AttrSpec, value: Value, span: Span) -> Any:
        """The attribute value in the form the IR keeps (`netc.ops.apply.coerce_attr`, the
        same check every graph builder makes), or _FAILED after reporting why not."""
        if value is POISON:
            return _FAILED
        try:
            if isinstance(value, Tensor):
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
                                    TensorType(dtype, by_name[name].shape), span, layer))
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
                     layer: str | None) -> None:
        notes = [f"in layer `{layer}`"] if layer else []
        if len(inputs) == 1:
            notes.append(f"the input {inputs[0].type} comes from {inputs[0].origin}")
        else:
            notes.extend(f"input {index}, {tensor.type}, comes from {tensor.origin}"
                         for index, tensor in enumerate(inputs, 1))
        self.error("E0304", message, span, notes=notes)

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


def _shape(shape: Sequence[object]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _clip_number(value: float) -> str:
    text = repr(value)
    return text if len(text) <= 24 else f"{text[:12]}…, {len(text)} digits"
