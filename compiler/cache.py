"""A small, generic, per-user cache of compiled artifacts that another user cannot poison.

Used by the CPU CUDA simulator (``netc.sim.cudasim``) for its g++-built shared
objects and by the device compiler (``netc.toolchain``) for cubins.

Layout: ``<root>/<kind>/<key><suffix>`` plus a sidecar ``<key><suffix>.sha256`` that
records the artifact's size and sha256.  ``<root>`` is ``$NETC_CACHE_DIR``, else
``$XDG_CACHE_HOME/netc``, else ``~/.cache/netc``.

Trust (why each rule exists): a cached shared object is later loaded into a process, so
anyone able to write into the cache can make us run their code.  Hence:

* The root and every ``<kind>`` directory are created 0700 and must be owned by the
  current user and not writable by group or others; every directory above the root must
  be owned by us or root and, if others can write to it, sticky (as ``/tmp`` is), so
  nobody can rename our directory away and put theirs in its place.  A directory that
  fails is *refused*, never repaired (files may already have been planted in it): netc
  prints one warning line (``warning[E0701]``, or ``E0702`` when the directory cannot be
  created at all) and carries on with a private directory made by ``mkdtemp`` that is
  removed when the process exits, i.e. without a persistent cache.
* An entry and its sidecar are used only if both are regular files (not links) owned by
  us and not writable by others, and the artifact's size and sha256 match the sidecar.
  The sidecar is only as trustworthy as the directory it is in, which is why the
  directory checks above come first.
* Nothing read from the cache is ever unpickled; entries are shared objects, object
  files, headers and JSON.
* Files are created 0600.

Other properties:

* Entries are keyed by the sha256 of *all* inputs (length-prefixed, so that
  ``["ab", "c"]`` and ``["a", "bc"]`` differ); callers put the source, the options and
  the compiler's version string in ``key_parts``.
* Writes are atomic: the artifact is built into a uniquely named temporary file in the
  same directory and published with ``os.replace``; the sidecar is published last, so an
  interrupted build never leaves an entry that verifies.  Temporary files of a build that
  was killed (SIGKILL leaves no chance to clean up) are removed by the next build of the
  same key, and by any build once they are an hour old.
* A corrupt or truncated entry (size or hash not matching its sidecar, or no
  sidecar) is treated as missing and rebuilt.
* Concurrent builders of the same key (threads or processes) are serialised with an
  ``flock`` on a per-key lock file, so the work is done once.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CacheError",
    "CacheStats",
    "UntrustedCacheError",
    "cache_key",
    "cache_root",
    "cached_build",
    "entry_path",
    "private_subdirectory",
    "stats",
    "trusted_root",
]

_KIND_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SUFFIX_RE = re.compile(r"^[A-Za-z0-9._-]*$")

STALE_TEMPORARY_SECONDS = 3600
"""A temporary file this old belongs to a build that was killed (builds time out at 600 s)."""

_TEMPORARY_MARK = ".tmp"
"""Every temporary file in the cache has this in its name (and starts with a dot)."""


class CacheError(RuntimeError):
    """The cache directory cannot be used (cannot be created, not a directory, ...)."""

    code = "E0702"


class UntrustedCacheError(CacheError):
    """The cache directory (or a directory above it) could be written by another user."""

    code = "E0701"


@dataclass
class CacheStats:
    """Process-wide counters; tests use them to prove that a hit did not rebuild."""

    hits: int = 0
    builds: int = 0
    corrupt: int = 0
    refused: int = 0


_stats = CacheStats()
_stats_lock = threading.Lock()


def stats() -> CacheStats:
    """The live process-wide counters (hits, builds, corrupt entries rebuilt, refused roots)."""
    return _stats


def _bump(field: str) -> None:
    with _stats_lock:
        setattr(_stats, field, getattr(_stats, field) + 1)


# The root and its trust ---------------------------------------------------------------------


def _configured_root(root: str | os.PathLike[str] | None) -> Path:
    if root is not None:
        return Path(root)
    if os.environ.get("NETC_CACHE_DIR"):
        return Path(os.environ["NETC_CACHE_DIR"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "netc"
    return Path.home() / ".cache" / "netc"


def trusted_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The cache root, created 0700 if missing and checked to be ours alone.

    Raises `UntrustedCacheError` if another user could write to it (or replace it), and
    `CacheError` if it cannot be created or is not a directory.  Most callers want
    `cache_root`, which falls back to a private temporary directory instead.
    """
    path = Path(os.path.abspath(_configured_root(root)))
    _make_private_dir(path)
    _check_ancestors(path)
    return path


def cache_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The directory to cache in: the trusted root, or else a private temporary directory.

    ``root`` overrides the environment (used by tests and by callers that take a
    ``cache_dir`` option).  When the configured root is refused, one warning line naming
    the directory and the fix goes to stderr (once per directory and process) and the
    result is a directory of this process that is deleted when it exits: netc keeps
    working, without a persistent cache.
    """
    try:
        return trusted_root(root)
    except CacheError as exc:
        _warn_once(exc)
        _bump("refused")
        return _fallback_root()


def _owner_problem(path: Path, st: os.stat_result, what: str) -> str | None:
    uid = os.geteuid()
    if st.st_uid != uid:
        return (f"{what} {path} is owned by uid {st.st_uid}, not by you (uid {uid}); "
                "another user could plant code in it")
    if st.st_mode & 0o022:
        return (f"{what} {path} is writable by group or others (mode "
                f"{stat.S_IMODE(st.st_mode):04o}); another user could plant code in it")
    return None


def _make_private_dir(path: Path) -> None:
    """Create `path` 0700 if missing; refuse it unless it is a directory only we can write."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise CacheError(f"cannot create cache directory {path}: {exc.strerror or exc}") from exc
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise CacheError(f"cannot use cache directory {path}: {exc.strerror or exc}") from exc
    if stat.S_ISLNK(st.st_mode):
        # A link is fine if what it names is ours (checked below) and nobody else could
        # have made the link (checked with the ancestors).
        try:
            st = os.stat(path)
        except OSError as exc:
            raise CacheError(f"cannot use cache directory {path}: {exc.strerror or exc}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise CacheError(f"cache path {path} exists and is not a directory")
    problem = _owner_problem(path, st, "cache directory")
    if problem:
        raise UntrustedCacheError(problem)
    if not os.access(path, os.W_OK | os.X_OK):
        raise CacheError(f"cache directory {path} is not writable")


def _check_ancestors(path: Path) -> None:
    """Every directory above `path` (as written and as resolved) must be ours or root's, and
    sticky if others can write to it; otherwise its owner could swap our directory."""
    uid = os.geteuid()
    seen: set[Path] = set()
    for chain in (path.parents, Path(os.path.realpath(path)).parents):
        for parent in chain:
            if parent in seen:
                continue
            seen.add(parent)
            try:
                st = os.lstat(parent)
            except OSError as exc:
                raise CacheError(f"cannot use cache directory {path}: {parent}: "
                                 f"{exc.strerror or exc}") from exc
            if st.st_uid not in (uid, 0):
                raise UntrustedCacheError(
                    f"cache directory {path} lies in {parent}, which is owned by uid "
                    f"{st.st_uid}; that user could replace the cache")
            if (stat.S_ISDIR(st.st_mode) and st.st_mode & 0o022
                    and not st.st_mode & stat.S_ISVTX):
                raise UntrustedCacheError(
                    f"cache directory {path} lies in {parent}, which others can write to "
                    f"(mode {stat.S_IMODE(st.st_mode):04o}, not sticky); they could replace "
                    "the cache")


_warned: set[str] = set()
_warn_lock = threading.Lock()


def _warn_once(exc: CacheError) -> None:
    """One line on stderr per refused directory and process: what is wrong and the fix."""
    message = str(exc)
    with _warn_lock:
        if message in _warned:
            return
        _warned.add(message)
    fix = ("run `chmod 700` on it or set NETC_CACHE_DIR to a directory of your own"
           if isinstance(exc, UntrustedCacheError)
           else "set NETC_CACHE_DIR to a writable directory of your own")
    line = f"netc: warning[{exc.code}]: {message}; not using it, so nothing is cached ({fix})"
    with contextlib.suppress(OSError, ValueError):
        print(" ".join(line.split()), file=sys.stderr, flush=True)


_fallback: Path | None = None
_fallback_lock = threading.Lock()
_FALLBACK_PREFIX = "netc-nocache-"


def _fallback_root() -> Path:
    """This process's private stand-in for the cache (0700, unique name, removed at exit)."""
    global _fallback
    with _fallback_lock:
        if _fallback is None or not _fallback.is_dir():
            _remove_stale_fallbacks()
            _fallback = Path(tempfile.mkdtemp(prefix=f"{_FALLBACK_PREFIX}{os.getpid()}-"))
            atexit.register(shutil.rmtree, _fallback, True)
        return _fallback


def _remove_stale_fallbacks() -> None:
    """Remove fallback directories of our own processes that died without cleaning up."""
    with contextlib.suppress(OSError):
        for entry in Path(tempfile.gettempdir()).glob(f"{_FALLBACK_PREFIX}*-*"):
            pid_text = entry.name[len(_FALLBACK_PREFIX):].split("-", 1)[0]
            if not pid_text.isdigit() or _process_alive(int(pid_text)):
                continue
            with contextlib.suppress(OSError):
                if entry.lstat().st_uid == os.geteuid() and entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def private_subdirectory(name: str, root: str | os.PathLike[str] | None = None) -> Path:
    """`cache_root()/name`, created 0700 and checked like the root (falls back the same way)."""
    _check_names(name, "")
    directory = cache_root(root) / name
    try:
        _make_private_dir(directory)
    except CacheError as exc:
        _warn_once(exc)
        _bump("refused")
        directory = _fallback_root() / name
        _make_private_dir(directory)
    return directory


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
    """Where the artifact for these inputs lives (whether or not it exists yet).

    The `<kind>` directory is created and checked like the root (see `private_subdirectory`).
    """
    _check_names(kind, suffix)
    return private_subdirectory(kind, root) / f"{cache_key(kind, key_parts)}{suffix}"


def _check_names(kind: str, suffix: str) -> None:
    if not _KIND_RE.match(kind):
        raise ValueError(f"invalid cache kind {kind!r}")
    if not _SUFFIX_RE.match(suffix):
        raise ValueError(f"invalid cache suffix {suffix!r}")


def _open_private(path: Path) -> int:
    """A read descriptor for `path` if it is a regular file (not a link) that is ours alone."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or _owner_problem(path, st, "cache entry"):
            raise OSError(f"{path} is not a private regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _file_digest(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    with os.fdopen(_open_private(path), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            size += len(chunk)
            h.update(chunk)
    return size, h.hexdigest()


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def read_verified(path: Path) -> bytes | None:
    """The bytes of entry `path` if it verifies against its sidecar, else None.

    For callers that use an entry's contents (not its path): what they get is exactly
    what was hashed, so the file cannot change between the check and the use.
    """
    try:
        recorded = _read_sidecar(path)
        if recorded is None:
            return None
        with os.fdopen(_open_private(path), "rb") as f:
            data = f.read()
    except (OSError, ValueError):
        return None
    if (len(data), hashlib.sha256(data).hexdigest()) != recorded:
        return None
    return data


def _read_sidecar(path: Path) -> tuple[int, str] | None:
    with os.fdopen(_open_private(_sidecar(path)), "rb") as f:
        recorded = f.read(200).decode("ascii").split()
    if len(recorded) != 2:
        return None
    return int(recorded[0]), recorded[1]


def _verify(path: Path) -> bool:
    """True if ``path`` is a private regular file matching the size and hash in its sidecar."""
    try:
        recorded = _read_sidecar(path)
        if recorded is None or path.lstat().st_size != recorded[0]:
            return False
        return _file_digest(path) == recorded
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def _key_lock(directory: Path, key: str) -> Iterator[None]:
    lock_path = directory / f".{key}.lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        # Closing the descriptor releases the lock.  The lock file is left in place:
        # unlinking it would race with a process that has just opened it.
        os.close(fd)


def _remove_stale_temporaries(directory: Path, key: str) -> None:
    """Delete what killed builds left: any temporary of `key` (we hold its lock, so no live
    build owns one) and any temporary older than `STALE_TEMPORARY_SECONDS`."""
    now = time.time()
    with contextlib.suppress(OSError):
        for entry in directory.iterdir():
            name = entry.name
            if not name.startswith(".") or _TEMPORARY_MARK not in name:
                continue
            with contextlib.suppress(OSError):
                if name.startswith(f".{key}.") or now - entry.lstat().st_mtime > STALE_TEMPORARY_SECONDS:
                    entry.unlink()


def write_private_file(path: Path, data: bytes) -> None:
    """Publish `data` at `path` atomically, mode 0600 (a unique temporary, then a rename)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TEMPORARY_MARK)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
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
    entry (mode 0600), verified against its sidecar.
    """
    path = entry_path(kind, key_parts, suffix, root)
    directory = path.parent
    if _verify(path):
        _bump("hits")
        return path
    key = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    with _key_lock(directory, key):
        # Another thread or process may have finished the build while we waited.
        if _verify(path):
            _bump("hits")
            return path
        if os.path.lexists(path) or os.path.lexists(_sidecar(path)):
            _bump("corrupt")
        _remove_stale_temporaries(directory, key)
        fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{key}.",
                                        suffix=f"{_TEMPORARY_MARK}{suffix}")
        os.close(fd)
        tmp = Path(tmp_name)
        tmp.unlink()  # the builder gets a path that does not exist yet
        try:
            build(tmp)
            if not tmp.is_file() or tmp.is_symlink():
                raise CacheError(f"cache builder for {kind!r} did not create {tmp}")
            # Compilers create their output with the umask's mode (0644, 0755).
            os.chmod(tmp, 0o600)
            size, digest = _file_digest(tmp)
            # Sidecar goes away first and comes back last: a crash in between leaves
            # an artifact without a valid sidecar, which the next run rebuilds.
            with contextlib.suppress(FileNotFoundError):
                _sidecar(path).unlink()
            os.replace(tmp, path)
            write_private_file(_sidecar(path), f"{size} {digest}\n".encode("ascii"))
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        _bump("builds")
        return path
