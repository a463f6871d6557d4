"""Weights on disk: safetensors (preferred) and `.npz`, initialisation and checking.

Tensors are keyed by full parameter name (`basic_1.conv2d_0.weight`), laid out as PyTorch lays
them out, so a PyTorch state dict maps over by name. `.npz` files are read with
`allow_pickle=False`: a weights file can never run code.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import stat
import struct
import zipfile
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

import numpy as np

from netc.diagnostics import CompileError, Diagnostic
from netc.dtypes import bf16_bits_to_f32
from netc.files import atomic_path
from netc.ir import Graph, Node, format_shape
from netc.ops import REGISTRY, ParamSpec

WEIGHT_SUFFIXES = (".safetensors", ".npz")


def param_specs(graph: Graph) -> dict[str, ParamSpec]:
    """Every parameter's spec (shape and PyTorch initialisation), by full parameter name."""
    specs: dict[str, ParamSpec] = {}
    for node in graph.compute_nodes:
        opdef = REGISTRY[node.op]
        names = opdef.param_names(node.attrs)
        if not names:
            continue
        param_ids = node.inputs[len(node.inputs) - len(names):]
        tensors = [graph[i].type for i in node.inputs[: len(node.inputs) - len(names)]]
        by_name = {spec.name: spec for spec in opdef.params(node.attrs, tensors)}
        for name, param_id in zip(names, param_ids):
            specs[param_id] = by_name[name]
    return specs


def init_weights(graph: Graph, seed: int = 0) -> dict[str, np.ndarray]:
    """Fresh parameters initialised as PyTorch initialises the same layers, reproducibly."""
    rng = np.random.default_rng(seed)
    weights: dict[str, np.ndarray] = {}
    for name, spec in param_specs(graph).items():
        kind, value = spec.init
        if kind == "uniform":
            weights[name] = rng.uniform(-value, value, size=spec.shape).astype(np.float32)
        else:
            weights[name] = np.full(spec.shape, value, dtype=np.float32)
    return weights


def _layer_of(graph: Graph, name: str) -> str:
    if name not in graph or not graph[name].layer:
        return ""
    return f" (layer `{graph[name].layer}`)"


def check_weights(graph: Graph, weights: Mapping[str, np.ndarray], source: str = "weights") -> None:
    """Raise one CompileError listing every missing, unexpected and mis-shaped tensor."""
    problems: list[Diagnostic] = []
    expected: dict[str, Node] = {n.id: n for n in graph.params}
    for name, node in expected.items():
        if name not in weights:
            problems.append(Diagnostic(
                "E0410", f"{source}: missing tensor `{name}` of shape "
                f"{format_shape(node.type.shape)}{_layer_of(graph, name)}", node.span))
        elif tuple(np.shape(weights[name])) != node.type.shape:
            problems.append(Diagnostic(
                "E0412", f"{source}: tensor `{name}`{_layer_of(graph, name)} has shape "
                f"{format_shape(np.shape(weights[name]))}, expected "
                f"{format_shape(node.type.shape)}", node.span))
    for name in sorted(set(weights) - set(expected)):
        problems.append(Diagnostic("E0411", f"{source}: unexpected tensor `{name}` "
                                   "(no parameter of the network has this name)"))
    if problems:
        raise CompileError(problems)


def save_weights(weights: Mapping[str, np.ndarray], path: str | Path) -> None:
    """Write atomically: a failure leaves any earlier file at `path` untouched."""
    path = Path(path)
    if path.suffix not in WEIGHT_SUFFIXES:
        raise CompileError([Diagnostic("E0413", f"cannot write weights to `{path}`: the file "
                                       "name must end in .safetensors or .npz")])
    arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items()}
    if path.suffix == ".npz":
        write_npz(arrays, path)
        return
    from safetensors.numpy import save_file

    with atomic_path(path) as temp:
        save_file(arrays, str(temp))


def weights_bytes(weights: Mapping[str, np.ndarray]) -> bytes:
    """The safetensors file `save_weights` would write, as bytes (float32 tensors)."""
    from safetensors.numpy import save

    return bytes(save({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items()}))


def write_npz(arrays: Mapping[str, np.ndarray], path: str | Path) -> None:
    """Write arrays to an `.npz` file atomically. Written member by member rather than through
    `np.savez(**arrays)`, whose own keyword arguments would clash with arrays named `file`."""
    with atomic_path(Path(path)) as temp, zipfile.ZipFile(temp, "w") as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)


MAX_SAFETENSORS_HEADER = 100 << 20
"""Largest safetensors JSON header read (the safetensors library's own limit)."""

NPZ_INFLATION_ALLOWANCE = 64 << 20
NPZ_INFLATION_RATIO = 100
"""An `.npz` whose members declare more than 64 MiB in all and more than 100 times the size
of the file is refused before anything is inflated: trained weights barely compress (about
1.1:1), while a zip bomb of zeros inflates about 1000:1."""


def load_weights(path: str | Path) -> dict[str, np.ndarray]:
    """Read a weights file as float32 arrays; any problem is a CompileError naming the file
    (and the tensor, where one tensor is at fault).

    Both formats are checked against their own structure before any tensor data is read:
    safetensors headers (duplicate names, shapes that are not lists of integers, offsets
    outside the data or shared by two tensors, sizes that do not match the shape) and `.npz`
    members (their `.npy` headers, declared sizes, and an inflation bound), so a hostile file
    is refused without allocating what it claims. Values that float32 cannot hold (an f64
    1e300) and dtypes that are not real numbers are refused with the tensor's name."""
    path = Path(path)
    if path.suffix not in WEIGHT_SUFFIXES:
        raise CompileError([Diagnostic("E0413", f"cannot read weights from `{path}`: expected a "
                                       ".safetensors or .npz file")])
    try:
        file = _open_regular(path)
    except FileNotFoundError:
        raise CompileError([Diagnostic("E0414", f"weights file `{path}` does not exist")]) from None
    except OSError as exc:
        raise CompileError([Diagnostic("E0415", f"cannot read weights file `{path}`: "
                                       f"{exc.strerror or _reason(exc)}")]) from None
    size = 0
    try:
        with file:
            size = os.fstat(file.fileno()).st_size
            if path.suffix == ".npz":
                raw = _read_npz(file, size, path)
            else:
                raw = _read_safetensors(file, size, path)
        return {name: _as_float32(name, array, path) for name, array in raw.items()}
    except CompileError:
        raise
    except MemoryError:
        raise CompileError([Diagnostic(
            "E0415", f"cannot read weights file `{path}` ({_bytes(size)}): not enough memory "
            "to hold its tensors")]) from None
    except Exception as exc:  # any decoder failure means the file is not valid weights
        raise CompileError([Diagnostic("E0415", f"cannot read weights file `{path}`: "
                                       f"{_reason(exc)}")]) from None


def load_array(path: str | Path, name: str) -> np.ndarray:
    """One `.npy` file (a network input) as float32, read with a weights file's checks: a
    regular file, a valid header, a real-number dtype, a size that matches the shape, values
    float32 can hold. Any problem is a CompileError (E0405) naming the file and `name`."""
    path = Path(path)
    try:
        with _open_regular(path, "input file") as file:
            array = _read_npy(file, os.fstat(file.fileno()).st_size, name, path)
        return _as_float32(name, array, path)
    except CompileError as exc:
        raise CompileError([replace(d, code="E0405") for d in exc.diagnostics]) from None
    except FileNotFoundError:
        raise CompileError([Diagnostic("E0405", f"input file `{path}` does not exist")]) from None
    except (OSError, MemoryError) as exc:
        raise CompileError([Diagnostic("E0405", f"cannot read input file `{path}`: "
                                       f"{getattr(exc, 'strerror', None) or _reason(exc)}")]
                           ) from None


def _open_regular(path: Path, what: str = "weights file") -> IO[bytes]:
    """`path` opened for reading, refused (E0414) unless it is a regular file. Opened without
    blocking, so a FIFO cannot hang netc, and checked on the open file, so nothing can be
    swapped in between the check and the read."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    mode = os.fstat(descriptor).st_mode
    if not stat.S_ISREG(mode):
        os.close(descriptor)
        kind = ("a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
                else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "not a file")
        raise CompileError([Diagnostic("E0414", f"{what} `{path}` is not a regular file "
                                       f"(it is {kind})")])
    os.set_blocking(descriptor, True)
    return os.fdopen(descriptor, "rb")


def _reason(exc: BaseException) -> str:
    """An exception's message, or its type where the message is empty (a bare MemoryError)."""
    return str(exc) or type(exc).__name__


def _bytes(count: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if count >= 1 << shift:
            return f"{count / (1 << shift):.1f} {unit}"
    return f"{count} bytes"


def _refuse(path: Path, name: str | None, message: str) -> CompileError:
    what = f"tensor `{name}` in `{path}`" if name is not None else f"`{path}`"
    return CompileError([Diagnostic("E0415", f"{what}: {message}")])


def _as_float32(name: str, array: np.ndarray, path: Path) -> np.ndarray:
    """`array` as float32; a dtype that is not a real number, or a value float32 cannot hold,
    is refused with the tensor's name (never a silent inf)."""
    if array.dtype.kind not in "fiu":
        raise _refuse(path, name, f"has dtype {array.dtype}; weights are real numbers (float "
                      "or integer)")
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            converted = np.asarray(array, dtype=np.float32)
        overflow = None
        if array.dtype.kind == "f" and array.dtype.itemsize > 4:
            overflow = np.isinf(converted) & np.isfinite(array)
    except MemoryError:
        raise _refuse(path, name, f"needs {_bytes(array.size * 4)} as float32, more memory "
                      "than this machine has free") from None
    if overflow is not None and overflow.any():
        at = np.unravel_index(int(np.argmax(overflow)), array.shape)
        where = f" at [{', '.join(str(int(i)) for i in at)}]" if array.ndim else ""
        raise _refuse(path, name, f"holds {float(array[at]):g}{where} (dtype {array.dtype}), "
                      f"beyond float32's range (±{float(np.finfo(np.float32).max):.4g}); "
                      f"{int(overflow.sum())} value(s) would become infinite")
    return converted


def _read_into(file: IO[bytes], array: np.ndarray) -> bool:
    """Fill `array` from `file`, a bounded chunk at a time; whether the file held enough."""
    flat = array.reshape(-1).view(np.uint8)
    filled = 0
    while filled < flat.size:
        chunk = file.read(min(flat.size - filled, _CHUNK))
        if not chunk:
            return False
        flat[filled:filled + len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
        filled += len(chunk)
    return True


_CHUNK = 16 << 20


def _empty(path: Path, name: str, count: int, dtype: np.dtype) -> np.ndarray:
    try:
        return np.empty(count, dtype=dtype)
    except MemoryError:
        raise _refuse(path, name, f"needs {_bytes(count * dtype.itemsize)}, more memory than "
                      "this machine has free") from None


# safetensors ------------------------------------------------------------------------------

_SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64,
                       "I64": np.int64, "I32": np.int32, "BF16": np.uint16}


class _DuplicateKey(Exception):
    def __init__(self, key: str):
        self.key = key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def _is_int(value: object) -> bool:
    return type(value) is int  # not bool, not a float such as 2.0


def _read_safetensors(file: IO[bytes], size: int, path: Path) -> dict[str, np.ndarray]:
    """A safetensors reader that also takes BF16 (NumPy has no bfloat16 for the library's
    NumPy loader). The format is an 8-byte little-endian header size, a JSON header, data.
    The whole header is checked before any tensor is read."""
    if size < 8:
        raise _refuse(path, None, "is not a safetensors file (too short)")
    (header_size,) = struct.unpack("<Q", file.read(8))
    if header_size > size - 8:
        raise _refuse(path, None, "is not a safetensors file (header runs past the end of "
                      "the file)")
    if header_size > MAX_SAFETENSORS_HEADER:
        raise _refuse(path, None, f"has a header of {_bytes(header_size)}; safetensors headers "
                      f"are at most {_bytes(MAX_SAFETENSORS_HEADER)}")
    try:
        header = json.loads(file.read(header_size), object_pairs_hook=_no_duplicates)
    except _DuplicateKey as duplicate:
        raise _refuse(path, duplicate.key, "appears twice in the header") from None
    except ValueError as exc:
        raise _refuse(path, None, f"is not a safetensors file (its header is not JSON: {exc})") \
            from None
    if not isinstance(header, dict):
        raise _refuse(path, None, "is not a safetensors file (its header is not a JSON object)")
    data_start = 8 + header_size
    data_size = size - data_start
    entries: list[tuple[str, np.dtype, bool, tuple[int, ...], int, int]] = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise _refuse(path, name, "has a header entry that is not {dtype, shape, "
                          "data_offsets}")
        dtype_name, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        dtype = _SAFETENSORS_DTYPES.get(dtype_name) if isinstance(dtype_name, str) else None
        if dtype is None:
            raise _refuse(path, name, f"has unsupported dtype {dtype_name!r} (netc reads "
                          f"{', '.join(_SAFETENSORS_DTYPES)})")
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            raise _refuse(path, name, f"has shape {json.dumps(shape)}, not a list of "
                          "non-negative integers")
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(_is_int(o) and o >= 0 for o in offsets)):
            raise _refuse(path, name, f"has data offsets {json.dumps(offsets)}, not two "
                          "non-negative integers")
        start, end = offsets
        item = np.dtype(dtype)
        needed = math.prod(shape) * item.itemsize  # Python ints: no overflow
        if not start <= end <= data_size:
            raise _refuse(path, name, f"has data offsets [{start}, {end}] outside the file's "
                          f"{data_size} bytes of data")
        if end - start != needed:
            raise _refuse(path, name, f"has data offsets [{start}, {end}] ({end - start} bytes) "
                          f"but shape {format_shape(tuple(shape))} of {dtype_name} needs "
                          f"{needed} bytes")
        entries.append((name, item, dtype_name == "BF16", tuple(shape), start, end))
    by_start = sorted((e for e in entries if e[4] < e[5]), key=lambda e: e[4])
    for before, after in itertools.pairwise(by_start):
        if after[4] < before[5]:
            raise _refuse(path, after[0], f"shares bytes {after[4]} to {min(before[5], after[5])} "
                          f"of the data with tensor `{before[0]}` (overlapping data offsets)")
    tensors: dict[str, np.ndarray] = {}
    for name, item, bf16, shape, start, end in entries:
        array = _empty(path, name, (end - start) // item.itemsize, item)
        file.seek(data_start + start)
        if not _read_into(file, array):
            raise _refuse(path, name, "is cut short: the file ended while reading it")
        array = array.reshape(shape)
        tensors[name] = bf16_bits_to_f32(array).reshape(shape) if bf16 else array
    return tensors


# .npz -------------------------------------------------------------------------------------


def _read_npz(file: IO[bytes], size: int, path: Path) -> dict[str, np.ndarray]:
    """An `.npz` reader that checks every member's declared size and `.npy` header before
    inflating anything (NumPy's `np.load` would allocate whatever a header declares). Arrays
    of Python objects are refused: a weights file can never run code."""
    with zipfile.ZipFile(file) as archive:
        members = archive.infolist()
        names: dict[str, zipfile.ZipInfo] = {}
        for info in members:
            name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            if name in names:
                raise _refuse(path, name, "appears twice in the archive")
            names[name] = info
        declared = sum(info.file_size for info in members)
        if declared > max(NPZ_INFLATION_ALLOWANCE, NPZ_INFLATION_RATIO * size):
            largest = max(members, key=lambda info: info.file_size)
            raise _refuse(path, None, f"would inflate to {_bytes(declared)} from "
                          f"{_bytes(size)} (member `{largest.filename}` alone declares "
                          f"{_bytes(largest.file_size)}); refused as a zip bomb before inflating "
                          f"(an .npz may inflate to at most {NPZ_INFLATION_RATIO} times its size "
                          f"beyond {_bytes(NPZ_INFLATION_ALLOWANCE)}; save it uncompressed or as "
                          ".safetensors)")
        tensors: dict[str, np.ndarray] = {}
        for name, info in names.items():
            with archive.open(info) as member:
                tensors[name] = _read_npy(member, info.file_size, name, path)
    return tensors


def _read_npy(member: IO[bytes], size: int, name: str, path: Path) -> np.ndarray:
    """One `.npy` array of `size` bytes (header included), checked before anything is
    allocated: its header, a real-number dtype, and a size that matches its shape."""
    try:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(member)
        else:
            raise ValueError(f".npy format version {version[0]}.{version[1]} (netc reads 1.0 "
                             "and 2.0)")
    except ValueError as exc:
        raise _refuse(path, name, f"is not a valid .npy array: {_reason(exc)}") from None
    if dtype.kind not in "fiu" or dtype.hasobject or dtype.fields is not None:
        raise _refuse(path, name, f"has dtype {dtype}; weights are real numbers (float or "
                      "integer)")
    needed = math.prod(shape) * dtype.itemsize
    header = member.tell()
    if header + needed != size:
        raise _refuse(path, name, f"declares shape {format_shape(shape)} of {dtype} "
                      f"({needed} bytes) but holds {size - header} bytes")
    array = _empty(path, name, math.prod(shape), dtype)
    if not _read_into(member, array):
        raise _refuse(path, name, "is cut short: the archive ended while reading it")
    if fortran:
        return array.reshape(shape[::-1]).transpose()
    return array.reshape(shape)
