"""Before/Expected tests of the fusion passes and the `fused` op, compared structurally."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from netc.ir import Attrs, Graph, print_graph
from netc.ops import REGISTRY, ShapeError, node_flops, verify
from netc.passes.fuse_elementwise import FUSE_ELEMENTWISE
from netc.passes.fuse_epilogues import FUSE_EPILOGUES
from netc.passes.fuse_reduction_prologues import FUSE_REDUCTION_PROLOGUES
from netc.passes.fusion import ROW_LIMIT
from netc.passes.structural import assert_structurally_equal
from netc.reference import random_inputs, run_reference

from .netgen import random_weights
from .passes_testing import after, apply, expected_fusion, net, nth, run_one

pytestmark = pytest.mark.unit

FUSION = (FUSE_EPILOGUES, FUSE_REDUCTION_PROLOGUES, FUSE_ELEMENTWISE)


def test_conv_bias_activation_epilogue() -> None:
    before = after(net("output y = conv2d(x, 8, kernel=3, padding=1) |> batchnorm |> relu"), 1)
    result, context = run_one(before, FUSE_EPILOGUES)
    conv, relu = nth(before, "conv2d"), nth(before, "relu")
    assert_structurally_equal(result, expected_fusion(before, [
        ("conv_epilogue", [conv, relu], conv)]))
    assert context.messages == [
        "fused 1 pointwise op into the epilogues of 1 kernel: conv2d (1)"]
    assert result["fused_0"].layer == "conv2d_0"  # the kernel is named after its layer


def test_resnet_basic_block_is_two_kernels() -> None:
    before = after(net("""
        y = conv2d(x, 4, kernel=3, padding=1, bias=false) |> batchnorm |> relu
        y = conv2d(y, 4, kernel=3, padding=1, bias=false) |> batchnorm
        output out = relu(y + x)
    """), 1)
    result, _ = run_one(before, FUSE_EPILOGUES)
    first, second = nth(before, "conv2d", 0), nth(before, "conv2d", 1)
    assert_structurally_equal(result, expected_fusion(before, [
        ("conv_epilogue", [first, nth(before, "relu", 0)], first),
        ("conv_epilogue", [second, nth(before, "add"), nth(before, "relu", 1)], second),
    ]))


def test_downsampling_block_fuses_the_shortcut_add_into_one_conv() -> None:
    before = after(net("""
        y = conv2d(x, 8, kernel=3, stride=2, padding=1, bias=false) |> batchnorm |> relu
        y = conv2d(y, 8, kernel=3, padding=1, bias=false) |> batchnorm
        s = conv2d(x, 8, kernel=1, stride=2, bias=false) |> batchnorm
        output out = relu(y + s)
    """), 1)
    result, _ = run_one(before, FUSE_EPILOGUES)
    convs = [nth(before, "conv2d", i) for i in range(3)]
    # The first conv in graph order whose epilogue reaches the add takes it; the shortcut conv
    # (defined later) becomes an input of that kernel.
    assert_structurally_equal(result, expected_fusion(before, [
        ("conv_epilogue", [convs[0], nth(before, "relu", 0)], convs[0]),
        ("conv_epilogue", [convs[1], nth(before, "add"), nth(before, "relu", 1)], convs[1]),
    ]))


def test_epilogue_stops_where_a_value_is_used_outside_the_group() -> None:
    before = after(net("y = dense(flatten(x), 8) |> relu\noutput a = sigmoid(y)\n"
                       "output b = y * 2.0"), 1)
    result = apply(before, *FUSION)
    dense, relu = nth(before, "dense"), nth(before, "relu")
    # relu's value is needed by two kernels: it is written once, not recomputed in each.
    assert_structurally_equal(result, expected_fusion(before, [
        ("gemm_epilogue", [dense, relu], dense)]))


def test_epilogue_takes_a_diamond_whose_uses_are_all_inside() -> None:
    before = after(net("y = conv2d(x, 4, kernel=1)\noutput o = y * sigmoid(y)"), 1)
    result, _ = run_one(before, FUSE_EPILOGUES)
    conv = nth(before, "conv2d")
    assert_structurally_equal(result, expected_fusion(before, [
        ("conv_epilogue", [conv, nth(before, "sigmoid"), nth(before, "mul")], conv)]))


def test_no_fusion_that_would_recompute_a_broadcast_value() -> None:
    # Squeeze-excite: the [N, C, 1, 1] gate is broadcast over H and W. It stays a kernel of
    # its own (the pool's epilogue) rather than being recomputed for each of H*W elements,
    # and the conv cannot take the multiply, which depends on the conv through the pool.
    before = after(net("y = conv2d(x, 4, kernel=1)\n"
                       "output o = y * sigmoid(global_avgpool(y))"), 1)
    result = apply(before, *FUSION)
    pool = nth(before, "global_avgpool")
    assert_structurally_equal(result, expected_fusion(before, [
        ("reduction", [pool, nth(before, "sigmoid")], pool)]))


def test_reduction_prologue_and_epilogue() -> None:
    before = after(net("output y = softmax(tanh(x) * 2.0 + x) |> relu",
                       inputs="x: f32[N, 16]"), 1)
    result = apply(before, *FUSION)
    softmax = nth(before, "softmax")
    assert_structurally_equal(result, expected_fusion(before, [
        ("reduction", [nth(before, "tanh"), nth(before, "mul"), nth(before, "add"), softmax,
                       nth(before, "relu")], softmax)]))


def test_no_prologue_for_rows_longer_than_the_limit() -> None:
    long_rows = after(net("output y = softmax(tanh(x))", inputs=f"x: f32[N, {ROW_LIMIT + 1}]"), 1)
    assert apply(long_rows, *FUSION) is long_rows
    # global_avgpool reads each element once, whatever the size: the prologue always pays.
    pooled = after(net("output y = global_avgpool(relu(x))", inputs="x: f32[N, 2, 80, 80]"), 1)
    pool = nth(pooled, "global_avgpool")
    assert_structurally_equal(apply(pooled, *FUSION), expected_fusion(pooled, [
        ("reduction", [nth(pooled, "relu"), pool], pool)]))


def test_elementwise_chains_fuse_across_inputs_and_broadcasts() -> None:
    before = after(net("output y = (relu(x) + sigmoid(z)) * 0.5 - g",
                       inputs="x: f32[N, 4, 6, 6]; z: f32[N, 4, 6, 6]; g: f32[N, 4, 1, 1]"), 1)
    result, context = run_one(before, FUSE_ELEMENTWISE)
    members = [nth(before, op) for op in ("relu", "sigmoid", "add", "mul", "sub")]
    assert_structurally_equal(result, expected_fusion(before, [
        ("elementwise", members, members[-1])]))
    assert context.messages == ["fused 5 pointwise ops into 1 elementwise kernel"]


def test_elementwise_group_stops_at_an_output_and_at_another_shape() -> None:
    before = after(net("a = relu(x) |> tanh\noutput a\noutput b = a * 2.0\n"
                       "output c = sigmoid(g) * x", inputs="x: f32[N, 4, 6, 6]; g: f32[N, 4, 1, 1]"),
                   1)
    result, _ = run_one(before, FUSE_ELEMENTWISE)
    assert_structurally_equal(result, expected_fusion(before, [
        ("elementwise", [nth(before, "relu"), nth(before, "tanh")], nth(before, "tanh"))]))


def test_unfolded_batchnorm_fuses_as_a_pointwise_op() -> None:
    before = after(net("output y = relu(batchnorm(x + x))"), 1)
    result, _ = run_one(before, FUSE_ELEMENTWISE)
    members = [nth(before, op) for op in ("add", "batchnorm", "relu")]
    assert_structurally_equal(result, expected_fusion(before, [
        ("elementwise", members, members[-1])]))


def test_fusion_passes_change_nothing_without_pointwise_ops() -> None:
    before = after(net("output y = maxpool2d(conv2d(x, 4, kernel=3), 2)"), 1)
    assert apply(before, *FUSION) is before


# The fused op -----------------------------------------------------------------------------


def _fused_block() -> tuple[Graph, Graph]:
    before = after(net("y = conv2d(x, 8, kernel=3, padding=1) |> batchnorm\n"
                       "output o = silu(y + 1.0) * y"), 1)
    return before, apply(before, *FUSION)


def test_fused_reference_is_the_unfused_computation() -> None:
    before, fused = _fused_block()
    weights = random_weights(before, seed=2)
    inputs = random_inputs(before, batch=3, seed=2)
    np.testing.assert_array_equal(run_reference(fused, weights, inputs)["o"],
                                  run_reference(before, weights, inputs)["o"])


def test_fused_flops_are_the_sum_of_its_body() -> None:
    before, fused = _fused_block()
    sizes = {"N": 2}
    total = sum(node_flops(n, [before[i].type for i in n.inputs], sizes)
                for n in before.compute_nodes)
    (group,) = fused.compute_nodes
    assert node_flops(group, [fused[i].type for i in group.inputs], sizes) == total


def test_fused_infer_checks_the_body() -> None:
    _, fused = _fused_block()
    (group,) = fused.compute_nodes
    region = group.region
    assert region is not None
    body = region.members
    broken = replace(body[1], type=replace(body[1].type, shape=("N", 8, 6, 7)))
    bad = replace(region, members=(body[0], broken, *body[2:]))
    with pytest.raises(ShapeError, match="has type"):
        REGISTRY["fused"].infer_all(Attrs(region=bad), [fused[i].type for i in group.inputs])
    dangling = replace(body[1], inputs=("nowhere",))
    with pytest.raises(ShapeError, match="not an earlier member"):
        REGISTRY["fused"].infer(Attrs(region=replace(region, members=(body[0], dangling))),
                                [fused[i].type for i in group.inputs])
    verify(fused)


def test_printer_shows_fused_bodies() -> None:
    _, fused = _fused_block()
    text = print_graph(fused)
    assert 'fused(%x, %conv2d_0.weight@folded, %conv2d_0.bias@folded' in text
    assert 'kind="conv_epilogue") {  [conv2d_0]' in text
    assert "\n      %conv2d_0: f32[N, 8, 6, 6] = conv2d($0, $1, $2" in text
    assert text.count("\n  }\n") == 1


def test_fused_cannot_be_written_in_source() -> None:
    from netc.diagnostics import CompileError

    with pytest.raises(CompileError):
        net("output y = fused(x)")  # the op exists only for the passes
