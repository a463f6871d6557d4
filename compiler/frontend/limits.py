"""Limits on what the front end accepts, so hostile input gets a diagnostic (E05xx), not a hang,
a `RecursionError` or a `MemoryError`. Each is far beyond any real network; docs/errors.md
lists them with their codes.
"""

MAX_SOURCE_BYTES = 256 << 10
"""A `.net` file of more than 256 KiB is not hand-written (ResNet-152 spelled out without
blocks is about 20 KiB); refuse it before lexing, which runs at roughly 100 KiB/s (E0508)."""

MAX_NAME_LENGTH = 64
"""The spec's limit on names (E0503), and on each segment of a layer path (E0210)."""

MAX_PATH_LENGTH = 255
"""Longest layer path, `name="encoder.layers.11.self_attn.out_proj"` (E0210): far beyond any
PyTorch state_dict key of a real model."""

INT_LIMIT = 1 << 40
"""Largest integer magnitude, written or computed (E0501). Python ints are unbounded, so this
keeps `dense(x, 99999999999999999999)` from reaching shape arithmetic."""

MAX_ELEMENTS = 1 << 40
"""Largest element count of any tensor: input, parameter or computed value (E0507)."""

MAX_NESTING = 32
"""Deepest nesting of `(`, `[` and `{` (E0502), checked by a scan before Lark runs."""

MAX_NEGATIONS = 16
"""Longest chain of unary minus signs `- - - x` (E0502); the one nesting without brackets."""

MAX_EVAL_DEPTH = 100
"""Deepest nesting of expression evaluation and block calls together while expanding a network
(E0502). This is what bounds the Python stack in `sema`; the checks above give earlier, more
specific messages for the usual cases."""

MAX_BLOCK_DEPTH = 32
"""Deepest chain of block calls (a block calling a block calling ...) (E0506)."""

MAX_IMPORT_DEPTH = 32
"""Deepest chain of imports (E0506)."""

MAX_NODES = 10_000
"""Most IR nodes in one network after unrolling and expansion (E0504)."""

MAX_REPEAT = 10_000
"""Largest count of one `repeat` (E0505)."""

MAX_STATEMENTS = 100_000
"""Most statements executed while unrolling a network, so that `repeat` loops that make no
nodes still finish quickly (E0505)."""

MAX_DIAGNOSTICS = 50
"""Most diagnostics reported in one run; past this they only repeat themselves."""
