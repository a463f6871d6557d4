"""Training mode (`netc.training_mode`): batchnorm on batch statistics with PyTorch's running-
statistic updates, and dropout with a Philox4x32-10 mask identical on every backend.

- Batchnorm: three SGD-momentum steps of netc's reference and of PyTorch (`F.batch_norm`,
  `training=True`) from the same weights and batches agree in every parameter, running
  statistic, `num_batches_tracked` and momentum buffer within rtol 1e-4 / atol 2e-6 (float32 on
  both sides, different summation orders; PyTorch updates the running statistics in double).
  The dense layer before the dense batchnorm has no bias: a bias before a batchnorm has a zero
  gradient, which both sides compute as rounding noise (the conv's bias shows it stays small).
- Philox: Random123's published known answers; the kernels' `netc_dropout` on cudasim draws the
  reference's mask bit for bit, through one compiled plan at two steps.
- A whole step (batchnorm and dropout) on cudasim equals the reference's within rtol 1e-5;
  resuming (the Trainer, and `netc train --resume`) equals never stopping, bit for bit.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from netc.autodiff import GRADIENT_PREFIX, backward
from netc.frontend import load_training_string
from netc.ir import Graph
from netc.ops.builder import GraphBuilder
from netc.ops.philox import kept, philox4x32
from netc.reference import run_reference
from netc.training import Trainer
from netc.training_mode import BUFFER_PREFIX, SEED_INPUT, STEP_INPUT, training_mode
from netc.weights import init_weights

pytestmark = pytest.mark.unit

BATCHNORM_NET = """network bnnet {
    input x: f32[N, 3, 6, 5]
    output logits = x |> conv2d(C, 3, padding=1, name="conv") |> batchnorm(momentum=0.2, name="bn1")
        |> relu |> global_avgpool |> flatten |> dense(7, bias=false, name="fc1") |> batchnorm(name="bn2")
        |> relu |> dense(4, name="fc2")
}
train bnnet {
    input label: i64[N]
    loss = cross_entropy(logits, label)
    optimizer = sgd(lr=0.1, momentum=0.9, weight_decay=1e-3)
FREEZE}
"""


def _torch_steps(torch, weights, batches, frozen: str):
    """The same steps in PyTorch: the network with torch.nn.functional, torch.optim.SGD."""
    f = torch.nn.functional
    params = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in weights.items()
              if v.dtype == np.float32 and "running" not in k}
    buffers = {k: torch.from_numpy(v.copy()) for k, v in weights.items() if k not in params}
    trained = [p for k, p in params.items() if not k.startswith(frozen + ".")]
    optimizer = torch.optim.SGD(trained, lr=0.1, momentum=0.9, weight_decay=1e-3)

    def norm(h, name, momentum):
        buffers[f"{name}.num_batches_tracked"] += 1
        return f.batch_norm(h, buffers[f"{name}.running_mean"], buffers[f"{name}.running_var"],
                            params[f"{name}.weight"], params[f"{name}.bias"], training=True,
                            momentum=momentum, eps=1e-5)

    for batch in batches:
        optimizer.zero_grad()
        h = f.conv2d(torch.from_numpy(batch["x"]), params["conv.weight"], params["conv.bias"],
                     padding=1)
        h = f.relu(norm(h, "bn1", 0.2)).mean((2, 3))
        h = f.relu(norm(f.linear(h, params["fc1.weight"]), "bn2", 0.1))
        logits = f.linear(h, params["fc2.weight"], params["fc2.bias"])
        f.cross_entropy(logits, torch.from_numpy(batch["label"])).backward()
        optimizer.step()
    result = {k: p.detach().numpy() for k, p in params.items()}
    result.update({k: b.numpy() for k, b in buffers.items()})
    momentum = {k: optimizer.state[p]["momentum_buffer"].numpy() for k, p in params.items()
                if p in optimizer.state}
    return result, momentum


@pytest.mark.parametrize(("channels", "sizes", "frozen"), [
    (5, (4, 2, 3), ""),
    # A frozen batchnorm keeps its weight and bias but still updates its running statistics.
    (3, (2, 7, 2), "bn1"),
])
def test_batchnorm_steps_match_pytorch(channels: int, sizes: tuple[int, ...],
                                       frozen: str) -> None:
    torch = pytest.importorskip("torch")
    spec = load_training_string(
        BATCHNORM_NET.replace("conv2d(C", f"conv2d({channels}")
        .replace("FREEZE", f"    freeze {frozen}\n" if frozen else ""), "bnnet.net")
    weights = init_weights(spec.graph, seed=3)
    rng = np.random.default_rng(4)
    batches = [{"x": rng.standard_normal((n, 3, 6, 5)).astype(np.float32),
                "label": rng.integers(0, 4, n)} for n in sizes]
    trainer = Trainer(spec, weights, total_steps=len(batches))
    for batch in batches:
        trainer.step(batch)
    expected, momentum = _torch_steps(torch, weights, batches, frozen or "none")
    assert set(trainer.weights) == set(expected)
    for name, value in expected.items():
        assert trainer.weights[name].dtype == value.dtype, name
        np.testing.assert_allclose(trainer.weights[name], value, rtol=1e-4, atol=2e-6,
                                   err_msg=name)
    assert trainer.weights["bn1.num_batches_tracked"] == len(sizes)
    got = {param: buffers["momentum_buffer"] for param, buffers in trainer.state.buffers.items()}
    assert set(got) == set(momentum)
    for name, value in momentum.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-4, atol=2e-6, err_msg=name)
    if frozen:
        np.testing.assert_array_equal(trainer.weights["bn1.weight"], weights["bn1.weight"])
        assert not np.allclose(trainer.weights["bn1.running_var"], weights["bn1.running_var"])


def test_training_mode_leaves_no_batchnorm_or_dropout() -> None:
    spec = load_training_string(BATCHNORM_NET.replace("conv2d(C", "conv2d(4")
                                .replace("FREEZE", ""), "bnnet.net")
    graph = Trainer(spec, {}).graph
    assert not {node.op for node in graph.nodes} & {"batchnorm", "dropout"}
    assert [name for name, _ in graph.outputs if name.startswith(BUFFER_PREFIX)] == [
        f"{BUFFER_PREFIX}bn{k}.running_{s}" for k in (1, 2) for s in ("mean", "var")]
    assert SEED_INPUT not in graph  # no dropout: no RNG inputs


# Philox and dropout ---------------------------------------------------------------------


def test_philox_matches_random123_known_answers() -> None:
    # Random123's kat_vectors: philox4x32 10, counter[4] key[2] -> output[4].
    answers = [
        ((0, 0, 0, 0), (0, 0), (0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8)),
        ((0xffffffff,) * 4, (0xffffffff,) * 2, (0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd)),
        ((0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344), (0xa4093822, 0x299f31d0),
         (0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1)),
    ]
    for counter, key, output in answers:
        assert tuple(int(word) for word in philox4x32(counter, key)) == output


def _dropout_graph(shape: tuple[int, ...], p: float) -> Graph:
    """loss = sum(dropout(w) * c), w a parameter: its gradient is c · mask / (1 - p)."""
    builder = GraphBuilder("drop")
    w = builder.param("w", "f32", shape)
    c = builder.input("c", "f32", shape)
    y = builder.op("dropout", w, p=p)
    builder.output("y", y)
    builder.output("loss", builder.op("sum", builder.op("mul", y, c), axis=list(range(len(shape)))))
    return training_mode(builder.build())


@pytest.mark.parametrize("p", [0.0, 0.3, 0.5, 1.0])
def test_dropout_keeps_one_minus_p_scaled_and_its_gradient_uses_the_same_mask(p: float) -> None:
    shape = (200, 301)
    graph = backward(_dropout_graph(shape, p), "loss", wrt=["w"])
    rng = np.random.default_rng(0)
    w = rng.standard_normal(shape).astype(np.float32)
    c = rng.standard_normal(shape).astype(np.float32)
    out = run_reference(graph, {"w": w}, {"c": c, SEED_INPUT: np.int64(7),
                                          STEP_INPUT: np.int64(2)})
    mask = kept(7, 2, 0, shape, p)
    scale = np.float32(1) / (np.float32(1) - np.float32(p)) if p < 1 else np.float32(0)
    np.testing.assert_array_equal(out["y"], np.where(mask, w * scale, 0))
    np.testing.assert_array_equal(out[GRADIENT_PREFIX + "w"], np.where(mask, c * scale, 0))
    assert abs(mask.mean() - (1 - p)) < 0.005  # 60,200 draws: 5 standard deviations at most
    if p == 0:
        np.testing.assert_array_equal(out["y"], w)


def test_masks_depend_on_seed_step_and_stream_alone() -> None:
    shape = (64, 65)
    first = kept(1, 0, 0, shape, 0.5)
    np.testing.assert_array_equal(first, kept(1, 0, 0, shape, 0.5))
    for other in (kept(1, 1, 0, shape, 0.5), kept(2, 0, 0, shape, 0.5),
                  kept(1, 0, 1, shape, 0.5), kept(1 << 32, 0, 0, shape, 0.5)):
        assert 0.4 < (other != first).mean() < 0.6  # independent masks differ in half
    # Element i's draw does not depend on the shape it is drawn in.
    np.testing.assert_array_equal(kept(5, 3, 2, (7, 9), 0.3).ravel(),
                                  kept(5, 3, 2, (63,), 0.3))


def test_cudasim_draws_the_reference_masks() -> None:
    """One plan (compiled once) at two steps and two batch sizes: dropout standalone on a
    ragged shape, in a conv's epilogue, and before a reduction; the kernels' masks equal the
    reference's bit for bit, every output poisoned before the run."""
    from netc.driver import CompileOptions, compile_graph, run_plan
    from tests.sim.codegen_support import simulator

    builder = GraphBuilder("drops")
    x = builder.input("x", "f32", ("N", 3, 7, 9))
    builder.output("plain", builder.op("dropout", x, p=0.3))
    conv = builder.op("relu", builder.op("conv2d", x, filters=5, kernel=3, name="conv"))
    builder.output("conv", builder.op("dropout", conv, p=0.6))
    builder.output("summed", builder.op("sum", builder.op("dropout", x, p=0.5), axis=[2, 3]))
    graph = training_mode(builder.build())
    plan = compile_graph(graph, CompileOptions(level=2)).plan
    weights = init_weights(graph, seed=1)
    rng = np.random.default_rng(2)
    for batch, seed, step in ((2, 11, 0), (3, 11, 1)):
        inputs = {"x": rng.standard_normal((batch, 3, 7, 9)).astype(np.float32),
                  SEED_INPUT: np.int64(seed), STEP_INPUT: np.int64(step)}
        expected = run_reference(graph, weights, inputs)
        actual = run_plan(plan, simulator(), weights, inputs, poison=True)
        np.testing.assert_array_equal(actual["plain"], expected["plain"])
        np.testing.assert_array_equal(actual["conv"] == 0, expected["conv"] == 0)
        np.testing.assert_allclose(actual["conv"], expected["conv"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(actual["summed"], expected["summed"], rtol=1e-5, atol=1e-5)


# Whole steps ----------------------------------------------------------------------------

DROPOUT_NET = """network drop {
    input x: f32[N, 2, 5, 6]
    output logits = x |> conv2d(4, 3, name="conv") |> batchnorm(name="bn") |> relu |> flatten
        |> dropout(0.4) |> dense(9, name="fc1") |> relu |> dropout(0.2) |> dense(3, name="fc2")
}
train drop {
    input label: i64[N]
    loss = cross_entropy(logits, label)
    optimizer = sgd(lr=0.1, momentum=0.9)
}
"""


def _drop_batches(count: int, size: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(6)
    return [{"x": rng.standard_normal((size - k % 2, 2, 5, 6)).astype(np.float32),
             "label": rng.integers(0, 3, size - k % 2)} for k in range(count)]


def test_cudasim_takes_the_reference_steps_with_batchnorm_and_dropout() -> None:
    spec = load_training_string(DROPOUT_NET, "drop.net")
    weights = init_weights(spec.graph, seed=5)
    trainers = [Trainer(spec, weights, seed=9, backend=backend)
                for backend in ("reference", "cudasim")]
    for batch in _drop_batches(2, 4):
        losses = [trainer.step(batch) for trainer in trainers]
        assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    reference, sim = (trainer.weights for trainer in trainers)
    assert set(reference) == set(sim) and reference["bn.num_batches_tracked"] == 2
    for name, value in reference.items():
        np.testing.assert_allclose(sim[name], value, rtol=1e-5, atol=1e-6, err_msg=name)


def test_steps_depend_on_the_seed_and_a_resumed_trainer_draws_the_same() -> None:
    spec = load_training_string(DROPOUT_NET, "drop.net")
    weights = init_weights(spec.graph, seed=5)
    batches = _drop_batches(4, 5)
    straight = Trainer(spec, weights, seed=1)
    for batch in batches:
        straight.step(batch)
    first = Trainer(spec, weights, seed=1)
    for batch in batches[:2]:
        first.step(batch)
    # What a checkpoint holds: the weights (buffers included), the optimizer state, the step.
    resumed = Trainer(spec, first.weights, seed=1)
    resumed.state = first.state
    for batch in batches[2:]:
        resumed.step(batch)
    for name, value in straight.weights.items():
        np.testing.assert_array_equal(resumed.weights[name], value, err_msg=name)
    other = Trainer(spec, weights, seed=2)
    other.step(batches[0])
    fresh = Trainer(spec, weights, seed=1)
    fresh.step(batches[0])
    assert not np.array_equal(other.weights["fc1.weight"], fresh.weights["fc1.weight"])


def test_netc_train_trains_batchnorm_and_dropout_and_resumes_bit_for_bit(tmp_path: Path) -> None:
    """12 examples in batches of 5: 3 steps an epoch; the run checkpoints at step 3 and the
    resumed run (buffers from the checkpoint, masks from seed and step) ends where the
    straight one does."""
    from netc.weights import read_tensors

    (tmp_path / "drop.net").write_text(DROPOUT_NET)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "train.npz", x=rng.standard_normal((12, 2, 5, 6)).astype(np.float32),
             label=rng.integers(0, 3, 12))

    def train(*extra: str) -> dict[str, np.ndarray]:
        out = tmp_path / f"w{len(extra)}.safetensors"
        done = subprocess.run([sys.executable, "-m", "netc", "train", str(tmp_path / "drop.net"),
                               "--data", str(tmp_path / "train.npz"), "--batch", "5",
                               "--epochs", "2", "--seed", "4", *extra, "-o", str(out)],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return read_tensors(str(out))

    straight = train("--checkpoint-dir", str(tmp_path / "ck"))
    assert straight["bn.num_batches_tracked"].dtype == np.int64
    assert straight["bn.num_batches_tracked"].shape == () and straight["bn.num_batches_tracked"] == 6
    assert not np.array_equal(straight["bn.running_mean"], np.zeros(4, np.float32))
    resumed = train("--resume", str(tmp_path / "ck" / "step-000003.safetensors"))
    assert set(resumed) == set(straight)
    for name, value in straight.items():
        assert resumed[name].shape == value.shape, name
        np.testing.assert_array_equal(resumed[name], value, err_msg=name)
