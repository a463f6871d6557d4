"""Weights on disk: safetensors (preferred) and `.npz`, initialisation and checking.

Tensors are keyed by full parameter name (`basic_1.conv2d_0.weight`), laid out as PyTorch lays
them out, so a PyTorch state dict maps over by name. `.npz` files are read with
`allow_pickle=False`: a weights file can never run code.
"""

from __future__ import annotations

import json
import struct
import zipfile
from collections.abc import Mapping
from pathlib import Path

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


def load_weights(path: str | Path) -> dict[str, np.ndarray]:
    """Read a weights file as float32 arrays; any problem is a CompileError naming the file."""
    path = Path(path)
    if path.suffix not in WEIGHT_SUFFIXES:
        raise CompileError([Diagnostic("E0413", f"cannot read weights from `{path}`: expected a "
                                       ".safetensors or .npz file")])
    if not path.is_file():
        raise CompileError([Diagnostic("E0414", f"weights file `{path}` does not exist")])
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                raw = {name: archive[name] for name in archive.files}
        else:
            raw = _load_safetensors(path)
    except CompileError:
        raise
    except Exception as exc:  # any decoder failure means the file is not valid weights
        raise CompileError([Diagnostic("E0415", f"cannot read weights file `{path}`: {exc}")]) from None
    weights: dict[str, np.ndarray] = {}
    for name, array in raw.items():
        if array.dtype.kind not in "fiu":
            raise CompileError([Diagnostic("E0415", f"tensor `{name}` in `{path}` has dtype "
                                           f"{array.dtype}, not a number type")])
        weights[name] = np.asarray(array, dtype=np.float32)
    return weights


_SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64,
                       "I64": np.int64, "I32": np.int32, "BF16": np.uint16}


def _load_safetensors(path: Path) -> dict[str, np.ndarray]:
    """A safetensors reader that also takes BF16 (NumPy has no bfloat16 for the library's
    NumPy loader). The format is an 8-byte little-endian header size, a JSON header, data."""
    data = path.read_bytes()
    if len(data) < 8:
        raise CompileError([Diagnostic("E0415", f"`{path}` is not a safetensors file (too short)")])
    (header_size,) = struct.unpack("<Q", data[:8])
    if header_size > len(data) - 8:
        raise CompileError([Diagnostic("E0415", f"`{path}` is not a safetensors file "
                                       "(header runs past the end of the file)")])
    header = json.loads(data[8:8 + header_size])
    body = memoryview(data)[8 + header_size:]
    tensors: dict[str, np.ndarray] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES.get(entry["dtype"])
        if dtype is None:
            raise CompileError([Diagnostic("E0415", f"tensor `{name}` in `{path}` has "
                                           f"unsupported dtype {entry['dtype']}")])
        start, end = entry["data_offsets"]
        shape = tuple(int(d) for d in entry["shape"])
        count = int(np.prod(shape, dtype=np.int64))
        if not 0 <= start <= end <= len(body) or end - start != count * np.dtype(dtype).itemsize:
            raise CompileError([Diagnostic("E0415", f"tensor `{name}` in `{path}` has data "
                                           "offsets that do not match its shape")])
        array = np.frombuffer(body[start:end], dtype=dtype).reshape(shape)
        tensors[name] = bf16_bits_to_f32(array).reshape(shape) if entry["dtype"] == "BF16" else array
    return tensors
