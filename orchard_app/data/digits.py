"""The embedded default: scikit-learn's handwritten digits as a MedMNIST-layout mapping.

1,797 real 8x8 images ship inside scikit-learn, so this works offline. They are scaled to
0-255, resized to the requested side (bilinear, antialiased) and split 70/10/20 with a fixed
seed and stratification. The result goes through the same checks and pipeline as an npz file.
"""

from __future__ import annotations

import numpy as np

SPLIT_SEED = 0  # the split is part of the dataset, independent of training.seed
LABEL_NAMES = [str(i) for i in range(10)]


def digits_arrays(resolution: int) -> dict[str, np.ndarray]:
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = torch.from_numpy(data.images.astype(np.float32) * (255.0 / 16.0)).unsqueeze(1)
    images = F.interpolate(
        images, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False
    )
    images = images.round().clamp(0, 255).to(torch.uint8).squeeze(1).numpy()
    labels = data.target.astype(np.uint8).reshape(-1, 1)

    idx = np.arange(len(labels))
    train_idx, rest = train_test_split(
        idx, train_size=0.7, stratify=labels, random_state=SPLIT_SEED
    )
    val_idx, test_idx = train_test_split(
        rest, train_size=1 / 3, stratify=labels[rest], random_state=SPLIT_SEED
    )
    out = {}
    for split, sel in (("train", train_idx), ("val", val_idx), ("test", test_idx)):
        sel = np.sort(sel)
        out[f"{split}_images"] = images[sel]
        out[f"{split}_labels"] = labels[sel]
    return out
