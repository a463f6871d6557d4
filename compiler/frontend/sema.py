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
of imported files, and a `train` section that is refused (E0122) until training lands.
"""

from __future__ import annotations

from pathlib import Path

from netc.diagnostics import CompileError, SourceMap
from netc.frontend.check import (
    check_network_names,
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
from netc.frontend.values import (
    Reporter,
)
from netc.ir import Graph

# The whole pipeline -----------------------------------------------------------------------


def compile_source(text: str, display: str, path: Path | None, directory: Path,
                   display_directory: str, network: str | None, sources: SourceMap) -> Graph:
    """Parse, load imports, check and expand; raises `CompileError` with every diagnostic."""
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
        if not reporter.diagnostics:
            chosen = choose_network(main.module, imported, network, reporter)
    if main is None or chosen is None or reporter.diagnostics:
        raise CompileError(reporter.in_source_order(sources.texts), sources)
    home = owners.get(id(chosen), main)
    graph = Expander(home, loader.all_blocks, reporter).network(chosen)
    if graph is None or reporter.diagnostics:
        raise CompileError(reporter.in_source_order(sources.texts), sources)
    return graph
