"""PyTorch state dicts: batchnorm's buffers, loading by name from safetensors, `.npz` and
`.pt`/`.pth`, the dtype conversions, and every mismatch in one error."""

from __future__ import annotations

import json
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import cast

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from safetensors.torch import save_file
from torch import nn

import netc
from netc.cli import main
from netc.diagnostics import CompileError
from netc.frontend import load_string
from netc.ir import Graph
from netc.weights import (
    check_weights,
    init_weights,
    load_state_dict,
    load_weights,
    param_specs,
    save_weights,
)

pytestmark = pytest.mark.unit

# A small network named as PyTorch names `Small` below: conv1, bn1, layer1.0.conv1, fc.
SOURCE = """
network small {
    input image: f32[N, 3, 8, 8]
    x = conv2d(image, 4, kernel=3, padding=1, bias=false, name="conv1")
        |> batchnorm(name="bn1") |> relu
    x = conv2d(x, 4, kernel=3, padding=1, name="layer1.0.conv1") |> batchnorm(name="layer1.0.bn1")
    x = global_avgpool(x) |> flatten
    output logits = dense(x, 5, name="fc")
}
"""


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.layer1 = nn.Sequential(Block())  # `layer1.0.*` in the state dict
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        block = cast(Block, self.layer1[0])
        x = block.bn1(block.conv1(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def graph() -> Graph:
    return load_string(SOURCE, "small.net")


def trained() -> Small:
    """A module whose running statistics and `num_batches_tracked` are not the defaults."""
    torch.manual_seed(0)
    module = Small()
    module.train()
    for _ in range(3):
        module(torch.randn(4, 3, 8, 8))
    return module.eval()


def torch_output(module: Small, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


IMAGE = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)


# batchnorm's buffers ----------------------------------------------------------------------


def test_batchnorm_keeps_num_batches_tracked_out_of_the_ir() -> None:
    small = graph()
    assert [i for i in small["bn1"].inputs] == ["conv1", "bn1.weight", "bn1.bias",
                                                "bn1.running_mean", "bn1.running_var"]
    assert "bn1.num_batches_tracked" not in small
    spec = param_specs(small)["bn1.num_batches_tracked"]
    assert (spec.shape, spec.dtype, spec.trainable, spec.operand) == ((), "i64", False, False)
    weights = init_weights(small)
    assert weights["bn1.num_batches_tracked"].dtype == np.int64
    assert weights["bn1.num_batches_tracked"].shape == ()
    assert int(weights["bn1.num_batches_tracked"]) == 0
    # The order of a PyTorch state dict, buffers after each layer's parameters.
    assert list(weights) == list(trained().state_dict())


def test_batchnorm_momentum_is_an_attribute_up_to_one() -> None:
    text = SOURCE.replace('batchnorm(name="bn1")', 'batchnorm(name="bn1", momentum=0.3)')
    assert load_string(text, "m.net")["bn1"].attrs["momentum"] == pytest.approx(0.3)
    assert graph()["bn1"].attrs["momentum"] == pytest.approx(0.1)
    for bad, code in (("1.5", "E0304"), ("-0.1", "E0212")):
        with pytest.raises(CompileError) as caught:
            load_string(SOURCE.replace('batchnorm(name="bn1")',
                                       f'batchnorm(name="bn1", momentum={bad})'), "m.net")
        assert [d.code for d in caught.value.diagnostics] == [code]
        assert "momentum" in caught.value.render()


def test_saved_weights_keep_the_buffer_as_int64_for_pytorch(tmp_path: Path) -> None:
    small = graph()
    weights = init_weights(small, seed=2)
    weights["bn1.num_batches_tracked"] = np.array(7, np.int64)
    save_weights(weights, tmp_path / "w.safetensors")
    on_disk = load_file(str(tmp_path / "w.safetensors"))
    assert on_disk["bn1.num_batches_tracked"].dtype == np.int64
    assert on_disk["bn1.weight"].dtype == np.float32
    module = Small()
    module.load_state_dict({k: torch.from_numpy(v) for k, v in on_disk.items()})
    assert module.state_dict()["bn1.num_batches_tracked"].item() == 7
    loaded = load_state_dict(small, tmp_path / "w.safetensors")
    assert loaded["bn1.num_batches_tracked"].dtype == np.int64
    assert int(loaded["bn1.num_batches_tracked"]) == 7


def test_weights_without_num_batches_tracked_still_load(tmp_path: Path) -> None:
    small = graph()
    weights = {k: v for k, v in init_weights(small, seed=3).items()
               if not k.endswith("num_batches_tracked")}
    check_weights(small, weights)  # the reference and the kernels never read it
    for suffix in (".safetensors", ".npz"):
        save_weights(weights, tmp_path / f"old{suffix}")
        loaded = load_state_dict(small, tmp_path / f"old{suffix}")
        assert int(loaded["layer1.0.bn1.num_batches_tracked"]) == 0
        np.testing.assert_array_equal(loaded["fc.weight"], weights["fc.weight"])
    # load_weights (no network) reads netc's own files as before: every tensor float32.
    assert all(v.dtype == np.float32 for v in load_weights(tmp_path / "old.npz").values())


# Loading a PyTorch state dict by name -----------------------------------------------------


@pytest.mark.parametrize("backend", ["reference", "cudasim"])
def test_a_torch_state_dict_loads_by_name_and_matches_pytorch(tmp_path: Path,
                                                               backend: str) -> None:
    module = trained()
    save_file(module.state_dict(), str(tmp_path / "small.safetensors"))
    model = netc.loads(SOURCE)
    weights = model.load_weights(tmp_path / "small.safetensors")
    assert set(weights) == set(module.state_dict())
    assert int(weights["bn1.num_batches_tracked"]) == 3
    outputs = model.run({"image": IMAGE}, weights, backend=backend)
    np.testing.assert_allclose(outputs["logits"], torch_output(module, IMAGE),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("layout", ["plain", "state_dict", "model"])
@pytest.mark.parametrize("suffix", [".pt", ".pth"])
def test_pt_files_load_through_torch(tmp_path: Path, layout: str, suffix: str) -> None:
    module = trained()
    state = module.state_dict()
    saved = state if layout == "plain" else {layout: state, "epoch": 3}
    torch.save(saved, tmp_path / f"small{suffix}")
    weights = load_state_dict(graph(), tmp_path / f"small{suffix}")
    assert int(weights["layer1.0.bn1.num_batches_tracked"]) == 3
    outputs = netc.loads(SOURCE).run({"image": IMAGE}, weights)
    np.testing.assert_allclose(outputs["logits"], torch_output(module, IMAGE),
                               rtol=1e-4, atol=1e-5)
    # Without a network, every tensor as float32, as for the other formats.
    assert load_weights(tmp_path / f"small{suffix}")["bn1.num_batches_tracked"] == 3.0


def test_a_mapping_of_tensors_loads_too() -> None:
    module = trained()
    weights = load_state_dict(graph(), module.state_dict())
    np.testing.assert_array_equal(weights["fc.bias"], module.fc.bias.detach().numpy())


def test_dtypes_convert_as_documented(tmp_path: Path) -> None:
    state = trained().state_dict()
    state["fc.weight"] = state["fc.weight"].to(torch.bfloat16)
    state["fc.bias"] = state["fc.bias"].to(torch.float16)
    state["conv1.weight"] = state["conv1.weight"].to(torch.float64)
    state["bn1.num_batches_tracked"] = torch.tensor(5.0)  # a float holding a whole number
    torch.save(state, tmp_path / "mixed.pt")
    weights = load_state_dict(graph(), tmp_path / "mixed.pt")
    for name in ("fc.weight", "fc.bias", "conv1.weight"):
        assert weights[name].dtype == np.float32
        np.testing.assert_array_equal(weights[name], state[name].float().numpy())
    assert weights["bn1.num_batches_tracked"].dtype == np.int64
    assert int(weights["bn1.num_batches_tracked"]) == 5


def test_every_mismatch_is_listed_in_one_error(tmp_path: Path) -> None:
    state = trained().state_dict()
    del state["layer1.0.conv1.bias"]
    state["fc.weight"] = torch.zeros(5, 3)
    state["head.weight"] = torch.zeros(2, 2)
    state["bn1.running_var"] = torch.ones(4, dtype=torch.bool)
    state["bn1.num_batches_tracked"] = torch.tensor(2.5)
    torch.save(state, tmp_path / "bad.pt")  # safetensors files cannot hold a bool tensor
    with pytest.raises(CompileError) as caught:
        load_state_dict(graph(), tmp_path / "bad.pt")
    codes = sorted(d.code for d in caught.value.diagnostics)
    assert codes == ["E0410", "E0411", "E0412", "E0418", "E0418"]
    text = caught.value.render()
    assert "missing tensor `layer1.0.conv1.bias` of shape [4]" in text
    assert "`fc.weight` (layer `fc`) has shape [5, 3], expected [5, 4]" in text
    assert "unexpected tensor `head.weight` of shape [2, 2]" in text
    assert "`bn1.running_var` (layer `bn1`) has dtype bool, expected f32" in text
    assert "`bn1.num_batches_tracked` (layer `bn1`) has dtype float32, expected i64" in text


def test_a_truncated_file_is_a_diagnostic(tmp_path: Path) -> None:
    module = trained()
    save_file(module.state_dict(), str(tmp_path / "full.safetensors"))
    torch.save(module.state_dict(), tmp_path / "full.pt")
    for name in ("full.safetensors", "full.pt"):
        data = (tmp_path / name).read_bytes()
        cut = tmp_path / f"cut{Path(name).suffix}"
        cut.write_bytes(data[: len(data) // 2])
        with pytest.raises(CompileError) as caught:
            load_state_dict(graph(), cut)
        assert [d.code for d in caught.value.diagnostics] == ["E0415"], name
        assert str(cut) in caught.value.render()


def test_a_safetensors_header_that_lies_is_refused(tmp_path: Path) -> None:
    header = json.dumps({"fc.bias": {"dtype": "F32", "shape": [5],
                                     "data_offsets": [0, 400]}}).encode()
    path = tmp_path / "lies.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(20))
    with pytest.raises(CompileError, match="E0415"):
        load_state_dict(graph(), path)


@pytest.mark.parametrize("saved", [
    pytest.param(lambda: [torch.zeros(2)], id="a list"),
    pytest.param(lambda: torch.zeros(3), id="a tensor"),
    pytest.param(lambda: {"weights": {"a": torch.zeros(1)}, "epoch": 1}, id="other keys"),
    pytest.param(lambda: {"fc.weight": torch.zeros(2), "step": 3}, id="a number inside"),
])
def test_a_pt_file_without_a_state_dict_is_refused(tmp_path: Path,
                                                     saved: Callable[[], object]) -> None:
    torch.save(saved(), tmp_path / "x.pt")
    with pytest.raises(CompileError) as caught:
        load_state_dict(graph(), tmp_path / "x.pt")
    assert [d.code for d in caught.value.diagnostics] == ["E0421"]
    assert "not a state dict" in caught.value.render()


def test_a_pickled_module_is_never_unpickled(tmp_path: Path) -> None:
    torch.save(Small(), tmp_path / "whole.pt")  # needs the full unpickler: refused
    with pytest.raises(CompileError) as caught:
        load_state_dict(graph(), tmp_path / "whole.pt")
    assert [d.code for d in caught.value.diagnostics] == ["E0421"]
    assert "weights_only=True" in caught.value.render()
    assert "model.state_dict()" in caught.value.render()


def test_pt_files_without_torch_name_the_package(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    torch.save(trained().state_dict(), tmp_path / "small.pt")
    (tmp_path / "small.net").write_text(SOURCE)
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    with pytest.raises(CompileError) as caught:
        load_state_dict(graph(), tmp_path / "small.pt")
    assert [d.code for d in caught.value.diagnostics] == ["E0419"]
    assert "pip install torch" in caught.value.render()
    code = main(["run", str(tmp_path / "small.net"), "--weights", str(tmp_path / "small.pt"),
                 "--random-input", "-o", str(tmp_path / "out.npz")])
    err = capsys.readouterr().err
    assert code == 1 and "E0419" in err and "pip install torch" in err
    assert "Traceback" not in err


def test_the_command_line_runs_pt_and_safetensors_weights(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    module = trained()
    (tmp_path / "small.net").write_text(SOURCE)
    np.save(tmp_path / "image.npy", IMAGE)
    torch.save(module.state_dict(), tmp_path / "small.pth")
    save_file(module.state_dict(), str(tmp_path / "small.safetensors"))
    expected = torch_output(module, IMAGE)
    for weights in ("small.pth", "small.safetensors"):
        out = tmp_path / f"{weights}.npz"
        code = main(["run", str(tmp_path / "small.net"), "--weights", str(tmp_path / weights),
                     "--input", f"image={tmp_path / 'image.npy'}", "--backend", "reference",
                     "-o", str(out)])
        assert code == 0, capsys.readouterr().err
        np.testing.assert_allclose(np.load(out)["logits"], expected, rtol=1e-4, atol=1e-5)
    state = module.state_dict()
    state["fc.weight"] = torch.zeros(5, 3)
    torch.save(state, tmp_path / "wrong.pt")
    capsys.readouterr()
    code = main(["run", str(tmp_path / "small.net"), "--weights", str(tmp_path / "wrong.pt"),
                 "--random-input", "-o", str(tmp_path / "wrong.npz")])
    err = capsys.readouterr().err
    assert code == 1 and "E0412" in err and "`fc.weight`" in err and "[5, 3]" in err
