"""Training on the reference backend (`netc.training`, `netc train`): K steps of netc against
the same K steps of PyTorch (torch.optim, torch.nn.utils.clip_grad_norm_, its LR schedulers)
from the same weights and batches; resuming from a checkpoint equals never stopping, bit for
bit; the command line's errors.

Tolerances: parameters and optimizer state within rtol 2e-5 / atol 2e-6 after 6 steps: both
sides compute in float32, in different orders (netc's gradients come from its own backward
graph, summed in NumPy's order)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from netc.frontend import load_training_string
from netc.frontend.train import Schedule
from netc.training import Trainer, batches, learning_rate
from netc.weights import init_weights

pytestmark = pytest.mark.unit

NETWORK = """network mlp {
    input x: f32[N, 6]
    output logits = x |> dense(12, name="fc1") |> relu |> dense(5, name="fc2")
}
"""
SECTION = """train mlp {
    input label: i64[N]
    loss = cross_entropy(logits, label)
    optimizer = OPTIMIZER
EXTRA}
"""


def _spec(optimizer: str, extra: str = ""):
    return load_training_string(NETWORK + SECTION.replace("OPTIMIZER", optimizer)
                                .replace("EXTRA", extra), "mlp.net")


def _data(seed: int = 0, count: int = 23):
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((count, 6)).astype(np.float32),
            "label": rng.integers(0, 5, count)}


def _torch_run(torch, spec, weights, data, steps: int, batch: int):
    """The same steps in PyTorch: an nn.Sequential with the same weights, torch.optim."""
    model = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.ReLU(), torch.nn.Linear(12, 5))
    names = {"0.weight": "fc1.weight", "0.bias": "fc1.bias", "2.weight": "fc2.weight",
             "2.bias": "fc2.bias"}
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(torch.from_numpy(weights[names[name]]))
    frozen = {names[n] for n in names if names[n].split(".")[0] in spec.frozen}
    trained = [(n, p) for n, p in model.named_parameters() if names[n] not in frozen]
    for name, param in model.named_parameters():
        param.requires_grad_(names[name] not in frozen)
    hyper = dict(spec.optimizer.hyper)
    kind = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
    optimizer = kind[spec.optimizer.name]([p for _, p in trained], **hyper)
    count = len(data["x"])
    for step in range(steps):
        epoch, index = divmod(step, -(-count // batch))
        chosen = list(batches(count, batch, shuffle=True, seed=0, epoch=epoch))[index]
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(hyper["lr"], spec.schedule, step, steps)
        optimizer.zero_grad()
        logits = model(torch.from_numpy(data["x"][chosen]))
        loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(data["label"][chosen]))
        loss.backward()
        if spec.clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_([p for _, p in trained], spec.clip_grad_norm)
        optimizer.step()
    state = {}
    for name, param in trained:
        for buffer, value in optimizer.state[param].items():
            if buffer != "step":
                state[f"{buffer}.{names[name]}"] = value.detach().numpy()
    return {names[n]: p.detach().numpy() for n, p in model.named_parameters()}, state


@pytest.mark.parametrize(("optimizer", "extra"), [
    ("sgd(lr=0.1)", ""),
    ("sgd(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=1e-2)", ""),
    ("sgd(lr=0.05, momentum=0.9, nesterov=true, schedule=\"cosine\", warmup=2)",
     "    clip_grad_norm = 0.5\n"),
    ("adam(lr=1e-2, weight_decay=1e-3)", "    freeze fc1\n"),
    ("adamw(lr=1e-2, betas=[0.8, 0.99], schedule=\"step\", step_size=2, gamma=0.5)",
     "    clip_grad_norm = 0.1\n"),
])
def test_steps_match_pytorch(optimizer: str, extra: str) -> None:
    torch = pytest.importorskip("torch")
    spec = _spec(optimizer, extra)
    weights = init_weights(spec.graph, seed=1)
    data = _data()
    steps, batch = 6, 8
    trainer = Trainer(spec, weights, total_steps=steps)
    count = len(data["x"])
    for step in range(steps):
        epoch, index = divmod(step, -(-count // batch))
        chosen = list(batches(count, batch, shuffle=True, seed=0, epoch=epoch))[index]
        trainer.step({k: v[chosen] for k, v in data.items()})
    expected, expected_state = _torch_run(torch, spec, weights, data, steps, batch)
    for name, value in expected.items():
        np.testing.assert_allclose(trainer.weights[name], value, rtol=2e-5, atol=2e-6,
                                   err_msg=name)
    got_state = {f"{buffer}.{param}": value
                 for param, buffers in trainer.state.buffers.items()
                 for buffer, value in buffers.items()}
    assert set(got_state) == set(expected_state)
    for key, value in expected_state.items():
        np.testing.assert_allclose(got_state[key], value, rtol=2e-5, atol=2e-6, err_msg=key)
    if spec.frozen:
        np.testing.assert_array_equal(trainer.weights["fc1.weight"], weights["fc1.weight"])


def test_cudasim_takes_the_same_steps() -> None:
    """The forward and backward kernels (one plan, run at the batches of 8 and the last of 7)
    on the CPU simulator give the reference's steps, up to float32 summation order."""
    spec = _spec("sgd(lr=0.1, momentum=0.9)", "    clip_grad_norm = 0.5\n")
    weights = init_weights(spec.graph, seed=2)
    data = _data()
    trainers = [Trainer(spec, weights, backend=backend) for backend in ("reference", "cudasim")]
    for chosen in batches(len(data["x"]), 8, shuffle=False, seed=0, epoch=0):
        losses = [t.step({k: v[chosen] for k, v in data.items()}) for t in trainers]
        assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    for name, value in trainers[0].weights.items():
        np.testing.assert_allclose(trainers[1].weights[name], value, rtol=1e-5, atol=1e-6,
                                   err_msg=name)


def test_schedules_are_pytorchs() -> None:
    torch = pytest.importorskip("torch")
    total, base = 20, 0.3

    def torch_rates(make):
        param = torch.nn.Parameter(torch.zeros(1))
        optimizer = torch.optim.SGD([param], lr=base)
        scheduler = make(optimizer)
        rates = []
        for _ in range(total):
            rates.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return rates

    sched = torch.optim.lr_scheduler
    cases = [
        (Schedule("cosine", warmup=5), lambda o: sched.SequentialLR(o, [
            sched.LinearLR(o, start_factor=1 / 5, end_factor=1.0, total_iters=4),
            sched.CosineAnnealingLR(o, T_max=total - 5)], milestones=[5])),
        (Schedule("step", gamma=0.5, step_size=3), lambda o: sched.StepLR(o, 3, gamma=0.5)),
        (Schedule("cosine"), lambda o: sched.CosineAnnealingLR(o, T_max=total)),
    ]
    for schedule, make in cases:
        ours = [learning_rate(base, schedule, step, total) for step in range(total)]
        np.testing.assert_allclose(ours, torch_rates(make), rtol=1e-12, atol=1e-12,
                                   err_msg=str(schedule))


def _netc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "netc", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("train")
    (folder / "mlp.net").write_text(NETWORK + SECTION.replace(
        "OPTIMIZER", "adam(lr=1e-2, schedule=\"cosine\", warmup=3)").replace("EXTRA", ""))
    np.savez(folder / "train.npz", **_data(0, 40))
    np.savez(folder / "val.npz", **_data(1, 17))
    return folder


def test_a_resumed_run_equals_one_never_stopped(files: Path) -> None:
    # 40 examples in batches of 6: 7 steps an epoch, so the run checkpoints at step 7.
    common = [str(files / "mlp.net"), "--data", str(files / "train.npz"), "--batch", "6",
              "--seed", "3", "--epochs", "2"]
    straight = _netc("train", *common, "--checkpoint-dir", str(files / "ck"),
                     "-o", str(files / "straight.npz"))
    assert straight.returncode == 0, straight.stderr
    checkpoint = files / "ck" / "step-000007.safetensors"
    assert sorted(p.name for p in (files / "ck").iterdir()) == [
        "step-000007.safetensors", "step-000014.safetensors"]
    # Resumed from step 7: the same batches, the same cosine horizon, the same optimizer state.
    resumed = _netc("train", *common, "--resume", str(checkpoint),
                    "-o", str(files / "resumed.npz"))
    assert resumed.returncode == 0, resumed.stderr
    assert "7 steps from step 7" in resumed.stderr
    with np.load(files / "straight.npz") as a, np.load(files / "resumed.npz") as b:
        assert sorted(a) == ["fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight"]
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    other = _netc("train", *common[:-4], "--batch", "5", "--resume", str(checkpoint),
                  "-o", str(files / "other.npz"))
    assert other.returncode == 1 and "error[E0462]" in other.stderr
    assert "batch 6 (now 5)" in other.stderr


def test_train_reports_epochs_and_writes_weights_run_can_load(files: Path) -> None:
    done = _netc("train", str(files / "mlp.net"), "--data", str(files / "train.npz"), "--val",
                 str(files / "val.npz"), "--epochs", "3", "--batch", "10", "-o",
                 str(files / "w.safetensors"))
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 3 and all("val accuracy" in line for line in lines)
    losses = [float(line.split("loss ")[1].split(",")[0]) for line in lines]
    assert losses[2] < losses[0]
    run = _netc("run", str(files / "mlp.net"), "--weights", str(files / "w.safetensors"),
                "--random-input", "--backend", "reference")
    assert run.returncode == 0, run.stderr


@pytest.mark.parametrize(("extra", "code", "fragment"), [
    (["--data", "MISSING_KEY"], "E0461", "no array `label`"),
    (["-o", "w.pt"], "E0413", "must end in .safetensors or .npz"),
])
def test_train_refuses_in_words(files: Path, extra: list[str], code: str,
                                fragment: str) -> None:
    if "MISSING_KEY" in extra:
        np.savez(files / "nolabel.npz", x=np.zeros((4, 6), np.float32))
        extra = ["--data", str(files / "nolabel.npz")]
    args = ["train", str(files / "mlp.net"), "--data", str(files / "train.npz"),
            "-o", str(files / "w.npz"), *extra]
    done = _netc(*args)
    assert done.returncode == 1 and f"error[{code}]" in done.stderr, done.stderr
    assert fragment in done.stderr and "Traceback" not in done.stderr
