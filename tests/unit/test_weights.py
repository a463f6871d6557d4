"""Weights files: round trips, PyTorch initialisation, and the checks on loading."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from netc.diagnostics import CompileError
from netc.dtypes import f32_to_bf16_bits
from netc.weights import check_weights, init_weights, load_weights, param_specs, save_weights

from .graphs import mlp_graph

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_round_trip(tmp_path: Path, suffix: str) -> None:
    graph = mlp_graph()
    weights = init_weights(graph, seed=3)
    path = tmp_path / f"w{suffix}"
    save_weights(weights, path)
    loaded = load_weights(path)
    assert sorted(loaded) == sorted(weights)
    for name, value in weights.items():
        np.testing.assert_array_equal(loaded[name], value)
    assert list(tmp_path.iterdir()) == [path], "no temporary file may be left behind"


def test_init_matches_pytorch_bounds_and_is_seeded() -> None:
    graph = mlp_graph()
    first, again, other = init_weights(graph, 1), init_weights(graph, 1), init_weights(graph, 2)
    for name, spec in param_specs(graph).items():
        assert first[name].shape == spec.shape
        np.testing.assert_array_equal(first[name], again[name])
        assert not np.array_equal(first[name], other[name])
    fan_in = 12
    weight = first["hidden.weight"]
    assert np.abs(weight).max() <= 1 / np.sqrt(fan_in)
    assert np.abs(weight).max() > 0.8 / np.sqrt(fan_in), "draws should fill the range"


def test_check_reports_every_problem_at_once() -> None:
    graph = mlp_graph()
    weights = init_weights(graph)
    del weights["hidden.bias"]
    weights["dense_0.weight"] = np.zeros((3, 3), np.float32)
    weights["stray"] = np.zeros(2, np.float32)
    with pytest.raises(CompileError) as caught:
        check_weights(graph, weights, source="w.safetensors")
    codes = sorted(d.code for d in caught.value.diagnostics)
    assert codes == ["E0410", "E0411", "E0412"]
    text = caught.value.render()
    assert "missing tensor `hidden.bias` of shape [8]" in text
    assert "`dense_0.weight` (layer `dense_0`) has shape [3, 3], expected [4, 8]" in text
    assert "unexpected tensor `stray`" in text


def test_npz_with_pickled_objects_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.npz"
    np.savez(path, x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(CompileError, match=r"E0415|cannot read"):
        load_weights(path)


def test_corrupt_and_missing_files_are_diagnostics(tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\xff" * 20)
    with pytest.raises(CompileError, match="E0415"):
        load_weights(bad)
    with pytest.raises(CompileError, match="E0414"):
        load_weights(tmp_path / "absent.safetensors")
    with pytest.raises(CompileError, match="E0413"):
        load_weights(tmp_path / "w.txt")


def test_bf16_safetensors_are_read(tmp_path: Path) -> None:
    values = np.array([1.0, -2.5, 3.140625], dtype=np.float32)
    payload = f32_to_bf16_bits(values).tobytes()
    header = json.dumps({"t": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 6]}}).encode()
    path = tmp_path / "w.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + payload)
    np.testing.assert_array_equal(load_weights(path)["t"], values)


def test_every_npz_layout_numpy_writes_is_read(tmp_path: Path) -> None:
    """The checked `.npz` reader takes what NumPy writes: compressed, Fortran order, other
    byte orders and widths, integers, empty and 0-d arrays."""
    arrays = {
        "plain": np.arange(12, dtype=np.float32).reshape(3, 4),
        "fortran": np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3)),
        "big_endian": np.arange(5, dtype=">f8"),
        "half": np.array([0.5, -1.0], dtype=np.float16),
        "ints": np.array([[1, -2], [3, 4]], dtype=np.int64),
        "empty": np.zeros((0, 3), dtype=np.float32),
        "scalar": np.array(2.5),
    }
    for name, save in (("a.npz", np.savez), ("b.npz", np.savez_compressed)):
        save(tmp_path / name, **arrays)
        loaded = load_weights(tmp_path / name)
        assert set(loaded) == set(arrays)
        for key, array in arrays.items():
            assert loaded[key].dtype == np.float32
            np.testing.assert_array_equal(loaded[key], array.astype(np.float32))


def test_safetensors_with_empty_tensors_and_wide_dtypes_are_read(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    arrays = {"a": np.arange(6, dtype=np.float64).reshape(2, 3), "empty": np.zeros(0, np.float32),
              "b": np.array([7], dtype=np.int32), "c": np.array([1e38, -3e38], dtype=np.float64)}
    save_file(arrays, str(tmp_path / "w.safetensors"))
    loaded = load_weights(tmp_path / "w.safetensors")
    for key, array in arrays.items():
        np.testing.assert_array_equal(loaded[key], array.astype(np.float32))
