"""Attention: `attention(q, k, v[, mask], causal=false, scale=)`, PyTorch's
`F.scaled_dot_product_attention`.

q is [..., L, E], k [..., S, E], v [..., S, Ev]; the result is [..., L, Ev]:
`softmax(q @ k^T * scale + bias) @ v`, with scale 1/sqrt(E) by default. The optional fourth
tensor is the mask, broadcast to [..., L, S]: a `bool` mask is true where attending is allowed
(false gives -inf), a float mask is added to the scores. `causal` allows position j of a row i
only for j <= i (`torch.ones(L, S).tril()`), together with a mask. With a mask or `causal`, a
row that may attend to nothing (all -inf) gives zeros, as PyTorch's safe softmax does.

The CUDA code generator computes it in one fused kernel when q, k and v have one batch shape,
heads of up to 128 features and a mask (if any) of at most two batch strides
(`templates/attention.cuh`), and otherwise, as
the ONNX exporter (opset 17) always does, by its decomposition onto matmul, transpose, mul,
masked_fill, softmax (and, for `causal`, tril). ONNX's own `Attention` (opset 23) imports as it.

`multihead_attention(x, heads, causal=, bias=)` is self-attention as
`nn.MultiheadAttention(E, heads, batch_first=True)` computes it, with its parameters and their
names (`in_proj_weight`, `out_proj.weight`, ...): a NumPy reference, and a decomposition onto
matmul, slice, reshape, transpose and `attention` that CUDA and ONNX export compute. Its ONNX
export imports back as those parts without `causal` (a `causal` one stops at the -inf of
`masked_fill`, E0606); no importer pattern reads it back as one op yet.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from netc.ir import FLOAT_DTYPES, Attrs, TensorType, format_shape
from netc.ops.registry import (
    AttrSpec,
    Composer,
    OpDef,
    OpDoc,
    ParamSpec,
    ShapeError,
    broadcast_shapes,
    register,
    require_rank,
    same_dtype,
)


def _attention_infer(attrs: Attrs, inputs: Sequence[TensorType]) -> TensorType:
    q, k, v = inputs[:3]
    dtype = same_dtype("attention", [q, k, v])
    if dtype not in FLOAT_DTYPES:
        raise ShapeError(f"`attention` takes float q, k and v, got {q}")
    for tensor, what in ((q, "query"), (k, "key"), (v, "value")):
        require_rank("attention", tensor, 2, what=what)
    shown = f"q {format_shape(q.shape)}, k {format_shape(k.shape)}, v {format_shape(v.shape)}"
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ShapeError(f"`attention` needs q and k of one feature size and k and v of one "
                         f"length, got {shown}")
    batch = broadcast_shapes("attention", q, k, q.shape[:-2], k.shape[:-2])
    batch = broadcast_shapes("attention", q, v, batch, v.shape[:-2])
    scores = (*batch, q.shape[-2], k.shape[-2])
    if len(inputs) == 4:
        mask = inputs[3]
        if mask.dtype not in ("bool", dtype):
            raise ShapeError(f"`attention`'s mask is bool (true: attend) or of the scores' dtype "
                             f"{dtype} (added), got {mask}")
        if broadcast_shapes("attention", mask, q, mask.shape, scores) != scores:
            raise ShapeError(f"`attention`'s mask {mask} does not broadcast to the scores "
                             f"{format_shape(scores)} of {shown}")
    return TensorType(dtype, (*batch, q.shape[-2], v.shape[-1]))


def scale_of(attrs: Attrs, features: int | str) -> float:
    """The factor of the scores: `scale`, or 1/sqrt(E) as PyTorch."""
    if attrs["scale"] is not None:
        return float(attrs["scale"])
    if not isinstance(features, int):
        raise ShapeError("`attention` needs `scale=` when the feature size is a named dimension")
    return 1.0 / math.sqrt(features)


def _attention_reference(attrs: Attrs, q: np.ndarray, k: np.ndarray, v: np.ndarray,
                         mask: np.ndarray | None = None) -> np.ndarray:
    scores = np.matmul(q, np.swapaxes(k, -1, -2)) * np.float32(scale_of(attrs, q.shape[-1]))
    allowed = np.ones(scores.shape[-2:], dtype=bool)
    if attrs["causal"]:
        allowed = np.tril(allowed)
    if mask is not None and mask.dtype == np.bool_:
        allowed = allowed & mask
    elif mask is not None:
        scores = scores + mask
    scores = np.where(allowed, scores, np.float32(-np.inf))
    largest = scores.max(axis=-1, keepdims=True)
    weights = np.exp(scores - largest)
    weights = weights / weights.sum(axis=-1, keepdims=True, dtype=np.float32)
    if mask is not None or attrs["causal"]:
        weights = np.where(largest == -np.inf, np.float32(0), weights)  # nothing to attend to
    return np.asarray(np.matmul(weights, v), dtype=np.float32)


def attention_steps(builder: Composer, q: str, k: str, v: str, mask: str | None = None, *,
                    causal: bool = False, scale: float, softcap: float = 0.0,
                    offset: int = 0, window: tuple[int, int] = (-1, -1),
                    masked: Sequence[str] = ()) -> dict[str, str]:
    """Attention computed step by step onto matmul, transpose, mul, masked_fill, softmax (and
    triu for `causal`): `attention`'s decomposition, and, with the steps ONNX's `Attention`
    adds (`softcap`: softcap·tanh(scores / softcap) before the mask; `offset`: a causal
    diagonal moved right by that many positions, for keys cached before the queries;
    `window` (left, right): only keys j with i + offset - left <= j <= i + offset + right,
    a side of -1 unbounded; `masked`: bool tensors, true where a score is masked), the
    importer's. Returns each step: `scores` (q k^T · scale, capped), `biased` (masked),
    `weights` (the softmax; a row that may attend to nothing weighs nothing) and `output`."""
    q_type = builder.type_of(q)
    dtype, rank = q_type.dtype, builder.type_of(k).rank
    swap = (*range(rank - 2), rank - 1, rank - 2)
    scores = builder.op("matmul", q, builder.op("transpose", k, perm=swap))
    scores = builder.op("mul", scores, builder.constant(scale, dtype))
    if softcap:
        cap = builder.constant(softcap, dtype)
        scores = builder.op("mul", builder.op("tanh", builder.op("div", scores, cap)), cap)
    steps = {"scores": scores}
    if mask is not None and builder.type_of(mask).dtype == "bool":
        scores = builder.op("masked_fill", scores, builder.op("eq", mask, other=0.0),
                            value=float("-inf"))
    elif mask is not None:
        scores = builder.op("add", scores, mask)
    left, right = window
    bands = ([("triu", 1 + offset)] if causal else []) + \
        ([("triu", 1 + offset + right)] if right >= 0 else []) + \
        ([("tril", offset - left - 1)] if left >= 0 else [])
    if bands:
        # A bool of the scores' shape that is true everywhere (x * 0 + 1 is 1, or NaN for an
        # infinite or NaN x: nonzero either way), above a diagonal (where j > i + offset for
        # `causal`) or below one.
        zero, one = builder.constant(0.0, dtype), builder.constant(1.0, dtype)
        everywhere = builder.op("cast", builder.op("add", builder.op("mul", scores, zero), one),
                                dtype="bool")
        for band, diagonal in bands:
            scores = builder.op("masked_fill", scores,
                                builder.op(band, everywhere, diagonal=diagonal),
                                value=float("-inf"))
    for more in masked:
        scores = builder.op("masked_fill", scores, more, value=float("-inf"))
    steps["biased"] = scores
    weights = builder.op("softmax", scores, axis=-1)
    if mask is not None or bands or masked:
        # A row that may attend to nothing (all -inf) weighs nothing, as PyTorch's safe
        # softmax (a softmax of it alone is NaN).
        empty = builder.op("eq", builder.op("amax", scores, axis=-1, keepdim=True),
                           other=float("-inf"))
        weights = builder.op("masked_fill", weights, empty, value=0.0)
    steps["weights"] = weights
    steps["output"] = builder.op("matmul", weights, v)
    return steps


def _attention_parts(builder: Composer, attrs: Attrs, q: str, k: str, v: str,
                     mask: str | None = None) -> str:
    scale = scale_of(attrs, builder.type_of(q).shape[-1])
    return attention_steps(builder, q, k, v, mask, causal=attrs["causal"], scale=scale)["output"]


register(OpDef(
    name="attention",
    attrs=(AttrSpec("causal", "bool", default=False, positional=False,
                    help="attend only to positions j <= i"),
           AttrSpec("scale", "float", default=None, positional=False,
                    help="the scores' factor; 1/sqrt(E) when left out")),
    infer=_attention_infer,
    reference=_attention_reference,
    decompose=_attention_parts,
    min_inputs=3,
    max_inputs=4,
    flops=lambda attrs, inputs, output: 2 * math.prod(output[:-1]) * inputs[1][-2] * (
        inputs[0][-1] + output[-1]),
    kind="gemm",
    role="layout",  # never fused: its kernel (or decomposition) stands alone
    dtypes=(*FLOAT_DTYPES, "bool"),
    summary="`F.scaled_dot_product_attention(q, k, v, mask, is_causal=causal, scale=scale)`: "
            "softmax(q k^T scale + mask) v; a bool mask is true where attending is allowed, a "
            "float mask is added",
    doc=OpDoc(shapes="q `[..., L, E]`, k `[..., S, E]`, v `[..., S, Ev]`, mask (4th tensor, "
                     "optional) broadcast to `[..., L, S]` → `[..., L, Ev]`",
              flops="2·L·S·(E + Ev) per batch item",
              attrs="`scale` 1/sqrt(E) when left out; computed unfused (matmul, softmax, "
                    "matmul)"),
))


# multihead_attention ------------------------------------------------------------------------


def _mha_sizes(inputs: Sequence[TensorType], heads: int) -> tuple[int, int]:
    """(E, E / heads) of `multihead_attention`'s input [N, L, E]."""
    (x,) = inputs
    require_rank("multihead_attention", x, 3, 3)
    embed = x.shape[-1]
    if not isinstance(embed, int):
        raise ShapeError(f"`multihead_attention` needs a known embedding size (last "
                         f"dimension), got {format_shape(x.shape)}")
    if embed % heads:
        raise ShapeError(f"`multihead_attention` splits the embedding size {embed} of "
                         f"{format_shape(x.shape)} into {heads} heads: it must divide by "
                         f"{heads}")
    return embed, embed // heads


def _mha_infer(attrs: Attrs, inputs: Sequence[TensorType]) -> TensorType:
    _mha_sizes(inputs, attrs["heads"])
    return inputs[0]


def _mha_names(attrs: Attrs) -> tuple[str, ...]:
    names = ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias")
    return names if attrs["bias"] else names[::2]


def _mha_params(attrs: Attrs, inputs: Sequence[TensorType]) -> tuple[ParamSpec, ...]:
    embed, _ = _mha_sizes(inputs, attrs["heads"])
    # nn.MultiheadAttention: xavier_uniform in_proj ([3E, E]: fans E and 3E), zero biases,
    # out_proj an nn.Linear (U(±1/sqrt(E))) whose bias is then zeroed.
    specs = {"in_proj_weight": ParamSpec("in_proj_weight", (3 * embed, embed),
                                         ("uniform", math.sqrt(6.0 / (4 * embed)))),
             "in_proj_bias": ParamSpec("in_proj_bias", (3 * embed,), ("const", 0.0)),
             "out_proj.weight": ParamSpec("out_proj.weight", (embed, embed),
                                          ("uniform", 1.0 / math.sqrt(embed))),
             "out_proj.bias": ParamSpec("out_proj.bias", (embed,), ("const", 0.0))}
    return tuple(specs[name] for name in _mha_names(attrs))


def _mha_reference(attrs: Attrs, x: np.ndarray, *params: np.ndarray) -> np.ndarray:
    if attrs["bias"]:
        in_weight, in_bias, out_weight, out_bias = params
    else:
        (in_weight, out_weight), in_bias, out_bias = params, np.float32(0), np.float32(0)
    batch, length, embed = x.shape
    heads = attrs["heads"]

    def split(part: np.ndarray) -> np.ndarray:  # [N, L, E] -> [N, heads, L, E / heads]
        return part.reshape(batch, length, heads, embed // heads).transpose(0, 2, 1, 3)

    q, k, v = np.split(x @ in_weight.T + in_bias, 3, axis=-1)
    each = _attention_reference(Attrs(causal=attrs["causal"], scale=None),
                                split(q), split(k), split(v))
    return each.transpose(0, 2, 1, 3).reshape(batch, length, embed) @ out_weight.T + out_bias


def _mha_parts(builder: Composer, attrs: Attrs, x: str, *params: str) -> str:
    """The projections as matmuls with the transposed weights, the heads as a reshape to
    [N, L, heads, E / heads] and a transpose, then `attention` and the output projection."""
    x_type = builder.type_of(x)
    embed, size = _mha_sizes([x_type], attrs["heads"])
    length = x_type.shape[1]
    in_weight, out_weight = (params[0], params[2]) if attrs["bias"] else params
    biases = (params[1], params[3]) if attrs["bias"] else (None, None)

    def project(value: str, weight: str, bias: str | None) -> str:
        product = builder.op("matmul", value, builder.op("transpose", weight, perm=(1, 0)))
        return product if bias is None else builder.op("add", product, bias)

    qkv = project(x, in_weight, biases[0])
    heads = []
    for part in range(3):
        piece = builder.op("slice", qkv, axes=(2,), starts=(part * embed,),
                           ends=((part + 1) * embed,))
        piece = builder.op("reshape", piece, dims=(length, attrs["heads"], size))
        heads.append(builder.op("transpose", piece, perm=(0, 2, 1, 3)))
    each = builder.op("attention", *heads, causal=attrs["causal"])
    joined = builder.op("reshape", builder.op("transpose", each, perm=(0, 2, 1, 3)),
                        dims=(length, embed))
    return project(joined, out_weight, biases[1])


def _mha_flops(attrs: Attrs, inputs: Sequence[tuple[int, ...]], output: tuple[int, ...]) -> int:
    batch, length, embed = inputs[0]
    projections = 2 * batch * length * embed * 4 * embed
    return projections + 4 * batch * length * length * embed


register(OpDef(
    name="multihead_attention",
    attrs=(AttrSpec("heads", "int", minimum=1, help="the number of heads; divides the "
                    "embedding size"),
           AttrSpec("causal", "bool", default=False, positional=False,
                    help="each position attends only to itself and earlier ones"),
           AttrSpec("bias", "bool", default=True, positional=False,
                    help="the projections have biases")),
    infer=_mha_infer,
    reference=_mha_reference,
    decompose=_mha_parts,
    param_names=_mha_names,
    params=_mha_params,
    flops=_mha_flops,
    kind="gemm",
    role="layout",  # never fused: its kernel (or decomposition) stands alone
    summary="self-attention, `nn.MultiheadAttention(E, heads, batch_first=True, bias=bias)` "
            "applied as `mha(x, x, x, need_weights=False)` (with a causal mask if `causal`)",
    doc=OpDoc(shapes="`[N, L, E]` → `[N, L, E]`",
              params="`in_proj_weight [3E, E]` (xavier uniform), `in_proj_bias [3E]` (0), "
                     "`out_proj.weight [E, E]` (U(±1/√E)), `out_proj.bias [E]` (0)",
              flops="8·N·L·E² + 4·N·L²·E",
              attrs="`heads` divides E; computed as its parts (matmul, reshape, transpose, "
                    "`attention`)"),
))
