"""examples/vit_tiny.net is torchvision's VisionTransformer: the PyTorch module (written here
with torchvision's exact structure and names, since torchvision is not installed in CI; checked
against torchvision 0.29.1's own class, same state dict and same outputs) saves its state dict
to safetensors, the `.net` loads it by name with no renaming, and the outputs match PyTorch on
the reference and on cudasim. The tests shrink the example's numbers (a copy of its text with
smaller widths, depth and image), never its structure."""

from __future__ import annotations

import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import netc
from netc.driver import compile_graph
from netc.frontend import load_file, load_string

pytestmark = pytest.mark.unit

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "vit_tiny.net"
FULL = {"image_size": 32, "patch_size": 4, "num_layers": 4, "num_heads": 3, "hidden_dim": 192,
        "mlp_dim": 768, "num_classes": 10}
SMALL = {**FULL, "image_size": 16, "num_layers": 2, "hidden_dim": 24, "mlp_dim": 40}


def small_example() -> str:
    """The example at SMALL's sizes: 16x16 images (4x4 patches: 16 tokens and the class token),
    width 24 (3 heads of 8), MLP 40, two layers."""
    text = EXAMPLE.read_text()
    for big, small in (("f32[N, 3, 32, 32]", "f32[N, 3, 16, 16]"), ("192", "24"), ("768", "40"),
                       ("65", "17"), ("64", "16"), ("depth=4", "depth=2")):
        assert big in text, big
        text = text.replace(big, small)
    return text


# torchvision.models.VisionTransformer ------------------------------------------------------


class MLPBlock(nn.Sequential):
    def __init__(self, width: int, mlp: int) -> None:
        super().__init__(nn.Linear(width, mlp), nn.GELU(), nn.Dropout(0.0), nn.Linear(mlp, width),
                         nn.Dropout(0.0))


class EncoderBlock(nn.Module):
    def __init__(self, heads: int, width: int, mlp: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=1e-6)
        self.self_attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.dropout = nn.Dropout(0.0)
        self.ln_2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = MLPBlock(width, mlp)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = self.ln_1(inputs)
        x, _ = self.self_attention(x, x, x, need_weights=False)
        x = self.dropout(x) + inputs
        return x + self.mlp(self.ln_2(x))


class Encoder(nn.Module):
    def __init__(self, tokens: int, depth: int, heads: int, width: int, mlp: int) -> None:
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.empty(1, tokens, width).normal_(std=0.02))
        self.dropout = nn.Dropout(0.0)
        self.layers = nn.Sequential(OrderedDict(
            (f"encoder_layer_{i}", EncoderBlock(heads, width, mlp)) for i in range(depth)))
        self.ln = nn.LayerNorm(width, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln(self.layers(self.dropout(x + self.pos_embedding)))


class VisionTransformer(nn.Module):
    def __init__(self, image_size: int, patch_size: int, num_layers: int, num_heads: int,
                 hidden_dim: int, mlp_dim: int, num_classes: int) -> None:
        super().__init__()
        self.patch_size, self.hidden_dim = patch_size, hidden_dim
        self.conv_proj = nn.Conv2d(3, hidden_dim, kernel_size=patch_size, stride=patch_size)
        self.class_token = nn.Parameter(torch.zeros(1, 1, hidden_dim))
        tokens = (image_size // patch_size) ** 2 + 1
        self.encoder = Encoder(tokens, num_layers, num_heads, hidden_dim, mlp_dim)
        self.heads = nn.Sequential(OrderedDict(head=nn.Linear(hidden_dim, num_classes)))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        n = image.shape[0]
        x = self.conv_proj(image).reshape(n, self.hidden_dim, -1).permute(0, 2, 1)
        x = torch.cat([self.class_token.expand(n, -1, -1), x], dim=1)
        return self.heads(self.encoder(x)[:, 0])


def vit_module(sizes: dict[str, int]) -> VisionTransformer:
    """Random weights; torchvision starts the class token, the head and every bias at 0 (or
    1e-6) and the norms at 1: those move too, so that a wrong mapping cannot hide."""
    torch.manual_seed(0)
    model = VisionTransformer(**sizes).eval()
    with torch.no_grad():
        for name, tensor in model.named_parameters():
            if name.endswith("bias") or ".ln" in name or name.startswith(("class", "heads")):
                tensor.add_(torch.empty_like(tensor).uniform_(-0.3, 0.3))
    return model


# The tests ---------------------------------------------------------------------------------


def test_the_example_has_torchvisions_state_dict() -> None:
    model = netc.load(EXAMPLE)
    state = VisionTransformer(**FULL).state_dict()
    shapes = {name: tuple(array.shape) for name, array in model.init_weights().items()}
    assert shapes == {name: tuple(tensor.shape) for name, tensor in state.items()}
    assert model.inputs == {"image": ("f32", ("N", 3, 32, 32))}


def test_the_shrunk_example_has_the_small_modules_state_dict() -> None:
    model = netc.loads(small_example(), filename="vit_tiny.net")
    state = VisionTransformer(**SMALL).state_dict()
    shapes = {name: tuple(array.shape) for name, array in model.init_weights().items()}
    assert shapes == {name: tuple(tensor.shape) for name, tensor in state.items()}


def test_the_full_example_compiles_to_cuda() -> None:
    plan = compile_graph(load_file(EXAMPLE)).plan  # `netc compile` up to nvcc, at -O2
    assert plan.launches and "__global__" in plan.source


@pytest.mark.slow
def test_netc_compile_builds_the_full_example(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "netc", "compile", str(EXAMPLE), "-o",
                             str(tmp_path / "vit"), "--arch", "sm_90"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "vit" / "vit_tiny.sm_90.cubin").read_bytes()[:4] == b"\x7fELF"


@pytest.mark.parametrize("backend, batches", [
    ("reference", (2,)),
    ("onnx", (2,)),  # netc's ONNX export, run by onnxruntime
    pytest.param("cudasim", (1, 2), marks=pytest.mark.sim),
])
def test_the_example_loads_pytorchs_weights_and_matches(tmp_path: Path, backend: str,
                                                        batches: tuple[int, ...]) -> None:
    module = vit_module(SMALL)
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path))
    model = netc.Model(load_string(small_example(), "vit_tiny.net"))
    run = model.compile(backend, model.load_weights(path))  # by name, strict
    for batch in batches:
        image = np.random.default_rng(batch).standard_normal((batch, 3, 16, 16))
        image = image.astype(np.float32)
        with torch.no_grad():
            expected = module(torch.from_numpy(image)).numpy()
        actual = run({"image": image})["logits"]
        assert actual.shape == (batch, 10)
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)
