"""Every v1 op of the `.net` language, registered in `REGISTRY` (see `registry.py`)."""

from netc.ops import (  # noqa: F401  (modules register their ops)
    activations,
    arithmetic,
    fused,
    layout,
    linear,
    normalization,
    pooling,
)
from netc.ops.registry import (
    REGISTRY,
    REQUIRED,
    AttrSpec,
    OpDef,
    ParamSpec,
    ShapeError,
    node_flops,
    register,
)

__all__ = [
    "REGISTRY",
    "REQUIRED",
    "AttrSpec",
    "OpDef",
    "ParamSpec",
    "ShapeError",
    "node_flops",
    "register",
]
