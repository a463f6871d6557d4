"""Text to syntax tree: a lexical scan, the Lark LALR parser, and a transformer to `ast` nodes.

Three steps, each turning bad input into diagnostics rather than exceptions:

1. `scan` walks the text once with a small regular-expression lexer and reports what Lark
   would report badly or not at all: control and non-ASCII characters (with their code points),
   unterminated strings, names over 64 characters, integers too large to be sizes, and
   brackets nested deeper than `MAX_NESTING` (checked here, before anything recurses).
2. Lark parses with LALR(1) (an iterative parser). Its errors become diagnostics that name the
   expected tokens in words (`expected `)` or `,``), never Lark's terminal names.
3. `_ToAst`, a non-recursive transformer, builds the frozen `ast` nodes with spans. A grammar
   rule without a handler is refused when the parser is built, and again at run time by
   `__default__`; errors raised in a handler reach the caller unwrapped.

The LALR tables are built from the grammar in every process and never cached on disk: Lark's
cache is a pickle, and a pickle read from a directory another user can write runs their code
(issue 9). Building the tables takes about 40 ms (reading Lark's pickle took 5 ms); a whole
`netc check examples/resnet18.net` takes about 400 ms either way, within the noise.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from importlib import resources
from typing import Any

from lark import Lark, Token, Transformer_NonRecursive, v_args
from lark.exceptions import (
    UnexpectedCharacters,
    UnexpectedEOF,
    UnexpectedInput,
    UnexpectedToken,
    VisitError,
)

from netc.diagnostics import CompileError, Diagnostic, Span
from netc.frontend import ast
from netc.frontend.limits import (
    INT_LIMIT,
    MAX_DIAGNOSTICS,
    MAX_NAME_LENGTH,
    MAX_NEGATIONS,
    MAX_NESTING,
    MAX_SOURCE_BYTES,
)

RESERVED_WORDS = frozenset(
    ("network", "block", "input", "output", "return", "repeat", "import", "true", "false",
     "param", "train"))

_LARK_OPTIONS: dict[str, Any] = {
    "parser": "lalr",
    "lexer": "basic",
    "propagate_positions": True,
    "maybe_placeholders": True,
}


# Building the parser ----------------------------------------------------------------------


def _grammar_text() -> str:
    return resources.files("netc.grammar").joinpath("netc.lark").read_text(encoding="utf-8")


def _build_lark() -> Lark:
    return Lark(_grammar_text(), **_LARK_OPTIONS)


@functools.lru_cache(maxsize=1)
def lark_parser() -> Lark:
    parser = _build_lark()
    missing = sorted(name for name in rule_names(parser) if not hasattr(_ToAst, name))
    if missing:
        raise RuntimeError(f"grammar rules without a handler in _ToAst: {', '.join(missing)}")
    return parser


def rule_names(parser: Lark) -> set[str]:
    """The names the parse tree can contain: every alias, and every rule not inlined away."""
    names: set[str] = set()
    for rule in parser.rules:
        name = rule.alias or rule.origin.name
        if name.startswith("_"):
            continue
        if rule.alias or not rule.options.expand1:
            names.add(name)
            continue
        # A `?rule` is inlined only when it has a single child; count what its expansion keeps.
        kept = [s for s in rule.expansion if not (s.is_term and getattr(s, "filter_out", False))]
        if len(kept) > 1 or any(not s.is_term and s.name.startswith("_") for s in kept):
            names.add(name)
    return names


# Step 1: the lexical scan -----------------------------------------------------------------

_SCAN = re.compile(r"""
    (?P<comment>\#[^\n]*)
  | (?P<string>"[^"\n]*")
  | (?P<open_string>"[^"\n]*)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<number>[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)
  | (?P<space>[ \t\r\n]+)
  | (?P<open>[(\[{])
  | (?P<close>[)\]}])
  | (?P<other>.)
""", re.VERBOSE | re.DOTALL)

# Control characters other than tab and newline, and the bidirectional overrides that can make
# source text read differently from how it parses ("Trojan Source").
_FORBIDDEN = re.compile("[\x00-\x08\x0b-\x1f\x7f\u202a-\u202e\u2066-\u2069]")

# ASCII look-alikes that NFKC normalisation does not map (it already handles full-width forms).
_LOOK_ALIKES = {
    "а": "a", "е": "e", "о": "o", "р": "p", "с": "c", "у": "y", "х": "x", "і": "i", "ј": "j",
    "ѕ": "s", "ԁ": "d", "һ": "h", "ո": "n", "А": "A", "В": "B", "Е": "E", "К": "K", "М": "M",
    "Н": "H", "О": "O", "Р": "P", "С": "C", "Т": "T", "Х": "X", "ο": "o", "α": "a", "ν": "v",
    "ι": "i", "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K", "Μ": "M",
    "Ν": "N", "Ο": "O", "Ρ": "P", "Τ": "T", "Υ": "Y", "Χ": "X", "ı": "i",
    "\u2212": "-", "\u2013": "-", "\u2014": "-", "\u00d7": "*", "\u201c": '"', "\u201d": '"',
    "\u2018": "'", "\u2019": "'", "\u00a0": " ", "\u200b": "",
}


def position(text: str, offset: int) -> tuple[int, int]:
    """(line, column), both from 1, of a character offset."""
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return line, column


def _span_at(file: str, text: str, start: int, end: int) -> Span:
    line, column = position(text, start)
    end_line, end_column = position(text, max(end, start + 1))
    return Span(file, line, column, end_line, end_column)


_CONTROL_NAMES = ("NUL", "SOH", "STX", "ETX", "EOT", "ENQ", "ACK", "BEL", "BS", "TAB", "LF", "VT",
                  "FF", "CR", "SO", "SI", "DLE", "DC1", "DC2", "DC3", "DC4", "NAK", "SYN", "ETB",
                  "CAN", "EM", "SUB", "ESC", "FS", "GS", "RS", "US")


def describe_char(char: str) -> str:
    """`а` (U+0430 CYRILLIC SMALL LETTER A); invisible characters are shown by code point only."""
    code_point = ord(char)
    name = unicodedata.name(char, "") or (
        _CONTROL_NAMES[code_point] if code_point < 32 else "DEL" if code_point == 127 else "")
    code = f"U+{code_point:04X}{' ' + name if name else ''}"
    printable = char.isprintable() and not char.isspace()
    return f"`{char}` ({code})" if printable else code


def _ascii_look_alike(char: str) -> str | None:
    if char in _LOOK_ALIKES:
        return _LOOK_ALIKES[char]
    folded = unicodedata.normalize("NFKC", char)
    return folded if folded.isascii() and folded != char else None


def _non_ascii(file: str, text: str, start: int) -> Diagnostic:
    char = text[start]
    span = _span_at(file, text, start, start + 1)
    # The whole word around the character, to say which name it spoils.
    left, right = start, start + 1
    while left > 0 and (text[left - 1].isalnum() or text[left - 1] == "_"):
        left -= 1
    while right < len(text) and (text[right].isalnum() or text[right] == "_"):
        right += 1
    word = text[left:right]
    look_alike = _ascii_look_alike(char)
    if len(word) > 1 and (char.isalnum() or char == "_"):
        message = (f"name `{word}` contains the non-ASCII character {describe_char(char)}; "
                   "names are ASCII")
    else:
        message = (f"non-ASCII character {describe_char(char)} outside a comment or string; "
                   ".net source is ASCII")
    help = None
    if look_alike is not None:
        shown = "a space" if look_alike == " " else (
            "nothing (delete it)" if look_alike == "" else f"the ASCII `{look_alike}`")
        help = f"it looks like {shown}; type that instead"
    return Diagnostic("E0002", message, span, help)


def _number_problem(file: str, text: str, match: re.Match[str]) -> Diagnostic | None:
    literal = match.group()
    if not literal.isdigit():
        # float() accepts any length, but 1e999 is inf: no attribute wants that.
        if float(literal) == float("inf"):
            return Diagnostic("E0501", f"the number {_clip(literal)} is too large",
                              _span_at(file, text, match.start(), match.end()))
        return None
    # Decide on the digit count first: int() refuses strings over 4300 digits with a ValueError.
    digits = literal.lstrip("0")
    if len(digits) > 16 or (digits and int(digits) > INT_LIMIT):
        return Diagnostic("E0501", f"the integer {_clip(literal)} is too large; integers are at "
                          f"most {INT_LIMIT:,} (2^40)",
                          _span_at(file, text, match.start(), match.end()))
    return None


def _is_word_char(char: str) -> bool:
    return char.isascii() and (char.isalnum() or char == "_")


def _joins_path(text: str, offset: int) -> bool:
    """Whether the `.` at `offset` joins two segments of a layer path (`wte.weight`), or is
    part of `...`: the only places a `.` outside a number may stand."""
    if text.startswith("...", offset) or text.startswith("...", max(offset - 2, 0)) or \
            text.startswith("...", max(offset - 1, 0)):
        return True
    return 0 < offset < len(text) - 1 and _is_word_char(text[offset - 1]) and \
        _is_word_char(text[offset + 1])


def _stray_dot(file: str, text: str, offset: int) -> Diagnostic:
    before = text[offset - 1] if offset else ""
    after = text[offset + 1] if offset + 1 < len(text) else ""
    if (after.isdigit() and not _is_word_char(before)) or \
            (before.isdigit() and not after.isalnum()):
        help = "numbers need digits on both sides of the point, e.g. `0.5`"
    else:
        help = "a layer path is written without spaces around its dots: `wte.weight`"
    return Diagnostic("E0004", "unexpected character `.`", _span_at(file, text, offset, offset + 1),
                      help)


def _clip(text: str, width: int = 24) -> str:
    return text if len(text) <= width else f"{text[:width]}… ({len(text)} characters)"


def scan(text: str, file: str) -> list[Diagnostic]:
    """Lexical problems Lark would miss or report poorly; an empty list if there are none."""
    problems: list[Diagnostic] = []
    for match in _FORBIDDEN.finditer(text):
        char = match.group()
        problems.append(Diagnostic(
            "E0003", f"the control character {describe_char(char)} may not appear in .net source",
            _span_at(file, text, match.start(), match.end()),
            "remove it; only tabs and line breaks are allowed besides printable ASCII"))
        if len(problems) >= MAX_DIAGNOSTICS:
            return problems
    if problems:
        return problems
    depth = 0
    nesting_reported = False
    for match in _SCAN.finditer(text):
        kind = match.lastgroup
        problem: Diagnostic | None = None
        if kind == "name" and len(match.group()) > MAX_NAME_LENGTH:
            problem = Diagnostic(
                "E0503", f"the name `{_clip(match.group())}` is {len(match.group())} characters "
                f"long; names are at most {MAX_NAME_LENGTH}",
                _span_at(file, text, match.start(), match.end()), "choose a shorter name")
        elif kind == "number":
            problem = _number_problem(file, text, match)
        elif kind == "open_string":
            problem = Diagnostic("E0007", "unterminated string",
                                 _span_at(file, text, match.start(), match.end()),
                                 'close it with `"` on the same line')
        elif kind == "open":
            depth += 1
            if depth > MAX_NESTING and not nesting_reported:
                nesting_reported = True
                problem = Diagnostic(
                    "E0502", f"brackets nested more than {MAX_NESTING} deep",
                    _span_at(file, text, match.start(), match.end()),
                    "split the expression into several statements")
        elif kind == "close":
            depth = max(depth - 1, 0)
        elif kind == "other" and not match.group().isascii():
            problem = _non_ascii(file, text, match.start())
        elif kind == "other" and match.group() == "." and not _joins_path(text, match.start()):
            problem = _stray_dot(file, text, match.start())
        if problem is not None:
            problems.append(problem)
            if len(problems) >= MAX_DIAGNOSTICS:
                break
    return problems


# Step 2: Lark's errors in words -----------------------------------------------------------

_TERMINAL_WORDS = {"NAME": "a name", "INT": "an integer", "FLOAT": "a number",
                   "STRING": "a string", "$END": "end of file"}
_GROUPS = (
    ("an expression", {"NAME", "INT", "FLOAT", "STRING", "TRUE", "FALSE", "LSQB", "LPAR",
                       "MINUS"}),
    ("a statement", {"NAME", "INPUT", "PARAM", "OUTPUT", "REPEAT", "RETURN"}),
    ("an operator", {"PLUS", "MINUS", "STAR", "SLASH", "DSLASH", "_PIPE"}),
)
_CHAR_HELP = {
    "|": "the pipe operator is `|>`",
    "'": 'strings use double quotes: "same"',
    ".": "numbers need digits on both sides of the point, e.g. `0.5`",
    ";": "statements end at the end of the expression; remove the `;`",
    "%": "there is no `%`; use `//` for integer division",
}


def _terminal_word(parser: Lark, name: str) -> str:
    if name in _TERMINAL_WORDS:
        return _TERMINAL_WORDS[name]
    for terminal in parser.terminals:
        if terminal.name == name and terminal.pattern.type == "str":
            return f"`{terminal.pattern.value}`"
    return f"`{name.lower()}`"  # not reached for this grammar; still never a raw terminal name


def _expected_words(parser: Lark, accepted: set[str]) -> str:
    remaining = set(accepted)
    groups: list[str] = []
    for word, members in _GROUPS:
        if members <= accepted:
            groups.append(word)
            remaining -= members
    words = sorted(_terminal_word(parser, name) for name in remaining if name != "$END")
    words += groups
    if "$END" in remaining:
        words.append("end of file")
    if not words:
        return "something else"
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _found_word(token: Token) -> str:
    if token.type == "$END":
        return "end of file"
    if token.type == "STRING":
        return f"the string {_clip(str(token))}"
    return f"`{_clip(str(token))}`"


def syntax_diagnostic(error: UnexpectedInput, text: str, file: str) -> Diagnostic:
    parser = lark_parser()
    if isinstance(error, UnexpectedCharacters):
        offset = error.pos_in_stream or 0
        char = text[offset] if offset < len(text) else ""
        return Diagnostic("E0004", f"unexpected character `{char}`",
                          _span_at(file, text, offset, offset + 1), _CHAR_HELP.get(char))
    if isinstance(error, UnexpectedToken):
        token = error.token
        accepted = set(error.accepts or error.expected or ())
        if token.type == "$END":
            line = getattr(token, "end_line", None) or 1
            column = getattr(token, "end_column", None) or 1
            span = Span(file, line, column, line, column + 1)
            return Diagnostic("E0006", "unexpected end of file; expected "
                              f"{_expected_words(parser, accepted)}", span)
        span = Span(file, token.line or 1, token.column or 1,
                    token.end_line or token.line or 1,
                    token.end_column or (token.column or 1) + 1)
        if str(token) in RESERVED_WORDS and "NAME" in accepted:
            return _reserved(str(token), span)
        before, before_start = _word_before(text, token.start_pos or 0)
        if token.type == "EQUAL" and before in RESERVED_WORDS:
            # `input = relu(x)`: the parser took `input` as the keyword, then choked on `=`.
            return _reserved(before, _span_at(file, text, before_start,
                                              before_start + len(before)))
        help = None
        if accepted == {"EQUAL"} and token.type == "LPAR":
            help = "a statement binds its result to a name: `y = op(...)`"
        elif token.type == "EQUAL" and "EQUAL" not in accepted:
            help = "`=` binds a name in a statement, or gives an attribute inside a call"
        elif token.type in ("PLUS", "MINUS", "STAR", "SLASH", "DSLASH") and "_PIPE" in accepted:
            help = "pipes bind loosest: put the pipe in parentheses, `(x |> f) + y`"
        message = f"expected {_expected_words(parser, accepted)}, found {_found_word(token)}"
        return Diagnostic("E0005", message, span, help)
    if isinstance(error, UnexpectedEOF):
        line, column = position(text, len(text))
        return Diagnostic("E0006", "unexpected end of file",
                          Span(file, line, column, line, column + 1))
    line, column = position(text, 0)
    return Diagnostic("E0005", "syntax error", Span(file, line, column, line, column + 1))


def _reserved(word: str, span: Span) -> Diagnostic:
    return Diagnostic("E0008", f"`{word}` is a reserved word and cannot be used as a name", span,
                      f"choose another name, e.g. `{word}_`")


def _word_before(text: str, offset: int) -> tuple[str, int]:
    """The identifier just before `offset`, skipping spaces, and where it starts."""
    end = offset
    while end > 0 and text[end - 1] in " \t\n":
        end -= 1
    start = end
    while start > 0 and (text[start - 1].isalnum() or text[start - 1] == "_"):
        start -= 1
    return text[start:end], start


# Step 3: the tree to AST nodes ------------------------------------------------------------


def _fail(code: str, message: str, span: Span, help: str | None = None) -> CompileError:
    return CompileError([Diagnostic(code, message, span, help)])


@v_args(meta=True)
class _ToAst(Transformer_NonRecursive):
    """One handler per rule name or alias of grammar/netc.lark."""

    def __init__(self, file: str):
        super().__init__()
        self.file = file

    def __default__(self, data: Any, children: Any, meta: Any) -> Any:
        raise NotImplementedError(f"no handler for grammar rule {data!r}")

    def _span(self, meta: Any) -> Span:
        return Span(self.file, meta.line, meta.column, meta.end_line, meta.end_column)

    def _token_span(self, token: Token) -> Span:
        return Span(self.file, token.line or 1, token.column or 1,
                    token.end_line or token.line or 1, token.end_column or 1)

    def _ident(self, token: Token) -> ast.Identifier:
        return ast.Identifier(str(token), self._token_span(token))

    @staticmethod
    def _join(first: Span, last: Span) -> Span:
        return Span(first.file, first.line, first.column, last.end_line, last.end_column)

    # Files and definitions

    def start(self, meta: Any, children: list[Any]) -> ast.Module:
        return ast.Module(self.file, tuple(children))

    def import_stmt(self, meta: Any, children: list[Any]) -> ast.ImportStmt:
        (path,) = children
        return ast.ImportStmt(str(path)[1:-1], self._token_span(path))

    def network_def(self, meta: Any, children: list[Any]) -> ast.NetworkDef:
        name, *body = children
        return ast.NetworkDef(self._ident(name), tuple(body), self._span(meta))

    def block_def(self, meta: Any, children: list[Any]) -> ast.BlockDef:
        name, *rest = children
        params = tuple(c for c in rest if isinstance(c, (ast.TensorParam, ast.AttrParam)))
        body = tuple(c for c in rest
                     if c is not None and not isinstance(c, (ast.TensorParam, ast.AttrParam)))
        return ast.BlockDef(self._ident(name), params, body, self._span(meta))

    def train_def(self, meta: Any, children: list[Any]) -> ast.TrainDef:
        name, *body = children
        return ast.TrainDef(self._ident(name), tuple(body), self._span(meta))

    def freeze_stmt(self, meta: Any, children: list[Any]) -> ast.FreezeStmt:
        keyword, *names = children
        if str(keyword) != "freeze":
            # `frieze conv1`: a name then another, which only `freeze` may start.
            found = names[0].name if isinstance(names[0], ast.NameRef) else names[0].text
            raise _fail("E0005", f"expected `=`, found `{found}`", names[0].span,
                        "a statement binds its result to a name: `y = op(...)`")
        return ast.FreezeStmt(tuple(names), self._span(meta))

    def tensor_param(self, meta: Any, children: list[Any]) -> ast.TensorParam:
        (name,) = children
        return ast.TensorParam(self._ident(name), self._span(meta))

    def attr_param(self, meta: Any, children: list[Any]) -> ast.AttrParam:
        name, type_name, default = children
        return ast.AttrParam(self._ident(name), self._ident(type_name), default, self._span(meta))

    # Statements

    def input_stmt(self, meta: Any, children: list[Any]) -> ast.InputStmt:
        name, tensor_type = children
        return ast.InputStmt(self._ident(name), tensor_type, self._span(meta))

    def param_stmt(self, meta: Any, children: list[Any]) -> ast.ParamStmt:
        name, tensor_type, init = children
        return ast.ParamStmt(self._ident(name), tensor_type, init, self._span(meta))

    def assign_stmt(self, meta: Any, children: list[Any]) -> ast.AssignStmt:
        target, value = children
        return ast.AssignStmt(self._ident(target), value, self._span(meta))

    def output_stmt(self, meta: Any, children: list[Any]) -> ast.OutputStmt:
        name, value = children
        return ast.OutputStmt(self._ident(name), value, self._span(meta))

    def repeat_stmt(self, meta: Any, children: list[Any]) -> ast.RepeatStmt:
        count, *body = children
        return ast.RepeatStmt(count, tuple(body), self._span(meta))

    def return_stmt(self, meta: Any, children: list[Any]) -> ast.ReturnStmt:
        (value,) = children
        return ast.ReturnStmt(value, self._span(meta))

    def tensor_type(self, meta: Any, children: list[Any]) -> ast.TensorTypeExpr:
        dtype, *dims = children
        return ast.TensorTypeExpr(self._ident(dtype), tuple(d for d in dims if d is not None),
                                  self._span(meta))

    def size_dim(self, meta: Any, children: list[Any]) -> ast.SizeDim:
        (size,) = children
        return ast.SizeDim(int(size), self._token_span(size))

    def named_dim(self, meta: Any, children: list[Any]) -> ast.NamedDim:
        (name,) = children
        return ast.NamedDim(str(name), self._token_span(name))

    # Expressions

    def pipe(self, meta: Any, children: list[Any]) -> ast.Pipe:
        head, *stages = children
        return ast.Pipe(head, tuple(stages), self._span(meta))

    def bare_stage(self, meta: Any, children: list[Any]) -> ast.Call:
        (name,) = children
        callee = self._ident(name)
        return ast.Call(callee, (), callee.span)

    def call(self, meta: Any, children: list[Any]) -> ast.Call:
        name, *args = children
        return ast.Call(self._ident(name), tuple(a for a in args if a is not None),
                        self._span(meta))

    def keyword(self, meta: Any, children: list[Any]) -> ast.Keyword:
        name, value = children
        return ast.Keyword(self._ident(name), value, self._span(meta))

    def _chain(self, children: list[Any]) -> ast.Expr:
        # [operand, OP, operand, OP, operand, ...] to a left-leaning tree, with a loop.
        left: ast.Expr = children[0]
        for index in range(1, len(children), 2):
            operator, right = children[index], children[index + 1]
            left = ast.BinaryOp(str(operator), left, right, self._join(left.span, right.span),
                                self._token_span(operator))
        return left

    def sum(self, meta: Any, children: list[Any]) -> ast.Expr:
        return self._chain(children)

    def product(self, meta: Any, children: list[Any]) -> ast.Expr:
        return self._chain(children)

    def negate(self, meta: Any, children: list[Any]) -> ast.Negate:
        (operand,) = children
        chain, inner = 1, operand
        while isinstance(inner, ast.Negate) and chain <= MAX_NEGATIONS:
            chain, inner = chain + 1, inner.operand
        if chain > MAX_NEGATIONS:
            raise _fail("E0502", f"more than {MAX_NEGATIONS} minus signs in a row",
                        self._span(meta), "remove the pairs that cancel out")
        return ast.Negate(operand, self._span(meta))

    def name(self, meta: Any, children: list[Any]) -> ast.NameRef:
        (token,) = children
        return ast.NameRef(str(token), self._token_span(token))

    def path(self, meta: Any, children: list[Any]) -> ast.PathRef:
        # A FLOAT segment (`3.0` of `features.3.0`) is two segments.
        # (`scan` made sure no space stands next to a dot.)
        segments: list[str] = []
        for token in children:
            text = str(token)
            if token.type == "FLOAT" and not re.fullmatch(r"[0-9]+(\.[0-9]+)?", text):
                raise _fail("E0009", f"`{text}` is not a segment of a layer path",
                            self._token_span(token),
                            "segments are letters, digits and `_`, joined by `.`")
            segments.extend(text.split("."))
        return ast.PathRef(tuple(segments), self._span(meta))

    def index(self, meta: Any, children: list[Any]) -> ast.Index:
        value, *items = children
        return ast.Index(value, tuple(items), self._span(meta))

    def index_at(self, meta: Any, children: list[Any]) -> ast.IndexAt:
        (value,) = children
        return ast.IndexAt(value, self._span(meta))

    def index_slice(self, meta: Any, children: list[Any]) -> ast.IndexSlice:
        start, stop, step = children
        return ast.IndexSlice(start, stop, step, self._span(meta))

    def index_ellipsis(self, meta: Any, children: list[Any]) -> ast.IndexEllipsis:
        return ast.IndexEllipsis(self._span(meta))

    def int(self, meta: Any, children: list[Any]) -> ast.IntLiteral:
        (token,) = children
        return ast.IntLiteral(int(token), self._token_span(token))  # `scan` bounded its length

    def float(self, meta: Any, children: list[Any]) -> ast.FloatLiteral:
        (token,) = children
        return ast.FloatLiteral(float(token), self._token_span(token))

    def string(self, meta: Any, children: list[Any]) -> ast.StringLiteral:
        (token,) = children
        return ast.StringLiteral(str(token)[1:-1], self._token_span(token))

    def true(self, meta: Any, children: list[Any]) -> ast.BoolLiteral:
        return ast.BoolLiteral(True, self._span(meta))

    def false(self, meta: Any, children: list[Any]) -> ast.BoolLiteral:
        return ast.BoolLiteral(False, self._span(meta))

    def list(self, meta: Any, children: list[Any]) -> ast.ListLiteral:
        return ast.ListLiteral(tuple(c for c in children if c is not None), self._span(meta))


# Entry point ------------------------------------------------------------------------------


def normalize_newlines(text: str) -> str:
    """CRLF and lone CR become LF, and a leading byte-order mark goes, so that Lark's line
    numbers and `SourceMap.line` agree."""
    if text.startswith("\ufeff"):
        text = text[1:]
    return text.replace("\r\n", "\n").replace("\r", "\n")


def parse_module(text: str, file: str) -> ast.Module:
    """Parse one file's text; raises `CompileError` (without a SourceMap: callers add it)."""
    text = normalize_newlines(text)
    if len(text) > MAX_SOURCE_BYTES:
        raise _fail("E0508", f"`{file}` is {len(text):,} characters long; .net files are at most "
                    f"{MAX_SOURCE_BYTES:,}", Span(file, 1, 1, 1, 2))
    problems = scan(text, file)
    if problems:
        raise CompileError(problems)
    try:
        tree = lark_parser().parse(text)
    except UnexpectedInput as error:
        raise CompileError([syntax_diagnostic(error, text, file)]) from None
    try:
        module = _ToAst(file).transform(tree)
    except VisitError as error:
        raise error.orig_exc from None
    assert isinstance(module, ast.Module)
    return module
