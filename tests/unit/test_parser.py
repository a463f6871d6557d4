"""The parser: grammar coverage, the syntax tree and its spans, lexical checks, parse errors."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from netc.diagnostics import CompileError
from netc.frontend import ast, parse
from netc.frontend import parser as parser_module
from netc.frontend.limits import MAX_NESTING
from tests.examples import LENET5

pytestmark = pytest.mark.unit

LENET = LENET5

BLOCKS = """\
block basic(x, filters: int) {
    y = conv2d(x, filters, kernel=3, padding=1, bias=false) |> batchnorm |> relu
    y = conv2d(y, filters, kernel=3, padding=1, bias=false) |> batchnorm
    return relu(y + x)
}

block down(x, filters: int, scale: float = 0.5) {
    y = conv2d(x, filters, kernel=3, stride=2, padding=1, bias=false) |> batchnorm |> relu
    return y
}
"""


def expression(source: str) -> ast.Expr:
    module = parse(f"network n {{\n    y = {source}\n    output y\n}}\n", "e.net")
    statement = module.networks[0].body[0]
    assert isinstance(statement, ast.AssignStmt)
    return statement.value


def first_error(source: str) -> tuple[str, int, int, str]:
    with pytest.raises(CompileError) as caught:
        parse(source, "bad.net")
    diagnostic = caught.value.diagnostics[0]
    assert diagnostic.span is not None
    return diagnostic.code, diagnostic.span.line, diagnostic.span.column, diagnostic.message


# The grammar and the transformer --------------------------------------------------------


def test_every_grammar_rule_has_a_handler() -> None:
    lark = parser_module.lark_parser()
    names = parser_module.rule_names(lark)
    assert {"call", "pipe", "sum", "product", "negate", "block_def", "tensor_type"} <= names
    missing = [name for name in names if not hasattr(parser_module._ToAst, name)]
    assert missing == []


def test_a_rule_without_a_handler_raises() -> None:
    transformer = parser_module._ToAst("x.net")
    with pytest.raises(NotImplementedError, match="no handler for grammar rule 'mystery'"):
        transformer.__default__("mystery", [], None)


def test_lenet_parses_to_the_expected_tree() -> None:
    module = parse(LENET, "lenet.net")
    assert module.file == "lenet.net"
    (network,) = module.networks
    assert network.name.text == "lenet5"
    kinds = [type(s).__name__ for s in network.body]
    assert kinds == ["InputStmt", "AssignStmt", "AssignStmt", "AssignStmt", "AssignStmt",
                     "AssignStmt", "OutputStmt"]
    image = network.body[0]
    assert isinstance(image, ast.InputStmt)
    assert image.type.dtype.text == "f32"
    assert image.type.dims == (ast.NamedDim("N", image.type.dims[0].span),
                               *(ast.SizeDim(v, d.span) for v, d in
                                 zip((1, 28, 28), image.type.dims[1:])))
    first = network.body[1]
    assert isinstance(first, ast.AssignStmt) and isinstance(first.value, ast.Pipe)
    head = first.value.head
    assert isinstance(head, ast.Call) and head.callee.text == "conv2d"
    assert [a.name.text for a in head.args if isinstance(a, ast.Keyword)] == [
        "filters", "kernel", "padding"]
    assert [s.callee.text for s in first.value.stages] == ["relu", "maxpool2d"]
    output = network.body[-1]
    assert isinstance(output, ast.OutputStmt) and output.name.text == "logits"


def test_blocks_and_parameters() -> None:
    module = parse(BLOCKS, "blocks.net")
    basic, down = module.blocks
    assert [type(p).__name__ for p in basic.params] == ["TensorParam", "AttrParam"]
    scale = down.params[2]
    assert isinstance(scale, ast.AttrParam)
    assert (scale.name.text, scale.type.text) == ("scale", "float")
    assert isinstance(scale.default, ast.FloatLiteral) and scale.default.value == 0.5
    assert isinstance(basic.body[-1], ast.ReturnStmt)


def test_imports_and_items_keep_source_order() -> None:
    module = parse('import "a.net"\nimport "sub/b.net"\n' + BLOCKS + LENET, "m.net")
    assert [i.path for i in module.imports] == ["a.net", "sub/b.net"]
    assert [type(i).__name__ for i in module.items] == [
        "ImportStmt", "ImportStmt", "BlockDef", "BlockDef", "NetworkDef"]


def test_empty_file_and_comment_only_file_parse() -> None:
    assert parse("", "e.net").items == ()
    assert parse("# nothing here\n\n", "e.net").items == ()


# Expressions: precedence, associativity, pipes -----------------------------------------


def test_pipes_bind_loosest() -> None:
    tree = expression("x + y |> relu")
    assert isinstance(tree, ast.Pipe)
    assert isinstance(tree.head, ast.BinaryOp) and tree.head.op == "+"


def test_pipe_chain_is_flat() -> None:
    tree = expression("x |> relu |> dense(4) |> softmax(axis=-1)")
    assert isinstance(tree, ast.Pipe)
    assert [s.callee.text for s in tree.stages] == ["relu", "dense", "softmax"]
    assert tree.stages[0].args == ()
    assert isinstance(tree.stages[1].args[0], ast.IntLiteral)


def test_product_binds_tighter_than_sum_and_chains_lean_left() -> None:
    tree = expression("a - b - c * d")
    assert isinstance(tree, ast.BinaryOp) and tree.op == "-"
    assert isinstance(tree.left, ast.BinaryOp) and tree.left.op == "-"
    assert isinstance(tree.right, ast.BinaryOp) and tree.right.op == "*"


def test_unary_minus_and_floor_division() -> None:
    tree = expression("-k // 2")
    assert isinstance(tree, ast.BinaryOp) and tree.op == "//"
    assert isinstance(tree.left, ast.Negate)


def test_parentheses_group() -> None:
    tree = expression("(k - 1) // 2")
    assert isinstance(tree, ast.BinaryOp) and tree.op == "//"
    assert isinstance(tree.left, ast.BinaryOp) and tree.left.op == "-"


def test_literals() -> None:
    tree = expression('f(1, 2.5, 1e-5, true, false, "same", [1, -1], [])')
    assert isinstance(tree, ast.Call)
    values = [type(a).__name__ for a in tree.args]
    assert values == ["IntLiteral", "FloatLiteral", "FloatLiteral", "BoolLiteral", "BoolLiteral",
                      "StringLiteral", "ListLiteral", "ListLiteral"]
    assert isinstance(tree.args[2], ast.FloatLiteral) and tree.args[2].value == 1e-5
    assert isinstance(tree.args[5], ast.StringLiteral) and tree.args[5].value == "same"


def test_trailing_commas_are_allowed() -> None:
    module = parse("block b(x, k: int,) {\n return dense(x, k, bias=false,)\n}\n"
                   "network n {\n input x: f32[N, 4,]\n output y = reshape(x, [2, 2,])\n}\n",
                   "t.net")
    assert len(module.blocks[0].params) == 2


def test_newlines_separate_nothing() -> None:
    one_line = parse("network n { input x: f32[N, 4] y = relu(x) output y }", "a.net")
    assert [type(s).__name__ for s in one_line.networks[0].body] == [
        "InputStmt", "AssignStmt", "OutputStmt"]


# Spans ----------------------------------------------------------------------------------


def test_call_span_covers_the_whole_call_and_the_callee_its_name() -> None:
    module = parse(LENET, "lenet.net")
    statement = module.networks[0].body[2]
    assert isinstance(statement, ast.AssignStmt) and isinstance(statement.value, ast.Pipe)
    call = statement.value.head
    assert isinstance(call, ast.Call)
    assert (call.span.line, call.span.column, call.span.end_column) == (6, 9, 40)
    assert (call.callee.span.column, call.callee.span.end_column) == (9, 15)
    bare = statement.value.stages[0]
    assert (bare.span.column, bare.span.end_column) == (44, 48)


def test_binary_span_and_operator_span() -> None:
    tree = expression("a + bb")
    assert isinstance(tree, ast.BinaryOp)
    assert (tree.span.column, tree.span.end_column) == (9, 15)
    assert (tree.op_span.column, tree.op_span.end_column) == (11, 12)


def test_crlf_gives_the_same_positions_as_lf() -> None:
    crlf = LENET.replace("\n", "\r\n")
    lf_call = parse(LENET, "a.net").networks[0].body[5]
    crlf_call = parse(crlf, "a.net").networks[0].body[5]
    assert lf_call == crlf_call


def test_a_byte_order_mark_is_ignored() -> None:
    assert parse("\ufeff" + LENET, "a.net") == parse(LENET, "a.net")


def test_tabs_count_as_one_column() -> None:
    assert first_error("network n {\n\ty = dense(x 10)\n}\n")[:3] == ("E0005", 2, 14)
    module = parse("network n {\n\tinput x: f32[N, 4]\n\toutput x\n}\n", "t.net")
    statement = module.networks[0].body[0]
    assert isinstance(statement, ast.InputStmt)
    assert statement.name.span.column == 8


# Lexical checks -------------------------------------------------------------------------


def test_non_ascii_letter_in_a_name_names_the_character() -> None:
    code, line, column, message = first_error("network n {\n    input \u0445: f32[N, 4]\n}\n")
    assert (code, line, column) == ("E0002", 2, 11)
    assert "U+0445 CYRILLIC SMALL LETTER HA" in message and "ASCII" in message


def test_look_alike_gets_an_ascii_suggestion() -> None:
    with pytest.raises(CompileError) as caught:
        parse("network n {\n    y = r\u0435lu(x)\n}\n", "t.net")
    diagnostic = caught.value.diagnostics[0]
    assert "`r\u0435lu`" in diagnostic.message
    assert diagnostic.help is not None and "`e`" in diagnostic.help


def test_non_ascii_in_comments_and_strings_is_fine() -> None:
    parse('# café ✓\nimport "modèle.net"\n', "t.net")


@pytest.mark.parametrize("char, name", [("\x00", "NUL"), ("\x1b", "ESC"), ("\x7f", "DEL"),
                                        ("\u202e", "RIGHT-TO-LEFT OVERRIDE")])
def test_control_characters_are_reported_by_code_point(char: str, name: str) -> None:
    code, _, _, message = first_error(f"network n {{ {char} }}")
    assert code == "E0003" and name in message


def test_every_non_ascii_character_is_reported() -> None:
    with pytest.raises(CompileError) as caught:
        parse("network n {\n  \u0430 = 1\n  \u0431 = 2\n}\n", "t.net")
    assert [d.span.line for d in caught.value.diagnostics if d.span] == [2, 3]


def test_name_length_limit() -> None:
    parse(f"network {'n' * 64} {{ }}", "t.net")
    code, _, _, message = first_error(f"network {'n' * 65} {{ }}")
    assert code == "E0503" and "65 characters" in message


def test_huge_integer_is_a_limit_diagnostic_not_a_value_error() -> None:
    code, _, column, _ = first_error("network n {\n y = dense(x, " + "9" * 100_000 + ")\n}\n")
    assert (code, column) == ("E0501", 15)


def test_integer_limit_boundary() -> None:
    parse("network n {\n y = dense(x, 1099511627776)\n}\n", "t.net")
    code, _, _, _ = first_error("network n {\n y = dense(x, 1099511627777)\n}\n")
    assert code == "E0501"


def test_float_overflow() -> None:
    assert first_error("network n {\n y = f(x, 1e400)\n}\n")[0] == "E0501"


def test_unterminated_string() -> None:
    assert first_error('import "a.net\n')[:3] == ("E0007", 1, 8)


def test_deep_nesting_is_refused_before_anything_recurses() -> None:
    deep = "(" * 10_000 + "x" + ")" * 10_000
    started = time.perf_counter()
    code, _, column, message = first_error(f"network n {{\n y = {deep}\n}}\n")
    assert time.perf_counter() - started < 1.0
    # The network's `{` is the first level, so the parenthesis past the limit is number 32.
    assert code == "E0502" and column == 6 + MAX_NESTING - 1 and "nested" in message


def test_nesting_at_the_limit_parses() -> None:
    depth = MAX_NESTING - 2  # the network's braces count too
    expression("(" * depth + "x" + ")" * depth)


def test_long_minus_chain_is_refused() -> None:
    assert first_error("network n {\n y = " + "-" * 10_000 + "x\n}\n")[0] == "E0502"


def test_long_pipe_chain_parses_without_recursion() -> None:
    tree = expression("x" + " |> relu" * 3_000)
    assert isinstance(tree, ast.Pipe) and len(tree.stages) == 3_000


def test_long_sum_parses_without_recursion() -> None:
    tree = expression("x" + " + x" * 3_000)
    depth = 0
    while isinstance(tree, ast.BinaryOp):
        tree, depth = tree.left, depth + 1
    assert depth == 3_000


def test_file_size_limit() -> None:
    code, _, _, _ = first_error("#" * (300 << 10))
    assert code == "E0508"


# Parse errors in words ------------------------------------------------------------------

BROKEN = [
    "network n {\n y = dense(x 10)\n}\n",
    "network n {\n dense(x, 10)\n}\n",
    "network {\n}\n",
    "network n {\n input x: f32 N\n}\n",
    "network n {\n input x: f32[N, -1]\n}\n",
    "network n {\n y = relu(x))\n}\n",
    "network n {\n y = x |> 3\n}\n",
    "network n {\n y = x |> relu + 1\n}\n",
    "network n {\n y = dense(x, units=)\n}\n",
    "block b(x, k = 3) {\n return x\n}\n",
    "input x: f32[N, 4]\n",
    "network n {\n y == x\n}\n",
    "network n {\n y = relu(x\n",
    "network n {\n y = [1, 2\n}\n",
    "network n {\n repeat { }\n}\n",
    "network n { output }",
    "block b(x) { return }",
    "network n {\n y = $x\n}\n",
    "network n {\n y = x | relu\n}\n",
    "network n {\n y = x;\n}\n",
    "network n {\n y = .5\n}\n",
    "network n {\n y = 'same'\n}\n",
    "network n {\n input output: f32[N]\n}\n",
    "network n {\n repeat = 3\n}\n",
    "import x.net\n",
]


@pytest.mark.parametrize("source", BROKEN)
def test_syntax_errors_are_in_words(source: str) -> None:
    with pytest.raises(CompileError) as caught:
        parse(source, "bad.net")
    (diagnostic,) = caught.value.diagnostics
    assert diagnostic.code.startswith("E00")
    text = diagnostic.message + (diagnostic.help or "")
    # Lark's terminal names (RPAR, _PIPE, $END, __ANON_0) never reach the user.
    assert not re.search(r"\b_*[A-Z][A-Z_0-9]{2,}\b|\$END|__ANON", text), text
    rendered = caught.value.render()
    assert rendered.startswith("bad.net:") and "^" in rendered


def test_missing_comma_says_what_was_expected() -> None:
    code, line, column, message = first_error("network n {\n y = dense(x 10)\n}\n")
    assert (code, line, column) == ("E0005", 2, 14)
    assert "`)`" in message and "`,`" in message and "found `10`" in message


def test_call_as_statement_gets_a_hint() -> None:
    with pytest.raises(CompileError) as caught:
        parse("network n {\n dense(x, 10)\n}\n", "t.net")
    assert "y = op(...)" in (caught.value.diagnostics[0].help or "")


def test_unexpected_end_of_file_points_after_the_last_token() -> None:
    code, line, column, message = first_error("network n {\n output y = relu(x)")
    assert (code, line, column) == ("E0006", 2, 20)
    assert "end of file" in message and "`}`" in message


def test_reserved_words() -> None:
    for source, word in [("network n {\n input = relu(x)\n}\n", "input"),
                         ("block output(x) { return x }", "output"),
                         ("network n { input true: f32[N] }", "true")]:
        code, _, _, message = first_error(source)
        assert code == "E0008" and f"`{word}` is a reserved word" in message


def test_keywords_are_reserved_whatever_the_parser_state() -> None:
    # The basic lexer never reads `input` as a name, even where only a name could follow.
    assert first_error("network n {\n input input: f32[N]\n}\n")[0] == "E0008"


# No grammar cache -------------------------------------------------------------------------


def test_building_the_parser_reads_and_writes_no_cache(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # Lark's cache is a pickle; netc builds the tables instead (tests/hostile has the
    # planted-pickle case end to end).
    monkeypatch.setenv("NETC_CACHE_DIR", str(tmp_path / "netc"))
    monkeypatch.delenv("NETC_NO_CACHE", raising=False)
    parser_module.lark_parser.cache_clear()
    try:
        assert parse(LENET, "a.net").networks[0].name.text == "lenet5"
        assert not (tmp_path / "netc").exists()
    finally:
        parser_module.lark_parser.cache_clear()
