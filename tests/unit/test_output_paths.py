"""Outputs never destroy what netc did not write: `netc compile -o` replaces only an intact
artifact of its own, refuses before doing any work, serialises concurrent writers, and no
output may be one of the command's inputs (issue: trust and safety)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
MLP = ROOT / "examples" / "mlp.net"


def netc(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "netc", *args], capture_output=True, text=True,
                          cwd=cwd)


def tree(root: Path) -> dict[str, str]:
    """Every file under `root` with its SHA-256 (directories as `dir`)."""
    found = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        found[key] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def test_a_directory_with_a_fake_marker_is_not_wiped(tmp_path: Path) -> None:
    # The case from the issue: a plan.json of `{}` used to make a directory netc's.
    target = tmp_path / "p"
    (target / "data").mkdir(parents=True)
    (target / "plan.json").write_text("{}")
    (target / "netc.json").write_text("{}")
    (target / "thesis.tex").write_text("x")
    before = tree(tmp_path)
    result = netc("compile", str(MLP), "-o", str(target), "--arch", "sm_90")
    assert result.returncode == 1 and "error[E0430]" in result.stderr
    assert "compiling" not in result.stderr, "refused before any work is done"
    assert tree(tmp_path) == before


def test_compile_into_the_current_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / ".bashrc").write_text("alias ll='ls -l'")
    (tmp_path / "plan.json").write_text("{}")
    before = tree(tmp_path)
    result = netc("compile", str(MLP), "-o", ".", "--arch", "sm_90", cwd=tmp_path)
    assert result.returncode == 1 and "error[E0430]" in result.stderr
    assert tree(tmp_path) == before


def test_an_artifact_with_a_file_added_or_edited_is_not_replaced(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert netc("compile", str(MLP), "-o", str(out), "--arch", "sm_90").returncode == 0
    assert netc("compile", str(MLP), "-o", str(out), "--arch", "sm_90").returncode == 0
    (out / "notes.md").write_text("my notes")
    before = tree(tmp_path)
    added = netc("compile", str(MLP), "-o", str(out), "--arch", "sm_90")
    assert added.returncode == 1 and "notes.md" in added.stderr and "E0430" in added.stderr
    assert tree(tmp_path) == before
    (out / "notes.md").unlink()
    (out / "report.txt").write_text("edited by hand")
    edited = netc("compile", str(MLP), "-o", str(out), "--arch", "sm_90")
    assert edited.returncode == 1 and "report.txt" in edited.stderr
    assert (out / "report.txt").read_text() == "edited by hand"


def test_an_output_under_a_file_or_read_only_parent_is_a_diagnostic(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    under_file = netc("compile", str(MLP), "-o", str(blocker / "out"), "--arch", "sm_90")
    assert under_file.returncode == 1 and "E0430" in under_file.stderr
    assert "is a file" in under_file.stderr


def test_concurrent_compiles_to_one_output_take_turns(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(
            lambda _: netc("compile", str(MLP), "-o", str(out), "--arch", "sm_90"), range(6)))
    assert [r.returncode for r in results] == [0] * 6, [r.stderr for r in results]
    assert [p.name for p in tmp_path.iterdir()] == ["out"], "no staging directory left"
    assert (out / "netc.json").is_file()


def test_run_refuses_to_overwrite_its_own_input(tmp_path: Path) -> None:
    weights = tmp_path / "w.npz"
    assert netc("init", str(MLP), "-o", str(weights)).returncode == 0
    before = weights.read_bytes()
    result = netc("run", str(MLP), "--weights", str(weights), "--random-input",
                  "--backend", "reference", "-o", str(weights))
    assert result.returncode == 1 and "error[E0432]" in result.stderr
    assert weights.read_bytes() == before


def test_compile_refuses_an_output_directory_holding_its_input(tmp_path: Path) -> None:
    out = tmp_path / "out"
    weights = tmp_path / "w.safetensors"
    assert netc("init", str(MLP), "-o", str(weights)).returncode == 0
    assert netc("compile", str(MLP), "-o", str(out), "--arch", "sm_90",
                "--weights", str(weights)).returncode == 0
    # The artifact is intact, so it may be replaced, but not by a compile that reads the
    # weights file inside it: replacing the directory would delete its own input.
    kept = out / "weights.safetensors"
    before = kept.read_bytes()
    result = netc("compile", str(MLP), "-o", str(out), "--arch", "sm_90", "--weights", str(kept))
    assert result.returncode == 1 and "error[E0432]" in result.stderr, result.stderr
    assert kept.read_bytes() == before
    # A file netc did not write is refused earlier, as any foreign file is (E0430).
    model = out / "mlp.net"
    model.write_text(MLP.read_text())
    foreign = netc("compile", str(model), "-o", str(out), "--arch", "sm_90")
    assert foreign.returncode == 1 and "error[E0430]" in foreign.stderr
    assert model.read_text() == MLP.read_text()


def _tiny_onnx(path: Path) -> None:
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "tiny",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path.write_bytes(model.SerializeToString())


def test_import_refuses_to_overwrite_the_onnx_file(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    _tiny_onnx(model)
    before = model.read_bytes()
    for extra in ([], ["--weights-out", str(model)]):
        target = model if not extra else tmp_path / "m.net"
        result = netc("import", str(model), "-o", str(target), *extra)
        assert result.returncode == 1 and "error[E0432]" in result.stderr
        assert model.read_bytes() == before


def test_a_failed_import_leaves_no_half_of_the_pair(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    _tiny_onnx(model)
    (tmp_path / "existing_dir.net").mkdir()
    before = tree(tmp_path)
    result = netc("import", str(model), "-o", str(tmp_path / "existing_dir.net"))
    assert result.returncode == 1, result.stderr
    assert tree(tmp_path) == before  # no existing_dir.safetensors
