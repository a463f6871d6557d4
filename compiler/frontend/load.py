"""Semantic analysis, phase 1: loading the main `.net` file and its imports, transitively,
relative to the importing file; cycles, unreadable files and duplicate block names across files
are errors."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

from netc.diagnostics import CompileError, SourceMap, Span, did_you_mean
from netc.frontend import ast
from netc.frontend.check import check_structure
from netc.frontend.limits import (
    MAX_IMPORT_DEPTH,
    MAX_SOURCE_BYTES,
)
from netc.frontend.parser import normalize_newlines, parse_module
from netc.frontend.values import (
    Reporter,
)

# Phase 1: loading files -------------------------------------------------------------------


@dataclass
class BlockInfo:
    definition: ast.BlockDef
    source: SourceFile

    @property
    def name(self) -> str:
        return self.definition.name.text

    @functools.cached_property
    def tensor_params(self) -> tuple[ast.TensorParam, ...]:
        return tuple(p for p in self.definition.params if isinstance(p, ast.TensorParam))

    @functools.cached_property
    def attr_params(self) -> tuple[ast.AttrParam, ...]:
        return tuple(p for p in self.definition.params if isinstance(p, ast.AttrParam))


@dataclass(eq=False)
class SourceFile:
    module: ast.Module
    directory: Path
    """Where its imports are looked up."""
    display_directory: str
    """How that folder is shown in file names of diagnostics."""
    imports: list[SourceFile] = field(default_factory=list)
    blocks: dict[str, BlockInfo] = field(default_factory=dict)
    """The blocks visible in this file: its own and those of the files it imports."""

    @property
    def name(self) -> str:
        return self.module.file


def read_source(path: Path, display: str, span: Span | None, reporter: Reporter,
                sources: SourceMap, imported: bool = False) -> str | None:
    """The text of a `.net` file, or None after reporting why it cannot be had."""
    try:
        if path.exists() and not path.is_dir() and not path.is_file():
            # A FIFO would block the open forever; a device is no source file either.
            reporter.error("E0101", f"cannot read `{display}`: it is not a regular file", span)
            return None
        with path.open("rb") as stream:
            # Read one byte past the limit, never the whole file: it may be /dev/zero.
            data = stream.read(MAX_SOURCE_BYTES + 1)
    except FileNotFoundError:
        if imported:
            _report_missing_import(path, display, span, reporter)
        else:
            reporter.error("E0101", f"cannot read `{display}`: no such file", span)
        return None
    except IsADirectoryError:
        reporter.error("E0101", f"cannot read `{display}`: it is a directory", span)
        return None
    except OSError as error:
        reporter.error("E0101", f"cannot read `{display}`: {error.strerror or error}", span)
        return None
    if len(data) > MAX_SOURCE_BYTES:
        reporter.error("E0508", f"`{display}` is larger than {MAX_SOURCE_BYTES:,} bytes; "
                       f".net files are at most {MAX_SOURCE_BYTES >> 10} KiB", span)
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        sources.add(display, normalize_newlines(data.decode("utf-8", errors="replace")))
        start = error.start
        line = data.count(b"\n", 0, start) + 1
        column = len(data[data.rfind(b"\n", 0, start) + 1:start].decode("utf-8", "replace")) + 1
        reporter.error(
            "E0001", f"`{display}` is not UTF-8 text: the byte 0x{data[start]:02X} cannot be "
            "decoded", Span(display, line, column, line, column + 1),
            "save the file as UTF-8 (and ASCII outside comments and strings)")
        return None
    text = normalize_newlines(text)
    sources.add(display, text)
    return text


def _report_missing_import(path: Path, display: str, span: Span | None,
                           reporter: Reporter) -> None:
    help = None
    try:
        nearby = [p.name for p in path.parent.iterdir() if p.suffix == ".net"]
        help = did_you_mean(path.name, nearby)
    except OSError:
        pass
    reporter.error("E0102", f"cannot find the imported file `{display}`", span,
                   help or "the path is relative to the file that imports it")


VERSION_1_OPS = frozenset((
    "dense", "conv2d", "maxpool2d", "avgpool2d", "global_avgpool", "batchnorm", "layernorm",
    "relu", "sigmoid", "tanh", "gelu", "silu", "leaky_relu", "softmax", "log_softmax",
    "flatten", "reshape", "transpose", "concat", "matmul", "dropout", "add", "sub", "mul",
))
"""The standard ops of language version 1, whose names a block may not take (E0119). A block
may take the name of an op that version 2 added (`stack`, `attention`, `mean`, ...): version 1
programs that named a block so stay valid, as the spec promises, and the block shadows the op
in every file that sees the block (calls resolve to blocks first)."""

class Loader:
    """Reads the main file and its imports (phase 1), then checks structure (phase 2)."""

    def __init__(self, reporter: Reporter, sources: SourceMap):
        self.reporter = reporter
        self.sources = sources
        self.by_path: dict[Path, SourceFile] = {}
        self.order: list[SourceFile] = []
        """Every file, imports before their importers (so duplicates point at the later one)."""
        self.all_blocks: dict[str, BlockInfo] = {}

    def load(self, text: str, display: str, path: Path | None, directory: Path,
             display_directory: str) -> SourceFile | None:
        main = self._parse(text, display, directory, display_directory)
        if main is None:
            return None
        chain: tuple[Path, ...] = ()
        if path is not None:
            resolved = path.resolve()
            self.by_path[resolved] = main
            chain = (resolved,)
        self._load_imports(main, chain, {p: display for p in chain})
        self.order.append(main)
        self._collect_blocks()
        for source in self.order:
            check_structure(source.module, self.reporter)
        return main

    def _parse(self, text: str, display: str, directory: Path,
               display_directory: str) -> SourceFile | None:
        try:
            module = parse_module(text, display)
        except CompileError as error:
            for diagnostic in error.diagnostics:
                self.reporter.add(diagnostic)
            return None
        return SourceFile(module, directory, display_directory)

    def _load_imports(self, importer: SourceFile, chain: tuple[Path, ...],
                      shown: dict[Path, str]) -> None:
        for statement in importer.module.imports:
            target = importer.directory / statement.path
            display = os.path.normpath(os.path.join(importer.display_directory, statement.path))
            try:
                resolved = target.resolve()
            except (OSError, RuntimeError):
                resolved = target.absolute()
            if resolved in chain:
                cycle = [shown[p] for p in chain[chain.index(resolved):]] + [display]
                self.reporter.error("E0103", "import cycle: " + " → ".join(f"`{c}`" for c in cycle),
                                    statement.span, "blocks used by both files can move to a "
                                    "third file that both import")
                continue
            if resolved in self.by_path:
                importer.imports.append(self.by_path[resolved])
                continue
            if len(chain) >= MAX_IMPORT_DEPTH:
                self.reporter.error("E0506", f"imports nested more than {MAX_IMPORT_DEPTH} deep",
                                    statement.span)
                continue
            text = read_source(target, display, statement.span, self.reporter, self.sources,
                               imported=True)
            if text is None:
                continue
            source = self._parse(text, display, resolved.parent, os.path.dirname(display))
            if source is None:
                continue
            self.by_path[resolved] = source
            importer.imports.append(source)
            self._load_imports(source, (*chain, resolved), {**shown, resolved: display})
            self.order.append(source)

    def _collect_blocks(self) -> None:
        for source in self.order:
            for block in source.module.blocks:
                name = block.name.text
                earlier = self.all_blocks.get(name)
                if earlier is not None:
                    self.reporter.error(
                        "E0104", f"block `{name}` is defined twice", block.name.span,
                        "rename one of them",
                        [f"the other definition is at {earlier.definition.name.span}"])
                    continue
                if name in VERSION_1_OPS:
                    self.reporter.error("E0119", f"block `{name}` has the name of a standard op",
                                        block.name.span, "rename the block")
                    continue
                info = BlockInfo(block, source)
                self.all_blocks[name] = info
        for source in self.order:
            for block in source.module.blocks:
                own = self.all_blocks.get(block.name.text)
                if own is not None and own.definition is block:
                    source.blocks[block.name.text] = own
            for imported in source.imports:
                for block in imported.module.blocks:
                    found = self.all_blocks.get(block.name.text)
                    if found is not None and found.definition is block:
                        source.blocks.setdefault(block.name.text, found)
