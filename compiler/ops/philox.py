"""Training-mode dropout and the counter-based generator it draws from (Philox4x32-10).

`dropout_train(x, seed, step)` keeps each element of x with probability 1 - p, scaled by
1 / (1 - p), and zeroes the rest (torch's `F.dropout(training=True)`; p = 1 gives zeros). It is
made by `netc.training_mode` from a network's `dropout`, never written in source. Whether
element i is kept is a pure function of (seed, step, stream, i), so every backend draws the
same mask with no generator state to carry: the reference here in NumPy, the kernels with
`netc_dropout` (templates/common.cuh), the same arithmetic bit for bit.

    word = Philox4x32-10(counter = (lo32(i), hi32(i), lo32(step), stream),
                         key = (lo32(seed), hi32(seed)))[0]
    kept = float(word >> 8) * 2^-24 >= p            (p as float32)

Philox4x32-10 is Salmon et al., "Parallel random numbers: as easy as 1, 2, 3" (SC'11), with
Random123's constants (the ones cuRAND and JAX use); `tests/unit/test_training_mode.py` checks
Random123's published known answers. `seed` and `step` are i64 scalar inputs of the graph
(`netc.training_mode.SEED_INPUT`, `STEP_INPUT`), so one compiled plan serves every step;
`stream` tells apart the dropout layers of a graph (an attribute). The 24 high bits of the
word make a uniform float in [0, 1) exactly, as both sides compute it.

The gradient of y = x · mask / (1 - p) is g · mask / (1 - p): `dropout_train` of the
cotangent with the same seed, step and stream, which draws the same mask at the same index.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from netc.ir import ALL_DTYPES, FLOAT_DTYPES, Attrs, TensorType
from netc.ops.gradients import Gradients
from netc.ops.registry import (
    AttrSpec,
    Composer,
    CudaExpression,
    OpDef,
    OpDoc,
    ShapeError,
    per_element_flops,
    register,
)

PHILOX_M = (0xD2511F53, 0xCD9E8D57)
"""The round multipliers of Philox4x32."""
PHILOX_W = (0x9E3779B9, 0xBB67AE85)
"""The Weyl increments of the key schedule (the golden ratio and sqrt(3) - 1)."""
ROUNDS = 10
_LOW = np.uint64(0xFFFFFFFF)


def philox4x32(counter: Sequence[np.ndarray | int], key: Sequence[np.ndarray | int],
               rounds: int = ROUNDS) -> tuple[np.ndarray, ...]:
    """Philox4x32-`rounds` of `counter` (4 words) under `key` (2 words), elementwise over
    arrays of uint32 words (broadcast); returns the 4 output words as uint32 arrays."""
    c = [np.asarray(word, np.uint64) & _LOW for word in counter]
    k = [np.asarray(word, np.uint64) & _LOW for word in key]
    for round_ in range(rounds):
        if round_:
            k = [(k[0] + np.uint64(PHILOX_W[0])) & _LOW, (k[1] + np.uint64(PHILOX_W[1])) & _LOW]
        product0 = np.uint64(PHILOX_M[0]) * c[0]
        product1 = np.uint64(PHILOX_M[1]) * c[2]
        c = [(product1 >> np.uint64(32)) ^ c[1] ^ k[0], product1 & _LOW,
             (product0 >> np.uint64(32)) ^ c[3] ^ k[1], product0 & _LOW]
    return tuple(word.astype(np.uint32) for word in c)


def kept(seed: int, step: int, stream: int, shape: Sequence[int], p: float) -> np.ndarray:
    """The mask (bool, of `shape`) of the elements `dropout_train` keeps."""
    index = np.arange(int(np.prod(shape)), dtype=np.uint64)
    seed64, step64 = np.uint64(seed & 0xFFFFFFFFFFFFFFFF), np.uint64(step & 0xFFFFFFFF)
    word = philox4x32((index & _LOW, index >> np.uint64(32), step64, np.uint64(stream)),
                      (seed64 & _LOW, seed64 >> np.uint64(32)))[0]
    uniform = (word >> np.uint32(8)).astype(np.float32) * np.float32(2.0 ** -24)
    return (uniform >= np.float32(p)).reshape(tuple(shape))


def _dropout_train_infer(attrs: Attrs, inputs: Sequence[TensorType]) -> TensorType:
    x, seed, step = inputs
    if x.dtype not in FLOAT_DTYPES:
        raise ShapeError(f"`dropout_train` drops elements of a float tensor, got {x}")
    for name, value in (("seed", seed), ("step", step)):
        if value != TensorType("i64", ()):
            raise ShapeError(f"`dropout_train` takes its {name} as an i64 scalar, got {value}")
    if attrs["p"] > 1:
        raise ShapeError(f"`dropout_train` probability must be between 0 and 1, got "
                         f"{attrs['p']}")
    return x


def _dropout_train_reference(attrs: Attrs, x: np.ndarray, seed: np.ndarray,
                             step: np.ndarray) -> np.ndarray:
    p = np.float32(attrs["p"])
    mask = kept(int(seed), int(step), attrs["stream"], x.shape, attrs["p"])
    with np.errstate(divide="ignore"):
        scale = np.float32(1) / (np.float32(1) - p)
    return np.where(mask, x * scale, np.float32(0)).astype(x.dtype)


def _dropout_train_vjp(builder: Composer, attrs: Attrs, inputs: tuple[str, ...], output: str,
                       cotangent: str) -> Gradients:
    _, seed, step = inputs
    return (builder.op("dropout_train", cotangent, seed, step, p=attrs["p"],
                       stream=attrs["stream"]), None, None)


register(OpDef(
    name="dropout_train",
    dtypes=ALL_DTYPES,
    attrs=(AttrSpec("p", "float", default=0.5, minimum=0.0, help="the probability of a zero"),
           AttrSpec("stream", "int", default=0, minimum=0,
                    help="which dropout layer: its mask is drawn from its own Philox stream")),
    min_inputs=3,
    max_inputs=3,
    infer=_dropout_train_infer,
    reference=_dropout_train_reference,
    vjp=_dropout_train_vjp,
    # One Philox4x32-10 (10 rounds of two 32x32 multiplies) per element, counted as 20.
    flops=per_element_flops(20),
    kind="elementwise",
    role="pointwise",
    # x, seed, step, p, stream; `index` is the element's (the functor's argument).
    expression=CudaExpression("netc_dropout({0}, {1}, {2}, index, {3}, {4})",
                              floats=("p", "stream")),
    internal=True,
    summary="training-mode dropout: x · mask / (1 - p), the mask from Philox4x32-10 of "
            "(seed, step, stream, element index)",
    doc=OpDoc(shapes="same as x; seed and step i64 scalars", attrs="0 ≤ p ≤ 1",
              flops="20·out"),
))
