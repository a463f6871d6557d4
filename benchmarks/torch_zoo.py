"""PyTorch's model zoo through `netc import`: which models import, and do they match PyTorch?

    python benchmarks/torch_zoo.py                  # every model, writes docs/models.md
    python benchmarks/torch_zoo.py resnet18 vit_b_16 --print

Needs torch and torchvision (`pip install torch==2.14.1 torchvision==0.29.1`, a large
download, so it is not part of CI), onnx and onnxruntime. For each model:

1. build it with random initialisation (`weights=None`, seed 0) in eval mode;
2. export it with `torch.onnx.export` (the TorchScript exporter, opset 17, dynamic batch);
3. import the ONNX file with `netc.onnx.importer.import_onnx` (a `CompileError` means
   "rejected": its summary names the unsupported nodes);
4. run the imported network on netc's reference interpreter with the imported weights, at
   batch 2, and compare every output with PyTorch's on the same input:
   max |netc - torch| <= 1e-4 · max |torch| (float32, networks of up to ~200 layers).

Where the import of the dynamic-batch export is rejected, the model is exported again with a
fixed batch (no `dynamic_axes`) and tried again: `matches (fixed batch)`.

Outcomes: `matches`, `rejected` (a clean diagnostic), `wrong` (imported, different numbers:
always a bug), `crashed` (anything but a CompileError escaped: always a bug) and
`not exported` (PyTorch's exporter failed; nothing of netc's ran).
"""

from __future__ import annotations

import argparse
import datetime
import io
import platform
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DOCUMENT = ROOT / "docs" / "models.md"
TOLERANCE = 1e-4
"""Of the largest output: randomly initialised models may give outputs of any scale (some
torchvision models' are ~1e-12), so the bound is relative to the output's own."""


def _torchvision(name: str, size: int = 224) -> Callable[[], tuple[Any, tuple[int, ...]]]:
    def build() -> tuple[Any, tuple[int, ...]]:
        import torchvision

        kwargs: dict[str, Any] = {"weights": None}
        if name == "googlenet":
            kwargs.update(aux_logits=False, init_weights=True)
        return torchvision.models.get_model(name, **kwargs), (2, 3, size, size)
    return build


def _encoder_layer() -> tuple[Any, tuple[int, ...]]:
    import torch

    class EncoderLayer(torch.nn.Module):
        """`nn.TransformerEncoderLayer` called with `is_causal=False` spelled out: left to its
        default, the TorchScript tracer turns it into a tensor and the export fails inside
        `F.scaled_dot_product_attention` (torch 2.14.1)."""

        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.TransformerEncoderLayer(d_model=64, nhead=4,
                                                          dim_feedforward=128, dropout=0.1,
                                                          batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layer(x, src_mask=None, is_causal=False)

    return EncoderLayer(), (2, 10, 64)


MODELS: dict[str, Callable[[], tuple[Any, tuple[int, ...]]]] = {
    **{name: _torchvision(name) for name in (
        "resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
        "squeezenet1_0", "squeezenet1_1", "googlenet", "shufflenet_v2_x1_0", "efficientnet_b0",
        "densenet121", "regnet_y_400mf", "convnext_tiny", "vit_b_16", "swin_t")},
    "TransformerEncoderLayer": _encoder_layer,
}


@dataclass
class Result:
    model: str
    outcome: str
    detail: str
    seconds: float


def _summary(error: Exception) -> str:
    """The first lines of a CompileError's diagnostics, on one line."""
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    return text[:400] + ("…" if len(text) > 400 else "")


def _attempt(module: Any, example: Any, expected: np.ndarray,
             dynamic: bool) -> tuple[str, str]:
    """(outcome, detail) of one export, import and reference run."""
    import onnx
    import torch

    from netc.diagnostics import CompileError
    from netc.onnx.importer import import_onnx
    from netc.reference import run_reference

    buffer = io.BytesIO()
    axes = {"dynamic_axes": {"x": {0: "batch"}, "y": {0: "batch"}}} if dynamic else {}
    try:
        torch.onnx.export(module, (example,), buffer, opset_version=17, dynamo=False,
                          input_names=["x"], output_names=["y"], **axes)
    except Exception as error:  # PyTorch's exporter, not netc
        return "not exported", f"torch.onnx.export: {error}"[:400]
    try:
        imported = import_onnx(onnx.load_from_string(buffer.getvalue()), network_name="model")
    except CompileError as error:
        return "rejected", _summary(error)
    except Exception as error:  # a crash is what this measures
        return "crashed", f"{type(error).__name__}: {error}"[:400]
    try:
        (input_name,) = imported.inputs.values()
        outputs = run_reference(imported.graph, imported.weights,
                                {input_name: example.numpy()})
        (got,) = outputs.values()
    except Exception as error:
        return "crashed", "".join(traceback.format_exception_only(type(error), error))[:400]
    if got.shape != expected.shape:
        return "wrong", f"shape {got.shape}, torch {expected.shape}"
    error = float(np.max(np.abs(got.astype(np.float64) - expected)))
    scale = float(np.max(np.abs(expected)))
    detail = f"max |Δ| {error:.2e}, max |torch| {scale:.2e}, over {got.size} outputs"
    return ("matches" if error <= TOLERANCE * scale else "wrong"), detail


def run_model(name: str) -> Result:
    """The model exported with a dynamic batch; where netc rejects that, with a fixed one."""
    import torch

    start = time.perf_counter()
    torch.manual_seed(0)
    module, shape = MODELS[name]()
    module.eval()
    with torch.no_grad():
        # Some classifiers start with an all-zero head (vit_b_16), whose output would be 0
        # whatever came before it: random values make the comparison mean something.
        for parameter in module.parameters():
            if not parameter.any():
                parameter.normal_(0.0, 0.02)
    example = torch.randn(*shape)
    with torch.no_grad():
        expected = module(example).numpy()
    outcome, detail = _attempt(module, example, expected, dynamic=True)
    if outcome == "rejected":
        fixed, fixed_detail = _attempt(module, example, expected, dynamic=False)
        if fixed != "rejected":
            outcome = fixed if fixed != "matches" else "matches (fixed batch)"
            detail = f"{fixed_detail}; with a dynamic batch rejected: {detail}"
    return Result(name, outcome, detail, time.perf_counter() - start)


def render(results: list[Result]) -> str:
    import torch
    import torchvision

    counts = {outcome: sum(r.outcome == outcome for r in results)
              for outcome in ("matches", "matches (fixed batch)", "rejected", "wrong", "crashed",
                            "not exported")}
    lines = [
        "# PyTorch's models through `netc import`",
        "",
        "Written by `python benchmarks/torch_zoo.py` (see its docstring for the method) on "
        f"{datetime.date.today().isoformat()}, torch {torch.__version__}, torchvision "
        f"{torchvision.__version__}, Python {platform.python_version()}, on the CPU. Each model "
        "is exported with `torch.onnx.export` (TorchScript exporter, opset 17, dynamic "
        "batch), imported, run on netc's reference interpreter at batch 2 and compared with "
        f"PyTorch (max |netc - torch| ≤ {TOLERANCE:g} · max |torch|).",
        "",
        ", ".join(f"**{count} {outcome}**" for outcome, count in counts.items()) +
        f" of {len(results)}.",
        "",
        "| model | outcome | detail | seconds |",
        "| --- | --- | --- | --- |",
    ]
    for r in results:
        detail = r.detail.replace("|", "\\|")
        lines.append(f"| `{r.model}` | {r.outcome} | {detail} | {r.seconds:.0f} |")
    return "\n".join(lines) + "\n"


HAND_WRITTEN = "## Examples written in `.net`"
"""The page's hand-written part starts at this heading; a rewrite of the page keeps it."""


def _written_by_hand() -> str:
    old = DOCUMENT.read_text(encoding="utf-8") if DOCUMENT.exists() else ""
    return "\n" + old[old.index(HAND_WRITTEN):] if HAND_WRITTEN in old else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", metavar="MODEL",
                        help=f"models to run (default all: {', '.join(MODELS)})")
    parser.add_argument("--print", action="store_true", help="print instead of writing "
                        "docs/models.md")
    args = parser.parse_args(argv)
    unknown = [name for name in args.models if name not in MODELS]
    if unknown:
        parser.error(f"unknown model {unknown[0]!r}; choose from {', '.join(MODELS)}")
    try:
        import torch
        import torchvision  # noqa: F401
    except ImportError as error:
        print(f"error: {error.name} is not installed; pip install torch==2.14.1 "
              "torchvision==0.29.1", file=sys.stderr)
        return 1
    # The TorchScript exporter's deprecation notice and its tracer's warnings, once per model.
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
    results = []
    for name in args.models or list(MODELS):
        result = run_model(name)
        print(f"{name}: {result.outcome} ({result.seconds:.0f} s) {result.detail}",
              file=sys.stderr, flush=True)
        results.append(result)
    text = render(results)
    if args.print or args.models:
        print(text)
    else:
        DOCUMENT.write_text(text + _written_by_hand(), encoding="utf-8")
        print(f"wrote {DOCUMENT}", file=sys.stderr)
    return 1 if any(r.outcome in ("wrong", "crashed") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
