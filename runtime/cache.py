"""A small, generic, per-user cache of compiled artifacts.

Used by the CPU CUDA simulator (``netc.runtime.cudasim``) for its g++-built shared
objects, and meant to be shared by the device compiler.

Layout: ``<root>/<kind>/<key><suffix>`` plus a sidecar ``<key><suffix>.sha256`` that
records the artifact's size and sha256.  ``<root>`` is ``$NETC_CACHE_DIR``, else
``$XDG_CACHE_HOME/netc``, else ``~/.cache/netc``; every directory we create is mode
0700 because a cached shared object is later loaded into a process: another user
able to write there could make us run their code.

Properties (why each exists):

* Entries are keyed by the sha256 of *all* inputs (length-prefixed, so that
  ``["ab", "c"]`` and ``["a", "bc"]`` differ); callers put the source, the options and
  the compiler's version string in ``key_parts``.
* Writes are atomic: the artifact is built into a temporary file in the same
  directory and published with ``os.replace``; the sidecar is published last, so an
  interrupted build never leaves an entry that verifies.
* A corrupt or truncated entry (size or hash not matching its sidecar, or no
  sidecar) is treated as missing and rebuilt.
* Concurrent builders of the same key (threads or processes) are serialised with an
  ``flock`` on a per-key lock file, so the work is done once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CacheError",
    "CacheStats",
    "cache_key",
    "cache_root",
    "cached_build",
    "entry_path",
    "stats",
]

_KIND_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SUFFIX_RE = re.compile(r"^[A-Za-z0-9._-]*$")


class CacheError(RuntimeError):
    """The cache directory cannot be used (permissions, not a directory, ...)."""


@dataclass
class CacheStats:
    """Process-wide counters; tests use them to prove that a hit did not rebuild."""

    hits: int = 0
    builds: int = 0
    corrupt: int = 0


_stats = CacheStats()
_stats_lock = threading.Lock()


def stats() -> CacheStats:
    """The live process-wide counters (hits, builds, corrupt entries rebuilt)."""
    return _stats


def _bump(field: str) -> None:
    with _stats_lock:
        setattr(_stats, field, getattr(_stats, field) + 1)


def cache_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The cache root directory, created with mode 0700 if missing.

    ``root`` overrides the environment (used by tests and by callers that take a
    ``cache_dir`` option).
    """
    if root is not None:
        path = Path(root)
    elif os.environ.get("NETC_CACHE_DIR"):
        path = Path(os.environ["NETC_CACHE_DIR"])
    elif os.environ.get("XDG_CACHE_HOME"):
        path = Path(os.environ["XDG_CACHE_HOME"]) / "netc"
    else:
        path = Path.home() / ".cache" / "netc"
    _make_private_dir(path)
    return path


def _make_private_dir(path: Path) -> None:
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise CacheError(f"cannot create cache directory {path}: {exc}") from exc
    if not path.is_dir():
        raise CacheError(f"cache path {path} exists and is not a directory")
    # mkdir's mode is filtered by the umask and ignored for existing directories;
    # tighten a directory we own that others can write to.
    st = path.stat()
    if st.st_uid == os.getuid() and st.st_mode & 0o022:
        with contextlib.suppress(OSError):
            path.chmod(0o700)


def cache_key(kind: str, key_parts: Sequence[str | bytes]) -> str:
    """sha256 (hex) over ``kind`` and every part, each length-prefixed."""
    h = hashlib.sha256()
    for part in (kind, *key_parts):
        data = part.encode("utf-8") if isinstance(part, str) else bytes(part)
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def entry_path(
    kind: str,
    key_parts: Sequence[str | bytes],
    suffix: str = "",
    root: str | os.PathLike[str] | None = None,
) -> Path:
    """Where the artifact for these inputs lives (whether or not it exists yet)."""
    _check_names(kind, suffix)
    return cache_root(root) / kind / f"{cache_key(kind, key_parts)}{suffix}"


def _check_names(kind: str, suffix: str) -> None:
    if not _KIND_RE.match(kind):
        raise ValueError(f"invalid cache kind {kind!r}")
    if not _SUFFIX_RE.match(suffix):
        raise ValueError(f"invalid cache suffix {suffix!r}")


def _file_digest(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            size += len(chunk)
            h.update(chunk)
    return size, h.hexdigest()


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _verify(path: Path) -> bool:
    """True if ``path`` exists and matches the size and hash in its sidecar."""
    try:
        recorded = _sidecar(path).read_text(encoding="ascii").split()
        if len(recorded) != 2:
            return False
        size, digest = int(recorded[0]), recorded[1]
        if path.stat().st_size != size:
            return False
        return _file_digest(path) == (size, digest)
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def _key_lock(directory: Path, key: str) -> Iterator[None]:
    lock_path = directory / f".{key}.lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        # Closing the descriptor releases the lock.  The lock file is left in place:
        # unlinking it would race with a process that has just opened it.
        os.close(fd)


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def cached_build(
    kind: str,
    key_parts: Sequence[str | bytes],
    build: Callable[[Path], None],
    suffix: str = "",
    *,
    root: str | os.PathLike[str] | None = None,
) -> Path:
    """Return the cached artifact for ``key_parts``, building it first if needed.

    ``build(tmp_path)`` must write the artifact to ``tmp_path`` (a fresh path in the
    cache directory, not yet existing) or raise; on an exception nothing is
    published and the exception propagates.  The returned path is the published
    entry, verified against its sidecar.
    """
    path = entry_path(kind, key_parts, suffix, root)
    directory = path.parent
    _make_private_dir(directory)
    if _verify(path):
        _bump("hits")
        return path
    key = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    with _key_lock(directory, key):
        # Another thread or process may have finished the build while we waited.
        if _verify(path):
            _bump("hits")
            return path
        if path.exists() or _sidecar(path).exists():
            _bump("corrupt")
        fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{key}.", suffix=f".tmp{suffix}")
        os.close(fd)
        tmp = Path(tmp_name)
        tmp.unlink()  # the builder gets a path that does not exist yet
        try:
            build(tmp)
            if not tmp.is_file():
                raise CacheError(f"cache builder for {kind!r} did not create {tmp}")
            size, digest = _file_digest(tmp)
            # Sidecar goes away first and comes back last: a crash in between leaves
            # an artifact without a valid sidecar, which the next run rebuilds.
            with contextlib.suppress(FileNotFoundError):
                _sidecar(path).unlink()
            os.replace(tmp, path)
            _atomic_write_text(_sidecar(path), f"{size} {digest}\n")
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        _bump("builds")
        return path
