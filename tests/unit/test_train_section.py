"""The `train` section (v2, `netc.frontend.train`): the training graph (the network, the
section's inputs, the loss as the output `loss`), the optimizer with PyTorch's defaults, the
schedule, frozen layers and clipping; every misuse a located error. Compiling the network
alone ignores the section."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from netc.diagnostics import CompileError
from netc.frontend import load_file, load_string, load_training, load_training_string
from netc.ops.verify import verify

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
NETWORK = """network small {
    input x: f32[N, 8]
    h = dense(x, 16, name="hidden") |> batchnorm(name="norm") |> relu
    output logits = dense(h, 10, name="head.fc")
    output aux = dense(h, 3, name="head.aux")
}
"""
SECTION = """
train small {
    input label: i64[N]
    input target: f32[N, 3]
    loss = cross_entropy(logits, label) + 0.1 * mse_loss(aux, target)
    optimizer = OPTIMIZER
    freeze FROZEN
    clip_grad_norm = 1.0
}
"""


def source(optimizer: str = "sgd(lr=0.05, momentum=0.9, weight_decay=5e-4)",
           frozen: str = "hidden", body: str = "") -> str:
    section = SECTION.replace("OPTIMIZER", optimizer).replace("FROZEN", frozen)
    return NETWORK + section.replace("    clip_grad_norm", body + "    clip_grad_norm")


def test_the_training_graph_adds_the_inputs_and_the_loss() -> None:
    spec = load_training_string(source(), "small.net")
    verify(spec.graph)
    assert spec.network == "small" and spec.inputs == ("label", "target")
    assert [name for name, _ in spec.graph.outputs] == ["logits", "aux", "loss"]
    loss = spec.graph[dict(spec.graph.outputs)["loss"]]
    assert loss.op == "add" and str(loss.type) == "f32[]"
    assert spec.optimizer.name == "sgd" and dict(spec.optimizer.hyper) == {
        "lr": 0.05, "momentum": 0.9, "dampening": 0.0, "nesterov": False, "weight_decay": 5e-4}
    assert spec.frozen == ("hidden",) and spec.clip_grad_norm == 1.0
    # Frozen layers and running statistics are not trained; the batchnorm's scale is.
    assert spec.trainable == ("norm.weight", "norm.bias", "head.fc.weight", "head.fc.bias",
                              "head.aux.weight", "head.aux.bias")
    # The network alone is the same with or without the section.
    assert load_string(source(), "small.net") == load_string(NETWORK, "small.net")


@pytest.mark.parametrize(("optimizer", "name", "hyper"), [
    ("adam()", "adam", {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0}),
    ("adamw(3e-4)", "adamw", {"lr": 3e-4, "betas": (0.9, 0.999), "eps": 1e-8,
                              "weight_decay": 0.01}),
    ("adam(lr=1e-2, betas=[0.8, 0.99], eps=1e-6, weight_decay=1)", "adam",
     {"lr": 1e-2, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 1.0}),
    ("sgd(0.1, 0.9, nesterov=true)", "sgd", {"lr": 0.1, "momentum": 0.9, "dampening": 0.0,
                                              "nesterov": True, "weight_decay": 0.0}),
])
def test_optimizers_take_pytorchs_defaults(optimizer: str, name: str, hyper: dict) -> None:
    spec = load_training_string(source(optimizer), "small.net")
    assert spec.optimizer.name == name and dict(spec.optimizer.hyper) == hyper


def test_the_schedule_is_given_with_the_optimizer() -> None:
    spec = load_training_string(source("sgd(lr=0.1, schedule=\"cosine\", warmup=50)"), "s.net")
    assert (spec.schedule.kind, spec.schedule.warmup) == ("cosine", 50)
    spec = load_training_string(
        source("adam(schedule=\"step\", step_size=1000, gamma=0.5)"), "s.net")
    assert (spec.schedule.kind, spec.schedule.step_size, spec.schedule.gamma) == (
        "step", 1000, 0.5)
    assert load_training_string(source("adam()"), "s.net").schedule.kind == "constant"


def test_freeze_takes_a_layer_path() -> None:
    spec = load_training_string(source(frozen="head"), "small.net")
    assert spec.frozen == ("head.fc", "head.aux")
    assert spec.trainable == ("hidden.weight", "hidden.bias", "norm.weight", "norm.bias")


def _error(text: str) -> tuple[str, str, int, int]:
    with pytest.raises(CompileError) as caught:
        load_training_string(text, "small.net")
    first = caught.value.diagnostics[0]
    assert first.span is not None, caught.value.render()
    return first.code, first.message, first.span.line, first.span.column


@pytest.mark.parametrize(("optimizer", "fragment"), [
    ("sgdd(lr=0.1)", "unknown optimizer `sgdd`"),
    ("sgd(momentum=0.9)", "`sgd` needs a learning rate"),
    ("sgd(lr=-0.1)", "argument `lr` is positive"),
    ("sgd(lr=0.1, nesterov=true)", "Nesterov momentum needs a momentum"),
    ("adam(betas=[0.9])", "argument `betas` is a pair"),
    ("adam(eps=\"small\")", "argument `eps` is a number"),
    ("adam(schedule=\"linear\")", "argument `schedule` is one of"),
    ("adam(schedule=\"step\")", "schedule=\"step\" needs `step_size`"),
    ("adam(warmup=1.5)", "argument `warmup` is a number of steps"),
    ("adam(lr=0.1, lr=0.2)", "`lr` is given twice"),
    ("adam(0.1, [0.9, 0.99], 1e-8, 0.0, 7)", "`adam` takes at most 4 arguments"),
    ("0.1", "`optimizer` is a call"),
])
def test_optimizer_mistakes_are_located(optimizer: str, fragment: str) -> None:
    code, message, line, _ = _error(source(optimizer))
    assert code == "E0127" and fragment in message and line == 12


@pytest.mark.parametrize(("text", "code", "fragment", "line"), [
    (source().replace("clip_grad_norm = 1.0", "clip_grad_norm = 0"), "E0127",
     "`clip_grad_norm` is the largest global L2 norm", 14),
    (source(frozen="hiden"), "E0128", "`freeze hiden`", 13),
    (source().replace("cross_entropy(logits, label)", "cross_entropy(h, label)"), "E0129",
     "`h` is a value inside network `small`", 11),
    (source().replace("0.1 * mse_loss(aux, target)", "logits"), "E0316",
     "the loss must be a float scalar (f32[]), got a tensor f32[N, 10]", 11),
    (source().replace("mse_loss(aux, target)", "mse_loss(aux, label)"), "E0301", "", 11),
    (source(body="    loss = mean(aux)\n"), "E0126", "`loss` is given twice", 14),
    (source().replace("    optimizer = sgd(lr=0.05, momentum=0.9, weight_decay=5e-4)\n", ""),
     "E0126", "has no `optimizer`", 8),
    (source(body="    output p = softmax(logits)\n"), "E0125",
     "a train section does not take output", 14),
    (source().replace("train small", "train smal"), "E0122", "no network `smal`", 8),
    (source() + SECTION.replace("OPTIMIZER", "adam()").replace("FROZEN", "hidden"),
     "E0126", "network `small` has two train sections", 17),
    (NETWORK, "E0126", "has no train section for network `small`", 1),
])
def test_section_mistakes_are_located(text: str, code: str, fragment: str, line: int) -> None:
    got_code, message, got_line, _ = _error(text)
    if code == "E0301":  # an integer target for mse_loss: the op's own dtype error
        assert got_code.startswith("E03") and "mse_loss" in message and got_line == line
        return
    assert (got_code, got_line) == (code, line) and fragment in message, message


def test_the_example_trains_the_imported_lenet() -> None:
    example = ROOT / "examples" / "train_lenet5.net"
    spec = load_training(example)
    assert spec.network == "lenet5" and spec.inputs == ("label",)
    assert load_file(example) == load_file(ROOT / "examples" / "lenet5.net")
    assert spec.schedule.kind == "cosine" and spec.schedule.warmup == 100
    done = subprocess.run([sys.executable, "-m", "netc", "check", str(example)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "train lenet5: loss cross_entropy, sgd(lr=0.05, momentum=0.9, dampening=0, " \
        "nesterov=false, weight_decay=0.0005), schedule cosine, warmup 100 steps" in done.stdout
    assert "61,706 parameters trained" in done.stdout


def test_check_reports_a_broken_section(tmp_path: Path) -> None:
    broken = tmp_path / "small.net"
    broken.write_text(source(frozen="hiden"))
    done = subprocess.run([sys.executable, "-m", "netc", "check", str(broken)],
                          capture_output=True, text=True)
    assert done.returncode == 1 and "error[E0128]" in done.stderr
    assert "did you mean `hidden`?" in done.stderr and "Traceback" not in done.stderr
