"""conv2d as an implicit GEMM on the simulator: every attribute, several tile configurations."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.sim.codegen_support import check_graph, seeds
from tests.sim.graph_builder import parallel
from tests.sim.variants import CONV_TILES

pytestmark = pytest.mark.sim


@st.composite
def convolutions(draw: st.DrawFn) -> dict[str, Any]:
    """conv2d attributes and an input they fit: any kernel, stride, dilation, 4-sided or
    "same" padding, groups, bias; spatial sizes from 1 up, odd and even."""
    groups = draw(st.sampled_from((1, 2, 3)))
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding: Any
    if stride == (1, 1) and draw(st.booleans()):
        padding = "same"
        pads = (0, 0, 0, 0)  # "same" keeps the output at the input's size
    else:
        padding = tuple(draw(st.integers(0, 2)) for _ in range(4))
        pads = padding
    reach = [d * (k - 1) + 1 for d, k in zip(dilation, kernel)]
    height = max(1, reach[0] - pads[0] - pads[2] + draw(st.integers(0, 8)))
    width = max(1, reach[1] - pads[1] - pads[3] + draw(st.integers(0, 8)))
    return {
        "channels": groups * draw(st.sampled_from((1, 2, 5))),
        "height": height,
        "width": width,
        "attrs": {"filters": groups * draw(st.sampled_from((1, 3, 11, 33))), "kernel": kernel,
                  "stride": stride, "padding": padding, "dilation": dilation, "groups": groups,
                  "bias": draw(st.booleans())},
        "batch": draw(st.sampled_from((1, 2, 3))),
    }


@given(conv=convolutions(), seed=seeds())
@example(conv={"channels": 3, "height": 9, "width": 7, "batch": 2,
               "attrs": {"filters": 33, "kernel": (3, 3), "stride": (2, 1),
                         "padding": (1, 0, 2, 1), "dilation": (1, 2), "groups": 3,
                         "bias": True}}, seed=0)
@example(conv={"channels": 1, "height": 1, "width": 1, "batch": 1,
               "attrs": {"filters": 1, "kernel": (1, 1), "stride": (1, 1), "padding": "same",
                         "dilation": (1, 1), "groups": 1, "bias": False}}, seed=0)
def test_conv2d_matches_reference_for_every_tile(conv: dict[str, Any], seed: int) -> None:
    shape = ("N", conv["channels"], conv["height"], conv["width"])
    graph, tiles = parallel("conv2d", {"x": ("f32", shape)}, CONV_TILES, **conv["attrs"])
    check_graph(graph, tiles, batch=conv["batch"], seed=seed, shared_weights=True,
                same_outputs=True)


def test_conv2d_with_a_fixed_batch() -> None:
    """No named dimension: the image count is a constant of the plan, not the run-time batch."""
    graph, tiles = parallel("conv2d", {"x": ("f32", (3, 2, 6, 5))}, CONV_TILES[:1], filters=4,
                            kernel=3, padding=1)
    check_graph(graph, tiles)
