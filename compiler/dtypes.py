"""The `.net` dtypes on the host side.

NumPy has float32 and float16 but no bfloat16, so host arrays for every dtype are float32 and
values are rounded to the declared dtype where a device would store them (`round_to`).
"""

from __future__ import annotations

import numpy as np


def round_to(dtype: str, array: np.ndarray) -> np.ndarray:
    """`array` (float32) rounded to the nearest value representable in `dtype`, as float32."""
    array = np.asarray(array, dtype=np.float32)
    if dtype == "f32":
        return array
    if dtype == "f16":
        with np.errstate(over="ignore"):  # beyond 65504 is inf, as on a GPU: no warning
            return array.astype(np.float16).astype(np.float32)
    if dtype == "bf16":
        return bf16_bits_to_f32(f32_to_bf16_bits(array))
    raise ValueError(f"unknown dtype {dtype!r}")


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
