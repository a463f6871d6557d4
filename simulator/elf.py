"""Static `__shared__` variables, found in the compiled module's ELF symbol table as
thread-local symbols, so that each block gets its own copy."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# ----------------------------------------------------------------------------------
# Static __shared__ variables: found in the ELF symbol table (thread-local symbols)
# ----------------------------------------------------------------------------------


def _elf_tls_symbols(path: Path) -> list[tuple[str, int, int]]:
    """(name, offset in the TLS block, size) of the defined STT_TLS symbols."""
    data = path.read_bytes()
    if len(data) < 64 or data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return []  # not a 64-bit little-endian ELF: no shared-memory poisoning
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + k * shentsize) for k in range(shnum)]
    out: list[tuple[str, int, int]] = []
    for sec in sections:
        if sec[1] != 2:  # SHT_SYMTAB
            continue
        sym_off, sym_size, strtab = sec[4], sec[5], sections[sec[6]]
        str_off = strtab[4]
        for k in range(sym_size // 24):
            st_name, st_info, _other, st_shndx, st_value, st_size = struct.unpack_from(
                "<IBBHQQ", data, sym_off + 24 * k
            )
            if st_info & 0xF != 6 or st_shndx == 0:  # STT_TLS, defined
                continue
            end = data.index(b"\0", str_off + st_name)
            out.append((data[str_off + st_name:end].decode("ascii", "replace"), st_value, st_size))
    return out


def _local_static_owner(sym: str) -> str | None:
    """Unqualified name of the function owning a function-local static (``_ZZ...``)."""
    if not sym.startswith("_ZZ"):
        return None
    i = 3
    if sym.startswith("L", i):
        i += 1
    nested = sym.startswith("N", i)
    if nested:
        i += 1
        while i < len(sym) and sym[i] in "rVK":
            i += 1
    last: str | None = None
    while i < len(sym):
        if sym[i].isdigit():
            j = i
            while j < len(sym) and sym[j].isdigit():
                j += 1
            length = int(sym[i:j])
            last = sym[j:j + length]
            i = j + length
            if not nested:
                return last
        elif sym.startswith("St", i):
            i += 2
        elif sym[i] == "S":
            j = sym.find("_", i)
            if j < 0:
                return None
            i = j + 1
        else:
            return last  # 'I' (template arguments) or 'E' (end of the nested name)
    return last


def _kernel_base_name(kernel: str) -> str:
    return kernel.split("<", 1)[0].split("::")[-1].strip()


@dataclass
class _SharedLayout:
    anchors: tuple[int, int] | None
    ranges: list[list[tuple[int, int]]]  # per kernel: (offset, size) to poison
    static_bytes: list[int]  # per kernel


def _shared_layout(path: Path, kernels: Sequence[str], dyn_names: Sequence[str]) -> _SharedLayout:
    syms = _elf_tls_symbols(path)
    by_name = {name: off for name, off, _ in syms}
    anchors = None
    if "cudasim_tls_anchor_a" in by_name and "cudasim_tls_anchor_b" in by_name:
        anchors = (by_name["cudasim_tls_anchor_a"], by_name["cudasim_tls_anchor_b"])
    dyn_suffixes = tuple(f"{len(n)}{n}" for n in dyn_names)
    bases = [_kernel_base_name(k) for k in kernels]
    owned: list[list[tuple[int, int]]] = [[] for _ in kernels]
    shared_by_all: list[tuple[int, int]] = []
    for name, off, size in syms:
        if size == 0 or name.startswith(("_ZN7cudasim", "_ZZN7cudasim", "cudasim_", "_ZGV", "_ZTH", "_ZTW", "__tls")):
            continue
        if name in dyn_names or (name.startswith("_Z") and name.rstrip("E").endswith(dyn_suffixes)):
            continue  # a rewritten `extern __shared__` pointer, not shared memory
        owner = _local_static_owner(name)
        idx = [k for k, b in enumerate(bases) if owner is not None and b == owner]
        if idx:
            for k in idx:
                owned[k].append((off, size))
        else:  # namespace scope or a helper function: any kernel may use it
            shared_by_all.append((off, size))
    ranges = [own + shared_by_all for own in owned]
    return _SharedLayout(anchors, ranges, [sum(s for _, s in r) for r in ranges])
