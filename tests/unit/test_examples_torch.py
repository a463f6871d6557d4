"""examples/resnet18.net and examples/mobilenet_v2.net are torchvision's models: the PyTorch
module (written here with torchvision's exact structure and names, since torchvision is not
installed) saves its state dict to safetensors, the `.net` loads it by name with no renaming,
and the outputs match PyTorch on the reference and on cudasim. The tests shrink the input
image, never the example's layers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import netc
from netc.frontend import load_string

pytestmark = pytest.mark.unit

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


# torchvision.models.resnet18 --------------------------------------------------------------


class BasicBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class ResNet18(nn.Module):
    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(BasicBlock(64, 64), BasicBlock(64, 64))
        self.layer2 = nn.Sequential(BasicBlock(64, 128, 2), BasicBlock(128, 128))
        self.layer3 = nn.Sequential(BasicBlock(128, 256, 2), BasicBlock(256, 256))
        self.layer4 = nn.Sequential(BasicBlock(256, 512, 2), BasicBlock(512, 512))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# torchvision.models.mobilenet_v2 ----------------------------------------------------------


class Conv2dNormActivation(nn.Sequential):
    def __init__(self, inp: int, out: int, kernel: int = 3, stride: int = 1,
                 groups: int = 1) -> None:
        super().__init__(nn.Conv2d(inp, out, kernel, stride, (kernel - 1) // 2, groups=groups,
                                   bias=False),
                         nn.BatchNorm2d(out), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(Conv2dNormActivation(inp, hidden, kernel=1))
        layers += [Conv2dNormActivation(hidden, hidden, stride=stride, groups=hidden),
                   nn.Conv2d(hidden, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        features: list[nn.Module] = [Conv2dNormActivation(3, 32, stride=2)]
        channels = 32
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                features.append(InvertedResidual(channels, c, s if i == 0 else 1, t))
                channels = c
        features.append(Conv2dNormActivation(channels, 1280, kernel=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


# The tests --------------------------------------------------------------------------------


def trained(module: nn.Module, size: int) -> nn.Module:
    """Random weights, and running statistics (and `num_batches_tracked`) from two training
    steps' worth of forward passes, so that every buffer differs from its default."""
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in module.parameters():  # keep activations of order one, as trained
            parameter.mul_(1.5)
        module.train()
        for _ in range(2):
            module(torch.randn(4, 3, size, size))
    return module.eval()


def load_example(name: str, size: int) -> netc.Model:
    """The example with a `size` x `size` input (its layers untouched)."""
    text = (EXAMPLES / name).read_text()
    assert "f32[N, 3, 224, 224]" in text
    return netc.Model(load_string(text.replace("f32[N, 3, 224, 224]",
                                               f"f32[N, 3, {size}, {size}]"),
                                  str(EXAMPLES / name)))


CASES: dict[str, tuple[str, Callable[[], nn.Module]]] = {
    "resnet18": ("resnet18.net", ResNet18),
    "mobilenet_v2": ("mobilenet_v2.net", MobileNetV2),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_example_has_torchvisions_state_dict(case: str) -> None:
    file, make = CASES[case]
    model = load_example(file, 224)  # the example itself
    state = make().state_dict()
    shapes = {name: tuple(array.shape) for name, array in model.init_weights().items()}
    assert shapes == {name: tuple(tensor.shape) for name, tensor in state.items()}
    assert list(shapes) == list(state), "in the order of the state dict"


@pytest.mark.parametrize("backend, size", [
    ("reference", 64),
    pytest.param("cudasim", 32, marks=[pytest.mark.sim, pytest.mark.slow]),
])
@pytest.mark.parametrize("case", sorted(CASES))
def test_the_example_loads_pytorchs_weights_and_matches(tmp_path: Path, case: str,
                                                        backend: str, size: int) -> None:
    file, make = CASES[case]
    module = trained(make(), size)
    path = tmp_path / f"{case}.safetensors"
    save_file(module.state_dict(), str(path))
    model = load_example(file, size)
    weights = model.load_weights(path)
    image = np.random.default_rng(1).standard_normal((2, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(image)).numpy()
    actual = model.run({"image": image}, weights, backend=backend)["logits"]
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(actual, expected, rtol=1e-3, atol=1e-4 * scale)
