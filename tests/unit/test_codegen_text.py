"""The CUDA text the code generator writes: templates, names, comments, #line mapping, plans.

Running the kernels is tests/sim's job; these tests read the source and the plan.
"""

from __future__ import annotations

import dataclasses
import json
import re

import jinja2
import pytest

from netc.codegen import kernels, pointwise
from netc.codegen.emit import describe_node, generate, sanitize
from netc.codegen.kernels import LOWERINGS
from netc.codegen.layout import broadcast_strides, coalesce, contiguous_strides
from netc.codegen.render import render, template_names
from netc.codegen.tiles import (
    BlockTile,
    DepthwiseTile,
    GemmTile,
    GemvTile,
    MmaTile,
    RowTile,
    TileError,
)
from netc.diagnostics import CompileError, Span
from netc.ir import Attrs, Graph, Node, Region, TensorType
from netc.ops import REGISTRY
from netc.ops.builder import GraphBuilder
from netc.plan import GridDim, Size, exact_div, size_from_json, size_of, size_to_json
from tests.sim.variants import standalone

pytestmark = pytest.mark.unit

ROW = RowTile(64, 2)
BLOCK = BlockTile(128)
RELU = standalone("relu")
EPILOGUE = dataclasses.replace(standalone("sub", "tt"), rank=2, labelled=False)
SAMPLE_SPECS = [
    kernels.gemm_kernel("f32", GemmTile(), b_transposed=True, has_bias=True),
    kernels.gemm_kernel("f16", GemmTile(32, 32, 8, 4, 4), b_transposed=False, has_bias=False,
                        epilogue=EPILOGUE),
    kernels.gemm_kernel("bf16", GemvTile(8, 2), b_transposed=True, has_bias=True,
                        epilogue=RELU),
    kernels.conv2d_kernel("bf16", GemmTile(), has_bias=True),
    kernels.conv2d_kernel("f32", GemmTile(16, 64, 4, 2, 8), has_bias=False, epilogue=RELU),
    kernels.pool_kernel("maxpool2d", "f32", BLOCK),
    kernels.pool_kernel("avgpool2d", "f16", BLOCK, epilogue=EPILOGUE),
    *(kernels.row_kernel(operation, "f32", ROW) for operation in kernels.ROW_OPERATIONS),
    kernels.row_kernel("softmax", "f32", ROW, prologue=EPILOGUE, epilogue=RELU),
    kernels.concat_kernel("bf16", BLOCK),
    kernels.pad_kernel("reflect", 3, "f32", BLOCK),
    kernels.interpolate_kernel("bilinear", True, "bf16", BLOCK),
    kernels.conv_transpose2d_kernel("f16", GemmTile(), has_bias=True, epilogue=RELU),
    kernels.gemm_kernel("bf16", MmaTile(splits=4), b_transposed=False, has_bias=False,
                        split_k=True),
    kernels.conv2d_kernel("f32", GemmTile(splits=2), has_bias=False, split_k=True),
    kernels.split_k_reduce_kernel("f16", has_bias=True, epilogue=RELU),
    kernels.conv2d_weight_grad_kernel("bf16", GemmTile(32, 64, 8, 4, 4)),
    kernels.pool_grad_kernel("max", "f32", BLOCK, epilogue=RELU),
    kernels.pool_grad_kernel("avg", "f16", BLOCK),
    kernels.pool_grad_kernel("adaptive", "bf16", BLOCK, epilogue=RELU),
    kernels.interpolate_grad_kernel("nearest", False, "f32", BLOCK, epilogue=RELU),
    kernels.interpolate_grad_kernel("bilinear", True, "f16", BLOCK),
    kernels.depthwise_conv2d_kernel("bf16", DepthwiseTile(), (3, 5), has_bias=True,
                                    epilogue=RELU),
    *(kernels.elementwise_kernel(dataclasses.replace(standalone(op), rank=rank), "f32", BLOCK)
      for op in ("relu", "leaky_relu", "batchnorm", "add") for rank in (0, 3)),
    kernels.elementwise_kernel(pointwise.fill(1.0).code, "f16", BLOCK),
    kernels.elementwise_kernel(standalone("sub", "st"), "f32", BLOCK),
    kernels.embedding_kernel("f32", "i64", BLOCK),
    kernels.attention_kernel("f16", 33, 7, causal=True),
    kernels.triangle_kernel("triu", "i32", BLOCK),
    kernels.reduce_kernel("logsumexp", "f16", ROW, 2, 1, prologue=EPILOGUE, epilogue=RELU),
    kernels.reduce_kernel("argmax", "bf16", ROW, 1, 2),
    kernels.gather_kernel(dataclasses.replace(pointwise.gather((2,), "", (1,)).code, rank=2),
                          "f32", BLOCK),
]


def _mlp(span_file: str = "mlp.net") -> Graph:
    """x -> dense -> relu -> dense -> flatten, with source spans on every node."""
    builder = GraphBuilder("mlp")
    x = builder.input("x", "f32", ("N", 12))
    h = builder.op("dense", x, units=8, name="hidden")
    h = builder.op("relu", h)
    y = builder.op("dense", h, units=8)
    builder.output("y", builder.op("flatten", y))
    graph = builder.build()
    nodes = tuple(dataclasses.replace(node, span=Span(span_file, line, 5, line, 9))
                  for line, node in enumerate(graph.nodes, start=3))
    return Graph(graph.name, nodes, graph.outputs)


# Templates --------------------------------------------------------------------------------


def test_every_template_renders_with_strict_undefined() -> None:
    rendered = {spec.template for spec in SAMPLE_SPECS}
    # module.jinja renders in every generate() below; pointwise.jinja holds macros the kernel
    # templates import.
    assert rendered | {"module.jinja", "pointwise.jinja"} == set(template_names())
    for spec in SAMPLE_SPECS:
        text = spec.render()
        assert f"{spec.name}(" in text
        assert re.search(rf"__launch_bounds__\({spec.threads}(, \d+)?\)", text), spec.name
        assert not re.search(r"\{\{ | \}\}|\{%|%\}|\{#", text), "Jinja left in the output"


def test_a_missing_template_variable_is_an_error() -> None:
    spec = kernels.pool_kernel("maxpool2d", "f32", BLOCK)
    with pytest.raises(jinja2.UndefinedError):
        render(spec.template, name=spec.name, ctype="float", threads=128)


def test_storage_types_follow_the_dtype() -> None:
    for dtype, ctype in (("f32", "float"), ("f16", "netc_f16"), ("bf16", "netc_bf16")):
        text = kernels.concat_kernel(dtype, BLOCK).render()
        assert f"const {ctype}* __restrict__ input" in text
    half = generate(_graph_of("relu", "f16")).source
    assert "netc_ew_f16_relu_r0_b256(netc_f16* __restrict__ out" in half
    assert "#include" not in half, "a module needs no header (NVRTC has no include path)"


def _graph_of(op: str, dtype: str) -> Graph:
    builder = GraphBuilder("g")
    builder.output("y", builder.op(op, builder.input("x", dtype, ("N", 5))))
    return builder.build()


# Pointwise code ---------------------------------------------------------------------------


def test_pointwise_chains_become_statements_over_netc_names() -> None:
    shape = ("N", 3, 4)
    inputs = [Node("skip", "input", (), Attrs(), TensorType("f32", shape)),
              Node("half", "constant", (), Attrs(value=0.5), TensorType("f32", ())),
              Node("scale", "input", (), Attrs(), TensorType("f32", (4,)))]
    body = [Node("a", "add", ("conv", "$0"), Attrs(), TensorType("f32", shape)),
            Node("b", "leaky_relu", ("a",), Attrs(alpha=0.2), TensorType("f32", shape)),
            Node("c", "mul", ("b", "$2"), Attrs(), TensorType("f32", shape)),
            Node("d", "sub", ("$1", "c"), Attrs(), TensorType("f32", shape))]
    function = pointwise.build(body, inputs, lambda value: f"buf_{value}", shape, seed="conv")
    assert function.code.statements == (
        "const auto v0 = value + x0;",
        "const auto v1 = (v0 >= 0.0f ? v0 : v0 * p0);",
        "const auto v2 = v1 * x1;",
        "const auto v3 = p1 - v2;")
    assert function.code.result == "v3" and function.code.rank == 2
    assert [arg.buffer for arg in function.args[:2]] == ["buf_skip", "buf_scale"]
    # sizes of the merged dims [N * 3, 4], then strides of skip and of scale, then floats
    assert [arg.value for arg in function.args[2:]] == [4, 4, 1, 0, 1, 0.2, 0.5]


def test_batchnorm_parameters_repeat_along_all_but_the_channel_dim() -> None:
    code = standalone("batchnorm")
    assert code.statements == ("const auto v0 = (x0 - x3) * rsqrtf(x4 + p0) * x1 + x2;",)
    shape = ("N", 3, 2, 2)
    inputs = [Node(f"i{k}", "input", (), Attrs(),
                   TensorType("f32", shape if k == 0 else (3,))) for k in range(5)]
    node = Node("bn", "batchnorm", Region.arguments(5), Attrs(eps=1e-5),
                TensorType("f32", shape))
    function = pointwise.build([node], inputs, str, shape)
    values = [arg.value for arg in function.args[5:]]
    # [N, 3, 2 * 2]: sizes of dims 1 and 2, x's strides, each parameter's, then eps
    assert function.code.rank == 3
    assert values == [3, 4, 12, 4, 1] + [0, 1, 0] * 4 + [1e-5]


# Kernel names -----------------------------------------------------------------------------


def test_kernel_names_spell_out_every_specialisation() -> None:
    spec = kernels.gemm_kernel("f32", GemmTile(64, 32, 16, 4, 2), b_transposed=True,
                               has_bias=True)
    assert spec.name == "netc_gemm_f32_bm64_bn32_bk16_tm4_tn2_nt_bias"
    assert kernels.row_kernel("softmax", "bf16", RowTile(32, 8)).name == \
        "netc_softmax_bf16_tpr32_rpb8"
    assert kernels.elementwise_kernel(standalone("sub", "st"), "f16", BlockTile()).name == \
        "netc_ew_f16_sub_st_r0_b256"
    assert re.fullmatch(r"netc_conv2d_f32_bm64_bn64_bk8_tm4_tn4_ep_sub_tt_r2_[0-9a-f]{8}",
                        kernels.conv2d_kernel("f32", GemmTile(), has_bias=False,
                                              epilogue=EPILOGUE).name)
    names = [spec.name for spec in SAMPLE_SPECS]
    assert len(set(names)) == len(names)
    assert all(re.fullmatch(r"netc_[a-z0-9_]+", name) for name in names)


def test_identical_specialisations_are_emitted_once() -> None:
    plan = generate(_mlp())
    gemm = "netc_gemm_f32_bm64_bn64_bk8_tm4_tn4_nt_bias"
    assert [launch.kernel for launch in plan.launches] == [
        gemm, "netc_ew_f32_relu_r0_b256", gemm]
    assert plan.kernels == (gemm, "netc_ew_f32_relu_r0_b256")
    assert plan.source.count(f"\n{gemm}(") == 1


def test_a_tile_override_makes_its_own_kernel() -> None:
    graph = _mlp()
    plan = generate(graph, tiles={"dense_0": GemmTile(32, 32, 8, 4, 4)})
    assert plan.launches[2].kernel == "netc_gemm_f32_bm32_bn32_bk8_tm4_tn4_nt_bias"
    assert plan.launches[2].block == (64, 1, 1)
    assert len(plan.kernels) == 3


def test_names_never_come_from_user_text() -> None:
    plan = generate(_mlp())
    for name in plan.kernels:
        assert "hidden" not in name and "mlp" not in name
    assert all(re.fullmatch(r"buf\d+", buffer.name) for buffer in plan.buffers)


# Comments, sanitising and #line -------------------------------------------------------------


@pytest.mark.parametrize("hostile", [
    'x*/ #include "evil.h"', "a\n#define X 1", "*/", "**//", "a*\\/b", "naïve ∗/", "",
])
def test_sanitize_leaves_only_safe_characters(hostile: str) -> None:
    cleaned = sanitize(hostile)
    assert re.fullmatch(r"[A-Za-z0-9_.#-]*", cleaned)
    assert "*/" not in cleaned


def test_user_names_appear_only_sanitised_in_comments() -> None:
    builder = GraphBuilder('net*/"x')
    x = builder.input("x", "f32", ("N", 4))
    builder.output("y", builder.op("dense", x, units=3, name="fc*/ #include <evil>"))
    plan = generate(builder.build())
    assert "*/ #include" not in plan.source and "<evil>" not in plan.source
    assert "fc#includeevil" in plan.source
    assert plan.module == "netx"


def test_line_directives_map_kernels_to_the_net_file_and_back() -> None:
    plan = generate(_mlp("models/mlp.net"))
    lines = plan.source.split("\n")
    directives = [(number, line) for number, line in enumerate(lines, start=1)
                  if line.startswith("#line")]
    assert directives, "no #line directives"
    # Each kernel: a #line to its first user in the .net file, then one back to the module
    # naming the line that follows it.
    to_net = [line for _, line in directives if line.endswith('"mlp.net"')]
    back = [(number, line) for number, line in directives if line.endswith('"mlp.cu"')]
    assert to_net == ['#line 6 "mlp.net"', '#line 7 "mlp.net"']  # hidden dense, relu
    assert len(back) == len(to_net)
    for number, line in back:
        assert line == f'#line {number + 1} "mlp.cu"'


def test_a_shared_kernel_lists_every_user() -> None:
    plan = generate(_mlp())
    gemm = "netc_gemm_f32_bm64_bn64_bk8_tm4_tn4_nt_bias"
    header = plan.source[plan.source.index(f"// {gemm}\n"):]
    used_by = header.split("\n")[1]
    assert used_by == "// used by: hidden dense (mlp.net:6), dense_0 dense (mlp.net:10)"
    for index, launch in enumerate(plan.launches):
        assert re.search(rf"//\s+{index}  {launch.kernel}  <- ", plan.source)


# Plans ------------------------------------------------------------------------------------


def test_views_alias_buffers_and_launch_nothing() -> None:
    plan = generate(_mlp())
    assert len(plan.launches) == 3
    output = plan.buffer(dict(plan.outputs)["y"])
    assert output.role == "output" and output.alias_of is not None
    assert plan.buffer(output.alias_of).role == "intermediate"
    json.loads(plan.to_json())


def test_launch_geometry_follows_the_batch() -> None:
    plan = generate(_mlp())
    dense = plan.launches[0]
    assert dense.grid_size({"N": 1}) == (1, 1, 1)
    assert dense.grid_size({"N": 65}) == (2, 1, 1)  # 65 rows in 64-row tiles
    assert dense.shared_bytes == GemmTile().shared_bytes
    # Pointers, then M (the batch rows, known at launch), N and K.
    assert [arg.kind for arg in dense.args[:7]] == ["buffer"] * 4 + ["size", "int", "int"]
    assert dense.arg_values({"N": 7})[4] == 7


def test_every_op_has_a_kernel_or_is_a_view() -> None:
    for name, opdef in REGISTRY.items():
        # A decomposition is a lowering too (`stack`: unsqueeze and concat).
        assert opdef.kind == "view" or name in LOWERINGS or opdef.decompose is not None, name
    assert set(pointwise.POINTWISE_OPS) == {
        name for name, opdef in REGISTRY.items() if opdef.kind == "elementwise"} | {
        "batchnorm", "batchnorm_train"}


def test_constants_are_kernel_arguments() -> None:
    builder = GraphBuilder("c")
    x = builder.input("x", "f32", ("N", 4))
    y = builder.op("sub", builder.constant(0.5), x)
    builder.output("y", builder.op("mul", y, builder.constant(2.0)))
    plan = generate(builder.build())
    assert [launch.kernel for launch in plan.launches] == [
        "netc_ew_f32_sub_st_r0_b256", "netc_ew_f32_mul_ts_r0_b256"]
    assert plan.launches[0].args[-1].value == 0.5
    assert all(buffer.node != "const_1" for buffer in plan.buffers)


# Tiles ------------------------------------------------------------------------------------


@pytest.mark.parametrize("tile, problem", [
    (GemmTile(64, 64, 8, 3, 4), "divide"),
    (GemmTile(16, 16, 8, 4, 4), "threads"),
    (GemmTile(256, 256, 8, 4, 4), "threads"),
    (GemmTile(128, 128, 64, 8, 8), "shared memory"),
    (GemmTile(128, 128, 8, 16, 16), "registers"),
    (RowTile(48, 2), "multiple of 32"),
    (RowTile(1024, 2), "threads"),
    (BlockTile(100), "threads"),
])
def test_invalid_tiles_are_rejected(tile: GemmTile | RowTile | BlockTile, problem: str) -> None:
    with pytest.raises(TileError, match=problem):
        tile.validate()


def test_tile_overrides_are_checked() -> None:
    graph = _mlp()
    with pytest.raises(TileError, match="GemmTile"):
        generate(graph, tiles={"dense_0": RowTile()})
    with pytest.raises(TileError, match="no node"):
        generate(graph, tiles={"nonexistent": GemmTile()})


def test_fused_nodes_take_the_tiles_of_their_anchor() -> None:
    from netc.passes import run_pipeline

    graph = run_pipeline(_mlp(), 2).graph
    fused = [node for node in graph.nodes if node.op == "fused"]
    assert fused, "the pipeline fuses dense |> relu"
    plan = generate(graph, tiles={fused[0].id: GemmTile(32, 32, 8, 4, 4)})
    kernel = plan.launches[0].kernel
    assert kernel.startswith("netc_gemm_f32_bm32_bn32_bk8_tm4_tn4_nt_bias_ep_relu_r0_")
    assert plan.launches[0].nodes == tuple(member.id for member in fused[0].members)
    with pytest.raises(TileError, match="GemmTile"):
        generate(graph, tiles={fused[0].id: BlockTile()})


def test_every_named_dimension_is_a_run_time_size() -> None:
    builder = GraphBuilder("two")
    a = builder.input("a", "f32", ("N", "T", 4))
    b = builder.input("b", "f32", ("M", 4))
    builder.output("y", builder.op("softmax", a, axis=1))  # rows of length T
    builder.output("z", builder.op("relu", b))
    plan = generate(builder.build())
    assert plan.dims == ("N", "T", "M")
    softmax, relu = plan.launches
    # rows = 4 N, length = T, inner = 4: evaluated at launch, nothing recompiled.
    assert softmax.arg_values({"N": 3, "T": 11, "M": 1})[1:4] == [12, 11, 4]
    assert softmax.grid_size({"N": 3, "T": 11, "M": 1}) == \
        softmax.grid_size({"N": 3, "T": 500, "M": 1})
    assert relu.arg_values({"N": 1, "T": 1, "M": 1000})[1] == 4000


def test_a_grid_beyond_cuda_is_a_diagnostic_at_the_layer() -> None:
    builder = GraphBuilder("wide")
    x = builder.input("x", "f32", ("N", 8))
    builder.output("y", builder.op("dense", x, units=4_200_000))
    with pytest.raises(CompileError, match="65,535") as caught:
        generate(builder.build())
    assert [d.code for d in caught.value.diagnostics] == ["E0450"]


# Layout helpers ---------------------------------------------------------------------------


def test_sizes_are_polynomials_in_the_named_dimensions() -> None:
    nt = size_of(("N", 3, "T", 4))
    assert isinstance(nt, Size) and nt.terms == ((12, ("N", "T")),)
    assert nt.at({"N": 2, "T": 5}) == 120
    assert size_of((3, 4)) == 12 and size_of(()) == 1  # no named dim: a plain int
    assert str(nt + size_of(("T",)) * 2 + 1) == "1 + 12*N*T + 2*T"
    assert exact_div(nt, 4) == size_of(("N", 3, "T"))
    assert exact_div(nt, size_of(("T",))) == size_of((12, "N"))
    with pytest.raises(ValueError):
        exact_div(nt, 5)
    assert GridDim(size_of(("N", 5)), 2).size({"N": 3}) == 8
    assert GridDim(size_of(("T",)), 64, times=size_of(("N",))).size({"N": 3, "T": 65}) == 6
    assert size_from_json(size_to_json(nt)) == nt and size_from_json(7) == 7


def test_coalesce_merges_dims_walked_alike() -> None:
    shape = ("N", 3, 4, 5)
    view = coalesce(shape, [contiguous_strides(shape), broadcast_strides((4, 5), shape)])
    assert view.sizes == (size_of(("N", 3)), 20)
    assert view.strides == ((20, 1), (0, 1))
    assert coalesce(shape, [contiguous_strides(shape)]).contiguous
    transposed = coalesce((2, 5, 3), [(15, 1, 5)])  # [2, 3, 5] transposed to [2, 5, 3]
    assert transposed.rank == 3 and not transposed.contiguous
    assert coalesce((1, 1), [(0, 0)]).contiguous


def test_node_ids_reach_comments_only_through_sanitize() -> None:
    node = Node("evil*/ x", "relu", (), Attrs(), TensorType("f32", (1,)),
                span=Span('dir/"a*/b.net', 7, 1, 7, 2))
    assert describe_node(node) == "evilx relu (b.net:7)"
