"""examples/gpt.net against the PyTorch module it describes: the same network at small widths
(a copy of the example's text with smaller numbers), PyTorch's state dict saved as safetensors
and loaded by name, compared on the reference interpreter and through ONNX at T = 5 and 11, and
on the generated CUDA (cudasim): one compiled plan, several lengths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from safetensors.torch import save_file

from netc.codegen.emit import generate
from netc.driver import build_binary
from netc.frontend import load_file, load_string
from netc.onnx.export import export_graph
from netc.passes import run_pipeline
from netc.reference import run_reference
from netc.runtime.executor import PlanInputError, PlanRunner
from netc.sim import CudaSim
from netc.weights import load_state_dict

pytestmark = pytest.mark.unit

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "gpt.net"
VOCAB, WIDTH, HIDDEN, CONTEXT, HEADS = 97, 32, 48, 24, 4


def small_example() -> str:
    """The example with a small vocabulary, width, MLP and context (the heads stay 8 -> 4)."""
    text = EXAMPLE.read_text()
    for big, small in (("50257", VOCAB), ("[1, 1024, 256]", f"[1, {CONTEXT}, {WIDTH}]"),
                       ("8, 1024, 256", f"{HEADS}, {HIDDEN}, {WIDTH}"), ("256", WIDTH)):
        assert big in text, big
        text = text.replace(big, str(small))
    return text


class Decoder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln_1 = torch.nn.LayerNorm(WIDTH)
        self.attn = torch.nn.MultiheadAttention(WIDTH, HEADS, batch_first=True)
        self.ln_2 = torch.nn.LayerNorm(WIDTH)
        self.mlp = torch.nn.ModuleDict({"c_fc": torch.nn.Linear(WIDTH, HIDDEN),
                                        "c_proj": torch.nn.Linear(HIDDEN, WIDTH)})

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        length = h.shape[1]
        mask = torch.nn.Transformer.generate_square_subsequent_mask(length)
        x = self.ln_1(h)
        h = h + self.attn(x, x, x, attn_mask=mask, is_causal=True, need_weights=False)[0]
        hidden = torch.nn.functional.gelu(self.mlp["c_fc"](self.ln_2(h)), approximate="tanh")
        return h + self.mlp["c_proj"](hidden)


class GPT(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.wte = torch.nn.Embedding(VOCAB, WIDTH)
        self.pos = torch.nn.Parameter(torch.randn(1, CONTEXT, WIDTH) * 0.02)
        self.h = torch.nn.ModuleList([Decoder(), Decoder()])
        self.ln_f = torch.nn.LayerNorm(WIDTH)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.wte(tokens) + self.pos[:, :tokens.shape[1]]
        for block in self.h:
            h = block(h)
        return self.ln_f(h) @ self.wte.weight.T  # tied to the token embedding


def gpt_module() -> GPT:
    torch.manual_seed(0)
    model = GPT().eval()
    with torch.no_grad():  # PyTorch starts biases and norms at 0 and 1: move them
        for name, tensor in model.named_parameters():
            if name.endswith("bias") or "ln_" in name:
                tensor.add_(torch.empty_like(tensor).uniform_(-0.3, 0.3))
    return model


def test_the_example_is_the_specs_decoder_with_gpt2_names() -> None:
    graph = load_file(EXAMPLE)
    names = {node.id for node in graph.nodes if node.op == "param"}
    assert {"pos", "wte.weight", "h.0.attn.in_proj_weight", "h.1.attn.out_proj.weight",
            "h.1.mlp.c_fc.weight", "h.0.ln_2.bias", "ln_f.weight"} <= names
    assert graph.outputs[0][0] == "logits"
    assert graph[graph.outputs[0][1]].type.shape == ("N", "T", 50257)


@pytest.mark.parametrize("length", [5, 11])
def test_the_example_matches_pytorch(tmp_path: Path, length: int) -> None:
    graph = load_string(small_example(), "gpt.net")
    model = gpt_module()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              tmp_path / "gpt.safetensors")
    weights = load_state_dict(graph, tmp_path / "gpt.safetensors")  # by name, strict
    tokens = np.random.default_rng(length).integers(0, VOCAB, (2, length), dtype=np.int64)
    with torch.no_grad():
        expected = model(torch.from_numpy(tokens)).numpy()
    ours = run_reference(graph, weights, {"tokens": tokens})["logits"]
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4)
    session = onnxruntime.InferenceSession(export_graph(graph, weights).SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    (onnx_logits,) = session.run(None, {"tokens": tokens})
    np.testing.assert_allclose(onnx_logits, expected, rtol=1e-4, atol=1e-4)


def test_one_compiled_plan_runs_every_length_on_cudasim(tmp_path: Path) -> None:
    """The generated CUDA (cudasim), -O2, compiled once, at T = 1, 5 and 24 (the context) and
    two batch sizes, against PyTorch; T = 25 is refused before anything runs."""
    graph = load_string(small_example(), "gpt.net")
    model = gpt_module()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              tmp_path / "gpt.safetensors")
    weights = load_state_dict(graph, tmp_path / "gpt.safetensors")
    optimized = run_pipeline(graph, 2, weights)
    assert optimized.weights is not None
    plan = generate(optimized.graph)
    assert plan.dims == ("N", "T") and [b[:2] for b in plan.bounds] == [("T", CONTEXT)]
    device = CudaSim()
    with PlanRunner(plan, device, optimized.weights, build_binary(plan, device)) as runner:
        for batch, length in ((2, 5), (1, 1), (1, CONTEXT)):
            tokens = np.random.default_rng(length).integers(0, VOCAB, (batch, length),
                                                            dtype=np.int64)
            with torch.no_grad():
                expected = model(torch.from_numpy(tokens)).numpy()
            logits = runner.run({"tokens": tokens})["logits"]
            np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)
        too_long = np.zeros((1, CONTEXT + 1), dtype=np.int64)
        with pytest.raises(PlanInputError, match=f"T={CONTEXT + 1} is larger than {CONTEXT}"):
            runner.run({"tokens": too_long})
