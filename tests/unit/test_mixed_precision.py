"""Mixed-precision training (`netc.mixed_precision`, `Trainer(precision=...)`,
`netc train --precision bf16-mixed|f16-mixed`).

- `LossScaler` against `torch.amp.GradScaler` on scripted gradients: the same scale and growth
  tracker after every step, the same steps skipped, the same unscaled gradients (exact).
- LeNet-5 (examples/train_lenet5.net), three steps on the reference backend against the same
  steps of PyTorch under `torch.autocast` (CPU; with a GradScaler for f16): atol 2e-6 (measured
  4.2e-7 bf16, 4.5e-8 f16; the two sides round the same 16-bit values and differ only in
  summation order); against the f32 steps: atol 5e-5 for bf16 (8 significant bits; measured
  1.4e-5, as far as autocast is from PyTorch's f32) and 2e-5 for f16 (11; measured 4.8e-6),
  where the weights moved 1.2e-3 in the three steps.
- f16-mixed with a loss scale that overflows at first (2**30, growth every 3 clean steps),
  Adam, a schedule and clipping, against PyTorch's autocast + GradScaler loop: the same steps
  skipped, a skipped step changes no weight and no optimizer buffer, Adam's step count skips
  it too, the weights agree within atol 1e-6 (measured 6e-8; they moved 5e-2) and Adam's
  moments within rtol 1e-4 / atol 1e-6.
- `netc train --precision f16-mixed` stopped at step 7 and resumed equals a run never stopped,
  bit for bit (the loss scale, its growth tracker and the skipped count are in the checkpoint).
- cudasim runs the 16-bit training plan and takes the reference's steps.
- The mixed graph's dtypes: the network and its gradients 16-bit; the loss (also when it is a
  network output), the loss scale and batchnorm's running statistics f32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from netc.frontend import load_training
from netc.mixed_precision import LossScaler
from netc.training import Trainer, batches, learning_rate
from netc.weights import init_weights
from tests.unit.test_training import NETWORK, SECTION, _data, _netc, _spec
from tests.unit.test_training_examples import EXAMPLES, _batch, _lenet

pytestmark = pytest.mark.unit

INF, NAN = float("inf"), float("nan")


@pytest.mark.parametrize(("init_scale", "interval", "sequence"), [
    (1024.0, 3, [1, 1, INF, 1, 1, 1, 1, NAN, 1, 1, 1, 1, 1, 1, -INF, 1, 1, 1]),
    (2.0 ** 127, 1, [1, 1, INF, 1]),  # a doubled scale that is inf is not taken
])
def test_loss_scaler_is_torchs_grad_scaler(init_scale: float, interval: int,
                                           sequence: list[float]) -> None:
    torch = pytest.importorskip("torch")
    param = torch.nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.SGD([param], lr=1.0)
    theirs = torch.amp.GradScaler("cpu", init_scale=init_scale, growth_interval=interval)
    ours = LossScaler(init_scale=init_scale, growth_interval=interval)
    skipped = 0
    for step, value in enumerate(sequence):
        gradient = np.array([value, 0.75, -0.5], np.float32)
        optimizer.zero_grad()
        theirs.scale((param * torch.from_numpy(gradient)).sum()).backward()
        scaled = gradient * ours.scale
        np.testing.assert_array_equal(param.grad.numpy(), scaled)  # the same scale
        before = param.detach().clone()
        theirs.unscale_(optimizer)
        theirs.step(optimizer)
        theirs.update()
        grads = {"p": scaled}
        ours.unscale(grads)
        skip = ours.should_skip()
        ours.update()
        skipped += skip
        assert skip == torch.equal(before, param.detach()), step
        if not skip:
            np.testing.assert_array_equal(grads["p"], param.grad.numpy(), err_msg=str(step))
        assert ours.scale == theirs.get_scale(), step
        assert ours.growth_tracker == int(theirs._growth_tracker), step
        assert ours.skipped == skipped
    assert skipped == sum(not np.isfinite(v) for v in sequence)


def _torch_autocast_steps(torch, spec, weights, batches_, forward, dtype, scaler_options,
                          total: int):
    """PyTorch's mixed-precision loop: autocast forward, GradScaler (f16), unscale, clip,
    scaler.step, scaler.update, and the schedule stepped every iteration."""
    params = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in weights.items()}
    trained = [params[name] for name in spec.trainable]
    hyper = dict(spec.optimizer.hyper)
    kind = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
    optimizer = kind[spec.optimizer.name](trained, **hyper)
    scaler = torch.amp.GradScaler("cpu", enabled=dtype == torch.float16, **scaler_options)
    scales, skipped = [], []
    for step, batch in enumerate(batches_):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(hyper["lr"], spec.schedule, step, total)
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=dtype):
            loss = forward(torch, params, {k: torch.from_numpy(v) for k, v in batch.items()},
                           step)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        if spec.clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(trained, spec.clip_grad_norm)
        scales.append(scaler.get_scale())
        before = trained[0].detach().clone()
        scaler.step(optimizer)
        scaler.update()
        skipped.append(bool(torch.equal(before, trained[0].detach())))
    state = {f"{buffer}.{name}": value.numpy().copy() if hasattr(value, "numpy") else value
             for name in spec.trainable for buffer, value in optimizer.state[params[name]].items()}
    return {k: p.detach().numpy() for k, p in params.items()}, state, scales, skipped


@pytest.mark.parametrize(("precision", "atol_f32"), [("bf16-mixed", 5e-5), ("f16-mixed", 2e-5)])
def test_lenet5_steps_match_autocast(precision: str, atol_f32: float) -> None:
    torch = pytest.importorskip("torch")
    spec = load_training(EXAMPLES / "train_lenet5.net")
    weights = init_weights(spec.graph, seed=4)
    rng = np.random.default_rng(5)
    steps = [_batch(spec, rng, n) for n in (4, 4, 3)]
    mixed = Trainer(spec, weights, total_steps=len(steps), precision=precision)
    plain = Trainer(spec, weights, total_steps=len(steps))
    for batch in steps:
        mixed.step(batch)
        plain.step(batch)
    dtype = torch.bfloat16 if precision == "bf16-mixed" else torch.float16
    expected, _, _, skipped = _torch_autocast_steps(torch, spec, weights, steps, _lenet, dtype,
                                                    {}, len(steps))
    assert not any(skipped)
    moved = 0.0
    for name, value in expected.items():
        np.testing.assert_allclose(mixed.weights[name], value, rtol=0, atol=2e-6,
                                   err_msg=f"{precision} against autocast: {name}")
        np.testing.assert_allclose(mixed.weights[name], plain.weights[name], rtol=0, atol=atol_f32,
                                   err_msg=f"{precision} against f32: {name}")
        assert mixed.weights[name].dtype == np.float32  # the master weights
        moved = max(moved, float(np.abs(mixed.weights[name] - plain.weights[name]).max()))
    assert moved > 0  # the steps did run in 16 bits


def test_overflowing_f16_steps_are_skipped_as_pytorch_skips_them() -> None:
    torch = pytest.importorskip("torch")
    spec = _spec("adam(lr=1e-2, weight_decay=1e-3, schedule=\"cosine\", warmup=2)",
                 "    clip_grad_norm = 0.5\n")
    weights = init_weights(spec.graph, seed=1)
    data = _data(count=40)
    chosen = list(batches(40, 8, shuffle=True, seed=0, epoch=0))
    chosen += list(batches(40, 8, shuffle=True, seed=0, epoch=1)) * 2
    steps = [{k: v[c] for k, v in data.items()} for c in chosen][:14]
    options = {"init_scale": 2.0 ** 20, "growth_interval": 3}
    trainer = Trainer(spec, weights, total_steps=len(steps), precision="f16-mixed")
    trainer.scaler = LossScaler(**options)
    scales, skipped = [], []
    for batch in steps:
        scales.append(float(trainer.scaler.scale))
        weights_before = {k: v.copy() for k, v in trainer.weights.items()}
        state_before = {(p, b): v.copy() for p, buffers in trainer.state.buffers.items()
                        for b, v in buffers.items()}
        updates = trainer.updates
        trainer.step(batch)
        skipped.append(trainer.updates == updates)
        if skipped[-1]:  # nothing but the scale and the step count changed
            for name, value in weights_before.items():
                np.testing.assert_array_equal(trainer.weights[name], value, err_msg=name)
            assert {(p, b): v for p, buffers in trainer.state.buffers.items()
                    for b, v in buffers.items()}.keys() == state_before.keys()
            for key, value in state_before.items():
                np.testing.assert_array_equal(trainer.state.buffers[key[0]][key[1]], value)
    expected, state, torch_scales, torch_skipped = _torch_autocast_steps(
        torch, spec, weights, steps, _mlp, torch.float16, options, len(steps))
    assert skipped == torch_skipped
    assert scales == torch_scales
    assert 3 <= sum(skipped) < len(steps) - 3  # skips at first, then updates, then a regrowth
    assert trainer.state.steps == len(steps) and trainer.updates == len(steps) - sum(skipped)
    assert all(int(state[f"step.{p}"]) == trainer.updates for p in spec.trainable)
    for name, value in expected.items():
        np.testing.assert_allclose(trainer.weights[name], value, rtol=0, atol=1e-6,
                                   err_msg=name)
    for param, buffers in trainer.state.buffers.items():
        for buffer, value in buffers.items():
            np.testing.assert_allclose(value, state[f"{buffer}.{param}"], rtol=1e-4, atol=1e-6,
                                       err_msg=f"{buffer}.{param}")


def _mlp(torch, w, batch, step):
    f = torch.nn.functional
    hidden = f.relu(f.linear(batch["x"], w["fc1.weight"], w["fc1.bias"]))
    return f.cross_entropy(f.linear(hidden, w["fc2.weight"], w["fc2.bias"]), batch["label"])


def test_f16_mixed_resumes_bit_for_bit(tmp_path: Path) -> None:
    (tmp_path / "mlp.net").write_text(NETWORK + SECTION.replace(
        "OPTIMIZER", 'adam(lr=1e-2, schedule="cosine", warmup=3)').replace("EXTRA", ""))
    data = _data(0, 40)
    data["x"] *= 300  # gradients of ~30 overflow f16 at the first scales (2**16 and halves)
    np.savez(tmp_path / "train.npz", **data)
    common = [str(tmp_path / "mlp.net"), "--data", str(tmp_path / "train.npz"), "--batch", "6",
              "--seed", "3", "--epochs", "2", "--precision", "f16-mixed"]
    straight = _netc("train", *common, "--checkpoint-dir", str(tmp_path / "ck"),
                     "-o", str(tmp_path / "straight.npz"))
    assert straight.returncode == 0, straight.stderr
    checkpoint = tmp_path / "ck" / "step-000007.safetensors"
    from safetensors import safe_open

    with safe_open(str(checkpoint), framework="numpy") as handle:
        meta = handle.metadata()
    assert meta["precision"] == "f16-mixed"
    assert int(meta["loss_scale_skipped"]) > 0  # the resumed part starts from a lowered scale
    assert float.fromhex(meta["loss_scale"]) < 2 ** 16
    resumed = _netc("train", *common, "--resume", str(checkpoint),
                    "-o", str(tmp_path / "resumed.npz"))
    assert resumed.returncode == 0, resumed.stderr
    with np.load(tmp_path / "straight.npz") as a, np.load(tmp_path / "resumed.npz") as b:
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    other = _netc("train", *common[:-2], "--resume", str(checkpoint),
                  "-o", str(tmp_path / "other.npz"))
    assert other.returncode == 1 and "error[E0462]" in other.stderr
    assert "precision f16-mixed (now f32)" in other.stderr


@pytest.mark.parametrize("precision", ["bf16-mixed", "f16-mixed"])
def test_cudasim_takes_the_references_mixed_steps(precision: str) -> None:
    spec = _spec("sgd(lr=0.1, momentum=0.9)")
    weights = init_weights(spec.graph, seed=2)
    data = _data()
    trainers = [Trainer(spec, weights, backend=backend, precision=precision)
                for backend in ("reference", "cudasim")]
    for chosen in list(batches(len(data["x"]), 8, shuffle=False, seed=0, epoch=0))[:2]:
        losses = [t.step({k: v[chosen] for k, v in data.items()}) for t in trainers]
        assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    compiled, _ = trainers[1]._runner()
    storage = {"bf16-mixed": "bf16", "f16-mixed": "f16"}[precision]
    assert compiled.optimized.graph["fc1.weight"].type.dtype == storage
    for name, value in trainers[0].weights.items():
        np.testing.assert_allclose(trainers[1].weights[name], value, rtol=1e-5, atol=1e-6,
                                   err_msg=name)


def test_the_network_is_16_bit_and_the_loss_and_running_statistics_f32() -> None:
    """What `mixed_forward` stores in 16 bits: the network's inputs, parameters, activations
    and their gradients; what stays f32: the loss, the loss scale, the running statistics of
    training-mode batchnorm and their new values; the weights the trainer keeps are f32."""
    from netc.frontend import load_training_string

    spec = load_training_string(NETWORK.replace(
        'dense(12, name="fc1") |> relu', 'dense(12, name="fc1") |> unsqueeze(2) |> '
        'batchnorm(name="bn") |> squeeze(2) |> relu') + SECTION.replace(
        "OPTIMIZER", "sgd(lr=0.1)").replace("EXTRA", ""), "bn.net")
    weights = init_weights(spec.graph, seed=0)
    trainer = Trainer(spec, weights, precision="f16-mixed")
    trainer.step({k: v[:8] for k, v in _data().items()})
    graph = trainer.graph
    kinds = {name: graph.value_type(ref).dtype for name, ref in graph.outputs}
    assert kinds["logits"] == kinds["grad:fc1.weight"] == kinds["grad:bn.weight"] == "f16"
    assert kinds["loss"] == kinds["buffer:bn.running_mean"] == kinds["buffer:bn.running_var"] \
        == "f32"
    assert graph["x"].type.dtype == graph["fc2.weight"].type.dtype == "f16"
    assert graph["bn.running_mean"].type.dtype == graph["amp.loss_scale"].type.dtype == "f32"
    assert all(value.dtype == np.float32 for name, value in trainer.weights.items()
               if "num_batches" not in name)
    assert not np.array_equal(trainer.weights["bn.running_mean"], weights["bn.running_mean"])


@pytest.mark.parametrize("precision", ["bf16-mixed", "f16-mixed"])
def test_a_loss_that_is_a_network_output_is_f32_too(precision: str) -> None:
    from netc.frontend import load_training_string

    spec = load_training_string("""network s {
    input x: f32[N, 4]
    output total = x |> dense(3) |> mean(axis=[0, 1])
}
train s {
    loss = total
    optimizer = sgd(lr=0.1)
}
""", "s.net")
    weights = init_weights(spec.graph, seed=0)
    trainer = Trainer(spec, weights, precision=precision)
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    loss = trainer.step({"x": x})
    outputs = dict(trainer.graph.outputs)
    assert trainer.graph.value_type(outputs["loss"]).dtype == "f32"
    assert trainer.graph.value_type(outputs["total"]).dtype == precision[:-6]
    assert loss == pytest.approx(Trainer(spec, weights).step({"x": x}), abs=1e-2)
