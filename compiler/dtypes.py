"""The `.net` dtypes on the host side.

NumPy has float32 and float16 but no bfloat16, so host arrays of every float dtype are float32
and values are rounded to the declared dtype where a device would store them (`round_to`).
Integer and boolean tensors are int32, int64 and bool arrays, exact.
"""

from __future__ import annotations

import numpy as np

INTEGER_RANGES = {"i32": (np.int32, 2.0**31), "i64": (np.int64, 2.0**63)}
"""Each integer dtype's NumPy type and 2^(bits - 1): the first float beyond its range."""


def round_to(dtype: str, array: np.ndarray) -> np.ndarray:
    """`array` as a tensor of `dtype` holds it: float dtypes as float32 rounded to the nearest
    value representable in `dtype`; `i32`/`i64` as int32/int64 (`to_integer`); `bool` as a
    NumPy bool array (nonzero is true, NaN included, as PyTorch)."""
    if dtype in INTEGER_RANGES:
        return to_integer(dtype, array)
    if dtype == "bool":
        return np.asarray(np.asarray(array) != 0)
    array = np.asarray(array, dtype=np.float32)
    if dtype == "f32":
        return array
    if dtype == "f16":
        with np.errstate(over="ignore"):  # beyond 65504 is inf, as on a GPU: no warning
            return array.astype(np.float16).astype(np.float32)
    if dtype == "bf16":
        return bf16_bits_to_f32(f32_to_bf16_bits(array)).reshape(array.shape)
    raise ValueError(f"unknown dtype {dtype!r}")


def to_integer(dtype: str, array: np.ndarray) -> np.ndarray:
    """`array` as an `i32`/`i64` tensor: integers and booleans are converted (wrapping, as
    PyTorch's `.to(torch.int32)`); floats are truncated toward zero, as PyTorch, and where
    PyTorch leaves the result undefined netc defines it as CUDA's saturating conversion
    (`cvt.rzi.sat`) does: NaN becomes 0, a value beyond the range the nearest end of it."""
    kind, limit = INTEGER_RANGES[dtype]
    array = np.asarray(array)
    if array.dtype.kind != "f":
        return array.astype(kind)
    wide = np.asarray(array, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        inside = np.where(np.isfinite(wide) & (np.abs(wide) < limit), np.trunc(wide), 0.0)
        result = inside.astype(kind)
    info = np.iinfo(kind)
    result = np.where(wide >= limit, info.max, np.where(wide <= -limit, info.min, result))
    return np.asarray(result, dtype=kind)


def round_scalar(dtype: str, value: float) -> float:
    """A number as a `dtype` tensor holds it (70000.0 in f16 is inf): how a constant of an
    f16 or bf16 network enters a kernel, as it enters the reference."""
    return float(round_to(dtype, np.full(1, value, dtype=np.float32))[0])


def f32_to_bf16_bits(array: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even to bfloat16, as the raw 16-bit patterns (NaN stays NaN)."""
    bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    nan = np.isnan(array)
    out = rounded.astype(np.uint16)
    out[nan] = 0x7FC0
    return out


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
