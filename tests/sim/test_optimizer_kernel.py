"""The optimizer kernels (templates/optimizer.cuh, netc.optimizer_kernel) on the simulator
against `netc.training.update` and `clip_gradients`, the NumPy oracle.

The update is bit-identical: the kernels do NumPy's float32 operations in its order, each an
explicit `_rn` intrinsic (no FMA contraction). The clip coefficient comes from a double sum of
squares on the device, NumPy's from float32 dot products: within 1e-6 relative (the update
then uses the device's coefficient, so the comparison of the update stays exact). Tensors of
ragged sizes (1, 7, 33, 129, 1031 and 9000, three chunks of 4096), more tensors than a launch
takes (two launches), several steps with the state carried; a momentum buffer that the first
step writes is poisoned (NaN) before it.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest

from netc.optimizer_kernel import CHUNK, KERNELS, MODULE, SLOTS, DeviceOptimizer, source
from netc.sim import CudaSim
from netc.training import (
    Trainer,
    batches,
    clip_gradients,
    load_checkpoint,
    save_checkpoint,
    update,
)

pytestmark = pytest.mark.sim

SHAPES = {"one": (1,), "seven": (7,), "odd": (33,), "rows": (3, 43), "long": (1031,),
          "chunks": (3, 3000)}
"""Ragged sizes; `chunks` spans three chunks, the last one partial."""
SGD = {"lr": 0.1, "momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0, "nesterov": False}
ADAM = {"lr": 1e-2, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0}
CASES = [
    ("sgd", SGD, None),
    ("sgd", {**SGD, "momentum": 0.9}, None),
    ("sgd", {**SGD, "momentum": 0.9, "dampening": 0.1, "weight_decay": 1e-2}, 0.5),
    ("sgd", {**SGD, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3}, None),
    ("adam", {**ADAM, "weight_decay": 1e-3}, None),
    ("adam", {**ADAM, "betas": (0.8, 0.99)}, 1.0),
    ("adamw", {**ADAM, "weight_decay": 1e-2}, None),
    ("adamw", {**ADAM, "betas": (0.8, 0.99), "weight_decay": 0.1, "lr": 3e-2}, 0.5),
]


@pytest.fixture(scope="module")
def sim():
    with CudaSim(workers=1) as device:
        yield device


def _upload(device: Any, array: np.ndarray) -> Any:
    handle = device.alloc(array.nbytes)
    device.upload(handle, array)
    return handle


def _differ(got: np.ndarray, expected: np.ndarray, what: str) -> str | None:
    same = (got == expected) | (np.isnan(got) & np.isnan(expected))
    if same.all():
        return None
    return (f"{what}: {int((~same).sum())} of {same.size} elements differ, the largest by "
            f"{float(np.nanmax(np.abs(got - expected)))}")


def _run(device: Any, name: str, hyper: dict, shapes: dict, clip: float | None,
         steps: int = 3, seed: int = 0) -> list[str]:
    """`steps` updates on the device and with `update` from the same parameters and
    gradients; the differences found (none expected)."""
    rng = np.random.default_rng(seed)
    optimizer = DeviceOptimizer(device, name, hyper, shapes, clip_grad_norm=clip)
    if name == "sgd":  # the momentum buffer that the first step writes, poisoned
        for param_name, buffers in optimizer._state.items():
            for handle in buffers:
                device.upload(handle, np.full(shapes[param_name], np.nan, np.float32))
    params = {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
    handles = {n: _upload(device, p) for n, p in params.items()}
    state: dict[str, dict[str, np.ndarray]] = {n: {} for n in shapes}
    problems = []
    for step in range(1, steps + 1):
        grads = {n: (rng.standard_normal(s) * 3).astype(np.float32) for n, s in shapes.items()}
        optimizer.step(handles, {n: _upload(device, g) for n, g in grads.items()},
                       hyper["lr"], step)
        if clip is not None:
            coefficient, norm = optimizer.clipping()
            expected_norm = clip_gradients(dict(grads), clip)
            assert norm == pytest.approx(expected_norm, rel=1e-6)
            grads = {n: (g * np.float32(coefficient)).astype(np.float32)
                     for n, g in grads.items()}
        for n in shapes:
            params[n] = update(name, hyper, hyper["lr"], params[n], grads[n], state[n], step)
            problem = _differ(device.download(handles[n], np.float32, shapes[n]), params[n],
                              f"step {step} {n}")
            problems += [problem] if problem else []
        got_state = optimizer.state()
        for n, buffers in state.items():
            assert set(got_state[n]) == set(buffers)
            for buffer, value in buffers.items():
                problem = _differ(got_state[n][buffer], value, f"step {step} {buffer} of {n}")
                problems += [problem] if problem else []
    optimizer.close()
    return problems


@pytest.mark.parametrize(("name", "hyper", "clip"), CASES,
                         ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(CASES)])
def test_the_update_is_numpys_bit_for_bit(sim, name: str, hyper: dict,
                                          clip: float | None) -> None:
    problems = _run(sim, name, hyper, SHAPES, clip)
    assert not problems, "\n".join(problems)


def test_more_tensors_than_a_launch_takes(sim) -> None:
    shapes = {f"t{i}": (i % 7 + 1, 5) for i in range(SLOTS + 5)} | {"big": (CHUNK + 1,)}
    problems = _run(sim, "adamw", {**ADAM, "weight_decay": 1e-2}, shapes, clip=0.5, steps=2)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("scale", [1.0, 1e-3])
def test_the_clip_coefficient_is_clip_gradients(sim, scale: float) -> None:
    """Above the norm: the coefficient within 1e-6 of NumPy's; below it: exactly 1."""
    rng = np.random.default_rng(5)
    grads = {n: (rng.standard_normal(s) * scale).astype(np.float32) for n, s in SHAPES.items()}
    optimizer = DeviceOptimizer(sim, "sgd", SGD, SHAPES, clip_grad_norm=1.0)
    handles = {n: _upload(sim, np.zeros(s, np.float32)) for n, s in SHAPES.items()}
    optimizer.step(handles, {n: _upload(sim, g) for n, g in grads.items()}, 0.1, 1)
    coefficient, norm = optimizer.clipping()
    clipped = dict(grads)
    expected_norm = clip_gradients(clipped, 1.0)
    expected = float(np.float32(min(1.0 / (expected_norm + 1e-6), 1.0)))
    if scale == 1.0:
        assert expected < 0.05 and coefficient == pytest.approx(expected, rel=1e-6)
    else:
        assert expected_norm < 1.0 and coefficient == 1.0
    assert norm == pytest.approx(expected_norm, rel=1e-6)


@pytest.mark.parametrize(("bad", "expected"), [(np.nan, np.nan), (np.inf, 0.0)])
def test_a_nan_or_inf_gradient_clips_as_pytorch(sim, bad: float, expected: float) -> None:
    """A NaN norm gives a NaN coefficient (min(nan, 1) is nan), an infinite one 0."""
    grads = {n: np.ones(s, np.float32) for n, s in SHAPES.items()}
    grads["chunks"][2, 2999] = bad
    optimizer = DeviceOptimizer(sim, "sgd", SGD, SHAPES, clip_grad_norm=1.0)
    handles = {n: _upload(sim, np.zeros(s, np.float32)) for n, s in SHAPES.items()}
    optimizer.step(handles, {n: _upload(sim, g) for n, g in grads.items()}, 0.1, 1)
    coefficient, _ = optimizer.clipping()
    with np.errstate(invalid="ignore"):  # NumPy's inf * 0, as PyTorch's
        total = clip_gradients(dict(grads), 1.0)
    assert np.isnan(total) if np.isnan(bad) else total == np.inf
    np.testing.assert_array_equal(coefficient, expected)


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_compiles_for_sm80_and_sm90_without_spills_or_contraction(arch: str) -> None:
    from netc.toolchain import CompilerNotFound, compile_module

    try:
        binary = compile_module(source(), MODULE, archs=(arch,))
    except CompilerNotFound as missing:
        pytest.skip(str(missing))
    resources = binary.kernel_resources(arch)
    assert set(resources) == set(KERNELS)
    heavy = {k: (r.spill_store_bytes, r.spill_load_bytes, r.stack_frame_bytes)
             for k, r in resources.items() if r.spills or r.stack_frame_bytes}
    assert not heavy, f"{arch}: spills or stack (stores, loads, frame): {heavy}"
    # Bit-compatibility with NumPy on a GPU: no multiply-add contracted into an fma.
    ptx = binary.target(arch).ptx
    for kernel in ("netc_optimizer_sgd", "netc_optimizer_adam"):
        body = ptx[ptx.index(f".entry {kernel}"):]
        body = body[:body.index("\n}") + 2]
        assert "mul.rn.f32" in body and not re.search(r"\bfma\.rn\.f32", body), kernel


# A Trainer on cudasim: the update on the device ---------------------------------------------


def _steps(trainer: Trainer, data: dict, steps: range, batch: int = 8) -> None:
    count = len(data["x"])
    for step in steps:
        epoch, index = divmod(step, -(-count // batch))
        chosen = list(batches(count, batch, shuffle=True, seed=0, epoch=epoch))[index]
        trainer.step({k: v[chosen] for k, v in data.items()})


def test_a_cudasim_trainer_updates_on_the_device_as_the_reference(tmp_path) -> None:
    from netc.weights import init_weights
    from tests.unit.test_training import _data, _spec

    spec = _spec("adamw(lr=1e-2, betas=[0.8, 0.99], weight_decay=1e-2)",
                 "    clip_grad_norm = 0.5\n")
    weights = init_weights(spec.graph, seed=1)
    data = _data()
    reference, device = (Trainer(spec, weights, backend=b) for b in ("reference", "cudasim"))
    for trainer in (reference, device):
        _steps(trainer, data, range(3))
    assert device._optimizer is not None, "the cudasim trainer updated on the host"
    for name, value in reference.weights.items():
        np.testing.assert_allclose(device.weights[name], value, rtol=1e-5, atol=1e-6,
                                   err_msg=name)
    for param, buffers in reference.state.buffers.items():
        for buffer, value in buffers.items():
            np.testing.assert_allclose(device.state.buffers[param][buffer], value, rtol=1e-5,
                                       atol=1e-6, err_msg=f"{buffer} {param}")
    # Resumed from a checkpoint after 2 steps: the same bits as 3 steps straight.
    resumed = Trainer(spec, weights, backend="cudasim")
    _steps(resumed, data, range(2))
    save_checkpoint(str(tmp_path / "ck.safetensors"), resumed, {})
    saved, state, _ = load_checkpoint(str(tmp_path / "ck.safetensors"))
    again = Trainer(spec, saved, backend="cudasim")
    again.state = state
    _steps(again, data, range(2, 3))
    for name, value in device.weights.items():
        np.testing.assert_array_equal(again.weights[name], value, err_msg=name)
    for param, buffers in device.state.buffers.items():
        for buffer, value in buffers.items():
            np.testing.assert_array_equal(again.state.buffers[param][buffer], value)


def test_on_cudasim_the_device_update_equals_the_host_update_bit_for_bit() -> None:
    """The same plan's gradients, updated by the kernels or by `update` (the Trainer's host
    path): the same bits (no clipping, whose coefficient may differ in the last place)."""
    from netc.weights import init_weights
    from tests.unit.test_training import _data, _spec

    spec = _spec("sgd(lr=0.05, momentum=0.9, nesterov=true, weight_decay=1e-2)")
    weights = init_weights(spec.graph, seed=3)
    on_device, on_host = (Trainer(spec, weights, backend="cudasim") for _ in range(2))
    on_host._optimizer_decided = True  # no device optimizer: `update` in NumPy
    for trainer in (on_device, on_host):
        _steps(trainer, _data(), range(3))
    assert on_device._optimizer is not None and on_host._optimizer is None
    for name, value in on_host.weights.items():
        np.testing.assert_array_equal(on_device.weights[name], value, err_msg=name)
    for param, buffers in on_host.state.buffers.items():
        for buffer, value in buffers.items():
            np.testing.assert_array_equal(on_device.state.buffers[param][buffer], value)
