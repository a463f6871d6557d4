"""Random valid networks as `.net` source text, for property tests of the passes.

`networks()` is a Hypothesis strategy whose examples are whole `.net` files: one input image,
then tens of statements drawn from convolutions (grouped too), dense layers, pools, every
activation, residual and broadcast arithmetic (with scalars too, including the identities
`x * 1.0` and `x + 0.0`), concats, batchnorm, layernorm, softmax and log_softmax, dropout,
flatten, reshape, transpose and matmul, and one or two outputs. Some values go unused (dead
code for the passes to find). Text rather than IR means every example, and every shrunk
counterexample, is already a `.net` file a person can read and keep as a regression test.

The generator tracks every value's shape, so each statement it writes type-checks; shapes stay
small (channels up to 8, images up to 9x9) so the reference interpreter runs an example in
milliseconds. Hypothesis shrinks towards fewer statements, earlier op choices and operands
closer to the end of the program.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

from netc.ir import Graph

_bools = st.sampled_from(("false", "true"))
ACTIVATIONS = ("relu", "sigmoid", "tanh", "gelu", "silu", "leaky_relu(alpha=0.1)")


@dataclass(frozen=True)
class Value:
    name: str
    shape: tuple[int, ...]
    """Without the batch dimension N."""


def _activation(draw: st.DrawFn, source: Value) -> str:
    name = draw(st.sampled_from(ACTIVATIONS))
    if "(" in name:
        op, rest = name.split("(", 1)
        return f"{op}({source.name}, {rest}"
    return f"{name}({source.name})"


def _partner(draw: st.DrawFn, values: list[Value],
             fits: Callable[[tuple[int, ...]], bool]) -> Value | None:
    """A value whose shape passes `fits` (recent ones first when shrinking), or None."""
    candidates = [v for v in values if fits(v.shape)]
    if not candidates:
        return None
    return candidates[-1 - draw(st.integers(0, len(candidates) - 1))]


def _image_statement(draw: st.DrawFn, values: list[Value], x: Value) -> tuple[str, tuple[int, ...]]:
    channels, height, width = x.shape
    choice = draw(st.sampled_from((
        "conv_same", "conv_batchnorm", "activation", "batchnorm", "residual", "conv", "scalar",
        "pool",
        "concat", "channel_gate", "global_avgpool", "flatten", "softmax", "layernorm",
        "dropout", "grouped_conv")))
    if choice == "conv_same":
        filters = draw(st.sampled_from((channels, max(1, channels // 2), min(8, channels * 2))))
        return (f"conv2d({x.name}, {filters}, kernel=3, padding=1, bias={draw(_bools)})",
                (filters, height, width))
    if choice == "conv_batchnorm":  # the ResNet unit, with or without its activation
        filters = draw(st.sampled_from((channels, min(8, channels + 1))))
        tail = draw(st.sampled_from((" |> relu", "", " |> silu")))
        return (f"conv2d({x.name}, {filters}, kernel=3, padding=1, bias={draw(_bools)}) "
                f"|> batchnorm{tail}", (filters, height, width))
    if choice in ("conv", "grouped_conv"):
        kernel = draw(st.sampled_from((1, 3)))
        stride = draw(st.sampled_from((1, 2)))
        padding = draw(st.integers(0, kernel // 2))
        groups = 1
        filters = draw(st.integers(1, 8))
        if choice == "grouped_conv" and channels % 2 == 0:
            groups = 2
            filters = 2 * draw(st.integers(1, 4))
        out_h = (height + 2 * padding - kernel) // stride + 1
        out_w = (width + 2 * padding - kernel) // stride + 1
        if out_h < 1 or out_w < 1:
            return f"relu({x.name})", x.shape
        return (f"conv2d({x.name}, filters={filters}, kernel={kernel}, stride={stride}, "
                f"padding={padding}, groups={groups})", (filters, out_h, out_w))
    if choice == "activation":
        return _activation(draw, x), x.shape
    if choice == "batchnorm":
        return f"batchnorm({x.name})", x.shape
    if choice == "residual":
        other = _partner(draw, values, lambda shape: shape == x.shape)
        operator = draw(st.sampled_from(("+", "-", "*")))
        assert other is not None  # x itself always fits
        return f"{x.name} {operator} {other.name}", x.shape
    if choice == "scalar":
        operator, number = draw(st.sampled_from((("*", "0.5"), ("+", "1.0"), ("*", "1.0"),
                                                 ("+", "0.0"), ("-", "0.0"), ("-", "0.25"))))
        return f"{x.name} {operator} {number}", x.shape
    if choice == "pool":
        if min(height, width) < 2:
            return f"maxpool2d({x.name}, 1)", x.shape
        if draw(st.booleans()):
            return f"maxpool2d({x.name}, 2)", (channels, height // 2, width // 2)
        return f"avgpool2d({x.name}, 3, stride=1, padding=1)", x.shape
    if choice == "concat":
        other = _partner(draw, values, lambda shape: len(shape) == 3 and
                         shape[1:] == x.shape[1:] and shape[0] + channels <= 12)
        if other is None:
            return f"sigmoid({x.name})", x.shape
        return (f"concat({x.name}, {other.name}, axis=1)",
                (channels + other.shape[0], height, width))
    if choice == "channel_gate":  # squeeze-excite: a [N, C, 1, 1] gate broadcast over H, W
        return f"{x.name} * sigmoid(global_avgpool({x.name}))", x.shape
    if choice == "global_avgpool":
        return f"global_avgpool({x.name})", (channels, 1, 1)
    if choice == "flatten":
        return f"flatten({x.name})", (channels * height * width,)
    if choice == "softmax":
        op = draw(st.sampled_from(("softmax", "log_softmax")))
        return f"{op}({x.name}, axis={draw(st.sampled_from((1, -1)))})", x.shape
    if choice == "layernorm":
        return f"layernorm({x.name})", x.shape
    return f"dropout({x.name}, p=0.5)", x.shape


def _vector_statement(draw: st.DrawFn, values: list[Value], x: Value) -> tuple[str, tuple[int, ...]]:
    features = x.shape[-1]
    choice = draw(st.sampled_from((
        "dense", "dense_batchnorm", "activation", "residual", "batchnorm", "softmax",
        "layernorm", "scalar",
        "concat", "reshape", "matmul", "flatten", "dropout")))
    if choice == "dense":
        units = draw(st.integers(1, 16))
        return f"dense({x.name}, {units}, bias={draw(_bools)})", (*x.shape[:-1], units)
    if choice == "dense_batchnorm":  # folds when the output is [N, units]
        units = draw(st.integers(1, 16))
        return (f"dense({x.name}, {units}, bias={draw(_bools)}) |> batchnorm",
                (*x.shape[:-1], units))
    if choice == "activation":
        return _activation(draw, x), x.shape
    if choice == "residual":
        other = _partner(draw, values, lambda shape: shape == x.shape)
        assert other is not None
        return f"{x.name} {draw(st.sampled_from(('+', '-', '*')))} {other.name}", x.shape
    if choice == "batchnorm":  # rank 3: normalises dim 1 (T), which a dense cannot absorb
        return f"batchnorm({x.name})", x.shape
    if choice == "softmax":
        op = draw(st.sampled_from(("softmax", "log_softmax")))
        return f"{op}({x.name})", x.shape
    if choice == "layernorm":
        return f"layernorm({x.name})", x.shape
    if choice == "scalar":
        return f"{x.name} * {draw(st.sampled_from(('2.0', '1.0', '-0.5')))}", x.shape
    if choice == "concat":
        other = _partner(draw, values, lambda shape: len(shape) == len(x.shape) and
                         shape[:-1] == x.shape[:-1] and shape[-1] + features <= 64)
        if other is None:
            return f"tanh({x.name})", x.shape
        axis = len(x.shape)
        return (f"concat({x.name}, {other.name}, axis={axis})",
                (*x.shape[:-1], features + other.shape[-1]))
    if choice == "reshape" and len(x.shape) == 1 and features % 2 == 0:
        return f"reshape({x.name}, [2, {features // 2}])", (2, features // 2)
    if choice == "matmul" and len(x.shape) == 2:
        other = _partner(draw, values, lambda shape: shape == x.shape)
        assert other is not None
        return (f"matmul({x.name}, transpose({other.name}, [0, 2, 1]))",
                (x.shape[0], x.shape[0]))
    if choice == "flatten":  # of an [N, F] value: the identity, for simplify_views to drop
        return f"flatten({x.name})", (math.prod(x.shape),)
    return f"dropout({x.name}, p=0.1)", x.shape


@st.composite
def networks(draw: st.DrawFn, max_statements: int = 40) -> str:
    """A random valid `.net` network (see the module docstring)."""
    channels = draw(st.integers(1, 4))
    size = draw(st.sampled_from((8, 5, 9)))
    values = [Value("x", (channels, size, size))]
    lines = ["network random {", f"    input x: f32[N, {channels}, {size}, {size}]"]
    for index in range(draw(st.integers(1, max_statements))):
        # Mostly the latest value (deep chains, which is where fusion happens), sometimes any.
        back = draw(st.integers(0, len(values) - 1)) if draw(st.integers(0, 3)) == 3 else 0
        source = values[-1 - back]
        if len(source.shape) == 3:
            expression, shape = _image_statement(draw, values, source)
        else:
            expression, shape = _vector_statement(draw, values, source)
        name = f"v{index + 1}"
        lines.append(f"    {name} = {expression}")
        values.append(Value(name, shape))
    lines.append(f"    output y = {values[-1].name}")
    if len(values) > 2 and draw(st.booleans()):
        other = values[1 + draw(st.integers(0, len(values) - 3))]
        lines.append(f"    output z = {other.name}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def random_weights(graph: Graph, seed: int) -> dict[str, np.ndarray]:
    """Weights for every parameter, with batchnorm and layernorm far from the identity
    (random scale, shift and running statistics), so folding them is really tested."""
    from netc.weights import init_weights

    rng = np.random.default_rng(seed)
    weights = init_weights(graph, seed)
    for node in graph.compute_nodes:
        if node.op not in ("batchnorm", "layernorm"):
            continue
        params = node.inputs[1:]
        shape = graph[params[0]].type.shape
        weights[params[0]] = rng.uniform(0.5, 1.5, shape).astype(np.float32) * rng.choice(
            np.array([-1, 1], dtype=np.float32), shape)
        weights[params[1]] = rng.normal(0, 0.5, shape).astype(np.float32)
        if node.op == "batchnorm":
            weights[params[2]] = rng.normal(0, 0.5, shape).astype(np.float32)
            weights[params[3]] = rng.uniform(0.5, 2.0, shape).astype(np.float32)
    return weights


