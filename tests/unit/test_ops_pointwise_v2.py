"""The float pointwise ops of language version 2 against PyTorch and onnxruntime.

`relu6`, `hardtanh`, `clamp`, `hardswish`, `hardsigmoid`, `elu`, `softplus`, `mish`, `exp`,
`log`, `sqrt`, `rsqrt`, `abs`, `erf`, `sin`, `cos`, `pow`, `neg`, `gelu(approximate=)` and the
binary `div`, `maximum`, `minimum`:
- each op's NumPy reference against torch (CPU) on Hypothesis shapes (ragged sizes among small
  ones) and attributes, with values at the op's kinks (0, ±3, the clamp bounds, softplus's
  threshold) mixed into random ones, and NaN / ±inf giving exactly what torch gives;
- the reference against onnxruntime on the exported single-op model;
- the ONNX import of each exported op (the ops it becomes, the same numbers, `.net` text that
  loads), and of ONNX models written the ways other exporters write these ops;
- the diagnostics for attributes that do not fit, and a `.net` program using every op.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from onnx import helper, numpy_helper

import netc
from netc.diagnostics import CompileError
from netc.frontend import load_string
from netc.ir import Attrs, TensorType
from netc.onnx.export import export_op
from netc.onnx.importer import import_onnx
from netc.ops import REGISTRY, ShapeError
from netc.ops.builder import make_attrs
from netc.reference import run_reference
from tests.sim.test_nan_inf import assert_same_special_values
from tests.unit.test_onnx_import import _model
from tests.unit.test_ops_reference import broadcast_pair, run_onnx, tensor_shape

pytestmark = pytest.mark.unit

Draw = Callable[[st.SearchStrategy[Any]], Any]
NAN, INF = float("nan"), float("inf")

# The ops and how torch computes them ------------------------------------------------------

TORCH: dict[str, Callable[..., torch.Tensor]] = {
    "relu6": lambda a, x: F.relu6(x),
    "hardtanh": lambda a, x: F.hardtanh(x, a["min"], a["max"]),
    "clamp": lambda a, x: torch.clamp(x, min=a["min"], max=a["max"]),
    "hardswish": lambda a, x: F.hardswish(x),
    "hardsigmoid": lambda a, x: F.hardsigmoid(x),
    "elu": lambda a, x: F.elu(x, a["alpha"]),
    "softplus": lambda a, x: F.softplus(x, a["beta"], a["threshold"]),
    "mish": lambda a, x: F.mish(x),
    "exp": lambda a, x: torch.exp(x),
    "log": lambda a, x: torch.log(x),
    "sqrt": lambda a, x: torch.sqrt(x),
    "rsqrt": lambda a, x: torch.rsqrt(x),
    "abs": lambda a, x: torch.abs(x),
    "erf": lambda a, x: torch.erf(x),
    "sin": lambda a, x: torch.sin(x),
    "cos": lambda a, x: torch.cos(x),
    "pow": lambda a, x: torch.pow(x, a["exponent"]),
    "neg": lambda a, x: torch.neg(x),
    "gelu": lambda a, x: F.gelu(x, approximate=a["approximate"]),
    "div": lambda a, x, y: torch.div(x, y),
    "maximum": lambda a, x, y: torch.maximum(x, y),
    "minimum": lambda a, x, y: torch.minimum(x, y),
}

BINARY = ("div", "maximum", "minimum")
NEW_OPS = set(TORCH) - {"gelu"}
"""The ops version 2 adds (gelu gains `approximate`)."""


@st.composite
def _hardtanh(draw: Draw) -> dict[str, Any]:
    low = draw(st.sampled_from([-1.0, -2.5, 0.0, 0.5]))
    return {"min": low, "max": low + draw(st.sampled_from([0.0, 0.25, 2.0]))}


@st.composite
def _clamp(draw: Draw) -> dict[str, Any]:
    low = draw(st.sampled_from([None, -1.0, 0.0, 0.5, 2.0]))
    high = draw(st.sampled_from([-0.5, 1.0, 3.0] + ([None] if low is not None else [])))
    return {"min": low, "max": high}  # min > max included: everything is max, as torch


ATTRS: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "hardtanh": _hardtanh(),
    "clamp": _clamp(),
    "elu": st.fixed_dictionaries({"alpha": st.sampled_from([1.0, 0.5, 2.5, -0.3])}),
    "softplus": st.fixed_dictionaries({"beta": st.sampled_from([1.0, 2.0, 0.5, -1.0]),
                                       "threshold": st.sampled_from([20.0, 1.0, 5.0, 0.0])}),
    "pow": st.fixed_dictionaries({"exponent": st.sampled_from(
        [2.0, 3.0, 0.5, -0.5, -1.0, -2.0, 0.0, 1.0, 1.5, 1 / 3, -2.5])}),
    "gelu": st.fixed_dictionaries({"approximate": st.sampled_from(["none", "tanh"])}),
}


def attrs_of(op: str) -> st.SearchStrategy[dict[str, Any]]:
    return ATTRS.get(op, st.just({}))


def kinks(values: dict[str, Any]) -> list[float]:
    """Inputs where the ops bend or switch: 0, ±1, ±3, ±6, the bounds, softplus's threshold,
    and their neighbours one float32 step away."""
    points = [0.0, -0.0, 1.0, -1.0, 3.0, -3.0, 6.0, -6.0]
    points += [v for k, v in values.items() if k in ("min", "max") and v is not None]
    if values.get("beta"):
        points.append(values["threshold"] / values["beta"])
    near = [float(np.nextafter(np.float32(p), np.float32(side))) for p in points
            for side in (-INF, INF)]
    return points + near


def draw_input(rng: np.random.Generator, shape: tuple[int, ...],
               values: dict[str, Any]) -> np.ndarray:
    """Random values of magnitude up to ~10, a quarter of them replaced by kinks."""
    x = (rng.standard_normal(shape) * rng.choice([0.5, 3.0, 10.0], size=shape))
    points = np.array(kinks(values), dtype=np.float32)
    chosen = rng.random(shape) < 0.25
    x = np.where(chosen, points[rng.integers(0, len(points), size=shape)], x)
    return np.asarray(x, dtype=np.float32)


def by_torch(op: str, attrs: Attrs, *arrays: np.ndarray) -> np.ndarray:
    tensors = [torch.from_numpy(np.array(a, dtype=np.float32)) for a in arrays]
    return TORCH[op](dict(attrs), *tensors).numpy()


# Reference against torch ------------------------------------------------------------------

# float32 NumPy against float32 torch: a few ulps (erf and gelu are computed in float64 by the
# reference; exp, sin, cos and pow by different libm approximations).
TORCH_TOLERANCE = (4e-6, 1e-6)


@pytest.mark.parametrize("op", sorted(TORCH))
@given(data=st.data())
def test_reference_matches_torch(op: str, data: st.DataObject) -> None:
    values = data.draw(attrs_of(op), label="attrs")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    shapes = list(data.draw(broadcast_pair())) if op in BINARY else [data.draw(tensor_shape())]
    arrays = [draw_input(rng, shape, values) for shape in shapes]
    types = [TensorType("f32", shape) for shape in shapes]
    attrs = make_attrs(op, values, types)
    expected = by_torch(op, attrs, *arrays)
    actual = REGISTRY[op].reference(attrs, *arrays)
    assert actual.dtype == np.float32
    assert REGISTRY[op].infer(attrs, types).concrete({}) == expected.shape
    assert_same_special_values(f"{op}{values} on {shapes}", actual, expected, *TORCH_TOLERANCE)


SPECIAL = np.array([NAN, INF, -INF, 0.0, -0.0, 1e-45, -1e-45, 3.4e38, -3.4e38, 88.0, -88.0,
                    -3.0, 3.0, 20.0, 0.5, -0.5], dtype=np.float32)

SPECIAL_CASES = [("relu6", {}), ("hardtanh", {}), ("hardtanh", {"min": 0.0, "max": 0.0}),
                 ("clamp", {"min": 0.5}), ("clamp", {"max": -0.5}),
                 ("clamp", {"min": 2.0, "max": 1.0}), ("hardswish", {}), ("hardsigmoid", {}),
                 ("elu", {}), ("elu", {"alpha": -0.3}), ("softplus", {}),
                 ("softplus", {"beta": -1.0, "threshold": 0.0}),
                 ("softplus", {"beta": 0.5, "threshold": 100.0}), ("mish", {}), ("exp", {}),
                 ("log", {}), ("sqrt", {}), ("rsqrt", {}), ("abs", {}), ("erf", {}), ("sin", {}),
                 ("cos", {}), ("neg", {}), ("gelu", {}), ("gelu", {"approximate": "tanh"})] + [
    ("pow", {"exponent": e}) for e in (2.0, 3.0, 0.5, -0.5, -1.0, -2.0, 0.0, 1.5, 1 / 3)]


def by_torch_one_at_a_time(op: str, attrs: Attrs, x: np.ndarray) -> np.ndarray:
    """torch's value for each element alone: its scalar code path, which is its definition
    (the vectorised one can differ at the extremes, see below)."""
    return np.concatenate([by_torch(op, attrs, x[i:i + 1]) for i in range(x.size)])


@pytest.mark.parametrize(("op", "values"), SPECIAL_CASES)
def test_nan_and_infinity_as_torch(op: str, values: dict[str, Any]) -> None:
    attrs = make_attrs(op, values, [TensorType("f32", SPECIAL.shape)])
    expected = by_torch_one_at_a_time(op, attrs, SPECIAL)
    assert_same_special_values(f"{op}{values}", REGISTRY[op].reference(attrs, SPECIAL),
                               expected, *TORCH_TOLERANCE)
    if (op, values) != ("gelu", {}):
        assert_same_special_values(f"{op}{values} vectorised", by_torch(op, attrs, SPECIAL),
                                   expected, *TORCH_TOLERANCE)


def test_torch_vectorised_gelu_differs_at_infinity() -> None:
    # torch 2.x's vectorised erf-form gelu gives NaN at +inf and inf at 3.4e38, its scalar
    # path (and the formula, and onnxruntime) +inf and 3.4e38. netc follows the formula; this
    # test notices when torch changes.
    x = np.array([INF, 3.4e38] * 8, dtype=np.float32)
    attrs = make_attrs("gelu", {}, [TensorType("f32", x.shape)])
    np.testing.assert_array_equal(REGISTRY["gelu"].reference(attrs, x), x)
    np.testing.assert_array_equal(by_torch_one_at_a_time("gelu", attrs, x), x)
    vectorised = by_torch("gelu", attrs, x)
    assert np.isnan(vectorised[0]) and vectorised[1] == INF


@pytest.mark.parametrize("op", BINARY)
def test_binary_nan_and_infinity_as_torch(op: str) -> None:
    # Every pair of special values, both ways round.
    a, b = (np.array(pair, dtype=np.float32) for pair in zip(*(
        (x, y) for x in SPECIAL for y in SPECIAL)))
    attrs = make_attrs(op, {}, [TensorType("f32", a.shape)] * 2)
    assert_same_special_values(op, REGISTRY[op].reference(attrs, a, b),
                               by_torch(op, attrs, a, b), 0, 0)


def test_the_cases_people_get_wrong() -> None:
    def ref(op: str, x: list[float], **values: Any) -> np.ndarray:
        array = np.array(x, dtype=np.float32)
        attrs = make_attrs(op, values, [TensorType("f32", array.shape)])
        return REGISTRY[op].reference(attrs, array)

    assert np.isnan(ref("relu6", [NAN])).all() and np.isnan(ref("clamp", [NAN], min=0.0)).all()
    np.testing.assert_array_equal(ref("clamp", [-5, 0.5, 5], min=2.0, max=1.0), [1, 1, 1])
    np.testing.assert_array_equal(ref("clamp", [INF, -INF], min=0.0), [INF, 0])
    assert np.isnan(ref("hardswish", [-INF])).all()  # -inf · 0, as torch
    np.testing.assert_array_equal(ref("hardsigmoid", [-INF, INF, 0]), [0, 1, 0.5])
    np.testing.assert_array_equal(ref("softplus", [21, 19], beta=1.0, threshold=20.0)[0], 21)
    assert np.isnan(ref("pow", [-INF], exponent=0.5)).all()  # sqrt, where C's pow gives +inf
    np.testing.assert_allclose(ref("gelu", [1.0], approximate="tanh"), [0.8411920071],
                               rtol=1e-7)
    np.testing.assert_allclose(ref("gelu", [1.0]), [0.8413447461], rtol=1e-7)
    maximum = REGISTRY["maximum"].reference(Attrs(), np.array([NAN, 1], np.float32),
                                            np.array([1, NAN], np.float32))
    assert np.isnan(maximum).all()


# Shape rules, FLOPs, attribute errors -----------------------------------------------------


def _t(*shape: int | str, dtype: str = "f32") -> TensorType:
    return TensorType(dtype, tuple(shape))


@pytest.mark.parametrize("op", BINARY)
def test_binary_ops_broadcast_like_add(op: str) -> None:
    assert REGISTRY[op].infer(Attrs(), [_t("N", 1, 4), _t(3, 1)]) == _t("N", 3, 4)
    assert REGISTRY[op].infer(Attrs(), [_t(), _t("N", 2)]) == _t("N", 2)
    with pytest.raises(ShapeError, match=r"\[N, 3\].*\[5, 3\]"):
        REGISTRY[op].infer(Attrs(), [_t("N", 3), _t(5, 3)])
    with pytest.raises(ShapeError, match="one dtype"):
        REGISTRY[op].infer(Attrs(), [_t(3), _t(3, dtype="f16")])


def test_flops_and_docs() -> None:
    def flops(op: str, shape: tuple[int, ...], **values: Any) -> int:
        types = [TensorType("f32", shape)] * REGISTRY[op].min_inputs
        attrs = make_attrs(op, values, types)
        return REGISTRY[op].flops(attrs, [shape] * len(types), shape)

    assert flops("exp", (2, 3)) == 6 and flops("div", (5,)) == 5
    assert flops("hardswish", (4,)) == 20 and flops("softplus", (1,)) == 4
    for op in TORCH:
        opdef = REGISTRY[op]
        assert opdef.summary and opdef.role == "pointwise" and opdef.is_pointwise, op
        assert opdef.doc.flops.endswith("out"), op
    assert "min ≤ max" in REGISTRY["hardtanh"].doc.attrs
    assert "at least one" in REGISTRY["clamp"].doc.attrs


def _diagnostics(body: str) -> list[tuple[str, str]]:
    with pytest.raises(CompileError) as caught:
        netc.loads(f"network bad {{\n    input x: f32[N, 4]\n    output y = {body}\n}}\n")
    return [(d.code, d.message) for d in caught.value.diagnostics]


@pytest.mark.parametrize(("body", "code", "fragment"), [
    ("clamp(x)", "E0304", "needs `min`, `max` or both"),
    ("hardtanh(x, 2, 1)", "E0304", "min <= max, got min=2.0, max=1.0"),
    ("hardtanh(x, max=-2)", "E0304", "min=-1.0, max=-2.0"),
    ("softplus(x, beta=0)", "E0304", "nonzero `beta`"),
    ('gelu(x, approximate="tan")', "E0212", '"none", "tanh"'),
    ("gelu(x, approximate=true)", "E0205", "must be a string"),
    ("pow(x)", "E0304", "`pow` needs an exponent: a number or a tensor"),
    ('pow(x, "2")', "E0205", "must be a number"),
    ("clamp(x, lo=0)", "E0204", "`clamp` has no attribute `lo`"),
    ("maximum(x, 0.5)", "E0203", "must be a tensor"),
    ("div(x)", "E0203", ""),
    ("exp(x, x)", "E0203", ""),
])
def test_bad_attributes_are_diagnosed(body: str, code: str, fragment: str) -> None:
    problems = _diagnostics(body)
    assert any(c == code and fragment in m for c, m in problems), problems


def test_hardtanh_and_clamp_accept_equal_bounds() -> None:
    x = np.array([-2, 0.5, 2], dtype=np.float32)
    for op in ("hardtanh", "clamp"):
        attrs = make_attrs(op, {"min": 0.5, "max": 0.5}, [TensorType("f32", (3,))])
        np.testing.assert_array_equal(REGISTRY[op].reference(attrs, x), [0.5] * 3)


# Reference against onnxruntime ------------------------------------------------------------

# (rtol, atol) for |onnxruntime - reference|: clamps, abs, neg, sqrt, max, min and division
# are exact; the rest differ by onnxruntime's vectorised exp, log, tanh, erf, sin and cos, by
# HardSigmoid's alpha·x + beta against (x + 3) / 6, and by pow's x·x·x against powf.
ORT_TOLERANCES: dict[str, tuple[float, float]] = {
    "relu6": (0, 0), "hardtanh": (0, 0), "clamp": (0, 0), "abs": (0, 0), "neg": (0, 0),
    "sqrt": (0, 0), "div": (0, 0), "maximum": (0, 0), "minimum": (0, 0),
    "hardswish": (1e-6, 1e-6), "hardsigmoid": (1e-6, 1e-6), "elu": (1e-6, 1e-6),
    "softplus": (1e-6, 1e-6), "mish": (2e-6, 1e-6), "exp": (1e-6, 1e-6), "log": (1e-6, 1e-6),
    "rsqrt": (1e-6, 0), "erf": (1e-6, 1e-6), "sin": (1e-6, 1e-6), "cos": (1e-6, 1e-6),
    "pow": (2e-6, 1e-6), "gelu": (1e-6, 1e-6),
}


def test_every_op_has_a_tolerance() -> None:
    assert set(ORT_TOLERANCES) == set(TORCH)
    assert set(REGISTRY) >= NEW_OPS


@pytest.mark.parametrize("op", sorted(TORCH))
@given(data=st.data())
def test_reference_matches_onnxruntime(op: str, data: st.DataObject) -> None:
    values = data.draw(attrs_of(op), label="attrs")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    shapes = list(data.draw(broadcast_pair())) if op in BINARY else [data.draw(tensor_shape())]
    symbolic = op not in BINARY and len(shapes[0]) >= 2 and data.draw(st.booleans(),
                                                                       label="named batch")
    types = [TensorType("f32", ("N", *s[1:]) if symbolic else s) for s in shapes]
    attrs = make_attrs(op, values, types)
    arrays = [draw_input(rng, shape, values) for shape in shapes]
    expected = REGISTRY[op].reference(attrs, *arrays)
    actual = run_onnx(export_op(op, attrs, types), {f"input_{i}": a for i, a in enumerate(arrays)})
    assert_same_special_values(f"{op}{values} on {shapes}", actual, expected, *ORT_TOLERANCES[op])


# Where onnxruntime 1.x (CPU) gives other special values than torch and the reference.
ORT_DIFFERS = {
    ("hardswish", "{}"): "HardSwish computes x·(x/6 + 1/2) clipped: 3.4e38 stays finite where "
                         "torch's x·(x + 3)/6 overflows to inf",
}


@pytest.mark.parametrize(("op", "values"), SPECIAL_CASES)
def test_onnxruntime_nan_and_infinity(op: str, values: dict[str, Any]) -> None:
    attrs = make_attrs(op, values, [TensorType("f32", SPECIAL.shape)])
    model = export_op(op, attrs, [TensorType("f32", SPECIAL.shape)])
    expected = REGISTRY[op].reference(attrs, SPECIAL)
    actual = run_onnx(model, {"input_0": SPECIAL})
    if (op, str(values)) in ORT_DIFFERS:
        with pytest.raises(AssertionError):
            assert_same_special_values(op, actual, expected, 1e-5, 1e-6)
        return
    assert_same_special_values(f"{op}{values}", actual, expected, 1e-5, 1e-6)


# ONNX import ------------------------------------------------------------------------------

ROUND_TRIPS: list[tuple[str, dict[str, Any], list[str]]] = [
    ("relu6", {}, ["relu6"]),
    ("hardtanh", {"min": -0.5, "max": 2.0}, ["hardtanh"]),
    ("clamp", {"min": 0.25, "max": 2.0}, ["hardtanh"]),  # the same function
    ("clamp", {"min": 2.0, "max": 1.0}, ["clamp"]),
    ("clamp", {"min": 0.25}, ["clamp"]),
    ("clamp", {"max": -0.25}, ["clamp"]),
    ("hardswish", {}, ["hardswish"]),
    ("hardsigmoid", {}, ["hardsigmoid"]),
    ("elu", {"alpha": 0.7}, ["elu"]),
    ("softplus", {}, ["softplus"]),
    ("softplus", {"beta": 2.0, "threshold": 3.0}, ["mul", "softplus", "mul", "gt", "where"]),
    ("mish", {}, ["mish"]),
    ("exp", {}, ["exp"]),
    ("log", {}, ["log"]),
    ("sqrt", {}, ["sqrt"]),
    ("rsqrt", {}, ["rsqrt"]),
    ("abs", {}, ["abs"]),
    ("erf", {}, ["erf"]),
    ("sin", {}, ["sin"]),
    ("cos", {}, ["cos"]),
    ("pow", {"exponent": 3.0}, ["pow"]),
    ("pow", {"exponent": 0.5}, ["sqrt"]),
    ("pow", {"exponent": -0.5}, ["rsqrt"]),
    ("neg", {}, ["neg"]),
    ("gelu", {}, ["gelu"]),
    ("gelu", {"approximate": "tanh"}, ["gelu"]),  # PyTorch's spelling, recognised
    ("div", {}, ["div"]),
    ("maximum", {}, ["maximum"]),
    ("minimum", {}, ["minimum"]),
]


def float32_attrs(attrs: Attrs) -> dict[str, Any]:
    """Float attributes as float32, as an ONNX model keeps them."""
    return {k: np.float32(v) if isinstance(v, float) else v for k, v in attrs.items()}


def _round_trip_inputs(op: str, values: dict[str, Any]) -> list[np.ndarray]:
    rng = np.random.default_rng(11)
    arrays = [draw_input(rng, (3, 33), values) for _ in range(REGISTRY[op].min_inputs)]
    arrays[0][0, :3] = [NAN, INF, -INF]
    return arrays


@pytest.mark.parametrize(("op", "values", "ops"), ROUND_TRIPS)
def test_exported_op_imports_back(op: str, values: dict[str, Any], ops: list[str]) -> None:
    types = [TensorType("f32", ("N", 33))] * REGISTRY[op].min_inputs
    attrs = make_attrs(op, values, types)
    imported = import_onnx(export_op(op, attrs, types))
    assert [node.op for node in imported.graph.compute_nodes] == ops
    if ops == [op]:  # the same attributes, as ONNX keeps them (float32)
        assert float32_attrs(imported.graph.compute_nodes[0].attrs) == float32_attrs(attrs)
    arrays = _round_trip_inputs(op, values)
    feeds = {f"input_{i}": a for i, a in enumerate(arrays)}
    (again,) = run_reference(imported.graph, imported.weights, feeds).values()
    assert_same_special_values(f"{op}{values} imported", again,
                               REGISTRY[op].reference(attrs, *arrays), 1e-6, 1e-7)


def assert_text_loads(imported: Any) -> None:
    """`imported.text` loads as the graph the importer built (source spans aside)."""
    def structure(nodes: Any) -> list[tuple[Any, ...]]:
        return [(n.id, n.op, n.inputs, float32_attrs(n.attrs), n.type) for n in nodes]

    assert structure(load_string(imported.text).nodes) == structure(imported.graph.nodes)


def _text_loads(op: str, values: dict[str, Any]) -> None:
    types = [TensorType("f32", ("N", 33))] * REGISTRY[op].min_inputs
    assert_text_loads(import_onnx(export_op(op, make_attrs(op, values, types), types)))


@pytest.mark.parametrize(("op", "values"), [(op, values) for op, values, _ in ROUND_TRIPS])
def test_imported_text_loads(op: str, values: dict[str, Any]) -> None:
    _text_loads(op, values)


def _scalar(name: str, value: float) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(value, dtype=np.float32), name)


def _import_and_compare(model: onnx.ModelProto) -> list[str]:
    """Imports `model`, checks the `.net` text loads and its numbers against onnxruntime
    (specials included); returns the ops it became."""
    imported = import_onnx(model)
    assert_text_loads(imported)
    rng = np.random.default_rng(5)
    feeds = {}
    for info in model.graph.input:
        shape = [2 if d.dim_param else d.dim_value for d in info.type.tensor_type.shape.dim]
        # NaN, but no infinity: onnxruntime's Clip with a bound left out clips it to
        # ±FLT_MAX, torch.clamp does not (infinities are checked against torch above).
        x = (rng.standard_normal(shape) * 4).astype(np.float32).reshape(-1)
        x[:3] = [NAN, 3.0, -3.0][:x.size]
        feeds[info.name] = x.reshape(shape)
    outputs = [o.name for o in model.graph.output]
    session_outputs = run_all(model, feeds)
    ours = run_reference(imported.graph, imported.weights, feeds)
    for name, expected in zip(outputs, session_outputs):
        assert_same_special_values(name, ours[imported.outputs[name]], expected, 2e-6, 1e-6)
    return [node.op for node in imported.graph.compute_nodes]


def run_all(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime

    session = onnxruntime.InferenceSession(model.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    return list(session.run(None, feeds))


def _clip(*operands: str, opset: int = 17, **attrs: Any) -> onnx.ModelProto:
    # Followed by Neg: a model that is the identity has no `.net` form to compare.
    nodes = [helper.make_node("Constant", [], ["c_max"], value_float=1.5),
             helper.make_node("Clip", ["x", *operands], ["c"], **attrs),
             helper.make_node("Neg", ["c"], ["y"])]
    return _model(nodes, {"x": ["N", 5]}, ["y"], [_scalar("zero", 0.0), _scalar("six", 6.0),
                                                  _scalar("low", -0.5)], opset=opset)


@pytest.mark.parametrize(("model", "ops"), [
    (_clip("zero", "six"), ["relu6", "neg"]),
    (_clip("low", "c_max"), ["hardtanh", "neg"]),  # a bound from a Constant node
    (_clip("low"), ["clamp", "neg"]),
    (_clip("", "c_max"), ["clamp", "neg"]),
    (_clip(), ["neg"]),  # no bounds: the identity
    (_clip(opset=6, min=0.0, max=6.0), ["relu6", "neg"]),
    (_clip(opset=6, min=-0.5), ["clamp", "neg"]),
    (_model([helper.make_node("HardSigmoid", ["x"], ["y"], alpha=1 / 6, beta=0.5)],
            {"x": ["N", 5]}, ["y"]), ["hardsigmoid"]),
    (_model([helper.make_node("HardSigmoid", ["x"], ["y"])], {"x": ["N", 5]}, ["y"]),
     ["mul", "add", "clamp"]),  # ONNX's default alpha 0.2, spelled out
    (_model([helper.make_node("HardSwish", ["x"], ["y"])], {"x": ["N", 5]}, ["y"]),
     ["hardswish"]),
    (_model([helper.make_node("Elu", ["x"], ["y"])], {"x": ["N", 5]}, ["y"]), ["elu"]),
    (_model([helper.make_node("Softplus", ["x"], ["y"])], {"x": ["N", 5]}, ["y"]),
     ["softplus"]),
    (_model([helper.make_node("Div", ["x", "z"], ["y"])], {"x": ["N", 5], "z": [1, 5]}, ["y"]),
     ["div"]),
    (_model([helper.make_node("Div", ["x", "two"], ["y"])], {"x": ["N", 5]}, ["y"],
            [_scalar("two", 2.0)]), ["mul"]),  # a constant divisor: x * 0.5, as before
    (_model([helper.make_node("Div", ["six", "x"], ["y"])], {"x": ["N", 5]}, ["y"],
            [_scalar("six", 6.0)]), ["div"]),
    (_model([helper.make_node("Div", ["x", "zero"], ["y"])], {"x": ["N", 5]}, ["y"],
            [_scalar("zero", 0.0)]), ["div"]),  # ±inf, NaN for 0 / 0
    (_model([helper.make_node("Pow", ["x", "three"], ["y"])], {"x": ["N", 5]}, ["y"],
            [_scalar("three", 3.0)]), ["pow"]),
    (_model([helper.make_node("Reciprocal", ["x"], ["y"])], {"x": ["N", 5]}, ["y"]), ["div"]),
    (_model([helper.make_node("Max", ["x", "z", "w"], ["y"])],
            {"x": ["N", 5], "z": [1, 5], "w": ["N", 1]}, ["y"]), ["maximum", "maximum"]),
    (_model([helper.make_node("Max", ["x", "zero", "low"], ["y"])], {"x": ["N", 5]}, ["y"],
            [_scalar("zero", 0.0), _scalar("low", -0.5)]), ["clamp"]),
    (_model([helper.make_node("Min", ["six", "x"], ["y"])], {"x": ["N", 5]}, ["y"],
            [_scalar("six", 6.0)]), ["clamp"]),
    (_model([helper.make_node("Min", ["x"], ["m"]), helper.make_node("Neg", ["m"], ["y"])],
            {"x": ["N", 5]}, ["y"]), ["neg"]),
    (_model([helper.make_node("Sqrt", ["x"], ["r"]), helper.make_node("Div", ["one", "r"], ["y"])],
            {"x": ["N", 5]}, ["y"], [_scalar("one", 1.0)]), ["rsqrt"]),
    (_model([helper.make_node("Sqrt", ["x"], ["r"]), helper.make_node("Div", ["two", "r"], ["y"])],
            {"x": ["N", 5]}, ["y"], [_scalar("two", 2.0)]), ["sqrt", "div"]),
    (_model([helper.make_node("Sqrt", ["x"], ["r"]), helper.make_node("Reciprocal", ["r"], ["q"]),
             helper.make_node("Add", ["q", "r"], ["y"])], {"x": ["N", 5]}, ["y"]),
     ["sqrt", "div", "add"]),  # the root is used twice: no rsqrt
    (_model([helper.make_node("Softplus", ["x"], ["s"]), helper.make_node("Tanh", ["s"], ["t"]),
             helper.make_node("Mul", ["t", "x"], ["y"])], {"x": ["N", 5]}, ["y"]), ["mish"]),
    (_model([helper.make_node("Softplus", ["x"], ["s"]), helper.make_node("Tanh", ["s"], ["t"]),
             helper.make_node("Mul", ["t", "z"], ["y"])], {"x": ["N", 5], "z": ["N", 5]}, ["y"]),
     ["softplus", "tanh", "mul"]),  # times another tensor: no mish
] + [
    (_model([helper.make_node(op, ["x"], ["y"])], {"x": ["N", 5]}, ["y"]), [op.lower()])
    for op in ("Exp", "Log", "Sqrt", "Abs", "Erf", "Sin", "Cos", "Neg")
] + [
    (_model([helper.make_node("Mish", ["x"], ["y"])], {"x": ["N", 5]}, ["y"], opset=18),
     ["mish"]),
] + [
    (_model([helper.make_node("Gelu", ["x"], ["y"], approximate=form)], {"x": ["N", 5]}, ["y"],
            opset=20), ["gelu"]) for form in ("none", "tanh")
])
def test_onnx_models_import(model: onnx.ModelProto, ops: list[str]) -> None:
    assert _import_and_compare(model) == ops


class _TorchOps(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (torch.rsqrt(x) + F.mish(x) + F.relu6(x) + torch.clamp(x, min=0.5)
                + torch.clamp(x, max=-0.5) + F.hardtanh(x, -2.0, 2.0) + F.softplus(x)
                + F.hardsigmoid(x) + F.hardswish(x) + torch.pow(x, 2.5) + F.elu(x, 0.5)
                + torch.maximum(x, 2.0 - x) / torch.minimum(x, -x) - torch.neg(x.exp()).abs()
                + torch.erf(x.sin() * x.cos()))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the exporter's own notices
def test_what_pytorchs_exporter_writes_imports(tmp_path: Path) -> None:
    # torch.onnx.export's TorchScript exporter at opset 17 (the one without onnxscript).
    path = tmp_path / "ops.onnx"
    x = torch.rand(3, 33) * 4 + 0.1
    torch.onnx.export(_TorchOps(), (x,), str(path), opset_version=17, dynamo=False,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "N"}})
    imported = import_onnx(onnx.load(str(path)))
    ops = [node.op for node in imported.graph.compute_nodes]
    for op in ("rsqrt", "mish", "relu6", "clamp", "hardtanh", "softplus", "hardsigmoid",
               "hardswish", "pow", "elu", "maximum", "minimum", "div", "neg", "abs", "exp",
               "erf", "sin", "cos"):
        assert op in ops, (op, ops)
    assert_text_loads(imported)
    (ours,) = run_reference(imported.graph, imported.weights, {"x": x.numpy()}).values()
    assert_same_special_values("torch module", ours, _TorchOps()(x).numpy(), 1e-5, 1e-5)


def test_imported_attributes() -> None:
    imported = import_onnx(_model([helper.make_node("Gelu", ["x"], ["y"], approximate="tanh")],
                                  {"x": ["N", 5]}, ["y"], opset=20))
    assert imported.graph.compute_nodes[0].attrs["approximate"] == "tanh"
    clamp = import_onnx(_clip("", "c_max")).graph.compute_nodes[0].attrs
    assert (clamp["min"], clamp["max"]) == (None, 1.5)
    power = import_onnx(_model([helper.make_node("Pow", ["x", "e"], ["y"])], {"x": ["N", 5]},
                               ["y"], [_scalar("e", -2.5)])).graph.compute_nodes[0]
    assert power.attrs["exponent"] == -2.5


def _codes(model: onnx.ModelProto) -> list[str]:
    with pytest.raises(CompileError) as caught:
        import_onnx(model)
    return [d.code for d in caught.value.diagnostics]


def test_what_does_not_import_is_diagnosed() -> None:
    # A tensor exponent imports (`pow(x, z)`); a constant exponent of several values not.
    pow_vector = _model([helper.make_node("Pow", ["x", "v"], ["y"])], {"x": ["N", 5]}, ["y"],
                        [numpy_helper.from_array(np.arange(5, dtype=np.float32), "v")])
    assert _codes(pow_vector) == ["E0607"]
    clip_runtime = _model([helper.make_node("ReduceMax", ["x"], ["z"], keepdims=0),
                           helper.make_node("Clip", ["x", "z"], ["y"])], {"x": ["N", 5]}, ["y"])
    assert _codes(clip_runtime) == ["E0603"]
    clip_vector = _model([helper.make_node("Clip", ["x", "v"], ["y"])], {"x": ["N", 5]}, ["y"],
                         [numpy_helper.from_array(np.zeros(5, np.float32), "v")])
    assert _codes(clip_vector) == ["E0606"]
    gelu_other = _model([helper.make_node("Gelu", ["x"], ["y"], approximate="sigmoid")],
                        {"x": ["N", 5]}, ["y"], opset=20)
    assert _codes(gelu_other) == ["E0602"]
    # A constant tensor divisor is a free parameter in language v2, the division a `div`.
    divisor = np.arange(1, 6, dtype=np.float32)
    div_vector = _model([helper.make_node("Div", ["x", "v"], ["y"])], {"x": ["N", 5]}, ["y"],
                        [numpy_helper.from_array(divisor, "v")])
    imported = import_onnx(div_vector)
    assert "param v: f32[5]" in imported.text and "x / v" in imported.text
    x = np.linspace(-2, 2, 10, dtype=np.float32).reshape(2, 5)
    (y,) = run_reference(imported.graph, imported.weights, {"x": x}).values()
    np.testing.assert_array_equal(y, x / divisor)
    max_vector = _model([helper.make_node("Max", ["x", "v"], ["y"])], {"x": ["N", 5]}, ["y"],
                        [numpy_helper.from_array(np.arange(5, dtype=np.float32), "v")])
    assert _codes(max_vector) == ["E0606"]


# A `.net` program using every op ----------------------------------------------------------

PROGRAM = """network v2_pointwise {
    input x: f32[N, 33]
    input z: f32[N, 33]
    output relu6_ = relu6(x)
    output hardtanh_ = hardtanh(x, -0.5, 2.0)
    output clamp_ = clamp(x, min=0.25)
    output clamp_both = clamp(x |> abs, 0.5, 1.5)
    output hardswish_ = hardswish(x)
    output hardsigmoid_ = hardsigmoid(x)
    output elu_ = elu(x, alpha=0.7)
    output softplus_ = softplus(x, beta=2.0, threshold=3.0)
    output mish_ = mish(x)
    output exp_ = exp(x)
    output log_ = log(x)
    output sqrt_ = sqrt(x)
    output rsqrt_ = rsqrt(x)
    output erf_ = erf(x)
    output trig = sin(x) * cos(x)
    output pow_ = pow(x, 3)
    output extremes = maximum(x, z) - minimum(x, z)
    output quotient = div(x, z)
    output negated = neg(x) + gelu(x, approximate="tanh")
}"""


def test_a_program_using_every_op_runs() -> None:
    model = netc.loads(PROGRAM)
    used = {node.op for node in model.graph.compute_nodes}
    assert used >= NEW_OPS | {"gelu"}
    rng = np.random.default_rng(2)
    x, z = (draw_input(rng, (4, 33), {"min": 0.25}) for _ in range(2))
    x[0, :3] = [NAN, INF, -INF]
    out = model.run({"x": x, "z": z}, {})
    tx, tz = torch.from_numpy(x), torch.from_numpy(z)
    expected = {
        "relu6_": F.relu6(tx), "hardtanh_": F.hardtanh(tx, -0.5, 2.0),
        "clamp_": torch.clamp(tx, min=0.25), "clamp_both": torch.clamp(tx.abs(), 0.5, 1.5),
        "hardswish_": F.hardswish(tx), "hardsigmoid_": F.hardsigmoid(tx),
        "elu_": F.elu(tx, 0.7), "softplus_": F.softplus(tx, 2.0, 3.0), "mish_": F.mish(tx),
        "exp_": tx.exp(), "log_": tx.log(), "sqrt_": tx.sqrt(), "rsqrt_": tx.rsqrt(),
        "erf_": tx.erf(), "trig": tx.sin() * tx.cos(), "pow_": tx.pow(3),
        "extremes": torch.maximum(tx, tz) - torch.minimum(tx, tz), "quotient": tx / tz,
        "negated": -tx + F.gelu(tx, approximate="tanh"),
    }
    assert set(out) == set(expected)
    for name, value in expected.items():
        assert_same_special_values(name, out[name], value.numpy(), *TORCH_TOLERANCE)


def test_gelu_attribute_defaults_to_the_erf_form() -> None:
    model = netc.loads("network g {\n input x: f32[N, 4]\n output y = gelu(x)\n}")
    (node,) = model.graph.compute_nodes
    assert node.attrs["approximate"] == "none"
    one = np.array([1.0], np.float32)
    assert math.isclose(float(REGISTRY["gelu"].reference(node.attrs, one)[0]),
                        0.8413447460685429, rel_tol=1e-7)
