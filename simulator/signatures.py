"""Kernel parameter types, read from the C++ signature of each kernel, and how an argument of
each is packed."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from netc.sim.protocol import (
    SimulatorError,
)

# ----------------------------------------------------------------------------------
# Kernel signatures
# ----------------------------------------------------------------------------------

_INT_RE = re.compile(r"^([iu])(8|16|32|64)$")
_RAW_RE = re.compile(r"^raw<(\d+):(\d+)>$")
_SCALAR_NAMES = {"f32": "float", "f64": "double", "f16": "__half", "bf16": "__nv_bfloat16",
                 "bool": "bool", "void": "void"}


@dataclass(frozen=True)
class ParamType:
    """One kernel parameter, as deduced from the kernel's C++ function type."""

    code: str  # the code reported by the module, e.g. "ptr<f32>", "i64", "raw<16:16>"
    kind: str  # "ptr", "int", "float", "bool" or "raw"
    size: int
    align: int
    signed: bool = False
    pointee: str | None = None  # element code of a pointer parameter

    @property
    def cname(self) -> str:
        """A readable C-like spelling for messages."""
        return _code_cname(self.code)


def _code_cname(code: str) -> str:
    if code.startswith("ptr<") and code.endswith(">"):
        return _code_cname(code[4:-1]) + "*"
    if code in _SCALAR_NAMES:
        return _SCALAR_NAMES[code]
    m = _INT_RE.match(code)
    if m:
        return ("int" if m.group(1) == "i" else "uint") + m.group(2)
    m = _RAW_RE.match(code)
    if m:
        return f"struct({m.group(1)} bytes)"
    return code


def _parse_one(code: str) -> ParamType:
    if code.startswith("ptr<") and code.endswith(">"):
        return ParamType(code, "ptr", 8, 8, pointee=code[4:-1])
    if code in ("f32", "f64", "f16", "bf16"):
        size = {"f32": 4, "f64": 8, "f16": 2, "bf16": 2}[code]
        return ParamType(code, "float", size, size, signed=True)
    if code == "bool":
        return ParamType(code, "bool", 1, 1)
    m = _INT_RE.match(code)
    if m:
        size = int(m.group(2)) // 8
        return ParamType(code, "int", size, size, signed=m.group(1) == "i")
    m = _RAW_RE.match(code)
    if m:
        return ParamType(code, "raw", int(m.group(1)), int(m.group(2)))
    raise SimulatorError(f"unsupported kernel parameter type code {code!r}")


def parse_signature(sig: str) -> list[ParamType]:
    """Parse the comma-separated type codes produced by ``cudasim::detail::signature_of``."""
    if not sig:
        return []
    parts: list[str] = []
    depth, start = 0, 0
    for i, ch in enumerate(sig):
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(sig[start:i])
            start = i + 1
    parts.append(sig[start:])
    return [_parse_one(p) for p in parts]


def _element_dtype(code: str | None) -> np.dtype[Any]:
    """numpy dtype used to show the elements a pointer parameter points to."""
    table = {"f32": np.float32, "f64": np.float64, "f16": np.float16, "bf16": np.uint16,
             "bool": np.bool_, "void": np.uint8}
    if code is None:
        return np.dtype(np.uint8)
    if code in table:
        return np.dtype(table[code])
    m = _INT_RE.match(code)
    if m:
        return np.dtype(f"{'i' if m.group(1) == 'i' else 'u'}{int(m.group(2)) // 8}")
    if code.startswith("ptr<"):
        return np.dtype(np.uint64)
    m = _RAW_RE.match(code)
    if m:
        return np.dtype(f"V{m.group(1)}")
    return np.dtype(np.uint8)


def _format_element(code: str | None, raw: bytes) -> str:
    dt = _element_dtype(code)
    if dt.kind == "V" or len(raw) < dt.itemsize:
        return raw.hex()
    value = np.frombuffer(raw, dtype=dt)[0]
    if code == "bf16":
        as_f32 = np.array([int(value) << 16], dtype=np.uint32).view(np.float32)[0]
        return repr(float(as_f32))
    if dt.kind == "f":
        return repr(float(value))
    if dt.kind == "b":
        return repr(bool(value))
    return repr(int(value))


def _bf16_bits(value: float) -> int:
    """float -> bfloat16 bits, round to nearest even (as __float2bfloat16)."""
    u = int(np.array([value], dtype=np.float32).view(np.uint32)[0])
    if (u & 0x7FFFFFFF) > 0x7F800000:
        return 0x7FFF
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) & 0xFFFF
