"""`python -m netc.toolchain`: compile a `.cu` file as netc does (the reproduce command a failed
compile prints), or time the compilers on it.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from netc.toolchain.binary import (
    COMPILERS,
    DEFAULT_ARCHS,
    DeviceCompileError,
    format_resources,
)
from netc.toolchain.compile import (
    compile_module,
)


def _benchmark(source: str, name: str, archs: tuple[str, ...], compiler: str,
               options: Sequence[str], repeat: int) -> int:
    import statistics

    cold: list[float] = []
    cached: list[float] = []
    saved = os.environ.get("NETC_CACHE_DIR")
    try:
        for _ in range(repeat):
            with tempfile.TemporaryDirectory(prefix="netc-benchmark-") as directory:
                os.environ["NETC_CACHE_DIR"] = directory
                for times in (cold, cached):
                    started = time.perf_counter()
                    binary = compile_module(source, name, archs, compiler, options,
                                            generated=False)
                    times.append(time.perf_counter() - started)
    except DeviceCompileError as error:
        print(error.render(), file=sys.stderr)
        return error.exit_code
    finally:
        if saved is None:
            os.environ.pop("NETC_CACHE_DIR", None)
        else:
            os.environ["NETC_CACHE_DIR"] = saved
    print(f"{name}: {binary.compiler_version}, {', '.join(archs)}, {repeat} runs "
          f"({os.cpu_count()} CPUs)")
    for label, times in (("cold", cold), ("cached", cached)):
        print(f"  {label:6}  median {statistics.median(times) * 1000:8.1f} ms  "
              f"min {min(times) * 1000:8.1f} ms  max {max(times) * 1000:8.1f} ms")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m netc.toolchain",
        description="Compile a CUDA file the way netc does and print each kernel's resources.")
    parser.add_argument("source", type=Path)
    parser.add_argument("--arch", action="append", help="sm_XY; repeat for several "
                        f"(default: {' '.join(DEFAULT_ARCHS)})")
    parser.add_argument("--compiler", choices=COMPILERS, default="auto")
    parser.add_argument("--option", action="append", default=[],
                        help="a compiler option; write --option=-maxrregcount=32")
    parser.add_argument("--no-cache", action="store_true", help="always run the compiler")
    parser.add_argument("--output-dir", type=Path,
                        help="write NAME.sm_XY.cubin and NAME.sm_XY.ptx here")
    parser.add_argument("--benchmark", type=int, metavar="N",
                        help="time N cold compiles (each into a fresh cache) and N cache hits")
    args = parser.parse_args(argv)
    name = re.sub(r"\W", "_", args.source.stem) or "module"
    if args.benchmark:
        return _benchmark(args.source.read_text(), name, tuple(args.arch or DEFAULT_ARCHS),
                          args.compiler, args.option, args.benchmark)
    try:
        binary = compile_module(args.source.read_text(), name, tuple(args.arch or DEFAULT_ARCHS),
                                args.compiler, args.option, use_cache=not args.no_cache,
                                generated=False)
    except DeviceCompileError as error:
        print(error.render(), file=sys.stderr)
        return error.exit_code
    print(f"{name}: {binary.compiler_version}, {', '.join(binary.archs)}")
    print(format_resources(binary))
    if args.output_dir:
        args.output_dir.mkdir(parents=True, exist_ok=True)
        for target in binary.targets:
            (args.output_dir / f"{name}.{target.arch}.cubin").write_bytes(target.cubin)
            (args.output_dir / f"{name}.{target.arch}.ptx").write_text(target.ptx)
    return 0


if __name__ == "__main__":
    sys.exit(main())
