"""The front end: `.net` source to a checked, verified `ir.Graph`.

    graph = load_file("examples/resnet18.net")            # the only or last network
    graph = load_file("models.net", network="small")
    graph = load_string(text, filename="mlp.net")
    spec = load_training("examples/lenet5.net")           # its `train` section (TrainSpec)

Every error in the user's input raises `CompileError` holding all the diagnostics found and a
`SourceMap` of every file read, so `error.render()` quotes the offending lines. Anything else
escaping from here is a bug in netc.
"""

from __future__ import annotations

from pathlib import Path

from netc.diagnostics import CompileError, SourceMap
from netc.frontend import ast
from netc.frontend.load import read_source
from netc.frontend.parser import normalize_newlines, parse_module
from netc.frontend.sema import compile_source, compile_training
from netc.frontend.train import TrainSpec
from netc.frontend.values import Reporter
from netc.ir import Graph

__all__ = ["CompileError", "TrainSpec", "list_networks", "load_file", "load_string",
           "load_training", "load_training_string", "parse"]


def load_file(path: str | Path, network: str | None = None) -> Graph:
    """Compile the network `network` (default: the only or the last one) of a `.net` file."""
    return compile_source(*_file(path), network, SourceMap())


def load_string(text: str, filename: str = "<string>", network: str | None = None,
                base_dir: Path | None = None) -> Graph:
    """Compile `.net` source held in a string; imports are relative to `base_dir` (default:
    the folder of `filename` if it names one, else the current directory)."""
    return compile_source(*_text(text, filename, base_dir), network, SourceMap())


def load_training(path: str | Path, network: str | None = None) -> TrainSpec:
    """The `train` section of network `network` (default: as `load_file` chooses) of a `.net`
    file: its training graph, optimizer, schedule, frozen layers and clipping."""
    return compile_training(*_file(path), network, SourceMap())


def load_training_string(text: str, filename: str = "<string>", network: str | None = None,
                         base_dir: Path | None = None) -> TrainSpec:
    """`load_training` for source held in a string, imports as for `load_string`."""
    return compile_training(*_text(text, filename, base_dir), network, SourceMap())


def _file(path: str | Path) -> tuple[str, str, Path, Path, str]:
    """A file's text, how it is shown, its path, the folder its imports are read from and
    how that folder is shown: the first arguments of `compile_source`."""
    path = Path(path)
    text = _read(path, str(path), SourceMap())
    return text, str(path), path, path.resolve().parent, str(path.parent)


def _text(text: str, filename: str,
          base_dir: Path | None) -> tuple[str, str, None, Path, str]:
    """`_file`'s arguments for source held in a string."""
    named = Path(filename)
    if base_dir is not None:
        directory, shown = Path(base_dir), str(base_dir)
    elif filename.startswith("<"):
        directory, shown = Path.cwd(), ""
    else:
        directory, shown = named.parent, str(named.parent)
    return text, filename, None, directory.resolve(), shown


def parse(text: str, filename: str) -> ast.Module:
    """The syntax tree of one file, without following imports or checking meaning."""
    try:
        return parse_module(text, filename)
    except CompileError as error:
        sources = SourceMap()
        sources.add(filename, normalize_newlines(text))
        raise CompileError(error.diagnostics, sources) from None


def list_networks(path: str | Path) -> list[str]:
    """The names of the networks a `.net` file defines, in order (imports are not read)."""
    display = str(path)
    sources = SourceMap()
    text = _read(Path(path), display, sources)
    try:
        module = parse_module(text, display)
    except CompileError as error:
        raise CompileError(error.diagnostics, sources) from None
    return [network.name.text for network in module.networks]


def _read(path: Path, display: str, sources: SourceMap) -> str:
    reporter = Reporter()
    text = read_source(path, display, None, reporter, sources)
    if text is None:
        raise CompileError(reporter.diagnostics, sources)
    return text
