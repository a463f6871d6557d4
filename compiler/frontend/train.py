"""The `train` section (v2): how to train a network, checked against it.

    spec = load_training("examples/lenet5.net")
    spec.graph        # the network, the section's inputs, and its loss as the output `loss`
    spec.optimizer    # Optimizer("sgd", {"lr": 0.05, "momentum": 0.9, ...}) with PyTorch's defaults
    spec.trainable    # the parameters the optimizer updates (not buffers, not frozen layers)

The section's statements (phase 2, `check.py`, checks which may appear): `input`s for what the
loss needs beyond the network's inputs; `loss = EXPR`, a float scalar over the network's inputs
and outputs and the section's inputs (`Expander.train` builds it into the graph);
`optimizer = sgd(...)|adam(...)|adamw(...)` with PyTorch's hyperparameters and defaults, plus
the schedule as keyword arguments of the same call (`schedule="constant"|"cosine"|"step"`,
`warmup=STEPS`, `gamma=0.1` and `step_size=STEPS` for "step"; see docs/language-notes.md);
`freeze LAYER, ...` (a layer name, or a dotted path naming every layer under it); and
`clip_grad_norm = MAX_NORM`. Every misuse is a located error: an unknown optimizer or argument
(E0127), a value of the wrong kind or range (E0127), a frozen name that is no layer (E0128).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from netc.diagnostics import did_you_mean
from netc.frontend import ast
from netc.frontend.values import Reporter
from netc.ir import Graph

REQUIRED = object()
OPTIMIZERS: dict[str, dict[str, Any]] = {
    "sgd": {"lr": REQUIRED, "momentum": 0.0, "dampening": 0.0, "nesterov": False,
            "weight_decay": 0.0},
    "adam": {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0},
    "adamw": {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2},
}
"""Each optimizer's hyperparameters and PyTorch's defaults (`torch.optim`)."""
SCHEDULES = ("constant", "cosine", "step")
SCHEDULE_DEFAULTS: dict[str, Any] = {"schedule": "constant", "warmup": 0, "gamma": 0.1,
                                     "step_size": None}
"""The learning-rate schedule, given as keyword arguments of the optimizer call."""


@dataclass(frozen=True)
class Optimizer:
    name: str
    """sgd, adam or adamw."""
    hyper: Mapping[str, Any]
    """Every hyperparameter of the optimizer, defaults filled in (`betas` a pair)."""


@dataclass(frozen=True)
class Schedule:
    kind: str = "constant"
    warmup: int = 0
    """Steps over which the rate rises linearly from 0 to `lr`."""
    gamma: float = 0.1
    step_size: int | None = None
    """For "step": the rate is multiplied by `gamma` every `step_size` steps."""


@dataclass(frozen=True)
class TrainSpec:
    network: str
    graph: Graph
    """The network, the section's inputs, and the loss as the output `loss` (last)."""
    inputs: tuple[str, ...]
    """The section's own inputs (labels, targets), beyond the network's."""
    optimizer: Optimizer
    schedule: Schedule = field(default_factory=Schedule)
    frozen: tuple[str, ...] = ()
    """The layers whose parameters are neither updated nor decayed."""
    clip_grad_norm: float | None = None

    @property
    def trainable(self) -> tuple[str, ...]:
        """The parameter ids the optimizer updates: the trainable parameters (not buffers such
        as running statistics) of the layers not frozen, and free parameters."""
        from netc.weights import param_specs

        specs = param_specs(self.graph)
        frozen = set(self.frozen)
        return tuple(node.id for node in self.graph.params if node.layer not in frozen
                     and (node.id not in specs or specs[node.id].trainable))


def train_spec(section: ast.TrainDef, graph: Graph, reporter: Reporter) -> TrainSpec | None:
    """The spec of `section` over its training graph (`Expander.train`), or None after
    reporting what is wrong."""
    settings = {s.target.text: s for s in section.body if isinstance(s, ast.AssignStmt)}
    errors = len(reporter)
    optimizer, schedule = _optimizer(settings["optimizer"].value, reporter)
    clip = None
    if "clip_grad_norm" in settings:
        value = settings["clip_grad_norm"].value
        clip = _literal(value)
        if isinstance(clip, bool) or not isinstance(clip, (int, float)) or \
                not math.isfinite(clip) or clip <= 0:
            reporter.error("E0127", "`clip_grad_norm` is the largest global L2 norm of the "
                           "gradients, a positive number", value.span, "e.g. clip_grad_norm = 1.0")
            clip = None
    frozen = _frozen(section, graph, reporter)
    if len(reporter) > errors or optimizer is None:
        return None
    inputs = tuple(s.name.text for s in section.body if isinstance(s, ast.InputStmt))
    return TrainSpec(section.network.text, graph, inputs, optimizer, schedule, frozen,
                     None if clip is None else float(clip))


def _literal(expr: ast.Expr) -> Any:
    """A literal's value (lists as tuples, `-x` folded); None for anything else."""
    if isinstance(expr, (ast.IntLiteral, ast.FloatLiteral, ast.BoolLiteral, ast.StringLiteral)):
        return expr.value
    if isinstance(expr, ast.Negate):
        inner = _literal(expr.operand)
        return -inner if isinstance(inner, (int, float)) and not isinstance(inner, bool) \
            else None
    if isinstance(expr, ast.ListLiteral):
        items = [_literal(item) for item in expr.items]
        return None if any(item is None for item in items) else tuple(items)
    return None


def _optimizer(expr: ast.Expr, reporter: Reporter) -> tuple[Optimizer | None, Schedule]:
    if not isinstance(expr, ast.Call):
        reporter.error("E0127", "`optimizer` is a call: sgd(...), adam(...) or adamw(...)",
                       expr.span, "e.g. optimizer = sgd(lr=0.1, momentum=0.9)")
        return None, Schedule()
    name = expr.callee.text
    if name not in OPTIMIZERS:
        reporter.error("E0127", f"unknown optimizer `{name}`; netc has "
                       + ", ".join(f"`{n}`" for n in OPTIMIZERS), expr.callee.span,
                       did_you_mean(name, list(OPTIMIZERS)))
        return None, Schedule()
    accepted = {**OPTIMIZERS[name], **SCHEDULE_DEFAULTS}
    order = list(OPTIMIZERS[name])
    values: dict[str, Any] = {}
    ok = True
    for position, argument in enumerate(expr.args):
        if isinstance(argument, ast.Keyword):
            key, value_expr, where = argument.name.text, argument.value, argument.name.span
        elif position < len(order):
            key, value_expr, where = order[position], argument, argument.span
        else:
            reporter.error("E0127", f"`{name}` takes at most {len(order)} arguments by "
                           "position", argument.span, "name the others, e.g. warmup=100")
            ok = False
            continue
        if key not in accepted:
            reporter.error("E0127", f"`{name}` has no argument `{key}`; it takes "
                           + ", ".join(f"`{k}`" for k in accepted), where,
                           did_you_mean(key, list(accepted)))
            ok = False
            continue
        if key in values:
            reporter.error("E0127", f"`{key}` is given twice", where)
            ok = False
            continue
        value = _literal(value_expr)
        problem = _problem(key, value, accepted[key])
        if problem:
            reporter.error("E0127", f"`{name}` argument `{key}` {problem}", value_expr.span)
            ok = False
            continue
        values[key] = value
    hyper = {key: values.get(key, default) for key, default in OPTIMIZERS[name].items()}
    if ok and hyper["lr"] is REQUIRED:
        reporter.error("E0127", "`sgd` needs a learning rate", expr.span,
                       "e.g. sgd(lr=0.1) (PyTorch's SGD has no default either)")
        ok = False
    if ok and name == "sgd" and hyper["nesterov"] and (hyper["momentum"] <= 0
                                                       or hyper["dampening"] != 0):
        reporter.error("E0127", "Nesterov momentum needs a momentum above 0 and zero "
                       "dampening (as torch.optim.SGD)", expr.span)
        ok = False
    schedule = Schedule(*(values.get(k, d) for k, d in SCHEDULE_DEFAULTS.items()))
    if ok and schedule.kind == "step" and schedule.step_size is None:
        reporter.error("E0127", "schedule=\"step\" needs `step_size`", expr.span,
                       "e.g. schedule=\"step\", step_size=1000, gamma=0.1")
        ok = False
    if not ok:
        return None, schedule
    hyper = {k: float(v) if isinstance(v, int) and not isinstance(v, bool) else v
             for k, v in hyper.items()}
    if "betas" in hyper:
        hyper["betas"] = tuple(float(b) for b in hyper["betas"])
    return Optimizer(name, hyper), schedule


def _problem(key: str, value: Any, default: Any) -> str | None:
    """Why `value` cannot be argument `key` (None when it can)."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if key == "schedule":
        return None if value in SCHEDULES else "is one of " + ", ".join(
            f'"{s}"' for s in SCHEDULES)
    if key in ("warmup", "step_size"):
        ok = isinstance(value, int) and not isinstance(value, bool) and \
            value >= (0 if key == "warmup" else 1)
        return None if ok else ("is a number of steps, 0 or more" if key == "warmup"
                                else "is a number of steps, 1 or more")
    if key == "nesterov":
        return None if isinstance(value, bool) else "is true or false"
    if key == "betas":
        ok = isinstance(value, tuple) and len(value) == 2 and all(
            isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1
            for b in value)
        return None if ok else "is a pair of numbers in [0, 1), e.g. [0.9, 0.999]"
    if not number or not math.isfinite(value):
        return "is a number"
    if key == "lr" and value <= 0:
        return "is positive"
    if key in ("momentum", "dampening", "weight_decay", "eps", "gamma") and value < 0:
        return "is 0 or more"
    return None


def _frozen(section: ast.TrainDef, graph: Graph, reporter: Reporter) -> tuple[str, ...]:
    """The layers `freeze` names: a layer, or every layer under a dotted path."""
    layers = list(dict.fromkeys(n.layer for n in graph.nodes if n.layer is not None))
    frozen: list[str] = []
    for statement in section.body:
        if not isinstance(statement, ast.FreezeStmt):
            continue
        for name_expr in statement.names:
            name = name_expr.name if isinstance(name_expr, ast.NameRef) else ".".join(
                getattr(name_expr, "segments", ()))
            found = [layer for layer in layers if layer == name or layer.startswith(name + ".")]
            if not found:
                reporter.error("E0128", f"`freeze {name}`: network `{section.network.text}` has "
                               "no layer (or layer path) of that name", name_expr.span,
                               did_you_mean(name, layers))
            frozen += [layer for layer in found if layer not in frozen]
    return tuple(frozen)
