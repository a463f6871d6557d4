"""Weights on disk: safetensors (preferred), `.npz` and PyTorch's `.pt`/`.pth`, initialisation
and checking.

Tensors are keyed by full parameter name (`basic_1.conv2d_0.weight`), laid out as PyTorch lays
them out, so a PyTorch state dict maps over by name: a `.net` whose layers carry PyTorch's
module paths (`name="layer1.0.conv1"`) loads `model.state_dict()` with no renaming
(`load_state_dict`). Besides the parameters (the IR's `param` nodes) the weights hold the
buffers an op keeps but never reads (`ParamSpec.operand` False: batchnorm's
`num_batches_tracked`, an i64 scalar); a file without one loads as if it held 0.

No weights file can run code: `.npz` files are read with `allow_pickle=False`, safetensors by
netc's own checked reader, and `.pt`/`.pth` only through
`torch.load(weights_only=True, map_location="cpu")` (PyTorch's restricted unpickler; never
anything else), which needs PyTorch installed.
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
"""The formats netc writes."""
TORCH_SUFFIXES = (".pt", ".pth")
"""PyTorch files netc reads (through PyTorch) but never writes."""
STATE_DICT_KEYS = ("state_dict", "model")
"""A `.pt` checkpoint that is not itself a state dict may hold one under one of these keys."""
_DTYPES = {"i64": np.dtype(np.int64)}
"""The NumPy dtype a weights dict holds for a fixed-dtype `ParamSpec`; float32 otherwise."""


def param_specs(graph: Graph) -> dict[str, ParamSpec]:
    """Every parameter's and buffer's spec (shape, dtype and PyTorch initialisation), by full
    name: each layer's operands, then its buffers that no op reads (`ParamSpec.operand`
    False, named `<layer>.<name>`, as in a PyTorch state dict)."""
    specs: dict[str, ParamSpec] = {}
    for node in graph.compute_nodes:
        opdef = REGISTRY[node.op]
        names = opdef.param_names(node.attrs)
        if not names:
            continue
        param_ids = node.inputs[len(node.inputs) - len(names):]
        tensors = [graph[i].type for i in node.inputs[: len(node.inputs) - len(names)]]
        all_specs = opdef.params(node.attrs, tensors)
        by_name = {spec.name: spec for spec in all_specs}
        for name, param_id in zip(names, param_ids):
            # A backward graph (`netc.autodiff`) applies ops with parameters to values
            # that are no parameters, and to a layer's weight again (conv2d's data gradient
            # is a conv_transpose2d by it): the layer that owns a parameter names it first.
            if graph.producer(param_id).op == "param":
                specs.setdefault(param_id, by_name[name])
        layer = node.layer or param_ids[0][: -len(names[0]) - 1]  # ids are `<layer>.<name>`
        for spec in all_specs:
            if not spec.operand:
                specs[f"{layer}.{spec.name}"] = spec
    for node in graph.params:
        if node.id not in specs and "init" in node.attrs:
            specs[node.id] = free_param_spec(node)
    return specs


def free_param_spec(node: Node) -> ParamSpec:
    """The spec of a `param NAME: TYPE = INIT` (language v2), from its node's attributes."""
    init = node.attrs["init"]
    shape = tuple(int(d) for d in node.type.shape)
    if init in ("zeros", "ones"):
        return ParamSpec(node.id, shape, ("const", 0.0 if init == "zeros" else 1.0))
    return ParamSpec(node.id, shape, (init, float(node.attrs["std" if init == "normal" else
                                                            "bound"])))


def init_weights(graph: Graph, seed: int = 0) -> dict[str, np.ndarray]:
    """Fresh parameters initialised as PyTorch initialises the same layers, reproducibly."""
    rng = np.random.default_rng(seed)
    weights: dict[str, np.ndarray] = {}
    for name, spec in param_specs(graph).items():
        kind, value = spec.init
        if kind == "uniform":
            weights[name] = rng.uniform(-value, value, size=spec.shape).astype(np.float32)
        elif kind == "normal":
            weights[name] = rng.normal(0.0, value, size=spec.shape).astype(np.float32)
        else:
            weights[name] = np.full(spec.shape, value, dtype=_host_dtype(spec))
    return weights


def _host_dtype(spec: ParamSpec) -> np.dtype:
    return _DTYPES.get(spec.dtype or "", np.dtype(np.float32))


def buffer_specs(graph: Graph) -> dict[str, ParamSpec]:
    """The buffers of `graph` that no op reads (`num_batches_tracked`), by full name."""
    return {name: spec for name, spec in param_specs(graph).items() if not spec.operand}


def _layer_of(graph: Graph, name: str) -> str:
    if name not in graph or not graph[name].layer:
        return ""
    return f" (layer `{graph[name].layer}`)"


def check_weights(graph: Graph, weights: Mapping[str, np.ndarray], source: str = "weights") -> None:
    """Raise one CompileError listing every missing, unexpected, mis-shaped and mis-typed
    tensor. A buffer no op reads (`num_batches_tracked`) may be missing (it counts as 0)."""
    problems = _mismatches(graph, weights, source)
    if problems:
        raise CompileError(problems)


def _mismatches(graph: Graph, weights: Mapping[str, Any], source: str) -> list[Diagnostic]:
    problems: list[Diagnostic] = []
    expected: dict[str, Node] = {n.id: n for n in graph.params}
    buffers = buffer_specs(graph)
    for name, node in expected.items():
        if name not in weights:
            problems.append(Diagnostic(
                "E0410", f"{source}: missing tensor `{name}` of shape "
                f"{format_shape(node.type.shape)}{_layer_of(graph, name)}", node.span))
        else:
            problems.extend(_misfit(source, name, weights[name], node.type.shape,
                                    node.type.dtype, _layer_of(graph, name), node.span))
    for name, spec in buffers.items():
        if name in weights:
            layer = _layer_of(graph, name.rpartition(".")[0])
            problems.extend(_misfit(source, name, weights[name], spec.shape,
                                    spec.dtype or "f32", layer, None))
    for name in sorted(set(weights) - set(expected) - set(buffers)):
        problems.append(Diagnostic("E0411", f"{source}: unexpected tensor `{name}` of shape "
                                   f"{format_shape(np.shape(weights[name]))} (no parameter or "
                                   "buffer of the network has this name)"))
    return problems


def _misfit(source: str, name: str, array: Any, shape: tuple[Any, ...], dtype: str,
            layer: str, span: Any) -> list[Diagnostic]:
    """The problems of one tensor given for a parameter or buffer of `shape` and `dtype`: a
    wrong shape (E0412), a dtype netc does not convert from (E0418)."""
    problems = []
    if tuple(np.shape(array)) != tuple(shape):
        problems.append(Diagnostic(
            "E0412", f"{source}: tensor `{name}`{layer} has shape "
            f"{format_shape(np.shape(array))}, expected {format_shape(shape)}", span))
    values = np.asarray(array)
    if dtype in _DTYPES:
        whole = values.dtype.kind in "iu" or (values.dtype.kind == "f" and bool(
            np.all(np.isfinite(values)) and np.all(values == np.round(values))))
        if not whole:
            problems.append(Diagnostic(
                "E0418", f"{source}: tensor `{name}`{layer} has dtype {values.dtype}, expected "
                f"{dtype} (an integer dtype, or floats holding whole numbers)", span))
    elif values.dtype.kind not in "fiu":
        problems.append(Diagnostic(
            "E0418", f"{source}: tensor `{name}`{layer} has dtype {values.dtype}, expected "
            f"{dtype} (any float or integer dtype converts)", span))
    return problems


def load_state_dict(graph: Graph, source: str | Path | Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The weights of `graph` from a state dict: a weights file (`.safetensors`, `.npz`,
    `.pt`/`.pth`) or a mapping of names to arrays (NumPy arrays, or anything `np.asarray`
    takes, such as CPU torch tensors), matched by name with no renaming.

    Parameters become float32 (from any float or integer dtype; an f64 value beyond float32's
    range is refused), i64 buffers int64 (from an integer dtype, or floats holding whole
    numbers); a missing `num_batches_tracked` (a buffer no op reads) becomes 0. Every missing
    (E0410), unexpected (E0411), mis-shaped (E0412) and mis-typed (E0418) tensor is listed in
    one CompileError, with names and shapes."""
    if isinstance(source, Mapping):
        path = Path("state dict")
        raw = {str(key): np.asarray(value) for key, value in source.items()}
    else:
        path = Path(source)
        raw = read_tensors(path)
    # The file's own defects first, as `load_weights` reports them (E0415): a float value
    # float32 cannot hold, whatever tensor holds it.
    floats = {key: _as_float32(key, array, path) for key, array in raw.items()
              if array.dtype.kind == "f"}
    problems = _mismatches(graph, raw, str(path))
    if problems:
        raise CompileError(problems)
    weights: dict[str, np.ndarray] = {}
    for key, spec in param_specs(graph).items():
        dtype = _host_dtype(spec)
        if key not in raw:  # only a buffer no op reads may be missing here
            weights[key] = np.zeros(spec.shape, dtype=dtype)
        elif dtype == np.float32:
            weights[key] = floats[key] if key in floats else _as_float32(key, raw[key], path)
        else:
            weights[key] = raw[key].astype(dtype)
    return weights


def save_weights(weights: Mapping[str, np.ndarray], path: str | Path) -> None:
    """Write atomically: a failure leaves any earlier file at `path` untouched. Float tensors
    are written as float32, integer ones (`num_batches_tracked`) as int64, as PyTorch keeps
    them, so `torch.nn.Module.load_state_dict` takes the file's tensors as they are."""
    path = Path(path)
    if path.suffix not in WEIGHT_SUFFIXES:
        raise CompileError([Diagnostic("E0413", f"cannot write weights to `{path}`: the file "
                                       "name must end in .safetensors or .npz")])
    arrays = _storable(weights)
    if path.suffix == ".npz":
        write_npz(arrays, path)
        return
    from safetensors.numpy import save_file

    with atomic_path(path) as temp:
        save_file(arrays, str(temp))


def weights_bytes(weights: Mapping[str, np.ndarray]) -> bytes:
    """The safetensors file `save_weights` would write, as bytes (float32 tensors)."""
    from safetensors.numpy import save

    return bytes(save(_storable(weights)))


def _storable(weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each tensor as written: int64 for an integer tensor, float32 for any other (C order;
    `np.ascontiguousarray` would make a 0-d scalar 1-d)."""
    return {k: np.asarray(v, dtype=np.int64 if np.asarray(v).dtype.kind in "iu"
                          else np.float32).copy(order="C") for k, v in weights.items()}


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
    (and the tensor, where one tensor is at fault). `load_state_dict` reads one for a network
    (keeping integer buffers as int64 and checking every tensor against the network).

    Both formats are checked against their own structure before any tensor data is read:
    safetensors headers (duplicate names, shapes that are not lists of integers, offsets
    outside the data or shared by two tensors, sizes that do not match the shape) and `.npz`
    members (their `.npy` headers, declared sizes, and an inflation bound), so a hostile file
    is refused without allocating what it claims. Values that float32 cannot hold (an f64
    1e300) and dtypes that are not real numbers are refused with the tensor's name."""
    path = Path(path)
    return {name: _as_float32(name, array, path) for name, array in read_tensors(path).items()}


def read_tensors(path: str | Path) -> dict[str, np.ndarray]:
    """Every tensor of a weights file in its own dtype (bf16 as float32), checked as
    `load_weights` says; `.pt`/`.pth` through PyTorch (`_read_torch`)."""
    path = Path(path)
    if path.suffix not in (*WEIGHT_SUFFIXES, *TORCH_SUFFIXES):
        raise CompileError([Diagnostic("E0413", f"cannot read weights from `{path}`: expected a "
                                       ".safetensors, .npz, .pt or .pth file")])
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
                return _read_npz(file, size, path)
            if path.suffix in TORCH_SUFFIXES:
                return _read_torch(file, path)
            return _read_safetensors(file, size, path)
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
    """One `.npy` file (a network input) as float32 (integer and bool arrays as they are),
    read with a weights file's checks: a regular file, a valid header, a real-number or bool
    dtype, a size that matches the shape, values float32 can hold. Any problem is a CompileError (E0405) naming the file and `name`."""
    path = Path(path)
    try:
        with _open_regular(path, "input file") as file:
            array = _read_npy(file, os.fstat(file.fileno()).st_size, name, path)
        if array.dtype.kind in "iub":  # exact: an integer or bool input converts as it is used
            return np.asarray(array)
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
    if dtype.kind not in "fiub" or dtype.hasobject or dtype.fields is not None:
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


# PyTorch .pt / .pth -------------------------------------------------------------------------


def _read_torch(file: IO[bytes], path: Path) -> dict[str, np.ndarray]:
    """A state dict saved with `torch.save`, read only by PyTorch's restricted unpickler
    (`weights_only=True`: plain containers and tensors, never arbitrary objects). The file may
    be the state dict itself or a checkpoint holding it under a key of `STATE_DICT_KEYS`."""
    try:
        import torch
    except ImportError:
        raise CompileError([Diagnostic(
            "E0419", f"`{path}` is a PyTorch file; reading it needs PyTorch, which is not "
            "installed", help="`pip install torch`, or save the state dict with "
            "`safetensors.torch.save_file(model.state_dict(), \"weights.safetensors\")`")]) \
            from None
    import pickle

    try:
        loaded = torch.load(file, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CompileError([Diagnostic(
            "E0421", f"`{path}` holds Python objects that PyTorch's safe loader "
            f"(`weights_only=True`) refuses: {first}",
            help="save the state dict, not the model: `torch.save(model.state_dict(), path)`")]
        ) from None
    state = _state_dict_in(loaded, torch.Tensor)
    if state is None:
        raise CompileError([Diagnostic(
            "E0421", f"`{path}` holds {_describe(loaded)}, not a state dict (a mapping of names "
            f"to tensors, itself or under the key {' or '.join(map(repr, STATE_DICT_KEYS))})",
            help="save the state dict: `torch.save(model.state_dict(), path)`")])
    arrays: dict[str, np.ndarray] = {}
    for name, tensor in state.items():
        try:
            tensor = tensor.detach().to("cpu")
            if tensor.dtype == torch.bfloat16:  # NumPy has no bfloat16; float32 holds it exactly
                tensor = tensor.float()
            arrays[name] = tensor.contiguous().numpy()
        except (TypeError, RuntimeError) as exc:
            raise _refuse(path, name, f"cannot be read as an array ({tensor.dtype}, "
                          f"{tensor.layout}): {_reason(exc)}") from None
    return arrays


def _state_dict_in(loaded: object, tensor: type) -> Mapping[str, Any] | None:
    """`loaded` if it is a mapping of names to tensors, else such a mapping under one of
    `STATE_DICT_KEYS`; None if neither."""
    def is_state_dict(value: object) -> bool:
        return isinstance(value, Mapping) and all(
            isinstance(k, str) and isinstance(v, tensor) for k, v in value.items())

    if is_state_dict(loaded):
        return loaded  # type: ignore[return-value]
    if isinstance(loaded, Mapping):
        for key in STATE_DICT_KEYS:
            if is_state_dict(loaded.get(key)):
                return loaded[key]
    return None


def _describe(value: object) -> str:
    if isinstance(value, Mapping):
        kinds = sorted({type(v).__name__ for v in value.values()})
        return f"a mapping of {len(value)} entries ({', '.join(kinds) or 'empty'})"
    return f"a {type(value).__name__}"
