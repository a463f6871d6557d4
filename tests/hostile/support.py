"""Helpers of the hostile corpus: run netc as a user would, and prove what it did not touch."""

from __future__ import annotations

import hashlib
import os
import resource
import stat
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str

    def codes(self) -> list[str]:
        """The diagnostic codes on stderr (`error[E0401]`, `warning[E0701]`), in order."""
        found = []
        for line in self.stderr.splitlines():
            for kind in ("error[", "warning["):
                at = line.find(kind)
                if at >= 0:
                    found.append(line[at + len(kind): line.index("]", at)])
        return found


def netc(*args: str | os.PathLike[str], cwd: Path, env: dict[str, str] | None = None,
         timeout: float = 120, memory_limit: int | None = None) -> Run:
    """`python -m netc ARGS` in `cwd`, with TMPDIR inside `cwd` so nothing lands in /tmp;
    `memory_limit` caps its address space in bytes (RLIMIT_AS), for out-of-memory cases."""
    environment = {key: value for key, value in os.environ.items()
                   if not key.startswith(("NETC_", "XDG_CACHE"))}
    tmp = cwd / "tmp"
    tmp.mkdir(exist_ok=True)
    environment["TMPDIR"] = str(tmp)
    environment["HOME"] = str(cwd / "home")
    environment.update(env or {})
    def limit_memory() -> None:
        if memory_limit is not None:
            resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))

    proc = subprocess.run([sys.executable, "-m", "netc", *map(str, args)], cwd=cwd,
                          env=environment, capture_output=True, text=True, timeout=timeout,
                          preexec_fn=limit_memory if memory_limit is not None else None)
    return Run(proc.returncode, proc.stdout, proc.stderr)


def tree_state(root: Path, ignore: Iterable[str] = ()) -> dict[str, tuple[object, ...]]:
    """Every path under `root` with its type, mode, owner and content hash (links: target).

    Two states compare equal exactly when nothing under `root` was created, removed,
    modified, re-permissioned or re-owned, except the relative paths in `ignore` (and
    anything under them)."""
    skipped = tuple(ignore)
    state: dict[str, tuple[object, ...]] = {}
    for directory, subdirectories, files in os.walk(root):
        for name in [*subdirectories, *files]:
            path = Path(directory) / name
            relative = str(path.relative_to(root))
            if any(relative == s or relative.startswith(s + os.sep) for s in skipped):
                continue
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                content: object = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                content = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                content = None
            state[relative] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid,
                               content)
    return state


def changed(before: dict[str, tuple[object, ...]], after: dict[str, tuple[object, ...]]) -> list[str]:
    """The paths that differ between two `tree_state`s, for a readable assertion message."""
    return sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
