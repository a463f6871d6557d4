"""Before/Expected tests of the folding and cleanup passes (-O1), compared structurally."""

from __future__ import annotations

import numpy as np
import pytest

from netc.ir import Attrs, Graph, Node, TensorType
from netc.ops.builder import GraphBuilder
from netc.passes import WeightTransform, apply_weight_transforms
from netc.passes.eliminate_common_subexpressions import ELIMINATE_COMMON_SUBEXPRESSIONS
from netc.passes.eliminate_dead_code import ELIMINATE_DEAD_CODE
from netc.passes.fold_batchnorm import FOLD_BATCHNORM
from netc.passes.fold_constants import FOLD_CONSTANTS
from netc.passes.remove_dropout import REMOVE_DROPOUT
from netc.passes.simplify_views import SIMPLIFY_VIEWS
from netc.passes.structural import assert_structurally_equal, structural_diff
from netc.reference import random_inputs, run_reference

from .netgen import random_weights
from .passes_testing import net, nth, run_one

pytestmark = pytest.mark.unit


def test_structural_equality_ignores_ids_but_not_sharing() -> None:
    once = net("a = relu(x)\noutput y = a + a")
    twice = net("output y = relu(x) + relu(x)")
    assert structural_diff(once, once) is None
    assert structural_diff(net("b = relu(x)\noutput y = b + b"), once) is None  # other ids
    difference = structural_diff(twice, once)
    assert difference is not None and "computed twice" in difference
    dead = net("a = relu(x)\nb = tanh(x)\noutput y = a + a")
    assert "no output needs" in (structural_diff(dead, once) or "")


# remove_dropout ---------------------------------------------------------------------------


def test_remove_dropout() -> None:
    before = net("h = dense(flatten(x), 8) |> dropout(p=0.5) |> relu\n"
                 "output y = dropout(h, p=0.1) |> dropout")
    result, context = run_one(before, REMOVE_DROPOUT)
    assert_structurally_equal(result, net("output y = dense(flatten(x), 8) |> relu"))
    assert context.messages == ["removed 3 dropouts"]
    assert context.lineage[nth(before, "dropout", 2)] == nth(before, "relu")


def test_remove_dropout_keeps_one_that_is_an_output_of_an_input() -> None:
    before = net("output y = dropout(x)")
    result, _ = run_one(before, REMOVE_DROPOUT)
    assert result is before  # the output would otherwise be the input itself


# simplify_views ---------------------------------------------------------------------------


def test_simplify_views_merges_chains_and_drops_identities() -> None:
    before = net("f = flatten(relu(x))\n"                    # [N, 144]
                 "r = reshape(f, [12, 12]) |> reshape([144])\n"  # back to [N, 144]
                 "output y = flatten(f) + r")                  # flatten of [N, 144]: identity
    result, context = run_one(before, SIMPLIFY_VIEWS)
    # The chain of two reshapes now reads relu directly; it is no longer the identity.
    expected = net("a = relu(x)\noutput y = flatten(a) + reshape(a, [144])")
    assert_structurally_equal(result, expected)
    assert context.messages == ["merged 2 chained views", "removed 1 identity view"]


def test_simplify_views_chain_becomes_one_reshape() -> None:
    before = net("output y = reshape(flatten(relu(x)), [36, 4])")
    result, _ = run_one(before, SIMPLIFY_VIEWS)
    assert_structurally_equal(result, net("output y = reshape(relu(x), [36, 4])"))


def test_simplify_views_leaves_single_views_alone() -> None:
    before = net("output y = flatten(relu(x))")
    assert run_one(before, SIMPLIFY_VIEWS)[0] is before


# fold_constants ---------------------------------------------------------------------------


def test_fold_constants_removes_identities() -> None:
    before = net("a = relu(x) * 1.0 + 0.0\nb = 1.0 * (0.0 + a) - 0.0\noutput y = b * 0.5")
    result, context = run_one(before, FOLD_CONSTANTS)
    assert_structurally_equal(result, net("output y = relu(x) * 0.5"))
    assert context.messages == ["removed 5 arithmetic identities"]


def test_fold_constants_keeps_an_identity_whose_removal_makes_an_output_an_input() -> None:
    as_output = net("output y = x * 1.0")
    assert run_one(as_output, FOLD_CONSTANTS)[0] is as_output


def test_fold_constants_evaluates_constant_expressions() -> None:
    builder = GraphBuilder("consts")
    x = builder.input("x", "f32", ("N", 3))
    half, two = builder.constant(0.5), builder.constant(2.0)
    one = builder.op("mul", half, two)              # = 1.0, so x * one is an identity too
    three = builder.op("add", one, builder.constant(2.0))
    builder.output("y", builder.op("mul", builder.op("mul", builder.op("relu", x), one), three))
    before = builder.build()
    result, _ = run_one(before, FOLD_CONSTANTS)
    expected = GraphBuilder("consts")
    x = expected.input("x", "f32", ("N", 3))
    expected.output("y", expected.op("mul", expected.op("relu", x), expected.constant(3.0)))
    assert_structurally_equal(result, expected.build())


# eliminate_dead_code and eliminate_common_subexpressions ----------------------------------


def test_eliminate_dead_code() -> None:
    before = net("unused = conv2d(x, 8, kernel=3) |> relu\nalso = dense(flatten(x), 4)\n"
                 "output y = sigmoid(x)", inputs="x: f32[N, 4, 6, 6]; spare: f32[N, 3]")
    result, context = run_one(before, ELIMINATE_DEAD_CODE)
    assert_structurally_equal(result, net("output y = sigmoid(x)",
                                          inputs="x: f32[N, 4, 6, 6]; spare: f32[N, 3]"))
    assert "spare" in result  # inputs are the network's interface, even when unused
    assert context.lineage[nth(before, "conv2d")] is None
    assert run_one(result, ELIMINATE_DEAD_CODE)[0] is result


def test_eliminate_common_subexpressions() -> None:
    before = net("a = relu(x) * 0.5\nb = relu(x) * 0.5\nc = conv2d(x, 4, kernel=1)\n"
                 "d = conv2d(x, 4, kernel=1)\noutput y = a + b + c + d")
    result, context = run_one(before, ELIMINATE_COMMON_SUBEXPRESSIONS)
    # The two convs are different layers (different weights): both stay.
    expected = net("a = relu(x) * 0.5\nc = conv2d(x, 4, kernel=1)\n"
                   "d = conv2d(x, 4, kernel=1)\noutput y = a + a + c + d")
    assert_structurally_equal(result, expected)
    assert context.messages == ["merged 2 duplicate computations and 1 duplicate constant"]


# fold_batchnorm ---------------------------------------------------------------------------


def _folded_conv(before: Graph, conv: Node, stem: str = "conv2d_0") -> list[Node]:
    weight = before[conv.inputs[1]]
    channels = weight.type.shape[0]
    return [
        Node(f"{stem}.weight@folded", "param", (), Attrs(), weight.type, layer=stem),
        Node(f"{stem}.bias@folded", "param", (), Attrs(), TensorType("f32", (channels,)),
             layer=stem),
        Node("folded", conv.op, ("x", f"{stem}.weight@folded", f"{stem}.bias@folded"),
             conv.attrs.replace(bias=True), conv.type, layer=stem),
    ]


@pytest.mark.parametrize("bias", [False, True])
def test_fold_batchnorm_into_conv(bias: bool) -> None:
    before = net(f"output y = conv2d(x, 5, kernel=3, bias={str(bias).lower()}) |> batchnorm "
                 "|> relu")
    result, context = run_one(before, FOLD_BATCHNORM)
    conv = before[nth(before, "conv2d")]
    relu = before[nth(before, "relu")]
    nodes = [before["x"], *_folded_conv(before, conv),
             Node("r", "relu", ("folded",), relu.attrs, relu.type)]
    assert_structurally_equal(result, Graph("t", tuple(nodes), (("y", "r"),)))
    statistics = ("batchnorm_0.weight", "batchnorm_0.bias", "batchnorm_0.running_mean",
                  "batchnorm_0.running_var")
    layer_bias = ("conv2d_0.bias",) if bias else ()
    assert context.transforms == [
        WeightTransform("conv2d_0.weight@folded", "batchnorm_weight",
                        ("conv2d_0.weight", statistics[0], statistics[3]), Attrs(eps=1e-5)),
        WeightTransform("conv2d_0.bias@folded", "batchnorm_bias", layer_bias + statistics,
                        Attrs(eps=1e-5, has_bias=bias)),
    ]
    assert context.messages == ["folded 1 batchnorm into conv2d"]
    assert context.lineage[nth(before, "batchnorm")] == conv.id


def test_folded_weights_follow_the_formula() -> None:
    before = net("output y = conv2d(x, 3, kernel=1) |> batchnorm(eps=0.01)")
    weights = random_weights(before, seed=3)
    _, context = run_one(before, FOLD_BATCHNORM)
    derived = apply_weight_transforms(context.transforms, weights)
    gamma, beta = weights["batchnorm_0.weight"], weights["batchnorm_0.bias"]
    mean, var = weights["batchnorm_0.running_mean"], weights["batchnorm_0.running_var"]
    scale = gamma / np.sqrt(var + 0.01)
    np.testing.assert_allclose(derived["conv2d_0.weight@folded"],
                               weights["conv2d_0.weight"] * scale[:, None, None, None], rtol=1e-6)
    np.testing.assert_allclose(derived["conv2d_0.bias@folded"],
                               (weights["conv2d_0.bias"] - mean) * scale + beta, rtol=1e-5,
                               atol=1e-7)


def test_fold_batchnorm_into_dense_only_on_features() -> None:
    folded = net("output y = dense(flatten(x), 6) |> batchnorm", inputs="x: f32[N, 2, 3]")
    result, context = run_one(folded, FOLD_BATCHNORM)
    assert [n.op for n in result.compute_nodes] == ["flatten", "dense"]
    assert context.messages == ["folded 1 batchnorm into dense"]
    # On [N, T, F], batchnorm normalises T, which the dense's weights cannot absorb.
    sequence = net("output y = dense(x, 6) |> batchnorm", inputs="x: f32[N, 2, 3]")
    assert run_one(sequence, FOLD_BATCHNORM)[0] is sequence


def test_fold_batchnorm_not_when_the_conv_output_is_used_elsewhere() -> None:
    before = net("c = conv2d(x, 4, kernel=1)\noutput y = batchnorm(c) + c")
    assert run_one(before, FOLD_BATCHNORM)[0] is before
    as_output = net("c = conv2d(x, 4, kernel=1)\noutput a = c\noutput b = batchnorm(c)")
    assert run_one(as_output, FOLD_BATCHNORM)[0] is as_output


def test_fold_two_batchnorms_in_a_row() -> None:
    before = net("output y = conv2d(x, 4, kernel=1) |> batchnorm |> batchnorm")
    weights = random_weights(before, seed=1)
    result, context = run_one(before, FOLD_BATCHNORM)
    assert [n.op for n in result.compute_nodes] == ["conv2d"]
    assert {p.id for p in result.params} == {"conv2d_0.weight@folded2", "conv2d_0.bias@folded2"}
    inputs = random_inputs(before, batch=2, seed=0)
    derived = apply_weight_transforms(context.transforms, weights)
    np.testing.assert_allclose(run_reference(result, derived, inputs)["y"],
                               run_reference(before, weights, inputs)["y"], rtol=1e-4, atol=1e-5)
