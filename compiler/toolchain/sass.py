"""Reading the SASS of a cubin: the machine code ptxas produced, per kernel, for static checks.

    kernels = disassemble(binary.target("sm_90").cubin)     # {kernel name: instructions}
    loop = main_loop(kernels["netc_gemm_f32_..."])           # the hottest loop's body
    instruction_mix(loop)                                    # Counter({"FFMA": 256, ...})

The disassembler is `cuobjdump -sass` from the pip package `nvidia-cuda-cuobjdump` (its sibling
`nvidia-cuda-nvdisasm` draws control-flow graphs: `nvdisasm -cfg`); neither comes with NVRTC or
every toolkit image, so `find_tool` looks in the pip `nvidia` namespace package (where the
wheels put `nvidia/cu13/bin/cuobjdump`), on PATH and under `$CUDA_HOME`/`$CUDA_PATH`, and
raises `ToolNotFound` naming the package to install.

The main loop is found from branches alone, with no symbols: a `BRA` to an address at or before
its own closes a loop, whose body is every instruction from the target to the branch. Of the
innermost loops (those with no other loop inside), the one with the most instructions is the
main loop: for a GEMM that is the k-loop once ptxas has unrolled the fully unrolled inner
loops; a kernel whose only loops are short prologue or epilogue loops gets one of those, so
check the mix, not just that a loop exists. The `BRA` to itself that ends every kernel (padding
after `EXIT`) is not a loop.

`python -m netc.toolchain.sass FILE.cubin` prints every kernel's main-loop mix; `--listing`
prints the loop's instructions too.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

TOOL_PACKAGES = {"cuobjdump": "nvidia-cuda-cuobjdump", "nvdisasm": "nvidia-cuda-nvdisasm"}
"""The pip package that ships each tool."""


class ToolNotFound(RuntimeError):
    """A CUDA binary utility is missing; the message says which pip package to install."""


def find_tool(name: str) -> str:
    """The path of `cuobjdump` or `nvdisasm`: from the pip wheel, on PATH, or in the toolkit."""
    candidates: list[Path] = []
    try:
        import nvidia  # the namespace package the NVIDIA wheels install into

        for root in nvidia.__path__:
            # cu13 wheels: nvidia/cu13/bin/NAME; cu12 wheels: nvidia/cuda_NAME/bin/NAME.
            candidates.extend(sorted(Path(root).glob(f"*/bin/{name}")))
    except ImportError:
        pass
    if found := shutil.which(name):
        candidates.append(Path(found))
    for variable in ("CUDA_HOME", "CUDA_PATH"):
        if root := os.environ.get(variable):
            candidates.append(Path(root) / "bin" / name)
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise ToolNotFound(f"`{name}` was not found: install it with `pip install "
                       f"{TOOL_PACKAGES.get(name, name)}` (or put a CUDA toolkit's {name} on "
                       f"PATH)")


@dataclass(frozen=True)
class Instruction:
    """One SASS instruction: `@!P0 BRA 0x7b0` is predicate `@!P0`, opcode `BRA`, operands
    `0x7b0`; the opcode keeps its modifiers (`HMMA.16816.F32.BF16`)."""

    address: int
    """Byte offset in the kernel's code section (the target of a branch is one too)."""
    opcode: str
    operands: str = ""
    predicate: str = ""

    @property
    def base(self) -> str:
        """The opcode without modifiers: `LDGSTS.E.BYPASS.128` -> `LDGSTS`."""
        return self.opcode.split(".", 1)[0]

    @property
    def executes(self) -> bool:
        """False for `@!PT` (predicated on never): filler ptxas leaves after `cp.async`."""
        return self.predicate != "@!PT"

    @property
    def branch_target(self) -> int | None:
        """Where a `BRA` with a constant target goes; None for anything else."""
        if self.base != "BRA":
            return None
        match = re.fullmatch(r"(?:\S+\s+)?(0x[0-9a-f]+)", self.operands)
        return int(match.group(1), 16) if match else None

    def __str__(self) -> str:
        text = " ".join(part for part in (self.predicate, self.opcode, self.operands) if part)
        return f"/*{self.address:04x}*/ {text}"


_FUNCTION = re.compile(r"^\s*Function\s*:\s*(\S+)")
_INSTRUCTION = re.compile(r"^\s*/\*([0-9a-f]+)\*/\s+(@!?U?P[T\d]+\s+)?([A-Z][A-Z0-9_.]*)\s*([^;]*);")


def parse_sass(listing: str) -> dict[str, tuple[Instruction, ...]]:
    """Instructions per kernel from `cuobjdump -sass` output of one cubin."""
    kernels: dict[str, list[Instruction]] = {}
    current: list[Instruction] | None = None
    for line in listing.splitlines():
        if match := _FUNCTION.match(line):
            current = kernels.setdefault(match.group(1), [])
        elif current is not None and (match := _INSTRUCTION.match(line)):
            address, predicate, opcode, operands = match.groups()
            current.append(Instruction(int(address, 16), opcode, operands.strip(),
                                       (predicate or "").strip()))
    return {name: tuple(instructions) for name, instructions in kernels.items()}


def disassemble(cubin: bytes) -> dict[str, tuple[Instruction, ...]]:
    """Every kernel's SASS in a cubin (`ArchBinary.cubin`), by its (mangled) symbol name."""
    tool = find_tool("cuobjdump")
    with tempfile.TemporaryDirectory(prefix="netc-sass-") as directory:
        path = Path(directory) / "module.cubin"
        path.write_bytes(cubin)
        result = subprocess.run([tool, "-sass", str(path)], capture_output=True, text=True,
                                check=False)
    if result.returncode != 0:
        raise RuntimeError(f"`{tool} -sass` failed: {result.stderr.strip()}")
    return parse_sass(result.stdout)


def loops(instructions: Sequence[Instruction]) -> list[tuple[Instruction, ...]]:
    """The body of every loop, in address order: from a backward `BRA`'s target through the
    `BRA` itself."""
    bodies = []
    for index, branch in enumerate(instructions):
        target = branch.branch_target
        if target is not None and target < branch.address:
            bodies.append(tuple(i for i in instructions[:index + 1] if i.address >= target))
    return bodies


def innermost_loops(instructions: Sequence[Instruction]) -> list[tuple[Instruction, ...]]:
    """The bodies of the loops that hold no other loop."""
    spans = [(body[0].address, body[-1].address, body) for body in loops(instructions)]
    return [body for first, last, body in spans
            if not any(first <= other_first and other_last <= last
                       and (other_first, other_last) != (first, last)
                       for other_first, other_last, _ in spans)]


def main_loop(instructions: Sequence[Instruction]) -> tuple[Instruction, ...]:
    """The largest innermost loop's body (see the module docstring); () without a loop."""
    return max(innermost_loops(instructions), key=len, default=())


def instruction_mix(instructions: Iterable[Instruction]) -> Counter[str]:
    """How many instructions of each base opcode (`FFMA`, `LDS`, `HMMA`, ...) execute
    (`Instruction.executes`)."""
    return Counter(instruction.base for instruction in instructions if instruction.executes)


def format_mix(mix: Counter[str]) -> str:
    """`FFMA 256 (53.3%), LDS 48 (10.0%), ...`, most common first."""
    total = sum(mix.values())
    return ", ".join(f"{opcode} {count} ({100 * count / total:.1f}%)"
                     for opcode, count in mix.most_common())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m netc.toolchain.sass",
        description="Print each kernel's main loop and its instruction mix from a cubin.")
    parser.add_argument("cubin", type=Path)
    parser.add_argument("--kernel", help="only this kernel (its symbol name)")
    parser.add_argument("--listing", action="store_true", help="print the loop's instructions")
    args = parser.parse_args(argv)
    try:
        kernels = disassemble(args.cubin.read_bytes())
    except ToolNotFound as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for name, instructions in kernels.items():
        if args.kernel not in (None, name):
            continue
        loop = main_loop(instructions)
        print(f"{name}: {len(instructions)} instructions, main loop {len(loop)}")
        if loop:
            print(f"  start /*{loop[0].address:04x}*/: {format_mix(instruction_mix(loop))}")
        if args.listing:
            print("\n".join(f"    {instruction}" for instruction in loop))
    return 0


if __name__ == "__main__":
    sys.exit(main())
