"""The pass manager and the pipeline: levels, requirements, verification, dumps, lineage."""

from __future__ import annotations

import importlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from netc.codegen.emit import generate
from netc.diagnostics import CompileError
from netc.frontend import load_file
from netc.ir import Graph, print_graph
from netc.memory import verify_plan
from netc.passes import (
    PIPELINE,
    PIPELINES,
    Pass,
    PassContext,
    PipelineError,
    run_passes,
    run_pipeline,
)
from netc.passes.fuse_elementwise import FUSE_ELEMENTWISE
from netc.passes.remove_dropout import REMOVE_DROPOUT

from .netgen import random_weights
from .passes_testing import net

pytestmark = pytest.mark.unit

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_levels() -> None:
    assert PIPELINES[0] == ()  # -O0: the unfused plan
    names = {level: [p.name for p in passes] for level, passes in PIPELINES.items()}
    assert names[1] == ["remove_dropout", "simplify_views", "fold_constants", "fold_batchnorm",
                        "eliminate_common_subexpressions", "eliminate_dead_code"]
    assert names[2] == names[1] + ["fuse_attention", "fold_transposes", "fuse_epilogues",
                                   "fuse_reduction_prologues", "fuse_elementwise"]
    assert [lowest for lowest, _ in PIPELINE] == sorted(lowest for lowest, _ in PIPELINE)


def test_every_pass_lives_in_a_module_named_after_it() -> None:
    for _, item in PIPELINE:
        assert item.run.__module__ == f"netc.passes.{item.name}"
        assert item.run.__name__ == item.name
        module = importlib.import_module(item.run.__module__)
        doc = " ".join((module.__doc__ or "").split())
        assert doc.startswith(f"{item.name}:"), item.name
        for words in ("Fires", "Needs", "Guarantees after"):
            assert words in doc, (item.name, words)


def test_requirements_are_checked_before_anything_runs() -> None:
    ran: list[str] = []

    def record(graph: Graph, context: PassContext) -> Graph:
        ran.append("spy")
        return graph

    spy = Pass("spy", record)
    with pytest.raises(PipelineError, match="`fuse_elementwise` requires `fuse_epilogues`, "
                                            "`fuse_reduction_prologues`"):
        run_passes(net("output y = relu(x)"), (spy, FUSE_ELEMENTWISE), PassContext())
    assert ran == []


def test_the_verifier_runs_between_passes() -> None:
    def break_types(graph: Graph, context: PassContext) -> Graph:
        node = graph.compute_nodes[0]
        broken = replace(node, type=replace(node.type, shape=(*node.type.shape[:-1], 99)))
        return Graph(graph.name, tuple(broken if n is node else n for n in graph.nodes),
                     graph.outputs)

    graph = net("output y = relu(x)")
    with pytest.raises(PipelineError, match="broken after pass `breaker`"):
        run_passes(graph, (REMOVE_DROPOUT, Pass("breaker", break_types)), PassContext(),
                   verify_each=True)


def test_a_pass_that_changes_nothing_must_return_the_same_graph() -> None:
    copy = Pass("copy", lambda graph, context: Graph(graph.name, graph.nodes, graph.outputs))
    with pytest.raises(PipelineError, match="returns the same object"):
        run_passes(net("output y = relu(x)"), (copy,), PassContext(), verify_each=True)


def test_o0_is_the_graph_itself() -> None:
    graph = net("output y = conv2d(x, 4, kernel=3) |> batchnorm |> relu |> dropout")
    optimized = run_pipeline(graph, 0)
    assert optimized.graph is graph and optimized.records == () and optimized.transforms == ()
    with pytest.raises(ValueError, match="level"):
        run_pipeline(graph, 3)


def test_dump_ir_writes_each_pass(tmp_path: Path) -> None:
    graph = net("output y = conv2d(x, 4, kernel=3) |> batchnorm |> relu |> dropout")
    run_pipeline(graph, 2, dump_dir=tmp_path)
    (tmp_path / "notes.txt").write_text("the user's")
    # A shorter pipeline removes the files the longer one wrote, and nothing else.
    run_pipeline(graph, 1, dump_dir=tmp_path)
    assert not (tmp_path / "11_fuse_elementwise.txt").exists()
    optimized = run_pipeline(graph, 2, dump_dir=tmp_path, verify=True)
    files = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
    assert files == ["00_input.txt"] + [f"{i:02d}_{p.name}.txt"
                                        for i, p in enumerate(PIPELINES[2], start=1)] + \
        ["notes.txt"]
    assert (tmp_path / "00_input.txt").read_text() == print_graph(graph) + "\n"
    final = (tmp_path / "11_fuse_elementwise.txt").read_text()
    assert final.startswith(print_graph(optimized.graph) + "\n")
    assert "fused(" in (tmp_path / "09_fuse_epilogues.txt").read_text()
    assert "batchnorm(" not in (tmp_path / "04_fold_batchnorm.txt").read_text()


def test_dump_ir_never_removes_a_file_netc_did_not_write(tmp_path: Path) -> None:
    graph = net("output y = conv2d(x, 4, kernel=3) |> relu")
    (tmp_path / "42_stale.txt").write_text("mine, named like a dump")
    with pytest.raises(CompileError) as caught:
        run_pipeline(graph, 2, dump_dir=tmp_path)
    assert caught.value.diagnostics[0].code == "E0433"
    assert [p.name for p in tmp_path.iterdir()] == ["42_stale.txt"]
    (tmp_path / "42_stale.txt").unlink()
    run_pipeline(graph, 2, dump_dir=tmp_path)
    (tmp_path / "01_remove_dropout.txt").write_text("edited by hand")
    with pytest.raises(CompileError):
        run_pipeline(graph, 2, dump_dir=tmp_path)
    assert (tmp_path / "01_remove_dropout.txt").read_text() == "edited by hand"


def test_log_says_what_each_pass_did() -> None:
    graph = net("output y = conv2d(x, 4, kernel=3) |> batchnorm |> relu |> dropout")
    log = run_pipeline(graph, 2).log()
    assert log.startswith("-O2: 4 ops -> 1 in ")
    assert "remove_dropout: removed 1 dropout" in log
    assert "fold_batchnorm: folded 1 batchnorm into conv2d" in log
    assert "fold_constants: no change" in log


def test_resnet18() -> None:
    graph = load_file(EXAMPLES / "resnet18.net")
    optimized = run_pipeline(graph, 2, verify=True)
    assert len(graph.compute_nodes) == 69
    # 20 convs (each with its batchnorm folded and its activation/residual fused), the
    # maxpool, global_avgpool, flatten (a view) and the classifier.
    assert len(optimized.graph.compute_nodes) == 24
    assert sum(1 for n in optimized.graph.compute_nodes
               if n.region is not None and n.region.kind == "conv_epilogue") == 17
    assert len(optimized.transforms) == 40
    assert "folded 20 batchnorms into conv2d" in optimized.log()
    plan = generate(optimized.graph).memory_plan({"N": 1})
    assert plan.sizes == (("N", 1),)
    verify_plan(plan)
    assert plan.arena_bytes < plan.total_bytes / 2
    # Every source layer and op maps to the kernel that computes it.
    for node in graph.compute_nodes:
        kernel = optimized.kernel_of(node.id)
        assert kernel is not None and kernel in optimized.graph, node.id
    first_bn = next(n for n in graph.compute_nodes if n.op == "batchnorm")
    assert optimized.graph[optimized.kernel_of(first_bn.id) or ""].layer == "conv1"


def test_weights_for_derives_folded_tensors_from_the_original_file() -> None:
    graph = net("output y = conv2d(x, 4, kernel=3) |> batchnorm |> relu")
    weights = random_weights(graph, seed=0)
    optimized = run_pipeline(graph, 2)
    derived = optimized.weights_for(weights)
    assert set(derived) == {p.id for p in optimized.graph.params}
    assert optimized.weights is None
    assert run_pipeline(graph, 2, weights).weights is not None
    from netc.diagnostics import CompileError

    with pytest.raises(CompileError, match="missing tensor"):
        optimized.weights_for({k: v for k, v in weights.items() if "running_var" not in k})
    assert all(value.dtype == np.float32 for value in derived.values())


def test_training_mode_keeps_batchnorm_and_dropout() -> None:
    graph = net("output y = conv2d(x, 4, kernel=3) |> batchnorm |> relu |> dropout")
    inference = run_pipeline(graph, 2)
    training = run_pipeline(graph, 2, mode="training", verify=True)
    assert "remove_dropout" in inference.log() and "fold_batchnorm" in inference.log()
    assert "remove_dropout" not in training.log() and "fold_batchnorm" not in training.log()
    kept = {member.op for node in training.graph.compute_nodes
            for member in node.members}
    assert {"batchnorm", "dropout"} <= kept
    assert training.transforms == ()


def test_the_type_system_has_integer_and_boolean_dtypes() -> None:
    from netc.ir import ALL_DTYPES, DTYPE_BYTES, DTYPES, TensorType

    assert {"i32", "i64", "bool"} <= set(ALL_DTYPES) and set(DTYPES) == {"f32", "f16", "bf16"}
    assert DTYPE_BYTES["i64"] == 8 and DTYPE_BYTES["bool"] == 1
    tokens = TensorType("i64", ("N", 16))
    assert not tokens.is_float and TensorType("bf16", (2,)).is_float
    with pytest.raises(ValueError, match="unknown dtype"):
        TensorType("f64", (2,))
