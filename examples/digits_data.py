"""Write the handwritten digits scikit-learn ships (1,797 8x8 images, offline) as the data
`netc train` takes: DIR/train.npz (1,437 images) and DIR/test.npz (360), each with `image`
(f32[n, 1, 8, 8], pixel values scaled to [0, 1]) and `label` (i64[n]), split by a seeded
permutation.

    python examples/digits_data.py build/digits
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

TEST_EXAMPLES = 360


def main(folder: str) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(images))
    test, train = order[:TEST_EXAMPLES], order[TEST_EXAMPLES:]
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "train.npz", image=images[train], label=labels[train])
    np.savez(out / "test.npz", image=images[test], label=labels[test])
    print(f"wrote {out / 'train.npz'} ({len(train)} images) and {out / 'test.npz'} "
          f"({len(test)} images)")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python examples/digits_data.py OUTPUT_FOLDER")
    main(sys.argv[1])
