"""Issue 9, item 1, for the device compiler's cache (cubins and PTX, JSON entries).

An entry planted (with a matching sidecar) in a cache directory another user can write is
never used: the directory is refused with one warning (E0701) and the module is compiled
afresh; the refused directory is left exactly as it was.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from netc import cache
from netc.toolchain import compile_module, nvrtc_status
from tests.hostile.support import changed, tree_state

pytestmark = [pytest.mark.unit,
              pytest.mark.skipif(nvrtc_status()[0] is None, reason="NVRTC not loadable")]

SOURCE = r"""
extern "C" __global__ void scale(float* x, float s, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] *= s;
}
"""


def test_a_planted_cubin_in_a_refused_cache_is_not_used(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    shared = tmp_path / "shared"
    monkeypatch.setenv("NETC_CACHE_DIR", str(shared))
    # The process's private stand-in for a refused cache goes into this test's folder.
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    monkeypatch.setattr(cache, "_fallback", None)
    first = compile_module(SOURCE, "scale", ("sm_80",), "nvrtc", generated=False)
    entry = first.target("sm_80").cache_entry
    assert entry is not None and entry.parent.parent == shared
    # The attacker rewrites the entry (PTX a loader would JIT) and its sidecar.
    record = json.loads(entry.read_bytes())
    record["ptx"] = record["ptx"].replace(".target", "// planted\n.target", 1)
    data = json.dumps(record).encode()
    entry.write_bytes(data)
    Path(f"{entry}.sha256").write_text(f"{len(data)} {hashlib.sha256(data).hexdigest()}\n")
    shared.chmod(0o777)
    before = tree_state(shared)

    second = compile_module(SOURCE, "scale", ("sm_80",), "nvrtc", generated=False)
    target = second.target("sm_80")
    assert not target.from_cache and "planted" not in target.ptx
    assert target.cubin == first.target("sm_80").cubin
    assert changed(before, tree_state(shared)) == []
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning[" in line]
    assert len(warnings) == 1 and "warning[E0701]" in warnings[0] and str(shared) in warnings[0]
