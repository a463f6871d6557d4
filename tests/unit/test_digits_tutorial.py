"""The training tutorial of docs/training.md, run as written: the digits scikit-learn ships,
`examples/digits_cnn.net` trained with `netc train` on the reference backend, at least 97%
accuracy on the 360 held-out images after the last epoch."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def test_the_digits_cnn_reaches_97_percent(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    data = tmp_path / "digits"
    made = subprocess.run([sys.executable, str(ROOT / "examples" / "digits_data.py"),
                           str(data)], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    done = subprocess.run(
        [sys.executable, "-m", "netc", "train", str(ROOT / "examples" / "digits_cnn.net"),
         "--data", str(data / "train.npz"), "--val", str(data / "test.npz"), "--epochs", "12",
         "--batch", "32", "-o", str(data / "cnn.safetensors")],
        capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    accuracies = [float(a) for a in re.findall(r"val accuracy ([\d.]+)%", done.stdout)]
    assert len(accuracies) == 12
    assert accuracies[-1] >= 97.0, done.stdout
    assert (data / "cnn.safetensors").exists()
