"""Issue 9, item 1: a cache that another local user cannot poison.

The attacker can write to the cache directory (it is world-writable, owned by them, or lies
in a directory they can write) and plants what netc used to load from it: a pickle named
like Lark's grammar cache, or a shared object (with a matching `.sha256`) in place of a
compiled simulator module.  Both payloads create a marker file when they run.  netc must
refuse the directory with one warning line (E0701; E0702 when it cannot be used at all),
work without a cache, leave the directory exactly as it was, and never run the payload.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import lark
import numpy as np
import pytest

from netc.frontend import parser as parser_module
from tests.hostile.support import changed, netc, tree_state

pytestmark = pytest.mark.sim

MODEL = """network tiny {
    input x: f32[N, 8]
    output y = relu(x)
}
"""
X = np.array([[-2.0, -0.5, 0.0, 0.25, 1.0, 3.0, -7.0, 5.5]], dtype=np.float32)


class _Payload:
    """Unpickling this opens (creates) the marker file: code run by `pickle.load`."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.marker, "w"))


def _workspace(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "tmp").mkdir()
    (path / "home").mkdir()
    (path / "tiny.net").write_text(MODEL)
    np.save(path / "x.npy", X)
    return path


def _old_grammar_cache_name() -> str:
    """The file name netc's grammar cache had before issue 9 (read with `Lark.load`)."""
    options = parser_module._LARK_OPTIONS
    key = hashlib.sha256(f"{parser_module._grammar_text()}\0{sorted(options.items())}\0"
                         f"{lark.__version__}".encode()).hexdigest()[:20]
    return f"grammar-{key}-py{sys.version_info[0]}{sys.version_info[1]}.lark"


def _run_tiny(work: Path, cache: Path | str) -> tuple[int, list[str], np.ndarray | None]:
    result = netc("run", "tiny.net", "--backend", "cudasim", "--input", "x=x.npy", "-o",
                  "out.npz", cwd=work, env={"NETC_CACHE_DIR": str(cache)})
    assert result.returncode in (0, 1), result.stderr
    out = np.load(work / "out.npz")["y"] if (work / "out.npz").exists() else None
    return result.returncode, result.codes(), out


@pytest.fixture(scope="module")
def populated_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache (trusted, ours) that holds the compiled simulator module of `tiny.net`."""
    work = _workspace(tmp_path_factory.mktemp("populate"))
    code, codes, out = _run_tiny(work, work / "cache")
    assert code == 0 and codes == [] and out is not None
    return work / "cache"


def _plant_module(cache: Path, marker: Path) -> Path:
    """Replace the cached simulator module by one that creates `marker` when loaded, with a
    sidecar that matches it (the attacker can write both)."""
    (entry,) = (cache / "cudasim").glob("*.so")
    source = cache.parent / "planted.c"
    source.write_text('#include <stdio.h>\n__attribute__((constructor)) static void planted(void)'
                      f' {{ FILE* f = fopen("{marker}", "w"); if (f) fclose(f); }}\n')
    subprocess.run(["g++", "-x", "c", "-shared", "-fPIC", str(source), "-o", str(entry)],
                   check=True)
    source.unlink()
    data = entry.read_bytes()
    Path(f"{entry}.sha256").write_text(f"{len(data)} {hashlib.sha256(data).hexdigest()}\n")
    return entry


def test_the_payloads_are_live(tmp_path: Path) -> None:
    # Without this, the tests below could pass because the payloads do nothing.
    marker = tmp_path / "unpickled"
    pickle.loads(pickle.dumps(_Payload(marker)))
    assert marker.exists()


@pytest.mark.parametrize("mode", [0o700, 0o777])
def test_a_planted_grammar_pickle_is_never_read(tmp_path: Path, mode: int) -> None:
    work = _workspace(tmp_path / "work")
    cache = work / "cache"
    cache.mkdir(mode=0o700)
    cache.chmod(mode)
    marker = tmp_path / "pwned"
    for name in (_old_grammar_cache_name(), "grammar.lark"):
        (cache / name).write_bytes(pickle.dumps(_Payload(marker)))
    before = tree_state(work)
    result = netc("check", "tiny.net", cwd=work, env={"NETC_CACHE_DIR": str(cache)})
    assert result.returncode == 0, result.stderr
    assert result.codes() == []
    assert not marker.exists(), "netc unpickled a file from the cache"
    assert changed(before, tree_state(work)) == []


def _world_writable(cache: Path) -> None:
    cache.chmod(0o777)


def _foreign_owner(cache: Path) -> None:
    for directory, _, files in os.walk(cache):
        os.chown(directory, 12345, 12345)
        for name in files:
            os.chown(Path(directory) / name, 12345, 12345)


def _in_a_shared_folder(cache: Path) -> None:
    # Ours and 0700, but inside a folder anyone can write (and not sticky): its owner
    # could rename our cache away and put theirs in its place.
    cache.parent.chmod(0o777)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")
@pytest.mark.parametrize("hostility", [_world_writable, _foreign_owner, _in_a_shared_folder],
                         ids=["mode-0777", "owner-uid-12345", "parent-0777"])
def test_a_planted_module_in_a_refused_cache_never_runs(
        tmp_path: Path, populated_cache: Path, hostility: Callable[[Path], None]) -> None:
    work = _workspace(tmp_path / "work")
    cache = work / "shared" / "cache"
    cache.parent.mkdir(mode=0o755)
    shutil.copytree(populated_cache, cache)
    marker = tmp_path / "pwned"
    _plant_module(cache, marker)
    hostility(cache)
    before = tree_state(work)
    code, codes, out = _run_tiny(work, cache)
    assert code == 0 and codes == ["E0701"]
    assert not marker.exists(), "netc loaded the planted shared object"
    assert out is not None and np.array_equal(out, np.maximum(X, 0))
    assert changed(before, tree_state(work)) == ["out.npz"]
    assert list((work / "tmp").iterdir()) == [], "the private stand-in cache was not removed"


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")
@pytest.mark.parametrize("swap", ["foreign-owner", "symlink"])
def test_an_entry_that_is_not_ours_is_rebuilt_not_loaded(
        tmp_path: Path, populated_cache: Path, swap: str) -> None:
    work = _workspace(tmp_path / "work")
    cache = work / "cache"
    shutil.copytree(populated_cache, cache)
    marker = tmp_path / "pwned"
    entry = _plant_module(cache, marker)
    if swap == "foreign-owner":
        os.chown(entry, 12345, 12345)
    else:
        elsewhere = tmp_path / "planted.so"
        entry.rename(elsewhere)
        entry.symlink_to(elsewhere)
    before = tree_state(work, ignore=["cache"])
    code, codes, out = _run_tiny(work, cache)
    assert code == 0 and codes == []
    assert not marker.exists(), "netc loaded the planted shared object"
    assert out is not None and np.array_equal(out, np.maximum(X, 0))
    st = entry.lstat()
    assert stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid()
    assert changed(before, tree_state(work, ignore=["cache"])) == ["out.npz"]


def test_a_cache_path_that_is_a_file_falls_back_with_a_warning(tmp_path: Path) -> None:
    work = _workspace(tmp_path / "work")
    blocker = work / "not-a-folder"
    blocker.write_text("a file where the cache should be\n")
    before = tree_state(work)
    code, codes, out = _run_tiny(work, blocker)
    assert code == 0 and codes == ["E0702"]
    assert out is not None and np.array_equal(out, np.maximum(X, 0))
    assert changed(before, tree_state(work)) == ["out.npz"]


def test_cache_files_are_private_and_killed_builds_leave_nothing(
        tmp_path: Path, populated_cache: Path) -> None:
    work = _workspace(tmp_path / "work")
    cache = work / "cache"
    shutil.copytree(populated_cache, cache)
    (entry,) = (cache / "cudasim").glob("*.so")
    key = entry.name[: -len(".so")]
    # What builds killed with SIGKILL left behind: a temporary of this very key, an hour-old
    # one of another key, and a recent one of another key (maybe a live build: kept).
    same_key = cache / "cudasim" / f".{key}.k1ll3d.tmp.so"
    old = cache / "cudasim" / ".0123abcd.0ld.tmp.so"
    live = cache / "cudasim" / ".4567cdef.l1ve.tmp.so"
    for path in (same_key, old, live):
        path.write_bytes(b"half a shared object")
    hour_ago = time.time() - 3700
    os.utime(old, (hour_ago, hour_ago))
    Path(f"{entry}.sha256").unlink()  # force a rebuild of this key
    code, codes, _ = _run_tiny(work, cache)
    assert code == 0 and codes == []
    assert not same_key.exists() and not old.exists() and live.exists()
    live.unlink()
    for directory, _, files in os.walk(cache):
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700, directory
        for name in files:
            mode = stat.S_IMODE(os.stat(Path(directory) / name).st_mode)
            assert mode == 0o600, f"{directory}/{name} has mode {mode:04o}"
            assert ".tmp" not in name, f"{directory}/{name} is a leftover temporary"
