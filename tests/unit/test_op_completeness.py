"""Every registered op is complete: each backend finds it through the registry.

`missing_pieces(opdef)` names what an op lacks: a reference, a CUDA lowering (a kernel family
registered for it, its CUDA expression, or a decomposition), an ONNX export, an ONNX import,
a row in docs/ops.md, and the data its role needs (a GEMM view, a reduced axis). The test runs
it over `REGISTRY` (one case per op, so a failure names the op), and over ops made incomplete
on purpose, to show that it notices.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from netc.codegen.kernels import kernel_family
from netc.ir import Attrs
from netc.onnx.export import export_rule
from netc.onnx.importer import imported_ops
from netc.ops import REGISTRY, OpDef, temporarily_registered
from netc.ops.docs import main as docs_main
from netc.ops.docs import rewrite
from netc.ops.registry import ROLES, Composer, same_type

pytestmark = pytest.mark.unit

OPS_DOC = Path(__file__).resolve().parents[2] / "docs" / "ops.md"


def documented_ops() -> set[str]:
    """The ops named in the first column of docs/ops.md's table, "## The table" (`add`, `sub`,
    `mul` share a row)."""
    names: set[str] = set()
    text = OPS_DOC.read_text(encoding="utf-8")
    section = text.split("\n## The table\n", 1)[1].split("\n## ", 1)[0]
    for line in section.splitlines():
        if line.startswith("| `"):
            first_cell = line.split("|")[1]
            names.update(re.findall(r"`([a-z_0-9]+)`", first_cell))
    return names


IMPORTED_AS_OTHER_OPS = {
    "adaptive_avgpool2d": "ONNX has no adaptive pool: netc and PyTorch export it as "
                          "GlobalAveragePool or AveragePool, which import as `global_avgpool` / "
                          "`avgpool2d` with the same numbers (tests/unit/test_ops_windows_v2.py, "
                          "test_export_matches_onnxruntime_and_imports_back)",
    **{loss: "ONNX has no such loss op: netc exports it as its decomposition (Sub, Mul or Abs "
             "or the stable logistic terms, then ReduceMean), which imports as those ops with "
             "the same numbers (tests/unit/test_losses.py, "
             "test_export_matches_onnxruntime_and_imports_back)"
       for loss in ("mse_loss", "l1_loss", "bce_with_logits")},
    "multihead_attention": "ONNX has no such op, and no pattern recognises the ~60 time-first "
                           "nodes PyTorch's exporter writes for nn.MultiheadAttention yet; "
                           "netc's own export of the non-causal op imports back as its parts "
                           "with the same numbers (tests/unit/test_mha.py, "
                           "test_the_export_imports_back_as_its_parts_with_the_same_numbers); "
                           "the causal one does not (its -inf mask has no `.net` literal: E0606)",
}
"""Ops no ONNX model can name, and why: their export imports back as other ops."""


def missing_pieces(opdef: OpDef) -> list[str]:
    """What `opdef` lacks, one phrase each, naming the op."""
    op = f"`{opdef.name}`"
    missing: list[str] = []
    if not callable(opdef.reference):
        missing.append(f"{op} has no NumPy reference")
    if opdef.role in ("gemm", "conv") and opdef.gemm_view is None:
        missing.append(f"{op} (role {opdef.role}) has no gemm_view")
    if opdef.role == "row_reduction" and opdef.reduced_axis is None:
        missing.append(f"{op} (role row_reduction) has no reduced_axis")
    if not opdef.is_view and kernel_family(opdef.name) is None and opdef.decompose is None:
        missing.append(f"{op} has no CUDA lowering: no kernel family registered "
                       "(`codegen.kernels.lowers`), no CUDA expression, no decomposition")
    if export_rule(opdef.name) is None:
        missing.append(f"{op} has no ONNX export: no `OpDef.onnx` form, no lowering "
                       "registered with `onnx.export.exports`, no decomposition")
    if opdef.internal:
        return missing  # made by passes: never imported, not part of the language's docs
    if opdef.name not in imported_ops() and opdef.name not in IMPORTED_AS_OTHER_OPS:
        missing.append(f"{op} has no ONNX import: no `OpDef.onnx` form and no handler "
                       "registered with `_handles(..., ops=...)` in onnx/importer/handlers.py")
    if opdef.name not in documented_ops():
        missing.append(f"{op} has no row in docs/ops.md")
    return missing


@pytest.mark.parametrize("op", sorted(REGISTRY))
def test_every_backend_has_the_op(op: str) -> None:
    assert missing_pieces(REGISTRY[op]) == []


def test_every_role_is_used_and_documented() -> None:
    assert {opdef.role for opdef in REGISTRY.values()} == set(ROLES)
    text = OPS_DOC.read_text(encoding="utf-8")
    for role in ROLES:
        assert f"`{role}`" in text, role


def test_the_docs_list_no_op_that_does_not_exist() -> None:
    assert documented_ops() <= set(REGISTRY)


def test_the_ops_table_is_written_from_the_registry() -> None:
    text = OPS_DOC.read_text(encoding="utf-8")
    assert rewrite(text) == text, "docs/ops.md is stale: run `python -m netc.ops.docs`"


def test_a_stale_table_is_noticed(tmp_path: Path) -> None:
    page = tmp_path / "ops.md"
    page.write_text(OPS_DOC.read_text(encoding="utf-8").replace("| `relu` |", "| `relu6` |", 1),
                    encoding="utf-8")
    assert docs_main(["--check", str(page)]) == 1
    assert docs_main([str(page)]) == 0
    assert docs_main(["--check", str(page)]) == 0
    assert page.read_text(encoding="utf-8") == OPS_DOC.read_text(encoding="utf-8")


def _bare(name: str, **fields: Any) -> OpDef:
    return OpDef(name=name, infer=same_type, reference=lambda attrs, x: x, summary="test",
                 **fields)


def test_an_incomplete_op_is_named_with_every_missing_piece() -> None:
    with temporarily_registered(_bare("half_done")):
        missing = missing_pieces(REGISTRY["half_done"])
    assert [text.split(" has ")[0] for text in missing] == ["`half_done`"] * 4
    assert "no CUDA lowering" in missing[0]
    assert "no ONNX export" in missing[1]
    assert "no ONNX import" in missing[2]
    assert "no row in docs/ops.md" in missing[3]
    assert "half_done" not in REGISTRY


def test_role_data_is_required() -> None:
    with temporarily_registered(_bare("gemm_without_view", role="gemm", kind="gemm"),
                                _bare("row_without_axis", role="row_reduction")):
        assert any("no gemm_view" in m for m in missing_pieces(REGISTRY["gemm_without_view"]))
        assert any("no reduced_axis" in m for m in missing_pieces(REGISTRY["row_without_axis"]))


def test_a_decomposition_counts_for_cuda_and_onnx_and_gives_the_reference() -> None:
    def decompose(builder: Composer, attrs: Attrs, x: str) -> str:
        return builder.op("mul", x, builder.op("sigmoid", x))

    composite = OpDef(name="silu_again", infer=same_type, decompose=decompose, summary="test")
    with temporarily_registered(composite):
        missing = missing_pieces(composite)
        x = np.linspace(-4, 4, 9, dtype=np.float32)
        np.testing.assert_allclose(composite.reference(Attrs(), x),
                                   REGISTRY["silu"].reference(Attrs(), x), rtol=1e-6)
    assert [m for m in missing if "CUDA" in m or "export" in m] == []


def test_registration_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="unknown role"):
        _bare("odd", role="sideways")
    with pytest.raises(ValueError, match="a view has kind and role"):
        _bare("odd", role="view")
    with pytest.raises(ValueError, match="needs a reference or a decomposition"):
        OpDef(name="odd", infer=same_type)
    with pytest.raises(ValueError, match="registered twice"), \
            temporarily_registered(_bare("relu")):
        pass
    assert REGISTRY["relu"].expression is not None  # the real one is untouched
