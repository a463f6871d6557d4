"""Whole networks the code-generation tests compile, as `.net` source, unoptimised (-O0) and
through the optimisation pipeline (-O2: folding and fusion, so fused kernels)."""

from __future__ import annotations

from functools import cache

from netc.frontend import load_string
from netc.ir import Graph
from netc.passes import run_pipeline
from tests.examples import LENET5, RESNET_BLOCKS

LENET = LENET5

RESNET = RESNET_BLOCKS + """
network tiny_resnet {
    input image: DTYPE[N, 3, 15, 15]
    x = conv2d(image, 8, kernel=3, stride=2, padding=1, bias=false) |> batchnorm |> relu
    x = maxpool2d(x, 3, stride=2, padding=1)
    x = basic(x, 8)
    x = down(x, 16)
    x = global_avgpool(x) |> flatten
    h = dense(x, 12) |> gelu |> dropout(0.1)
    a = transpose(reshape(h, [3, 4]), [0, 2, 1])
    output scores = softmax(matmul(a, reshape(h, [3, 4])) * 0.5, axis=1)
    output logits = layernorm(dense(x, 10)) |> log_softmax
}
"""

FUSIONS = """
# Every kind of fused group: epilogues of conv, dense, matmul, pool and reductions, reduction
# prologues (row-wise and global_avgpool), broadcast operands and constants inside groups, and
# groups of pointwise ops alone.
network fusions {
    input x: f32[N, 4, 6, 5]
    input gate: f32[N, 4, 1, 1]
    input row: f32[5]

    c = conv2d(x, 6, kernel=3, padding=1) |> silu
    p = maxpool2d(c, 2, stride=1) |> tanh
    q = avgpool2d(x, 3, stride=1, padding=1)
    e = leaky_relu(q * gate - row, alpha=0.2) |> sigmoid
    output pooled = global_avgpool(e * x + 1.0) |> relu
    output conv = p
    s = softmax(x * 0.5 + row, axis=-1) |> gelu
    output soft = s
    f = flatten(x)
    d = dense(f, 7) |> relu
    output dense = layernorm(d - 0.5) * 2.0
    output attention = log_softmax(matmul(x, transpose(x, [0, 1, 3, 2])) * 0.25, axis=2) + 1.0
    output mixed = batchnorm(x - gate) |> relu
    output squeezed = global_avgpool(relu(x) * gate + 0.5)
    output normed = layernorm(sigmoid(x) + row)
}
"""


def network(source: str, dtype: str = "f32", level: int = 0) -> Graph:
    """The network in `source` (DTYPE replaced by `dtype`) after the -O`level` pipeline."""
    return _network(source, dtype, level)


@cache
def _network(source: str, dtype: str, level: int) -> Graph:
    graph = load_string(source.replace("DTYPE", dtype), filename="network.net")
    return run_pipeline(graph, level, verify=True).graph if level else graph


NETWORKS = [(LENET, "f32"), (RESNET, "f32"), (RESNET, "bf16"), (FUSIONS, "f32")]
"""Every (source, dtype) the network tests compile, at levels 0 and 2."""
