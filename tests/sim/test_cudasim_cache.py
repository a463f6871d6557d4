"""The compile cache (netc.cache) and its use by the simulator."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from netc import cache
from netc.sim import CudaSim, SimulatorError

pytestmark = pytest.mark.sim

SRC = "__global__ void fill(float* y, float v) { y[threadIdx.x] = v; }\n"


def test_second_load_is_a_cache_hit(tmp_path: Path) -> None:
    with CudaSim(cache_dir=tmp_path) as sim:
        before = cache.stats().builds
        first = sim.load(SRC, ["fill"], name="fill")
        assert not first.from_cache
        # The runtime object, the precompiled header and the module itself.
        assert cache.stats().builds - before == 3
        mtime = first.path.stat().st_mtime_ns

        builds = cache.stats().builds
        second = sim.load(SRC, ["fill"], name="fill")
        assert second.from_cache and second.path == first.path
        assert cache.stats().builds == builds
        assert first.path.stat().st_mtime_ns == mtime

        # A different option is a different entry (the runtime object is reused).
        third = sim.load(SRC, ["fill"], name="fill", options=["-DUNUSED=1"])
        assert not third.from_cache and third.path != first.path
        assert cache.stats().builds == builds + 1


def test_corrupt_entry_is_rebuilt(tmp_path: Path) -> None:
    # Build the entry in another process: truncating a shared object that this process
    # has mapped would crash it (SIGBUS), which is not what this test is about.
    script = (
        "import sys; from netc.sim import CudaSim\n"
        "m = CudaSim(cache_dir=sys.argv[1]).load(sys.argv[2], ['fill'], name='fill')\n"
        "print(m.path)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path), SRC], capture_output=True,
                          text=True, check=True)
    path = Path(proc.stdout.strip())
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    with CudaSim(cache_dir=tmp_path) as sim:
        corrupt = cache.stats().corrupt
        rebuilt = sim.load(SRC, ["fill"], name="fill")
        assert not rebuilt.from_cache and rebuilt.path == path
        assert cache.stats().corrupt == corrupt + 1
        assert path.stat().st_size == size
        y = sim.alloc(4 * 8)
        rebuilt.launch("fill", grid=1, block=8, args=[y, 2.5])
        assert (sim.download(y, np.float32, 8) == 2.5).all()


def test_cache_root_resolution_and_permissions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NETC_CACHE_DIR", str(tmp_path / "explicit"))
    root = cache.cache_root()
    assert root == tmp_path / "explicit"
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    monkeypatch.delenv("NETC_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_root() == tmp_path / "xdg" / "netc"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.cache_root() == tmp_path / "home" / ".cache" / "netc"
    # A group/world-writable directory is refused, not repaired: files may already have been
    # planted in it (tests/hostile/test_cache_poisoning.py has the end-to-end cases).
    loose = tmp_path / "loose"
    loose.mkdir()
    loose.chmod(0o777)
    with pytest.raises(cache.UntrustedCacheError, match="writable by group or others"):
        cache.trusted_root(loose)
    assert stat.S_IMODE(loose.stat().st_mode) == 0o777


def test_keys_are_unambiguous() -> None:
    assert cache.cache_key("k", ["ab", "c"]) != cache.cache_key("k", ["a", "bc"])
    assert cache.cache_key("k", ["x"]) != cache.cache_key("j", ["x"])
    assert cache.cache_key("k", ["x"]) == cache.cache_key("k", [b"x"])


def test_cached_build_is_atomic_and_verified(tmp_path: Path) -> None:
    calls: list[Path] = []

    def build(out: Path) -> None:
        calls.append(out)
        assert not out.exists() and out.parent == tmp_path / "unit"
        out.write_bytes(b"artifact")

    path = cache.cached_build("unit", ["a"], build, ".bin", root=tmp_path)
    assert path.read_bytes() == b"artifact" and len(calls) == 1
    assert cache.cached_build("unit", ["a"], build, ".bin", root=tmp_path) == path
    assert len(calls) == 1

    # A failing build publishes nothing and leaves no temporary files behind.
    def failing(out: Path) -> None:
        out.write_bytes(b"half")
        raise RuntimeError("compiler crashed")

    with pytest.raises(RuntimeError, match="compiler crashed"):
        cache.cached_build("unit", ["b"], failing, ".bin", root=tmp_path)
    leftovers = [p.name for p in (tmp_path / "unit").iterdir() if not p.name.endswith(".lock")]
    assert sorted(leftovers) == sorted([path.name, path.name + ".sha256"])

    # Same size, different content: the hash catches it.
    path.write_bytes(b"ARTIFACT")
    cache.cached_build("unit", ["a"], build, ".bin", root=tmp_path)
    assert len(calls) == 2 and path.read_bytes() == b"artifact"
    # A missing sidecar (interrupted publication) also means rebuild.
    os.unlink(str(path) + ".sha256")
    cache.cached_build("unit", ["a"], build, ".bin", root=tmp_path)
    assert len(calls) == 3


def test_bad_cache_dir_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(cache.CacheError, match=r"cannot create cache directory|not a directory"):
        cache.trusted_root(blocker / "sub")
    with pytest.raises(SimulatorError, match="unknown schedule 'backwards'"):
        CudaSim(schedule="backwards")
