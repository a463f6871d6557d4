"""Rewriting `extern __shared__ T name[];` so that each block gets its own dynamic shared memory
(see the header's top comment); a small C++ lexer finds the declarations outside comments
and strings."""

from __future__ import annotations

import re
from collections.abc import Sequence

# ----------------------------------------------------------------------------------
# Source rewriting for `extern __shared__ T name[];` (see the header's top comment)
# ----------------------------------------------------------------------------------

_NUMBER_TAIL = re.compile(r"(?:\b|^)\d[\w']*$")


def _blank_non_code(src: str) -> str:
    """Copy of ``src`` with comments, string/char literals and preprocessor lines
    replaced by spaces (newlines kept), so positions map 1:1 to the original."""
    out = list(src)
    n = len(src)
    i = 0
    line_start = True

    def blank(a: int, b: int) -> None:
        for k in range(a, b):
            if out[k] != "\n":
                out[k] = " "

    while i < n:
        c = src[i]
        if c == "\n":
            line_start = True
            i += 1
            continue
        if c in " \t\r\f\v":
            i += 1
            continue
        if line_start and c == "#":
            j = i
            while j < n:
                if src[j] == "\n" and src[j - 1] != "\\":
                    break
                j += 1
            blank(i, j)
            i = j
            continue
        line_start = False
        if src.startswith("//", i):
            j = src.find("\n", i)
            j = n if j < 0 else j
            blank(i, j)
            i = j
        elif src.startswith("/*", i):
            j = src.find("*/", i + 2)
            j = n if j < 0 else j + 2
            blank(i, j)
            i = j
        elif c == '"' and i > 0 and src[i - 1] == "R" and (i < 2 or not (src[i - 2].isalnum() and src[i - 2] not in "uUL8")):
            m = re.match(r'"([^()\\\s]{0,16})\(', src[i:])
            if m:
                close = ")" + m.group(1) + '"'
                j = src.find(close, i + m.end())
                j = n if j < 0 else j + len(close)
                blank(i - 1, j)
                i = j
            else:
                i += 1
        elif c == '"' or (c == "'" and not _NUMBER_TAIL.search(src[max(0, i - 40):i])):
            j = i + 1
            while j < n and src[j] != c and src[j] != "\n":
                j += 2 if src[j] == "\\" else 1
            j = min(j + 1, n)
            blank(i, j)
            i = j
        else:
            i += 1
    return "".join(out)


# A brace opens a function body when the text before it ends with the parameter list,
# possibly followed by qualifiers, attributes' names or a trailing return type.
_FUNC_HEADER = re.compile(r"\)[\s\w:<>*&,\[\]\->]*$")
_CLASS_HEADER = re.compile(r"\b(struct|class|union|enum)\b")


def _function_scope_flags(code: str, positions: Sequence[int]) -> list[bool]:
    """For each position: is it inside a function body?  ``code`` is blanked source."""
    wanted = sorted(set(positions))
    result: dict[int, bool] = {}
    stack: list[bool] = []  # True: this brace opened (or is inside) a function body
    stmt_start = 0
    k = 0
    for i, ch in enumerate(code):
        while k < len(wanted) and wanted[k] <= i:
            result[wanted[k]] = bool(stack and stack[-1])
            k += 1
        if ch == "{":
            if stack and stack[-1]:
                stack.append(True)
            else:
                header = code[stmt_start:i].strip()
                is_func = bool(_FUNC_HEADER.search(header)) or (
                    header != ""
                    and not _CLASS_HEADER.search(header)
                    and not re.search(r"\bnamespace\b|^extern$|=$", header)
                    and bool(re.search(r"\b(const|noexcept|override|final|mutable)$", header))
                )
                stack.append(is_func)
            stmt_start = i + 1
        elif ch == "}":
            if stack:
                stack.pop()
            stmt_start = i + 1
        elif ch == ";":
            stmt_start = i + 1
    for pos in wanted[k:]:
        result[pos] = bool(stack and stack[-1])
    return [result[p] for p in positions]


_ALIGN = r"(?:__align__\s*\(\s*[^()]*\)\s*)"
_EXTERN_SHARED = re.compile(
    r"\bextern\s+__shared__\s+" + _ALIGN + r"?"
    r"(?P<type>[A-Za-z_][\w:<>,\s*]*?)\s*" + _ALIGN + r"?"
    r"\b(?P<name>[A-Za-z_]\w*)\s*\[\s*\]\s*;"
)


def rewrite_dynamic_shared(source: str) -> tuple[str, list[str]]:
    """Rewrite ``extern __shared__ T name[];`` for the simulator (same line count).

    Returns the new source and the names declared at namespace scope (those become
    thread_local pointers, which the driver must not treat as static shared memory).
    """
    code = _blank_non_code(source)
    matches = list(_EXTERN_SHARED.finditer(code))
    if not matches:
        return source, []
    in_func = _function_scope_flags(code, [m.start() for m in matches])
    pieces: list[str] = []
    last = 0
    namespace_names: list[str] = []
    for m, inside in zip(matches, in_func):
        ctype = " ".join(m.group("type").split())
        name = m.group("name")
        newlines = source.count("\n", m.start(), m.end())
        decl = f"{ctype}* {name} = ::cudasim::dynamic_shared<{ctype}>();"
        if not inside:
            decl = "static thread_local " + decl
            namespace_names.append(name)
        pieces.append(source[last:m.start()])
        pieces.append(decl + "\n" * newlines)
        last = m.end()
    pieces.append(source[last:])
    return "".join(pieces), namespace_names
