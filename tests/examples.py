"""The example networks in `examples/`, for tests that need their text."""

from __future__ import annotations

from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def example_text(name: str) -> str:
    return (EXAMPLES / name).read_text()


LENET5 = example_text("lenet5.net")
RESNET_BLOCKS = example_text("resnet_blocks.net")
RESNET18 = example_text("resnet18.net")
