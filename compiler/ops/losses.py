"""Losses, each to `f32[]` with PyTorch's default `reduction="mean"`: `cross_entropy`,
`nll_loss`, `mse_loss`, `l1_loss` and `bce_with_logits`.

The mean is over all elements; for `cross_entropy` and `nll_loss` over the targets that are not
`ignore_index` (all of them ignored gives NaN, 0/0, as PyTorch), weighted by the optional
class weights (a third tensor `[C]`, PyTorch's `weight=`). Those two also take PyTorch's
`reduction=`: "sum", or "none" for the loss of each target (`[N, ...]`, 0 where ignored).
Float inputs of any float dtype
are computed in f32 (f16 logits accumulate in f32); the result is always `f32[]`. Where PyTorch
raises, netc computes: a class id outside [0, C) that is not `ignore_index` makes the loss NaN.

Each op is its decomposition onto existing ops (`log_softmax`, comparisons with `arange`,
`where`, `sum`, ...), which the CUDA code generator and the ONNX exporter use; the reference is
NumPy in float64. `cross_entropy` and `nll_loss` export as ONNX's `SoftmaxCrossEntropyLoss`
and `NegativeLogLikelihoodLoss` (onnx/export.py; label smoothing, which ONNX lacks, as
PyTorch's sum of that loss and the smoothing term).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from netc.ir import FLOAT_DTYPES, INTEGER_DTYPES, Attrs, TensorType, format_shape
from netc.ops.apply import DtypeError
from netc.ops.gradients import Gradients, Vjp, count
from netc.ops.registry import (
    AttrSpec,
    Composer,
    OpDef,
    OpDoc,
    ShapeError,
    register,
    require_rank,
    same_dtype,
)

SCALAR = TensorType("f32", ())
"""Every loss's result."""

Infer = Callable[[Attrs, Sequence[TensorType]], TensorType]
Flops = Callable[[Attrs, Sequence[tuple[int, ...]], tuple[int, ...]], int]
Pairwise = Callable[[np.ndarray, np.ndarray], np.ndarray]

# cross_entropy and nll_loss -----------------------------------------------------------------


def _require_float(op: str, tensor: TensorType, what: str) -> None:
    if tensor.dtype not in FLOAT_DTYPES:
        raise DtypeError(f"`{op}` takes float {what}, got {tensor}; `cast(x, \"f32\")` converts")


def _classes_infer(op: str) -> Infer:
    def infer(attrs: Attrs, inputs: Sequence[TensorType]) -> TensorType:
        scores, target = inputs[:2]
        _require_float(op, scores, "scores")
        if target.dtype not in INTEGER_DTYPES:
            raise DtypeError(f"`{op}` takes i32 or i64 class ids as its target, got {target}; "
                             "`cast(t, \"i64\")` converts")
        require_rank(op, scores, 2)
        if not isinstance(scores.shape[1], int):
            raise ShapeError(f"`{op}` needs a known number of classes (dimension 1), got "
                             f"{format_shape(scores.shape)}")
        expected = (scores.shape[0], *scores.shape[2:])
        if target.shape != expected:
            raise ShapeError(f"`{op}` of scores {format_shape(scores.shape)} [N, C, ...] needs a "
                             f"target of shape {format_shape(expected)} [N, ...], got {target}")
        smoothing = attrs.get("label_smoothing", 0.0)
        if not 0.0 <= smoothing <= 1.0:
            raise ShapeError(f"`{op}` needs label_smoothing in [0, 1], got {smoothing}")
        if len(inputs) == 3:
            weight = inputs[2]
            _require_float(op, weight, "class weights")
            if weight.shape != (scores.shape[1],):
                raise ShapeError(f"`{op}`'s class weights are one per class, "
                                 f"[{scores.shape[1]}] for scores {format_shape(scores.shape)}, "
                                 f"got {weight}")
        return TensorType("f32", target.shape) if attrs["reduction"] == "none" else SCALAR
    return infer


def _classes_reference(log_probs: np.ndarray, target: np.ndarray, attrs: Attrs,
                       weight: np.ndarray | None = None) -> np.ndarray:
    """The loss (float64, rounded to f32) from log-probabilities [N, C, ...] and class ids
    [N, ...], as PyTorch: element i loses -w[t_i] log p[t_i] (0 where ignored); "mean"
    divides their sum by that of the w[t_i] not ignored. With label smoothing s, (1 - s) of
    that plus s / C of the same reduction of -sum_c w_c log p_c."""
    classes = log_probs.shape[1]
    target = np.asarray(target, dtype=np.int64)
    ignore, smoothing = attrs["ignore_index"], attrs.get("label_smoothing", 0.0)
    weights = np.ones(classes) if weight is None else np.asarray(weight, dtype=np.float64)
    valid = target != ignore
    in_range = (target >= 0) & (target < classes)
    safe = np.where(in_range, target, 0)
    picked = np.take_along_axis(log_probs, np.expand_dims(safe, 1), axis=1).squeeze(1)
    # An id outside [0, C) weighs NaN (PyTorch raises an error).
    chosen = np.where(in_range & valid, weights[safe], np.where(valid, np.nan, 0.0))
    with np.errstate(all="ignore"):  # NaN and infinity propagate as in PyTorch
        def reduce(losses: np.ndarray) -> np.ndarray:
            losses = np.where(valid, losses, 0.0)
            if attrs["reduction"] == "none":
                return losses
            return losses.sum() / chosen.sum() if attrs["reduction"] == "mean" else losses.sum()

        total = reduce(-picked * chosen)
        if smoothing:
            shape = (1, classes) + (1,) * (log_probs.ndim - 2)
            total = (1.0 - smoothing) * total + smoothing / classes * reduce(
                -(log_probs * weights.reshape(shape)).sum(axis=1))
    return np.asarray(total, dtype=np.float32)


def _log_softmax64(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    with np.errstate(all="ignore"):
        top = np.max(x, axis=1, keepdims=True)  # as PyTorch: an infinite max gives NaN
        return x - top - np.log(np.exp(x - top).sum(axis=1, keepdims=True))


def _reduced(builder: Composer, losses: str, valid: str, reduction: str,
             weights: str) -> str:
    """`losses` [N, ...] with the elements whose target is ignored (`valid` false) made 0,
    reduced as `reduction` asks: "mean" divides their sum by that of `weights` (each target's
    class weight, 0 where ignored; 0 / 0, NaN, when nothing is left)."""
    losses = builder.op("where", valid, losses, builder.constant(0.0))
    if reduction == "none":
        return losses
    every = list(range(builder.type_of(losses).rank))
    total = builder.op("sum", losses, axis=every)
    if reduction == "sum":
        return total
    return builder.op("div", total, builder.op("sum", weights, axis=every))


def _class_axis(builder: Composer, value: str, rank: int) -> str:
    """A [C] tensor as [C, 1, ...], against scores of `rank` without their batch."""
    for _ in range(rank - 2):
        value = builder.op("unsqueeze", value, axis=1)
    return value


def _targets(builder: Composer, attrs: Attrs, scores: TensorType, target: str,
             weight: str | None, classes_needed: bool = True
             ) -> tuple[str | None, str, str, str | None]:
    """For scores [N, C, ...] and class ids [N, ...]: which class each element's target is
    (bool [N, C, ...]; None if not `classes_needed` and there are no class weights), which
    targets are not ignored, each target's weight (f32 [N, ...]: its class weight or 1, 0
    where ignored, NaN for an id outside [0, C)), and the class weights as [C, 1, ...] (None
    without)."""
    classes = int(scores.shape[1])
    ids = builder.op("cast", target, dtype="i64")
    valid = builder.op("ne", ids, other=float(attrs["ignore_index"]))
    chosen = None
    if classes_needed or weight is not None:
        # Class c of element (n, ...) is the target where c == target: arange as [C, 1, ...]
        # against the target as [N, 1, ...].
        arange = _class_axis(builder, builder.op("arange", n=classes), scores.rank)
        chosen = builder.op("eq", arange, builder.op("unsqueeze", ids, axis=1))
    # 1 for an id in [0, C), NaN (0 / 0) for one outside: the loss of an unknown class is NaN.
    in_range = builder.op("mul", builder.op("cast", builder.op("ge", ids, other=0.0), dtype="f32"),
                          builder.op("cast", builder.op("lt", ids, other=float(classes)),
                                     dtype="f32"))
    weights = builder.op("div", in_range, in_range)
    per_class = None if weight is None else \
        _class_axis(builder, _as_f32(builder, weight), scores.rank)
    if per_class is not None and chosen is not None:
        picked = builder.op("where", chosen, per_class, builder.constant(0.0))
        weights = builder.op("mul", builder.op("sum", picked, axis=1), weights)
    return chosen, valid, builder.op("where", valid, weights, builder.constant(0.0)), per_class


def _classes_parts(builder: Composer, attrs: Attrs, log_probs: str, target: str,
                   weight: str | None) -> str:
    """The loss without label smoothing for log-probabilities [N, C, ...] (f32), class ids
    [N, ...] and optional class weights [C], as `_classes_reference`."""
    chosen, valid, weights, _ = _targets(builder, attrs, builder.type_of(log_probs), target,
                                         weight)
    assert chosen is not None
    # A where, not a product with a one-hot mask: a -inf log-probability of another class
    # must weigh nothing.
    terms = builder.op("where", chosen, log_probs, builder.constant(0.0))
    losses = builder.op("neg", builder.op("sum", terms, axis=1))
    return _reduced(builder, builder.op("mul", losses, weights), valid, attrs["reduction"],
                    weights)


def _as_f32(builder: Composer, value: str) -> str:
    return value if builder.type_of(value).dtype == "f32" else \
        builder.op("cast", value, dtype="f32")


def _cross_entropy_parts(builder: Composer, attrs: Attrs, logits: str, target: str,
                         weight: str | None = None) -> str:
    log_probs = builder.op("log_softmax", _as_f32(builder, logits), axis=1)
    smoothing = attrs["label_smoothing"]
    if not smoothing:
        return _classes_parts(builder, attrs, log_probs, target, weight)
    # PyTorch's sum of two losses: (1 - s) of the plain one (itself a cross_entropy, so the
    # ONNX export writes SoftmaxCrossEntropyLoss) and s / C of the same reduction of
    # -sum_c w_c log p_c.
    scores = builder.type_of(logits)
    plain = builder.op("cross_entropy", logits, target, *([] if weight is None else [weight]),
                       ignore_index=attrs["ignore_index"], reduction=attrs["reduction"])
    _, valid, weights, per_class = _targets(builder, attrs, scores, target, weight, False)
    spread = log_probs if per_class is None else builder.op("mul", log_probs, per_class)
    spread = _reduced(builder, builder.op("neg", builder.op("sum", spread, axis=1)), valid,
                      attrs["reduction"], weights)
    return builder.op("add", builder.op("mul", plain, builder.constant(1.0 - smoothing)),
                      builder.op("mul", spread,
                                 builder.constant(smoothing / int(scores.shape[1]))))


def _nll_loss_parts(builder: Composer, attrs: Attrs, log_probs: str, target: str,
                    weight: str | None = None) -> str:
    return _classes_parts(builder, attrs, _as_f32(builder, log_probs), target, weight)


def _classes_vjp(from_logits: bool) -> Vjp:
    """cross_entropy's (`from_logits`) or nll_loss's gradient with respect to the scores.

    Each target's loss has the cotangent `scale` (the loss's; divided by the sum of the
    targets' weights for "mean"), weighted by its target's weight w_t (0 where ignored):
    nll_loss gives -w_t·scale to the target's class; cross_entropy w_t·scale·(p - onehot),
    p = softmax(logits), and with label smoothing s that times (1 - s) plus
    (s / C)·scale·(p·sum_c w_c - w) for each target not ignored (w the class weights, 1
    without). No gradient for the class ids or the class weights."""
    def vjp(builder: Composer, attrs: Attrs, inputs: tuple[str, ...], output: str,
            cotangent: str) -> Gradients:
        scores, target = inputs[:2]
        weight = inputs[2] if len(inputs) == 3 else None
        scores_type = builder.type_of(scores)
        chosen, valid, weights, per_class = _targets(builder, attrs, scores_type, target,
                                                     weight)
        assert chosen is not None
        scale = cotangent
        if attrs["reduction"] == "mean":
            every = list(range(builder.type_of(weights).rank))
            scale = builder.op("div", scale, builder.op("sum", weights, axis=every))
        onehot = builder.op("cast", chosen, dtype="f32")
        per_target = builder.op("unsqueeze", builder.op("mul", weights, scale), axis=1)
        if not from_logits:
            gradient = builder.op("neg", builder.op("mul", onehot, per_target))
        else:
            probs = builder.op("softmax", _as_f32(builder, scores), axis=1)
            gradient = builder.op("mul", builder.op("sub", probs, onehot), per_target)
            smoothing = attrs["label_smoothing"]
            if smoothing:
                classes = int(scores_type.shape[1])
                counted = builder.op("mul", builder.op("cast", valid, dtype="f32"), scale)
                if per_class is None:
                    spread = builder.op("sub", builder.op("mul", probs, builder.constant(
                        float(classes))), builder.constant(1.0))
                else:
                    total = builder.op("sum", per_class, axis=0)
                    spread = builder.op("sub", builder.op("mul", probs, total), per_class)
                spread = builder.op("mul", spread, builder.op("unsqueeze", counted, axis=1))
                gradient = builder.op("add", builder.op(
                    "mul", gradient, builder.constant(1.0 - smoothing)), builder.op(
                    "mul", spread, builder.constant(smoothing / classes)))
        if scores_type.dtype != "f32":
            gradient = builder.op("cast", gradient, dtype=scores_type.dtype)
        return (gradient, None, *([None] if weight is not None else []))
    return vjp


def _classes_flops(per_element: int) -> Flops:
    def flops(attrs: Attrs, inputs: Sequence[tuple[int, ...]], output: tuple[int, ...]) -> int:
        return per_element * math.prod(inputs[0]) + 4 * math.prod(inputs[1])
    return flops


_IGNORE_INDEX = AttrSpec("ignore_index", "int", default=-100, positional=False,
                         help="a target equal to it adds nothing and is not counted")
_REDUCTION = AttrSpec("reduction", "str", default="mean", choices=("mean", "sum", "none"),
                      positional=False,
                      help='"mean" (weighted by the class weights), "sum", or "none": the loss '
                           "of each target (0 where ignored)")
_CLASS_DOC = ("scores `[N, C]` or `[N, C, d1, ...]`, target `[N]` or `[N, d1, ...]` "
              "(i32 or i64), optional class weights `[C]` → `[]` (f32), or `[N, ...]` "
              "(f32) for reduction=\"none\"")

register(OpDef(
    name="cross_entropy",
    attrs=(AttrSpec("label_smoothing", "float", default=0.0, minimum=0.0,
                    help="the share of the target spread evenly over all classes"),
           _IGNORE_INDEX, _REDUCTION),
    infer=_classes_infer("cross_entropy"),
    reference=lambda attrs, logits, target, weight=None: _classes_reference(
        _log_softmax64(logits), target, attrs, weight),
    decompose=_cross_entropy_parts,
    vjp=_classes_vjp(from_logits=True),
    min_inputs=2,
    max_inputs=3,
    flops=_classes_flops(8),
    kind="reduction",
    role="layout",  # never fused: the code generator computes its decomposition
    dtypes=(*FLOAT_DTYPES, *INTEGER_DTYPES),
    summary="`F.cross_entropy(logits, target, weight, ignore_index=ignore_index, "
            "label_smoothing=label_smoothing, reduction=reduction)`: -w[target] · "
            "log_softmax(logits)[target] for each target not ignored, by default their mean "
            "weighted by w (all ignored: NaN); a class id outside [0, C) gives NaN (PyTorch "
            "raises an error)",
    doc=OpDoc(shapes=_CLASS_DOC, flops="8 in",
              attrs="`label_smoothing` in [0, 1]; the class dimension is a number; class "
                    "weights of one per class"),
))

register(OpDef(
    name="nll_loss",
    attrs=(_IGNORE_INDEX, _REDUCTION),
    infer=_classes_infer("nll_loss"),
    reference=lambda attrs, log_probs, target, weight=None: _classes_reference(
        np.asarray(log_probs, dtype=np.float64), target, attrs, weight),
    decompose=_nll_loss_parts,
    vjp=_classes_vjp(from_logits=False),
    min_inputs=2,
    max_inputs=3,
    flops=_classes_flops(2),
    kind="reduction",
    role="layout",
    dtypes=(*FLOAT_DTYPES, *INTEGER_DTYPES),
    summary="`F.nll_loss(logp, target, weight, ignore_index=ignore_index, "
            "reduction=reduction)`: -w[target] · logp[target] for each target not ignored, by "
            "default their mean weighted by w (all ignored: NaN); a class id outside [0, C) "
            "gives NaN (PyTorch raises an error)",
    doc=OpDoc(shapes=_CLASS_DOC, flops="2 in",
              attrs="the class dimension is a number; class weights of one per class"),
))


# mse_loss, l1_loss, bce_with_logits ---------------------------------------------------------


def _pair_infer(op: str) -> Infer:
    def infer(attrs: Attrs, inputs: Sequence[TensorType]) -> TensorType:
        a, b = inputs
        same_dtype(op, inputs)
        if a.shape != b.shape:
            raise ShapeError(f"`{op}` needs two tensors of one shape, got {a} and {b}")
        return SCALAR
    return infer


def _mean_all(builder: Composer, value: str) -> str:
    rank = builder.type_of(value).rank
    return builder.op("mean", value, axis=list(range(rank))) if rank else value


def _difference(builder: Composer, a: str, b: str) -> str:
    return builder.op("sub", _as_f32(builder, a), _as_f32(builder, b))


def _mse_parts(builder: Composer, attrs: Attrs, a: str, b: str) -> str:
    difference = _difference(builder, a, b)
    return _mean_all(builder, builder.op("mul", difference, difference))


def _l1_parts(builder: Composer, attrs: Attrs, a: str, b: str) -> str:
    return _mean_all(builder, builder.op("abs", _difference(builder, a, b)))


def _bce_parts(builder: Composer, attrs: Attrs, logits: str, target: str) -> str:
    # PyTorch's stable form: (1 - y) x - min(x, 0) + log(1 + exp(-|x|)).
    x, y = _as_f32(builder, logits), _as_f32(builder, target)
    one, zero = builder.constant(1.0), builder.constant(0.0)
    linear = builder.op("sub", builder.op("mul", builder.op("sub", one, y), x),
                        builder.op("minimum", x, zero))
    tail = builder.op("log", builder.op("add", one,
                                        builder.op("exp", builder.op("neg", builder.op("abs", x)))))
    return _mean_all(builder, builder.op("add", linear, tail))


def _mse_vjp(builder: Composer, attrs: Attrs, inputs: tuple[str, ...], output: str,
             cotangent: str) -> Gradients:
    """2·(a - b)·g / numel to a, its negation to b (l1_loss and bce_with_logits go through
    their decompositions)."""
    a, b = inputs
    a_type = builder.type_of(a)
    numel = count(builder, a_type.shape, range(a_type.rank), "f32")
    factor = builder.op("div", builder.op("mul", cotangent, builder.constant(2.0)), numel)
    to_a = builder.op("mul", _difference(builder, a, b), factor)
    if a_type.dtype != "f32":
        to_a = builder.op("cast", to_a, dtype=a_type.dtype)
    return (to_a, builder.op("neg", to_a))


def _bce_reference(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        return (1.0 - y) * x - np.minimum(x, 0.0) + np.log1p(np.exp(-np.abs(x)))


def _pair_reference(function: Pairwise) -> Callable[..., np.ndarray]:
    def reference(attrs: Attrs, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        with np.errstate(all="ignore"):
            values = function(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
            return np.asarray(np.mean(values), dtype=np.float32)
    return reference


_PAIRS = (
    ("mse_loss", lambda a, b: (a - b) ** 2, _mse_parts, 3, "a, b",
     "`F.mse_loss(a, b)`: the mean of (a - b)^2", _mse_vjp),
    ("l1_loss", lambda a, b: np.abs(a - b), _l1_parts, 3, "a, b",
     "`F.l1_loss(a, b)`: the mean of |a - b|", None),
    ("bce_with_logits", _bce_reference, _bce_parts, 8, "logits, target",
     "`F.binary_cross_entropy_with_logits(logits, target)`: the mean of "
     "-(y log σ(x) + (1 - y) log(1 - σ(x))), computed stably as (1 - y) x - min(x, 0) + "
     "log(1 + exp(-|x|))", None),
)

for _name, _function, _parts, _flops, _operands, _summary, _vjp in _PAIRS:
    register(OpDef(
        name=_name,
        infer=_pair_infer(_name),
        reference=_pair_reference(_function),
        decompose=_parts,
        vjp=_vjp,
        min_inputs=2,
        max_inputs=2,
        flops=lambda attrs, inputs, output, per=_flops: per * math.prod(inputs[0]),
        kind="reduction",
        role="layout",
        summary=_summary,
        doc=OpDoc(shapes=f"{_operands} of one shape and dtype → `[]` (f32)",
                  flops=f"{_flops} in"),
    ))
