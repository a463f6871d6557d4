"""Writing files so that a reader sees the old file or the new one, never half of one.

    write_atomic(path, data)          # bytes or str
    with atomic_path(path) as temp:   # for writers that want a file name (safetensors, zip)
        save_file(arrays, temp)

The new content goes to a private temporary file beside `path` (same directory, so the final
`os.replace` is one atomic rename on the same file system), is flushed to disk, and replaces
`path` only when it is complete; on any failure the temporary file is removed and `path` is
left as it was. Every file netc writes for a user goes through here (artifact directories are
written as a whole: `netc.artifacts`; the compile cache has its own private-entry rules:
`netc.cache`).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], mode: int = 0o644) -> Iterator[Path]:
    """A temporary path beside `path` that replaces it (with permissions `mode`) only if the
    block succeeds."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.",
                                    suffix=".partial")
    os.close(handle)
    try:
        yield Path(temp)
        os.chmod(temp, mode)
        os.replace(temp, target)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)


def write_atomic(path: str | os.PathLike[str], data: bytes | str, mode: int = 0o644) -> None:
    """Write `data` (str as UTF-8) to `path` atomically."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_path(path, mode) as temp, open(temp, "wb") as stream:
        stream.write(payload)
        stream.flush()
        os.fsync(stream.fileno())
