"""Faults of the environment and of input files are the user's to fix, never "a bug in netc":
exit status 1 with a diagnostic that says what to install or change (issue: trust and
safety). Each case runs the real command line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import netc.cli as cli_module
from netc.cli import main

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
MLP = str(ROOT / "examples" / "mlp.net")


def netc(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "netc", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


def assert_user_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert "bug in netc" not in result.stderr and "Traceback" not in result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


def test_usage_errors_are_the_users() -> None:
    assert_user_error(netc("run", MLP, "--random-input", "--batch", "0"), "positive integer")
    assert_user_error(netc("run", MLP, "--frobnicate"), "unrecognized arguments")


def test_unsupported_architectures_are_named() -> None:
    assert_user_error(netc("compile", MLP, "--arch", "sm_70"), "sm_80 or newer")
    assert_user_error(netc("compile", MLP, "--arch", "sm_99"), "E0443", "sm_90")


def test_a_missing_cpp_compiler_says_what_to_install(tmp_path: Path) -> None:
    result = netc("run", MLP, "--random-input", "--backend", "cudasim",
                  env={"NETC_CXX": str(tmp_path / "no-such-g++"),
                       "NETC_CACHE_DIR": str(tmp_path / "cache")})
    assert_user_error(result, "install g++")


def test_a_missing_optional_package_names_the_extra(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str],
                                                    tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` raises ModuleNotFoundError
    for module in [name for name in sys.modules if name.startswith("netc.onnx.")]:
        monkeypatch.delitem(sys.modules, module)  # imported by an earlier test: import anew
    code = main(["compile", MLP, "--target", "onnx", "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1 and "pip install 'netc[onnx]'" in err, err


def test_a_missing_cuda_compiler_is_exit_1(monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str],
                                           tmp_path: Path) -> None:
    from netc import toolchain as device_compile

    def no_compiler(*args: object, **kwargs: object) -> None:
        raise device_compile.CompilerNotFound("no CUDA compiler: pip install 'netc[nvrtc]'")

    monkeypatch.setattr(device_compile, "compile_module", no_compiler)
    monkeypatch.setattr(cli_module, "_check_compiler_archs", lambda archs, compiler: None)
    code = main(["compile", MLP, "-o", str(tmp_path / "out"), "--arch", "sm_90"])
    err = capsys.readouterr().err
    assert code == 1 and "netc[nvrtc]" in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["empty", "huge", "truncated", "complex", "directory",
                                  "fifo", "missing", "pickled"])
def test_bad_input_files_are_diagnosed(tmp_path: Path, case: str) -> None:
    path = tmp_path / "x.npy"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "huge":  # a header claiming 2^40 float32 elements, and no data
        header = {"descr": "<f4", "fortran_order": False, "shape": (1 << 20, 1 << 20)}
        with open(path, "wb") as stream:
            np.lib.format.write_array_header_1_0(stream, header)
    elif case == "truncated":
        np.save(path, np.ones((4, 784), np.float32))
        path.write_bytes(path.read_bytes()[:-100])
    elif case == "complex":
        np.save(path, np.ones((1, 784), np.complex64))
    elif case == "directory":
        path.mkdir()
    elif case == "fifo":
        os.mkfifo(path)
    elif case == "pickled":
        np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    result = netc("run", MLP, "--input", f"pixels={path}", "--backend", "reference")
    assert_user_error(result, "E0405")


def _run_on_a_terminal(*args: str) -> str:
    """stderr of `netc ARGS` with stderr a pseudo-terminal (stdout a pipe)."""
    import pty

    leader, follower = pty.openpty()
    with subprocess.Popen([sys.executable, "-m", "netc", *args], stdout=subprocess.PIPE,
                          stderr=follower, env={**os.environ, "NETC_PROGRESS_DELAY": "0"}) \
            as process:
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the terminal closed with the process
                break
            if not chunk:
                break
            chunks.append(chunk)
        process.wait()
    os.close(leader)
    assert process.returncode == 0
    return b"".join(chunks).decode(errors="replace")


def test_progress_per_kernel_on_a_terminal_and_none_in_a_pipe() -> None:
    args = ("run", str(ROOT / "examples" / "lenet5.net"), "--random-input", "--backend",
            "cudasim")
    shown = _run_on_a_terminal(*args)
    launches = re.search(r"generated \d+ kernels, (\d+) launches", shown)
    assert launches is not None, shown
    count = int(launches.group(1))  # 8 today: 7 layers' launches and a split-K reduce
    assert f"[1/{count}] netc_conv2d" in shown and f"[{count}/{count}]" in shown, shown
    piped = netc(*args, env={"NETC_PROGRESS_DELAY": "0"})
    assert piped.returncode == 0 and "[1/7]" not in piped.stderr


@pytest.mark.parametrize("kind", ["fifo", "directory", "device"])
def test_a_model_that_is_no_regular_file_is_named_so(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "m.net"
    if kind == "fifo":
        os.mkfifo(path)  # opening it would block forever
    elif kind == "directory":
        path.mkdir()
    else:
        path = Path("/dev/zero")
    result = subprocess.run([sys.executable, "-m", "netc", "check", str(path)], timeout=60,
                            capture_output=True, text=True)
    assert_user_error(result, "E0101")
    assert "does not exist" not in result.stderr
