"""Issue 9, item 4: what `netc check` accepts, `compile` and `run` take or refuse in words.

A layer whose grid passes CUDA's 65,535 blocks along y (`dense(v, 4200000)`) is a valid
network: `check` accepts it and the reference and ONNX backends run it.  The CUDA kernels cannot, and code
generation used to stop there with an internal error (exit status 2, "a bug in netc").  Now
`compile` and the `cudasim` backend give E0450 at the line at fault, saying which backends do
run the network, and write nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.hostile.support import changed, netc, tree_state

pytestmark = pytest.mark.unit

NETWORKS = {
    "wide-grid": ("""network wide {
    input v: f32[N, 8]
    output y = dense(v, 4200000)
}
""", "m.net:3:", ("dense", "65,535")),
}


@pytest.mark.parametrize("name", list(NETWORKS))
def test_check_accepts_and_the_cuda_backend_refuses_in_words(tmp_path: Path, name: str) -> None:
    source, where, needles = NETWORKS[name]
    (tmp_path / "home").mkdir()
    (tmp_path / "tmp").mkdir()
    (tmp_path / "m.net").write_text(source)

    check = netc("check", "m.net", cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    # check says up front what compile will refuse, as a warning.
    warning = next(line for line in check.stderr.splitlines() if "warning[E0450]" in line)
    assert warning.startswith(where), check.stderr
    assert "the CUDA backend cannot compile this network" in warning
    before = tree_state(tmp_path)
    for args in (("compile", "m.net", "-o", "build"),
                 ("run", "m.net", "--backend", "cudasim", "--random-input", "-o", "out.npz")):
        result = netc(*args, cwd=tmp_path)
        assert result.returncode == 1, result.stderr
        assert result.codes() == ["E0450"], result.stderr
        assert "bug in netc" not in result.stderr
        for needle in (where, "the CUDA backend cannot compile this network",
                       "--backend reference", *needles):
            assert needle in result.stderr, result.stderr
        assert changed(before, tree_state(tmp_path)) == []


def test_cudasim_runs_two_batch_sizes(tmp_path: Path) -> None:
    """Two inputs with different named dimensions (`f32[N, 8]`, `f32[M, 8]`): once refused
    by the CUDA backend, now every named dimension is a run-time size of the kernels."""
    (tmp_path / "home").mkdir()
    (tmp_path / "m.net").write_text("""network two {
    input a: f32[N, 8]
    input b: f32[M, 8]
    output y = relu(a)
    output z = relu(b)
}
""")
    result = netc("run", "m.net", "--backend", "cudasim", "--random-input", "-o", "out.npz",
                  cwd=tmp_path)
    assert result.returncode == 0, result.stderr
