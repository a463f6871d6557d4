"""The launch plan: what a CUDA module is and how to run it.

Code generation turns a graph into one CUDA source module and a `LaunchPlan`: the buffers the
network needs and, in order, every kernel launch with its grid, block, dynamic shared memory and
arguments. Every backend that runs generated kernels (the CPU simulator, PyCUDA, the artifact
directory's `plan.json`) reads this and nothing else.

Named dimensions (`N`, `T`) are run-time values, so one plan serves every size of them. A size
that depends on them is a `Size`, a polynomial in the named dimensions (`256*N*T`); a kernel
takes each such size as a 64-bit argument (`Arg` kind "size"), evaluated at launch time, and a
grid dimension is `times * ceil(blocks / divisor)` of such sizes (`GridDim`). A slice that reads
`[:T]` of a fixed length bounds T (`LaunchPlan.bounds`), checked before anything runs.

Intermediates share one arena, planned for each set of sizes the plan runs at
(`LaunchPlan.memory_plan`: best fit over the launches, in place where a kernel allows; the rule
is in `docs/kernels.md`, "The arena"). Planning takes well under a millisecond a hundred
buffers, and a runner plans once per set of sizes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from netc.ir import DTYPE_BYTES, Dim

if TYPE_CHECKING:
    from netc.memory import MemoryPlan

BufferRole = Literal["input", "output", "param", "intermediate"]
Term = tuple[int, tuple[str, ...]]


@dataclass(frozen=True)
class Size:
    """A size known at run time: a sum of terms, each an integer coefficient times a product of
    named dimensions, `((64, ("N", "T")), (1, ()))` for 64*N*T + 1. Arithmetic with ints and
    other sizes is exact; a result without a named dimension is a plain int, so a `Size`
    always names at least one dimension (`SizeLike` is either)."""

    terms: tuple[Term, ...]

    @staticmethod
    def of(terms: Iterable[Term]) -> SizeLike:
        """The terms merged (like products added, zero ones dropped): an int if none is named."""
        merged: dict[tuple[str, ...], int] = {}
        for coefficient, dims in terms:
            key = tuple(sorted(dims))
            merged[key] = merged.get(key, 0) + coefficient
        kept = tuple((c, dims) for dims, c in sorted(merged.items()) if c != 0)
        if all(not dims for _, dims in kept):
            return sum(c for c, _ in kept)
        return Size(kept)

    def at(self, sizes: Mapping[str, int]) -> int:
        return sum(c * math.prod(sizes[d] for d in dims) for c, dims in self.terms)

    @property
    def names(self) -> frozenset[str]:
        return frozenset(d for _, dims in self.terms for d in dims)

    def __add__(self, other: SizeLike) -> SizeLike:
        return Size.of((*self.terms, *_terms(other)))

    __radd__ = __add__

    def __mul__(self, other: SizeLike) -> SizeLike:
        return Size.of((c * k, (*dims, *more)) for c, dims in self.terms
                       for k, more in _terms(other))

    __rmul__ = __mul__

    def __str__(self) -> str:
        return " + ".join("*".join([str(c)] * (c != 1 or not dims) + list(dims))
                          for c, dims in self.terms)


SizeLike = int | Size


def _terms(value: SizeLike) -> tuple[Term, ...]:
    return value.terms if isinstance(value, Size) else ((int(value), ()),)


def size_of(dims: Iterable[Dim | SizeLike]) -> SizeLike:
    """The product of `dims` (ints, dimension names, sizes)."""
    result: SizeLike = 1
    for d in dims:
        result = result * (Size(((1, (d,)),)) if isinstance(d, str) else d)
    return result


def exact_div(value: SizeLike, divisor: SizeLike) -> SizeLike:
    """`value / divisor` where it divides exactly, term by term (`divisor` a single term):
    a merged view's size over its innermost dim's."""
    (k, over), = _terms(divisor)
    quotient: list[Term] = []
    for c, dims in _terms(value):
        rest = list(dims)
        for d in over:
            if d not in rest:
                raise ValueError(f"{value} is not a multiple of {divisor}")
            rest.remove(d)
        if c % k:
            raise ValueError(f"{value} is not a multiple of {divisor}")
        quotient.append((c // k, tuple(rest)))
    return Size.of(quotient)


def evaluate(value: SizeLike, sizes: Mapping[str, int]) -> int:
    return value.at(sizes) if isinstance(value, Size) else int(value)


def size_to_json(value: SizeLike) -> Any:
    return [[c, list(dims)] for c, dims in value.terms] if isinstance(value, Size) else value


def size_from_json(value: Any) -> SizeLike:
    if isinstance(value, bool):
        raise ValueError(f"bad size {value!r}")
    if isinstance(value, int):
        return value
    if not isinstance(value, list) or not value:
        raise ValueError(f"bad size {value!r}")
    terms = []
    for term in value:
        coefficient, dims = term
        if isinstance(coefficient, bool) or not isinstance(coefficient, int) or \
                not all(isinstance(d, str) for d in dims):
            raise ValueError(f"bad size term {term!r}")
        terms.append((coefficient, tuple(dims)))
    return Size.of(terms)


@dataclass(frozen=True)
class Buffer:
    name: str
    """A netc-made C identifier (`buf7`), never user text."""
    role: BufferRole
    dtype: str
    shape: tuple[Dim, ...]
    node: str
    """The IR node whose value (or one of whose outputs) it holds (an input name, a param
    name, an output's node)."""
    alias_of: str | None = None
    """A view (reshape, flatten, dropout) shares the storage of this buffer."""
    live: tuple[int, int] | None = None
    """For an intermediate with storage of its own, which lives in the arena: the first and
    last launch (indices into `LaunchPlan.launches`) that use it, directly or through a view;
    an output's view keeps it live to the last launch. None for every other buffer (inputs,
    outputs and params are allocated one by one, a view follows `alias_of`)."""
    in_place: tuple[str, ...] = ()
    """The arena buffers whose storage this one may take over in place: inputs of the launch
    that writes this one, read only at the element being written, dying at that launch (the
    arena planner takes one of them when it fits)."""

    @property
    def in_arena(self) -> bool:
        return self.live is not None

    def numel(self, sizes: Mapping[str, int]) -> int:
        return math.prod(sizes[d] if isinstance(d, str) else d for d in self.shape)

    def nbytes(self, sizes: Mapping[str, int]) -> int:
        return self.numel(sizes) * DTYPE_BYTES[self.dtype]


@dataclass(frozen=True)
class GridDim:
    """`times * ceil(blocks / divisor)` thread blocks, at least one."""

    blocks: SizeLike = 1
    divisor: int = 1
    times: SizeLike = 1

    def size(self, sizes: Mapping[str, int]) -> int:
        return max(1, evaluate(self.times, sizes)
                   * -(-evaluate(self.blocks, sizes) // self.divisor))


@dataclass(frozen=True)
class Arg:
    kind: Literal["buffer", "size", "int", "float"]
    """buffer: a pointer to `buffer`; size: a `Size` `value`, evaluated at launch (int64);
    int/float: a constant `value` (int64 / float32)."""
    buffer: str | None = None
    value: float | int | Size | None = None


def size_arg(value: SizeLike | str) -> Arg:
    """A 64-bit integer argument: a constant, or a size (or dimension name) known at launch."""
    value = size_of((value,))
    return Arg("size", value=value) if isinstance(value, Size) else Arg("int", value=value)


@dataclass(frozen=True)
class Launch:
    kernel: str
    grid: tuple[GridDim, GridDim, GridDim]
    block: tuple[int, int, int]
    shared_bytes: int
    args: tuple[Arg, ...]
    nodes: tuple[str, ...]
    """The IR nodes this launch computes (one now; several once passes fuse)."""
    source: str = ""
    """Where in the `.net` source the computed layers come from (`lenet.net:7`)."""

    def grid_size(self, sizes: Mapping[str, int]) -> tuple[int, int, int]:
        x, y, z = (dim.size(sizes) for dim in self.grid)
        return (x, y, z)

    def arg_values(self, sizes: Mapping[str, int]) -> list[int | float | str | None]:
        """Every argument but the buffers as the kernel receives it (buffers by name)."""
        values: list[int | float | str | None] = []
        for arg in self.args:
            if arg.kind == "buffer":
                values.append(arg.buffer)
            elif arg.kind == "float":
                values.append(float(arg.value or 0.0))  # type: ignore[arg-type]
            else:
                values.append(evaluate(arg.value or 0, sizes))  # type: ignore[arg-type]
        return values


@dataclass(frozen=True)
class LaunchPlan:
    network: str
    module: str
    """The module's base name, for file names (`lenet5.cu`, `lenet5.sm_90.cubin`)."""
    source: str
    """The CUDA C++ source of the whole module."""
    dims: tuple[str, ...]
    """The named dimensions, as the inputs name them (in order of first appearance)."""
    buffers: tuple[Buffer, ...]
    launches: tuple[Launch, ...]
    outputs: tuple[tuple[str, str], ...]
    """(output name, buffer name)."""
    kernels: tuple[str, ...] = field(default=())
    """Every kernel function name defined in `source`, each once."""
    bounds: tuple[tuple[str, int, str], ...] = field(default=())
    """(dimension, largest size, why): a slice `[:T]` of a fixed length reads no further than
    that length, so T may not exceed it (checked when the sizes are bound)."""

    def buffer(self, name: str) -> Buffer:
        return next(b for b in self.buffers if b.name == name)

    def every_dim(self, size: int = 1) -> dict[str, int]:
        """Every named dimension set to `size` (reports at "batch 1")."""
        return dict.fromkeys(self.dims, size)

    @property
    def arena_buffers(self) -> tuple[Buffer, ...]:
        """The buffers placed in the arena: every intermediate with storage of its own."""
        return tuple(b for b in self.buffers if b.in_arena)

    def memory_plan(self, sizes: Mapping[str, int]) -> MemoryPlan:
        """The arena at `sizes` as a `netc.memory.MemoryPlan` (placements in bytes, lifetimes
        in launches), checked by `verify_plan`: what a runner allocates at these sizes."""
        from netc.memory import ALIGNMENT, BufferLife, plan_arena, verify_plan

        arena = {b.name for b in self.arena_buffers}
        records = []
        for buffer in self.arena_buffers:
            assert buffer.live is not None
            records.append(BufferLife(buffer.name, buffer.nbytes(sizes), *buffer.live,
                                      tuple(c for c in buffer.in_place if c in arena)))
        plan = plan_arena(records, ALIGNMENT, tuple((d, sizes[d]) for d in self.dims))
        verify_plan(plan, records)
        return plan

    def arena_bytes(self, sizes: Mapping[str, int]) -> int:
        """Bytes of the one allocation that holds every intermediate at `sizes`."""
        return self.memory_plan(sizes).arena_bytes

    def intermediate_bytes(self, sizes: Mapping[str, int]) -> int:
        """The sum of every intermediate's size at `sizes`: what allocating each on its own
        would take (before alignment), the figure the arena is measured against."""
        return sum(b.nbytes(sizes) for b in self.buffers
                   if b.role == "intermediate" and b.alias_of is None)

    def launch_bytes(self, index: int, sizes: Mapping[str, int]) -> int:
        """Static bytes launch `index` moves at `sizes`: each distinct buffer it is passed,
        read or written, counted once at its full size (`bytes_moved` explains the model)."""
        names = dict.fromkeys(arg.buffer for arg in self.launches[index].args
                              if arg.kind == "buffer" and arg.buffer is not None)
        return sum(self.buffer(name).nbytes(sizes) for name in names)

    def bytes_moved(self, sizes: Mapping[str, int]) -> int:
        """Static global-memory traffic of the whole plan at `sizes`: for every launch, the
        size of each distinct buffer it takes (inputs, params, intermediates and outputs),
        read or written once. It ignores caches and re-reads (a conv reads its input about
        kh*kw/stride^2 times, mostly from cache) and counts a concat's output in full for each
        of its per-input launches; it measures what fusion saves, not time."""
        return sum(self.launch_bytes(index, sizes) for index in range(len(self.launches)))

    def to_json(self) -> str:
        """The plan without its source, as written to `plan.json`."""
        def sized(value: Any) -> Any:
            if isinstance(value, Size):
                return size_to_json(value)
            if isinstance(value, dict):
                return {k: sized(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return [sized(v) for v in value]
            return value

        data: dict[str, Any] = asdict(self)
        del data["source"]
        # asdict turns a Size into {"terms": ...}: written as its term list instead.
        for launch, original in zip(data["launches"], self.launches):
            launch["grid"] = [{"blocks": size_to_json(g.blocks), "divisor": g.divisor,
                               "times": size_to_json(g.times)} for g in original.grid]
            launch["args"] = [{"kind": a.kind, "buffer": a.buffer, "value": sized(a.value)}
                              for a in original.args]
        return json.dumps(data, indent=2)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: str) -> LaunchPlan:
        """The plan `to_json` wrote (parsed), with its module's `source`. Raises `ValueError`
        (or `KeyError`/`TypeError`) naming what is malformed; never a half-built plan."""
        def dim(value: Any) -> Dim:
            if isinstance(value, bool) or not isinstance(value, (int, str)):
                raise ValueError(f"bad dimension {value!r}")
            return value

        def buffer(item: Mapping[str, Any]) -> Buffer:
            if item["role"] not in ("input", "output", "param", "intermediate"):
                raise ValueError(f"bad buffer role {item['role']!r}")
            if item["dtype"] not in DTYPE_BYTES:
                raise ValueError(f"bad buffer dtype {item['dtype']!r}")
            live = item.get("live")
            return Buffer(str(item["name"]), item["role"], str(item["dtype"]),
                          tuple(dim(d) for d in item["shape"]), str(item["node"]),
                          item.get("alias_of"),
                          None if live is None else (int(live[0]), int(live[1])),
                          tuple(str(c) for c in item.get("in_place", ())))

        def arg(item: Mapping[str, Any]) -> Arg:
            if item["kind"] not in ("buffer", "size", "int", "float"):
                raise ValueError(f"bad argument kind {item['kind']!r}")
            value = item.get("value")
            if item["kind"] == "size":
                value = size_from_json(value)
            return Arg(item["kind"], item.get("buffer"), value)

        def launch(item: Mapping[str, Any]) -> Launch:
            x, y, z = (GridDim(size_from_json(g["blocks"]), int(g["divisor"]),
                               size_from_json(g["times"])) for g in item["grid"])
            bx, by, bz = (int(b) for b in item["block"])
            return Launch(str(item["kernel"]), (x, y, z), (bx, by, bz),
                          int(item["shared_bytes"]), tuple(arg(a) for a in item["args"]),
                          tuple(str(n) for n in item["nodes"]), str(item.get("source", "")))

        buffers = tuple(buffer(b) for b in data["buffers"])
        plan = cls(network=str(data["network"]), module=str(data["module"]), source=source,
                   dims=tuple(str(d) for d in data["dims"]), buffers=buffers,
                   launches=tuple(launch(item) for item in data["launches"]),
                   outputs=tuple((str(name), str(buf)) for name, buf in data["outputs"]),
                   kernels=tuple(str(k) for k in data["kernels"]),
                   bounds=tuple((str(d), int(n), str(why)) for d, n, why in data["bounds"]))
        plan.check()
        return plan

    def check(self) -> None:
        """Every name the plan uses is defined: buffers, aliases, kernels, outputs, and every
        dimension a size names."""
        names = {b.name for b in self.buffers}
        if len(names) != len(self.buffers):
            raise ValueError("two buffers share a name")
        for b in self.buffers:
            for other in (b.alias_of, *b.in_place):
                if other is not None and other not in names:
                    raise ValueError(f"buffer {b.name} refers to unknown buffer {other}")
        for index, launch in enumerate(self.launches):
            if launch.kernel not in self.kernels:
                raise ValueError(f"launch {index} runs unknown kernel {launch.kernel}")
            for a in launch.args:
                if a.kind == "buffer" and a.buffer not in names:
                    raise ValueError(f"launch {index} takes unknown buffer {a.buffer}")
            named = [a.value for a in launch.args if isinstance(a.value, Size)]
            named += [v for g in launch.grid for v in (g.blocks, g.times) if isinstance(v, Size)]
            unknown = {d for v in named for d in v.names} - set(self.dims)
            if unknown:
                raise ValueError(f"launch {index} uses unknown dimension {sorted(unknown)[0]}")
        for name, buf in self.outputs:
            if buf not in names:
                raise ValueError(f"output {name} is unknown buffer {buf}")
