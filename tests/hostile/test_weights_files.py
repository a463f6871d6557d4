"""Issue 9, item 5 (weights): a weights file is data to check, never trusted.

Each hostile file is given to `netc run --weights` as a user would: safetensors headers that
lie (overlapping offsets, a duplicate tensor, a shape of floats, offsets past the end, sizes
no file could hold), values float32 cannot hold (an f64 1e300 would silently become inf),
dtypes that are not real numbers, an `.npz` zip bomb, a file too large for memory, and paths
that are not regular files (a directory, a FIFO that used to hang netc, `/dev/zero`).  Each
must end with exit status 1 and one diagnostic (E0414 or E0415) naming the file and, where
one tensor is at fault, the tensor; and nothing in the working directory may change.
"""

from __future__ import annotations

import io
import json
import os
import struct
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.hostile.support import Run, changed, netc, tree_state

pytestmark = pytest.mark.unit

MODEL = """network m {
    input x: f32[N, 4]
    output y = dense(x, 2)
}
"""


def _safetensors(header: str | dict[str, object], data: bytes) -> bytes:
    text = (header if isinstance(header, str) else json.dumps(header)).encode()
    return struct.pack("<Q", len(text)) + text + data


def _f32(count: int) -> bytes:
    return np.arange(count, dtype=np.float32).tobytes()


def _entry(dtype: str, shape: list[object], start: int, end: int) -> dict[str, object]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [start, end]}


def _workspace(path: Path) -> Path:
    (path / "m.net").write_text(MODEL)
    (path / "home").mkdir()
    (path / "tmp").mkdir()
    return path


def _refused(work: Path, weights: str, code: str, *needles: str, ignore: tuple[str, ...] = (),
             memory_limit: int | None = None, env: dict[str, str] | None = None) -> Run:
    before = tree_state(work, ignore=ignore)
    result = netc("run", "m.net", "--backend", "reference", "--random-input", "--weights",
                  weights, cwd=work, memory_limit=memory_limit, env=env)
    assert result.returncode == 1, result.stderr
    assert result.codes() == [code], result.stderr
    assert "bug in netc" not in result.stderr and "Traceback" not in result.stderr
    for needle in (f"`{weights}`", *needles):
        assert needle in result.stderr, result.stderr
    assert changed(before, tree_state(work, ignore=ignore)) == []
    return result


SAFETENSORS_CASES: dict[str, tuple[bytes, str, tuple[str, ...]]] = {
    "overlapping offsets": (
        _safetensors({"a": _entry("F32", [4], 0, 16), "b": _entry("F32", [4], 8, 24)}, _f32(8)),
        "tensor `b`", ("tensor `a`", "overlapping")),
    "duplicate key": (
        _safetensors('{"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}, '
                     '"a": {"dtype": "F32", "shape": [4], "data_offsets": [16, 32]}}', _f32(8)),
        "tensor `a`", ("appears twice",)),
    "float shape": (
        _safetensors({"a": _entry("F32", [4.0], 0, 16)}, _f32(4)),
        "tensor `a`", ("[4.0]", "integers")),
    "fractional shape": (
        _safetensors({"a": _entry("F32", [2.5, 2], 0, 16)}, _f32(4)),
        "tensor `a`", ("integers",)),
    "boolean offsets": (
        _safetensors({"a": _entry("F32", [0], False, False)}, b""),
        "tensor `a`", ("data offsets",)),
    "offsets past the end": (
        _safetensors({"a": _entry("F32", [400], 0, 1600)}, _f32(8)),
        "tensor `a`", ("[0, 1600]", "outside")),
    "huge shape, no data": (
        # 2^40 x 2^40 elements: int64 arithmetic would wrap this product to 0 bytes.
        _safetensors({"a": _entry("F32", [1 << 40, 1 << 40, 4], 0, 0)}, b""),
        "tensor `a`", ("[1099511627776, 1099511627776, 4]",)),
    "huge claimed size": (
        _safetensors({"a": _entry("F32", [1 << 38], 0, 1 << 40)}, _f32(4)),
        "tensor `a`", ("outside",)),
    "header size past the end": (
        struct.pack("<Q", 1 << 62) + b"{}", "safetensors", ("header",)),
    "f64 beyond float32": (
        _safetensors({"w": _entry("F64", [2, 2], 0, 32)},
                     np.array([1.0, 2.0, -1e300, 3.0]).tobytes()),
        "tensor `w`", ("-1e+300", "[1, 0]", "float32")),
    "complex dtype": (
        _safetensors({"c": _entry("C64", [2], 0, 16)}, _f32(4)),
        "tensor `c`", ("unsupported dtype",)),
    "bool dtype": (
        _safetensors({"flags": _entry("BOOL", [4], 0, 4)}, b"\x01\x00\x01\x00"),
        "tensor `flags`", ("unsupported dtype",)),
}


@pytest.mark.parametrize("case", list(SAFETENSORS_CASES))
def test_a_lying_safetensors_header_is_refused_naming_the_tensor(tmp_path: Path,
                                                                 case: str) -> None:
    content, culprit, needles = SAFETENSORS_CASES[case]
    work = _workspace(tmp_path)
    (work / "w.safetensors").write_bytes(content)
    _refused(work, "w.safetensors", "E0415", culprit, *needles)


def _npz_complex(path: Path) -> None:
    np.savez(path, c=np.ones(3, dtype=np.complex128))


def _npz_object(path: Path) -> None:
    np.savez(path, o=np.array([{"a": 1}], dtype=object))


def _npz_f64_overflow(path: Path) -> None:
    np.savez(path, w=np.array([[1.0, 1e300]]))


def _npy_bytes(header: dict[str, object], data: bytes) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue() + data


def _npz_lying_npy_header(path: Path) -> None:
    """A 16-byte member whose header declares 2^40 floats: NumPy would allocate 4 TiB."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("big.npy", _npy_bytes(
            {"descr": "<f4", "fortran_order": False, "shape": (1 << 40,)}, _f32(4)))


def _npz_duplicate_member(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile's "Duplicate name": the point
        for value in (1.0, 2.0):
            archive.writestr("w.npy", _npy_bytes(
                {"descr": "<f4", "fortran_order": False, "shape": (1,)},
                np.float32(value).tobytes()))


NPZ_CASES: dict[str, tuple[Callable[[Path], None], str, tuple[str, ...]]] = {
    "complex": (_npz_complex, "tensor `c`", ("complex128",)),
    "object": (_npz_object, "tensor `o`", ("object",)),
    "f64 beyond float32": (_npz_f64_overflow, "tensor `w`", ("1e+300", "float32")),
    "lying npy header": (_npz_lying_npy_header, "tensor `big`", ("[1099511627776]",)),
    "duplicate member": (_npz_duplicate_member, "tensor `w`", ("appears twice",)),
}


@pytest.mark.parametrize("case", list(NPZ_CASES))
def test_a_hostile_npz_is_refused_naming_the_tensor(tmp_path: Path, case: str) -> None:
    write, culprit, needles = NPZ_CASES[case]
    work = _workspace(tmp_path)
    write(work / "w.npz")
    _refused(work, "w.npz", "E0415", culprit, *needles)


def test_an_npz_zip_bomb_is_refused_before_inflating(tmp_path: Path) -> None:
    """About 1 MB of deflated zeros declaring 1 GiB of float32. Refused from the declared
    sizes alone: the run stays far below the memory the bomb would need."""
    work = _workspace(tmp_path)
    elements = 1 << 28
    header = _npy_bytes({"descr": "<f4", "fortran_order": False, "shape": (elements,)}, b"")
    with zipfile.ZipFile(work / "w.npz", "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive, \
            archive.open("bomb.npy", "w", force_zip64=True) as member:
        member.write(header)
        zeros = bytes(32 << 20)
        for _ in range(elements * 4 // len(zeros)):
            member.write(zeros)
    assert (work / "w.npz").stat().st_size < 2 << 20
    _refused(work, "w.npz", "E0415", "zip bomb", "1.0 GiB", memory_limit=768 << 20)


def test_a_weights_file_too_large_for_memory_gets_a_reason(tmp_path: Path) -> None:
    """A 4 GiB (sparse) safetensors file, loaded under a 3 GiB address-space limit: the
    diagnostic names the tensor and the memory it needs, not an empty reason."""
    work = _workspace(tmp_path)
    elements = 1 << 30
    path = work / "big.safetensors"
    with path.open("wb") as file:
        file.write(_safetensors({"big": _entry("F32", [elements], 0, 4 * elements)}, b""))
        file.truncate(file.tell() + 4 * elements)
    before = path.stat()
    # The 4 GiB file itself is not hashed (that would read it): its size and time are checked.
    _refused(work, "big.safetensors", "E0415", "tensor `big`", "4.0 GiB", "memory",
             ignore=("big.safetensors",), memory_limit=3 << 30,
             env={"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"})
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


def _directory(path: Path) -> None:
    path.mkdir()


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _dev_zero(path: Path) -> None:
    path.symlink_to("/dev/zero")


@pytest.mark.parametrize("make, name, kind", [
    (_directory, "w.safetensors", "a directory"),
    (_fifo, "w.npz", "a FIFO"),
    (_dev_zero, "w.safetensors", "a device"),
], ids=["directory", "fifo", "dev-zero"])
def test_a_weights_path_that_is_not_a_regular_file_says_so(tmp_path: Path,
                                                           make: Callable[[Path], None],
                                                           name: str, kind: str) -> None:
    work = _workspace(tmp_path)
    make(work / name)
    result = _refused(work, name, "E0414", "not a regular file", kind)
    assert "does not exist" not in result.stderr


def test_a_missing_weights_file_still_does_not_exist(tmp_path: Path) -> None:
    work = _workspace(tmp_path)
    _refused(work, "absent.npz", "E0414", "does not exist")
