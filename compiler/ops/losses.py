"""Losses, each to `f32[]` with PyTorch's default `reduction="mean"`: `cross_entropy`,
`nll_loss`, `mse_loss`, `l1_loss` and `bce_with_logits`.

The mean is over all elements; for `cross_entropy` and `nll_loss` over the targets that are not
`ignore_index` (all of them ignored gives NaN, 0/0, as PyTorch). Float inputs of any float dtype
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
        scores, target = inputs
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
        return SCALAR
    return infer


def _classes_reference(log_probs: np.ndarray, target: np.ndarray, ignore_index: int,
                       smoothing: float) -> np.ndarray:
    """The mean loss (float64) from log-probabilities [N, C, ...] and class ids [N, ...], as
    PyTorch: (1 - s) nll + s / C * (the mean of -sum_c log p_c), both over the valid ids."""
    classes = log_probs.shape[1]
    target = np.asarray(target, dtype=np.int64)
    valid = target != ignore_index
    in_range = (target >= 0) & (target < classes)
    picked = np.take_along_axis(log_probs, np.expand_dims(np.where(in_range, target, 0), 1),
                                axis=1).squeeze(1)
    with np.errstate(all="ignore"):  # NaN and infinity propagate as in PyTorch
        def mean(losses: np.ndarray) -> np.ndarray:
            return np.where(valid, losses, 0.0).sum() / valid.sum()

        total = mean(np.where(in_range, -picked, np.nan))
        if smoothing:
            total = (1.0 - smoothing) * total + smoothing / classes * mean(
                -log_probs.sum(axis=1))
    return np.asarray(total, dtype=np.float32)


def _log_softmax64(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    with np.errstate(all="ignore"):
        top = np.max(x, axis=1, keepdims=True)  # as PyTorch: an infinite max gives NaN
        return x - top - np.log(np.exp(x - top).sum(axis=1, keepdims=True))


def _mean_over_valid(builder: Composer, losses: str, target: str, ignore_index: int) -> str:
    """The mean of `losses` [N, ...] over the elements whose target is not `ignore_index`
    (0 / 0, NaN, when there is none)."""
    valid = builder.op("ne", target, other=float(ignore_index))
    every = list(range(builder.type_of(losses).rank))
    total = builder.op("sum", builder.op("where", valid, losses, builder.constant(0.0)),
                       axis=every)
    count = builder.op("sum", builder.op("cast", valid, dtype="f32"), axis=every)
    return builder.op("div", total, count)


def _classes_parts(builder: Composer, log_probs: str, target: str, ignore_index: int) -> str:
    """The mean of -log_probs[target] for log-probabilities [N, C, ...] (f32) and class ids
    [N, ...]."""
    scores = builder.type_of(log_probs)
    classes = int(scores.shape[1])
    ids = builder.op("cast", target, dtype="i64")
    # Class c of element (n, ...) is the target where c == target: arange as [C, 1, ...]
    # against the target as [N, 1, ...]. A where, not a product with a one-hot mask: a -inf
    # log-probability of another class must weigh nothing.
    arange = builder.op("arange", n=classes)
    for _ in range(scores.rank - 2):
        arange = builder.op("unsqueeze", arange, axis=1)
    chosen = builder.op("eq", arange, builder.op("unsqueeze", ids, axis=1))
    terms = builder.op("where", chosen, log_probs, builder.constant(0.0))
    losses = builder.op("neg", builder.op("sum", terms, axis=1))
    # 1 for an id in [0, C), NaN (0 / 0) for one outside: the loss of an unknown class is NaN.
    in_range = builder.op("mul", builder.op("cast", builder.op("ge", ids, other=0.0), dtype="f32"),
                          builder.op("cast", builder.op("lt", ids, other=float(classes)),
                                     dtype="f32"))
    losses = builder.op("mul", losses, builder.op("div", in_range, in_range))
    return _mean_over_valid(builder, losses, ids, ignore_index)


def _as_f32(builder: Composer, value: str) -> str:
    return value if builder.type_of(value).dtype == "f32" else \
        builder.op("cast", value, dtype="f32")


def _cross_entropy_parts(builder: Composer, attrs: Attrs, logits: str, target: str) -> str:
    ignore, smoothing = attrs["ignore_index"], attrs["label_smoothing"]
    log_probs = builder.op("log_softmax", _as_f32(builder, logits), axis=1)
    if not smoothing:
        return _classes_parts(builder, log_probs, target, ignore)
    # PyTorch's sum of two means: (1 - s) of the plain loss (itself a cross_entropy, so the
    # ONNX export writes SoftmaxCrossEntropyLoss) and s / C of the mean of -sum_c log p_c.
    classes = int(builder.type_of(logits).shape[1])
    plain = builder.op("cross_entropy", logits, target, ignore_index=ignore)
    spread = _mean_over_valid(builder, builder.op("neg", builder.op("sum", log_probs, axis=1)),
                              target, ignore)
    return builder.op("add", builder.op("mul", plain, builder.constant(1.0 - smoothing)),
                      builder.op("mul", spread, builder.constant(smoothing / classes)))


def _nll_loss_parts(builder: Composer, attrs: Attrs, log_probs: str, target: str) -> str:
    return _classes_parts(builder, _as_f32(builder, log_probs), target, attrs["ignore_index"])


def _classes_flops(per_element: int) -> Flops:
    def flops(attrs: Attrs, inputs: Sequence[tuple[int, ...]], output: tuple[int, ...]) -> int:
        return per_element * math.prod(inputs[0]) + 4 * math.prod(inputs[1])
    return flops


_IGNORE_INDEX = AttrSpec("ignore_index", "int", default=-100, positional=False,
                         help="a target equal to it adds nothing and is not counted")
_CLASS_DOC = ("scores `[N, C]` or `[N, C, d1, ...]`, target `[N]` or `[N, d1, ...]` "
              "(i32 or i64) → `[]` (f32)")

register(OpDef(
    name="cross_entropy",
    attrs=(AttrSpec("label_smoothing", "float", default=0.0, minimum=0.0,
                    help="the share of the target spread evenly over all classes"),
           _IGNORE_INDEX),
    infer=_classes_infer("cross_entropy"),
    reference=lambda attrs, logits, target: _classes_reference(
        _log_softmax64(logits), target, attrs["ignore_index"], attrs["label_smoothing"]),
    decompose=_cross_entropy_parts,
    min_inputs=2,
    max_inputs=2,
    flops=_classes_flops(8),
    kind="reduction",
    role="layout",  # never fused: the code generator computes its decomposition
    dtypes=(*FLOAT_DTYPES, *INTEGER_DTYPES),
    summary="`F.cross_entropy(logits, target, ignore_index=ignore_index, "
            "label_smoothing=label_smoothing)`: the mean over the targets not ignored of "
            "-log_softmax(logits)[target] (all ignored: NaN); a class id outside [0, C) gives NaN "
            "(PyTorch raises an error)",
    doc=OpDoc(shapes=_CLASS_DOC, flops="8 in",
              attrs="`label_smoothing` in [0, 1]; the class dimension is a number"),
))

register(OpDef(
    name="nll_loss",
    attrs=(_IGNORE_INDEX,),
    infer=_classes_infer("nll_loss"),
    reference=lambda attrs, log_probs, target: _classes_reference(
        np.asarray(log_probs, dtype=np.float64), target, attrs["ignore_index"], 0.0),
    decompose=_nll_loss_parts,
    min_inputs=2,
    max_inputs=2,
    flops=_classes_flops(2),
    kind="reduction",
    role="layout",
    dtypes=(*FLOAT_DTYPES, *INTEGER_DTYPES),
    summary="`F.nll_loss(logp, target, ignore_index=ignore_index)`: the mean over the targets "
            "not ignored of -logp[target] (all ignored: NaN); a class id outside [0, C) gives "
            "NaN (PyTorch raises an error)",
    doc=OpDoc(shapes=_CLASS_DOC, flops="2 in", attrs="the class dimension is a number"),
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
     "`F.mse_loss(a, b)`: the mean of (a - b)^2"),
    ("l1_loss", lambda a, b: np.abs(a - b), _l1_parts, 3, "a, b",
     "`F.l1_loss(a, b)`: the mean of |a - b|"),
    ("bce_with_logits", _bce_reference, _bce_parts, 8, "logits, target",
     "`F.binary_cross_entropy_with_logits(logits, target)`: the mean of "
     "-(y log σ(x) + (1 - y) log(1 - σ(x))), computed stably as (1 - y) x - min(x, 0) + "
     "log(1 + exp(-|x|))"),
)

for _name, _function, _parts, _flops, _operands, _summary in _PAIRS:
    register(OpDef(
        name=_name,
        infer=_pair_infer(_name),
        reference=_pair_reference(_function),
        decompose=_parts,
        min_inputs=2,
        max_inputs=2,
        flops=lambda attrs, inputs, output, per=_flops: per * math.prod(inputs[0]),
        kind="reduction",
        role="layout",
        summary=_summary,
        doc=OpDoc(shapes=f"{_operands} of one shape and dtype → `[]` (f32)",
                  flops=f"{_flops} in"),
    ))
