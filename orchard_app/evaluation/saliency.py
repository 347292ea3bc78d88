"""Grad-CAM saliency maps (the `grad-cam` package) for every model of the zoo: where the gradient
of the class score is large at the last convolutional (or, for a ViT, the last block's) feature
map, upsampled to the input. `model` is always raw pixels (float in [0, 255], N x C x H x W) in,
logits out: the network behind its own preprocessing module, e.g. nn.Sequential(preprocess, net).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from orchard_app.atomic import atomic_path
from orchard_app.errors import ModelError
from orchard_app.evaluation.figures import pyplot, save

_NOT_SPATIAL = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten, nn.Dropout, nn.Identity)


def target_layer(model: nn.Module) -> tuple[nn.Module, Callable | None]:
    """(the layer whose activations and gradients make the map, a token-to-grid reshape or None),
    found by architecture wherever the network sits inside `model` (Sequential, DDP, compile)."""
    for m in model.modules():
        if hasattr(m, "patch_embed") and hasattr(m, "blocks"):  # timm ViT: tokens, not a grid
            return m.blocks[-1].norm1, _tokens_to_grid(m)
        if hasattr(m, "layer4"):  # torchvision and timm ResNets
            return m.layer4[-1], None
        if hasattr(m, "stages"):  # ConvNeXt and other staged timm models
            return m.stages[-1], None
        if hasattr(m, "conv_head") and hasattr(m, "bn2"):  # EfficientNet: head conv + norm
            return m.bn2, None
        if isinstance(getattr(m, "features", None), nn.Sequential):  # mini_cnn: before pooling
            layers = [f for f in m.features if not isinstance(f, _NOT_SPATIAL)]
            return layers[-1], None
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ModelError(f"{type(model).__name__} has no convolution or ViT block for Grad-CAM")
    return convs[-1], None


def _tokens_to_grid(vit: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    prefix, (h, w) = int(getattr(vit, "num_prefix_tokens", 1)), vit.patch_embed.grid_size

    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        grid = tokens[:, prefix:].reshape(tokens.shape[0], h, w, tokens.shape[-1])
        return grid.permute(0, 3, 1, 2)

    return reshape


def grad_cam(model: nn.Module, images: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """N x H x W maps in [0, 1] for uint8 `images` N x C x H x W and one class index each."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    layer, reshape = target_layer(model)
    device = next(model.parameters()).device
    x = torch.from_numpy(np.ascontiguousarray(images)).float().to(device)
    with GradCAM(model, [layer], reshape_transform=reshape) as cam:
        return cam(x, [ClassifierOutputTarget(int(c)) for c in classes])


def overlay(image: np.ndarray, cam: np.ndarray, min_side: int = 224) -> np.ndarray:
    """The map in colour over the image (C x H x W uint8), H x W x 3 uint8, enlarged to at least
    `min_side` pixels (pixels kept square, the map interpolated)."""
    import cv2
    from pytorch_grad_cam.utils.image import show_cam_on_image

    k = max(1, -(-min_side // image.shape[-1]))
    rgb = np.repeat(image, 3, axis=0) if image.shape[0] == 1 else image
    rgb = rgb.transpose(1, 2, 0).repeat(k, 0).repeat(k, 1).astype(np.float32) / 255.0
    big = cv2.resize(cam.astype(np.float32), rgb.shape[1::-1], interpolation=cv2.INTER_LINEAR)
    return show_cam_on_image(rgb, big, use_rgb=True, image_weight=0.6)


def save_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


def grid_figure(path: Path, images: np.ndarray, cams: np.ndarray, titles: list[str]) -> None:
    """Each image next to its overlay, four pairs a row."""
    plt = pyplot()
    n, cols = len(images), min(4, len(images))
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, 2 * cols, figsize=(3.2 * cols, 2.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for k in range(n):
        ax_img, ax_cam = axes[k // cols, 2 * (k % cols)], axes[k // cols, 2 * (k % cols) + 1]
        _show(ax_img, images[k])
        ax_cam.imshow(overlay(images[k], cams[k]))
        ax_img.set_title(titles[k], fontsize=7, loc="left")
    save(fig, path, "Grad-CAM: image, and where the predicted class's score has large gradients")


def saliency_figure(model, images, labels, probs, names, out_path: Path, per_side: int = 8) -> None:
    """Test images with their Grad-CAM overlays for the predicted class, correct predictions on
    the left, wrong ones on the right (up to `per_side` each, a seeded random choice).
    `images`: N x C x H x W uint8, or a function of an index array returning those rows."""
    multilabel = labels.ndim == 2
    pred = (probs > 0.5).astype(labels.dtype) if multilabel else probs.argmax(1)
    right = (pred == labels).all(1) if multilabel else pred == labels
    rng = np.random.default_rng(0)
    sides = [
        np.sort(rng.permutation(np.flatnonzero(right == ok))[:per_side]) for ok in (True, False)
    ]
    rows = max(1, *(len(s) for s in sides))
    plt = pyplot()
    fig, axes = plt.subplots(rows, 4, figsize=(7.0, 1.8 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for col, (idx, what) in enumerate(zip(sides, ("correct", "wrong"), strict=True)):
        axes[0, 2 * col].set_title(f"{what} ({len(idx)} shown)", fontsize=8, loc="left")
        if not len(idx):
            continue
        batch = images(torch.from_numpy(idx)) if callable(images) else images[idx]
        batch = batch.cpu().numpy() if isinstance(batch, torch.Tensor) else np.asarray(batch)
        classes = probs[idx].argmax(1)  # multi-label: the most probable label
        cams = grad_cam(model, batch, classes)
        for r, i in enumerate(idx):
            _show(axes[r, 2 * col], batch[r])
            axes[r, 2 * col + 1].imshow(overlay(batch[r], cams[r]))
            true = _label_text(labels[i], names, multilabel)
            axes[r, 2 * col + 1].set_title(
                f"T: {true}\nP: {names[classes[r]]} {probs[i, classes[r]]:.2f}", fontsize=6,
                loc="left", color="tab:green" if right[i] else "tab:red",
            )  # fmt: skip
    save(fig, out_path, "Grad-CAM of test images: correct (left) and wrong (right) predictions")


def _label_text(label, names, multilabel: bool) -> str:
    text = ",".join(names[j] for j in np.flatnonzero(label)) if multilabel else names[int(label)]
    return (text or "-")[:18]


def _show(ax, image: np.ndarray) -> None:
    ax.imshow(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0),
              cmap="gray" if image.shape[0] == 1 else None, vmin=0, vmax=255)  # fmt: skip
