"""examples/unet_small.net is the common PyTorch U-Net (milesial/Pytorch-UNet, both variants):
the PyTorch module (written here with that repository's structure and module names, its widths
a parameter: `base` for its 64) saves its state dict to safetensors, the `.net` loads it by
name with no renaming, and the outputs match PyTorch on the reference and on cudasim. The tests
shrink the example's width and image (a copy of its text with smaller numbers), never its
structure."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from torch.nn import functional

import netc
from netc.diagnostics import CompileError
from netc.driver import compile_graph
from netc.frontend import load_file, load_string

pytestmark = pytest.mark.unit

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "unet_small.net"
NETWORKS = {"unet_small": False, "unet_small_bilinear": True}  # network: bilinear
BASE, SIZE = 4, 32  # the tests' width (the example's 16, milesial's 64) and image


def small_example(height: int = SIZE, width: int = SIZE) -> str:
    """The example with `BASE` for its width and a `height` x `width` image."""
    text = EXAMPLE.read_text()
    for big, small in (("base = 16", f"base = {BASE}"),
                       ("f32[N, 3, 128, 128]", f"f32[N, 3, {height}, {width}]")):
        assert text.count(big) == 2, big
        text = text.replace(big, small)
    return text


# milesial/Pytorch-UNet: unet/unet_parts.py and unet/unet_model.py ----------------------------


class DoubleConv(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, mid_channels: int = 0) -> None:
        super().__init__()
        mid_channels = mid_channels or out_channels
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(mid_channels), nn.ReLU(inplace=True),
            nn.Conv2d(mid_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.double_conv(x)


class Down(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool_conv(x)


class Up(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, bilinear: bool) -> None:
        super().__init__()
        self.up: nn.Module
        if bilinear:
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
            self.conv = DoubleConv(in_channels, out_channels, in_channels // 2)
        else:
            self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
            self.conv = DoubleConv(in_channels, out_channels)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        x1 = self.up(x1)
        diff_y = x2.size()[2] - x1.size()[2]
        diff_x = x2.size()[3] - x1.size()[3]
        x1 = functional.pad(x1, [diff_x // 2, diff_x - diff_x // 2,
                                 diff_y // 2, diff_y - diff_y // 2])
        return self.conv(torch.cat([x2, x1], dim=1))


class OutConv(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class UNet(nn.Module):
    def __init__(self, n_channels: int, n_classes: int, bilinear: bool, base: int = 64) -> None:
        super().__init__()
        self.inc = DoubleConv(n_channels, base)
        self.down1 = Down(base, base * 2)
        self.down2 = Down(base * 2, base * 4)
        self.down3 = Down(base * 4, base * 8)
        factor = 2 if bilinear else 1
        self.down4 = Down(base * 8, base * 16 // factor)
        self.up1 = Up(base * 16, base * 8 // factor, bilinear)
        self.up2 = Up(base * 8, base * 4 // factor, bilinear)
        self.up3 = Up(base * 4, base * 2 // factor, bilinear)
        self.up4 = Up(base * 2, base, bilinear)
        self.outc = OutConv(base, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x = self.up1(self.down4(x4), x4)
        x = self.up2(x, x3)
        x = self.up3(x, x2)
        return self.outc(self.up4(x, x1))


def trained(module: nn.Module, size: int) -> nn.Module:
    """Random weights, batchnorm scales and shifts (PyTorch starts them at 1 and 0: a wrong
    mapping of one batchnorm to another could hide), and running statistics (and
    `num_batches_tracked`) from two forward passes in training mode, so that every buffer
    differs from its default."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if name.endswith("bias"):
                parameter.uniform_(-0.3, 0.3)
            elif parameter.dim() == 1:  # a batchnorm's weight
                parameter.uniform_(0.5, 1.5)
            else:  # keep activations of order one, as trained
                parameter.mul_(1.5)
        module.train()
        for _ in range(2):
            module(torch.randn(4, 3, size, size))
    return module.eval()


# The tests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("network", sorted(NETWORKS))
def test_the_example_has_the_pytorch_unets_state_dict(network: str) -> None:
    model = netc.load(EXAMPLE, network=network)
    state = UNet(3, 2, NETWORKS[network], base=16).state_dict()
    shapes = {name: tuple(array.shape) for name, array in model.init_weights().items()}
    assert shapes == {name: tuple(tensor.shape) for name, tensor in state.items()}
    assert list(shapes) == list(state), "in the order of the state dict"


def test_the_default_network_is_the_transposed_convolution_unet() -> None:
    graph = load_file(EXAMPLE)
    assert graph.name == "unet_small"
    assert graph[graph.outputs[0][1]].type.shape == ("N", 2, 128, 128)


@pytest.mark.parametrize("network", sorted(NETWORKS))
def test_the_full_example_compiles_to_cuda(network: str) -> None:
    plan = compile_graph(load_file(EXAMPLE, network=network)).plan  # `netc compile` to nvcc
    assert plan.launches and "__global__" in plan.source


@pytest.mark.slow
@pytest.mark.parametrize("network", sorted(NETWORKS))
def test_netc_compile_builds_the_full_example(tmp_path: Path, network: str) -> None:
    result = subprocess.run([sys.executable, "-m", "netc", "compile", str(EXAMPLE), "-o",
                             str(tmp_path / "unet"), "--arch", "sm_90", "--network", network],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "unet" / f"{network}.sm_90.cubin").read_bytes()[:4] == b"\x7fELF"


def test_sizes_not_divisible_by_16_are_a_shape_error_at_the_concat() -> None:
    with pytest.raises(CompileError) as caught:
        load_string(small_example(SIZE, SIZE + 4), "unet_small.net")  # 36 = 4 * 9
    (problem,) = caught.value.diagnostics
    assert problem.code.startswith("E03") and "concat" in problem.message


@pytest.mark.parametrize("backend, batches", [
    ("reference", (2,)),
    ("onnx", (2,)),  # netc's ONNX export, run by onnxruntime
    pytest.param("cudasim", (1, 2), marks=pytest.mark.sim),
])
@pytest.mark.parametrize("network", sorted(NETWORKS))
def test_the_example_loads_pytorchs_weights_and_matches(tmp_path: Path, network: str,
                                                        backend: str,
                                                        batches: tuple[int, ...]) -> None:
    module = trained(UNet(3, 2, NETWORKS[network], base=BASE), SIZE)
    path = tmp_path / "unet.safetensors"
    save_file(module.state_dict(), str(path))
    model = netc.Model(load_string(small_example(), "unet_small.net", network=network))
    run = model.compile(backend, model.load_weights(path))  # by name, strict
    for batch in batches:
        image = np.random.default_rng(batch).standard_normal((batch, 3, SIZE, SIZE))
        image = image.astype(np.float32)
        with torch.no_grad():
            expected = module(torch.from_numpy(image)).numpy()
        actual = run({"image": image})["logits"]
        assert actual.shape == (batch, 2, SIZE, SIZE)
        scale = float(np.abs(expected).max())
        np.testing.assert_allclose(actual, expected, rtol=1e-3, atol=1e-4 * scale)
