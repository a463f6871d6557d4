"""docs/ops.md's table of ops, written from the registry.

`python -m netc.ops.docs` rewrites the table in `docs/ops.md` (between the two marker lines)
from `REGISTRY`; `python -m netc.ops.docs --check` exits 1 when the file is stale. Each row
comes from one `OpDef`: its name, `summary`, attributes (from its `AttrSpec`s plus
`OpDoc.attrs`), `OpDoc.shapes`, `dtypes`, `OpDoc.params`, `kind` and `OpDoc.flops`. The prose around
the table stays hand-written.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from netc.ir import ALL_DTYPES, FLOAT_DTYPES
from netc.ops.registry import REGISTRY, REQUIRED, AttrSpec, OpDef

BEGIN = "<!-- The table below is written by `python -m netc.ops.docs` from the registry: "\
        "do not edit it by hand. -->"
END = "<!-- End of the generated table. -->"

KIND_ORDER = ("gemm", "conv", "pool", "reduction", "normalization", "elementwise", "layout",
              "view")
"""Rows are grouped by kind in this order, in registration order within a kind."""

HEADER = ("| op | computes | attributes (defaults) | shapes | dtypes | parameters (init) | kind "
          "| FLOPs |\n| --- | --- | --- | --- | --- | --- | --- | --- |")


def _dtypes(dtypes: tuple[str, ...]) -> str:
    if set(dtypes) == set(ALL_DTYPES):
        return "any"
    if set(dtypes) == set(FLOAT_DTYPES):
        return "float"
    return ", ".join(f"`{dtype}`" for dtype in dtypes)


def _value(value: Any) -> str:
    """An attribute value as `.net` source spells it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if value is None:
        return "unset"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _attribute(spec: AttrSpec) -> str:
    text = f"`{spec.name}`" if spec.default is REQUIRED else \
        f"`{spec.name}={_value(spec.default)}`"
    if spec.minimum is not None:
        text += f" ≥{_value(spec.minimum)}"
    if spec.kind == "padding":
        text += ' or `"same"`'
    if spec.choices:
        text += ": " + "/".join(f'`"{choice}"`' for choice in spec.choices)
    return text


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def row(opdef: OpDef) -> str:
    attrs = ", ".join(_attribute(spec) for spec in opdef.attrs)
    if opdef.doc.attrs:
        attrs = f"{attrs}; {opdef.doc.attrs}" if attrs else opdef.doc.attrs
    cells = (f"`{opdef.name}`", opdef.summary, attrs, opdef.doc.shapes, _dtypes(opdef.dtypes),
             opdef.doc.params, opdef.kind, opdef.doc.flops)
    return "| " + " | ".join(_cell(cell) for cell in cells) + " |"


def documented(opdefs: Iterable[OpDef]) -> list[OpDef]:
    """The ops a user can write, in table order."""
    public = [opdef for opdef in opdefs if not opdef.internal]
    order = {kind: k for k, kind in enumerate(KIND_ORDER)}
    return sorted(public, key=lambda opdef: order.get(opdef.kind, len(order)))


def table() -> str:
    rows = "\n".join(row(opdef) for opdef in documented(REGISTRY.values()))
    return f"{BEGIN}\n\n{HEADER}\n{rows}\n\n{END}"


def rewrite(text: str) -> str:
    """`text` (docs/ops.md) with its generated table replaced by today's."""
    try:
        before, rest = text.split(BEGIN, 1)
        _, after = rest.split(END, 1)
    except ValueError:
        raise ValueError("docs/ops.md lacks the generated table's marker lines") from None
    return before + table() + after


DOC = Path(__file__).resolve().parents[2] / "docs" / "ops.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m netc.ops.docs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if the file's table differs from the registry's")
    parser.add_argument("path", nargs="?", type=Path, default=DOC,
                        help="the ops page (default: the repository's docs/ops.md)")
    args = parser.parse_args(argv)
    text = args.path.read_text(encoding="utf-8")
    fresh = rewrite(text)
    if args.check:
        if fresh != text:
            print(f"{args.path}: the table is stale; run `python -m netc.ops.docs`",
                  file=sys.stderr)
            return 1
        return 0
    if fresh != text:
        args.path.write_text(fresh, encoding="utf-8")
        print(f"wrote {args.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
