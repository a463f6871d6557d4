"""The `gpu` tier: marks every test here `gpu` and skips the tier, saying why, without a device."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from netc.runtime.pycuda_device import gpu_available, unavailable_reason

    tier = [item for item in items
            if HERE in Path(str(item.path)).resolve().parents or item.get_closest_marker("gpu")]
    for item in tier:
        item.add_marker(pytest.mark.gpu)
    if tier and not gpu_available():
        skip = pytest.mark.skip(reason=f"gpu tier: {unavailable_reason()}")
        for item in tier:
            item.add_marker(skip)
