"""Every v1 op of the `.net` language, registered in `REGISTRY` (see `registry.py`)."""

from netc.ops import (  # noqa: F401  (modules register their ops)
    activations,
    arithmetic,
    attention,
    convolution,
    fused,
    integers,
    layout,
    linear,
    losses,
    normalization,
    philox,
    pooling,
    reductions,
    shape,
    spatial,
)
from netc.ops.registry import (
    REGISTRY,
    REQUIRED,
    ROLES,
    AttrSpec,
    CudaExpression,
    GemmView,
    OnnxForm,
    OpDef,
    OpDoc,
    ParamSpec,
    ShapeError,
    node_flops,
    register,
    temporarily_registered,
)
from netc.ops.verify import verify

__all__ = [
    "REGISTRY",
    "REQUIRED",
    "ROLES",
    "AttrSpec",
    "CudaExpression",
    "GemmView",
    "OnnxForm",
    "OpDef",
    "OpDoc",
    "ParamSpec",
    "ShapeError",
    "node_flops",
    "register",
    "temporarily_registered",
    "verify",
]
