"""Semantic analysis: parsed `.net` files to one verified `ir.Graph`.

Three phases (`load`, `check`, `expand`, one module each; `values` holds what they share);
each reports every independent error it finds and the next runs only if the
earlier ones found none (a missing file or a misplaced `return` would make later messages
noise):

1. Loading: the main file and its imports, transitively, relative to the importing file.
   Cycles, unreadable files and duplicate block names across files are errors.
2. Structure: per definition, what the grammar allows but the language does not (`return`
   outside a block, `input` inside `repeat`, a network without outputs, bad block parameters).
3. Expansion of the chosen network: statements run in order over an environment of values;
   `repeat` unrolls, block calls expand inline under a layer-name prefix, and every op call is
   bound against its registry entry (`AttrSpec`s), normalised, shape-checked (`infer`) and
   given its parameters (`params`). The result is a flat SSA graph in topological order.

Error recovery: an expression whose error was reported evaluates to `POISON`; anything built
from a poisoned value is poisoned silently, so one mistake gives one diagnostic. Diagnostics
are de-duplicated, so an error inside a block called eight times is reported once.

Naming (the spec's "Layers and parameters"): a layer is an op with parameters. Its name is
`name="..."` or `<op>_<k>`, k counting the unnamed layers of that op in the current naming
scope; a block call opens a scope whose names get the prefix `<block>_<j>.` (or the call's
`name=`, a PyTorch module path such as `layer1.0`). IR node ids: inputs by name, layers by
full layer name, parameters `<layer>.<param>`, free parameters (`param`) by prefix and name,
every other node `<op>#<k>` (a `#` cannot occur in a user name, so ids never clash).

Version 2 adds `param`, `LAYER.PARAM` (a parameter of an earlier layer of the same scope),
indexing (lowered to `slice` and `select`), `/` and unary `-` on tensors (`div`, `neg`),
named dimensions anywhere (a dimension's name is a value in attribute expressions), networks
of imported files, and `train` sections (`netc.frontend.train`: `compile_training` checks the
chosen network's section and builds its training graph; compiling the network alone ignores
the sections, which must still name a network the file sees).
"""

from __future__ import annotations

from pathlib import Path

from netc.diagnostics import CompileError, SourceMap
from netc.frontend.check import (
    check_network_names,
    check_train_networks,
    choose_network,
)
from netc.frontend.expand import (
    Expander,
)
from netc.frontend.load import (
    Loader,
    SourceFile,
)
from netc.frontend.parser import normalize_newlines
from netc.frontend.train import TrainSpec, train_spec
from netc.frontend.values import (
    Reporter,
)
from netc.ir import Graph

# The whole pipeline -----------------------------------------------------------------------


def compile_source(text: str, display: str, path: Path | None, directory: Path,
                   display_directory: str, network: str | None, sources: SourceMap) -> Graph:
    """Parse, load imports, check and expand; raises `CompileError` with every diagnostic."""
    graph = _compile(text, display, path, directory, display_directory, network, sources, False)
    assert isinstance(graph, Graph)
    return graph


def compile_training(text: str, display: str, path: Path | None, directory: Path,
                     display_directory: str, network: str | None,
                     sources: SourceMap) -> TrainSpec:
    """The `train` section of the chosen network, checked against it (`netc.frontend.train`);
    E0126 when the main file has none for it."""
    spec = _compile(text, display, path, directory, display_directory, network, sources, True)
    assert isinstance(spec, TrainSpec)
    return spec


def _compile(text: str, display: str, path: Path | None, directory: Path,
             display_directory: str, network: str | None, sources: SourceMap,
             training: bool) -> Graph | TrainSpec:
    reporter = Reporter()
    sources.add(display, normalize_newlines(text))
    loader = Loader(reporter, sources)
    main = loader.load(text, display, path, directory, display_directory)
    chosen = None
    owners: dict[int, SourceFile] = {}
    if main is not None and not reporter.diagnostics:
        # The networks of the files it imports directly, each with its file (v2).
        owners = {id(n): source for source in dict.fromkeys(main.imports)
                  for n in source.module.networks}
        imported = [n for source in dict.fromkeys(main.imports) for n in source.module.networks]
        check_network_names(main.module, imported, reporter)
        check_train_networks(main.module, imported, reporter)
        if not reporter.diagnostics:
            chosen = choose_network(main.module, imported, network, reporter)
    if main is None or chosen is None or reporter.diagnostics:
        raise CompileError(reporter.in_source_order(sources.texts), sources)
    home = owners.get(id(chosen), main)
    expander = Expander(home, loader.all_blocks, reporter)
    if not training:
        graph = expander.network(chosen)
        if graph is None or reporter.diagnostics:
            raise CompileError(reporter.in_source_order(sources.texts), sources)
        return graph
    section = next((t for t in main.module.trains if t.network.text == chosen.name.text), None)
    if section is None:
        reporter.error("E0126", f"`{main.module.file}` has no train section for network "
                       f"`{chosen.name.text}`", chosen.name.span,
                       f"add `train {chosen.name.text} {{ input label: i64[N]  loss = ...  "
                       "optimizer = ... }` (see the language's \"Training\" section)")
        raise CompileError(reporter.in_source_order(sources.texts), sources)
    graph = expander.train(chosen, section)
    spec = train_spec(section, graph, reporter) if graph is not None else None
    if spec is None or reporter.diagnostics:
        raise CompileError(reporter.in_source_order(sources.texts), sources)
    return spec
