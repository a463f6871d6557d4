"""Optimisation passes over the graph IR, and the pipeline that orders them.

    from netc.passes import run_pipeline
    optimized = run_pipeline(graph, level=2, dump_dir="ir/", verify=True)
    print(optimized.log())
    weights = optimized.weights_for(original_weights)   # folded tensors derived here

One pass per module, named by what it does; `pipeline.PIPELINE` is the one ordered list. See
`docs/passes.md` for every pass and the fusion rules.
"""

from netc.passes.pass_manager import Pass, PassContext, PassRecord, PipelineError, run_passes
from netc.passes.pipeline import LEVELS, PIPELINE, PIPELINES, Optimized, run_pipeline
from netc.passes.weight_transforms import WeightTransform, apply_weight_transforms

__all__ = [
    "LEVELS",
    "PIPELINE",
    "PIPELINES",
    "Optimized",
    "Pass",
    "PassContext",
    "PassRecord",
    "PipelineError",
    "WeightTransform",
    "apply_weight_transforms",
    "run_passes",
    "run_pipeline",
]
