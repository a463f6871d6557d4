"""Semantic analysis, phase 2: what the grammar allows but the language does not (`return`
outside a block, `input` inside `repeat`, a network without outputs, bad block parameters), and
choosing the network to compile."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from netc.diagnostics import Span, did_you_mean
from netc.frontend import ast
from netc.frontend.values import (
    ATTR_TYPES,
    Reporter,
)
from netc.ir import DTYPES

# Phase 2: structure -----------------------------------------------------------------------


def walk_statements(body: Sequence[ast.Statement]) -> Iterable[tuple[ast.Statement, int]]:
    """Every statement with its `repeat` nesting depth (bounded by the scan's MAX_NESTING)."""
    for statement in body:
        yield statement, 0
        if isinstance(statement, ast.RepeatStmt):
            for inner, depth in walk_statements(statement.body):
                yield inner, depth + 1


def check_structure(module: ast.Module, reporter: Reporter) -> None:
    first_definition = next((i for i, item in enumerate(module.items)
                             if not isinstance(item, ast.ImportStmt)), len(module.items))
    for item in module.items[first_definition:]:
        if isinstance(item, ast.ImportStmt):
            reporter.error("E0108", "imports must come before blocks and networks", item.span,
                           "move this line to the top of the file")
    networks: dict[str, ast.NetworkDef] = {}
    for network in module.networks:
        earlier = networks.setdefault(network.name.text, network)
        if earlier is not network:
            reporter.error("E0105", f"network `{network.name.text}` is defined twice",
                           network.name.span, "rename one of them",
                           [f"the other definition is at {earlier.name.span}"])
        _check_network(network, reporter)
    for block in module.blocks:
        _check_block(block, reporter)
    sections: dict[str, ast.TrainDef] = {}
    for train in module.trains:
        earlier = sections.setdefault(train.network.text, train)
        if earlier is not train:
            reporter.error("E0126", f"network `{train.network.text}` has two train sections",
                           train.network.span, "merge them into one",
                           [f"the other is at {earlier.network.span}"])
        _check_train(train, reporter)


TRAIN_SETTINGS = ("loss", "optimizer", "clip_grad_norm")
"""What a train section assigns: `loss = ...`, `optimizer = ...`, `clip_grad_norm = ...`."""


def _check_train(train: ast.TrainDef, reporter: Reporter) -> None:
    """A train section holds `input`s, one `loss`, one `optimizer`, at most one
    `clip_grad_norm` and `freeze` lines, nothing else."""
    given: dict[str, ast.AssignStmt] = {}
    for statement in train.body:
        if isinstance(statement, (ast.InputStmt, ast.FreezeStmt)):
            continue
        if isinstance(statement, ast.AssignStmt) and statement.target.text in TRAIN_SETTINGS:
            earlier = given.setdefault(statement.target.text, statement)
            if earlier is not statement:
                reporter.error("E0126", f"`{statement.target.text}` is given twice in the "
                               f"train section of `{train.network.text}`",
                               statement.target.span, notes=[f"the first is at {earlier.span}"])
            continue
        what = (f"`{statement.target.text} = ...`" if isinstance(statement, ast.AssignStmt)
                else type(statement).__name__.removesuffix("Stmt").lower())
        reporter.error("E0125", f"a train section does not take {what}", statement.span,
                       "it holds `input NAME: TYPE`, `loss = ...`, `optimizer = ...`, "
                       "`freeze LAYER, ...` and `clip_grad_norm = ...`; compute values in "
                       "the network and mark them `output`")
    for required in ("loss", "optimizer"):
        if required not in given:
            reporter.error("E0126", f"the train section of `{train.network.text}` has no "
                           f"`{required}`", train.network.span,
                           "add `loss = cross_entropy(logits, label)`" if required == "loss"
                           else "add `optimizer = sgd(lr=0.1)` (or adam, adamw)")


def _check_network(network: ast.NetworkDef, reporter: Reporter) -> None:
    outputs = 0
    for statement, depth in walk_statements(network.body):
        if isinstance(statement, ast.ReturnStmt):
            reporter.error("E0112", "`return` belongs in a block, not a network", statement.span,
                           "mark the result with `output NAME = ...`")
        elif isinstance(statement, ast.InputStmt) and depth:
            reporter.error("E0115", "`input` cannot be inside `repeat`", statement.span,
                           "declare inputs at the top level of the network")
        elif isinstance(statement, ast.ParamStmt) and depth:
            _param_in_repeat(statement, reporter)
        elif isinstance(statement, ast.OutputStmt):
            if depth:
                reporter.error("E0116", "`output` cannot be inside `repeat`", statement.span,
                               "mark outputs at the top level of the network")
            else:
                outputs += 1
    if outputs == 0:
        reporter.error("E0114", f"network `{network.name.text}` has no output",
                       network.name.span, "mark a result with `output NAME` or `output NAME = ...`")


def _check_block(block: ast.BlockDef, reporter: Reporter) -> None:
    seen: dict[str, ast.Identifier] = {}
    typed_seen = False
    for param in block.params:
        name = param.name
        if name.text in seen:
            reporter.error("E0109", f"parameter `{name.text}` of block `{block.name.text}` is "
                           "declared twice", name.span)
        seen.setdefault(name.text, name)
        if name.text == "name":
            reporter.error("E0113", "`name` cannot be a block parameter: it is the argument "
                           "that names a layer or a block call", name.span, "rename the parameter")
        if isinstance(param, ast.AttrParam):
            typed_seen = True
            if param.type.text not in ATTR_TYPES:
                help = did_you_mean(param.type.text, ATTR_TYPES)
                if param.type.text in DTYPES:
                    help = f"tensor parameters have no type: write just `{name.text}`"
                reporter.error("E0120", f"unknown parameter type `{param.type.text}`; attribute "
                               "parameters are `int`, `float`, `bool` or `str`", param.type.span,
                               help)
        elif typed_seen:
            reporter.error("E0110", f"tensor parameter `{name.text}` comes after an attribute "
                           "parameter", name.span, "list tensor parameters first, as ops take "
                           "their tensors first")
    body = block.body
    returns = 0
    for statement, depth in walk_statements(body):
        if isinstance(statement, ast.ReturnStmt):
            returns += 1
            if depth or statement is not body[-1]:
                reporter.error("E0112", "`return` must be the last statement of a block",
                               statement.span)
        elif isinstance(statement, ast.InputStmt):
            reporter.error("E0115", "`input` belongs in a network; a block takes its tensors as "
                           "parameters", statement.span,
                           f"add a parameter: `block {block.name.text}(x, ...)`")
        elif isinstance(statement, ast.ParamStmt) and depth:
            _param_in_repeat(statement, reporter)
        elif isinstance(statement, ast.OutputStmt):
            reporter.error("E0116", "`output` belongs in a network; a block gives its result "
                           "with `return`", statement.span)
    if returns == 0:
        reporter.error("E0111", f"block `{block.name.text}` has no `return`", block.name.span,
                       "end the block with `return EXPR`")


def _param_in_repeat(statement: ast.ParamStmt, reporter: Reporter) -> None:
    reporter.error("E0123", "`param` cannot be inside `repeat`: its name would be declared once "
                   "a round", statement.span,
                   "declare it before the `repeat`, or in a block the `repeat` calls (each call "
                   "gets its own prefix)")


def choose_network(module: ast.Module, imported: Sequence[ast.NetworkDef], wanted: str | None,
                   reporter: Reporter) -> ast.NetworkDef | None:
    """The network to compile: `wanted`, among the main file's networks and those of the files
    it imports (v2); by default the main file's only or last one, or, if it has none, the last
    one it imports."""
    networks = [*module.networks, *imported]
    if wanted is not None:
        for network in networks:
            if network.name.text == wanted:
                return network
        names = [n.name.text for n in networks]
        known = ", ".join(f"`{n}`" for n in names) or "none"
        where = " or the files it imports" if imported else ""
        reporter.error("E0107", f"no network `{wanted}` in `{module.file}`{where} (there are "
                       f"{known})" if imported else
                       f"no network `{wanted}` in `{module.file}` (it defines {known})",
                       None, did_you_mean(wanted, names))
        return None
    if not networks:
        line = Span(module.file, 1, 1, 1, 2)
        reporter.error("E0106", f"`{module.file}` defines no network", line,
                       "a file compiles to the network in `network NAME { ... }`")
        return None
    return networks[-1] if not module.networks else module.networks[-1]


def check_train_networks(module: ast.Module, imported: Sequence[ast.NetworkDef],
                         reporter: Reporter) -> None:
    """Every train section names a network of the file or of the files it imports."""
    names = [n.name.text for n in (*module.networks, *imported)]
    for train in module.trains:
        if train.network.text not in names:
            reporter.error("E0122", f"`train {train.network.text}`: no network "
                           f"`{train.network.text}` in `{module.file}` or the files it imports",
                           train.network.span, did_you_mean(train.network.text, names))


def check_network_names(module: ast.Module, imported: Sequence[ast.NetworkDef],
                        reporter: Reporter) -> None:
    """A network name the main file sees twice, across files (v2 imports networks)."""
    seen = {network.name.text: network for network in module.networks}
    for network in imported:
        earlier = seen.setdefault(network.name.text, network)
        if earlier is not network:
            reporter.error("E0124", f"network `{network.name.text}` is defined twice: in "
                           f"`{earlier.name.span.file}` and in the imported "
                           f"`{network.name.span.file}`", earlier.name.span,
                           "rename one of them", [f"the other definition is at "
                                                  f"{network.name.span}"])
