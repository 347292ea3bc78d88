"""ResNet-18 from torchvision: the standard one (128/224 px) and the adapted one for 28-64 px
(3x3 stride-1 stem, no max-pool: the CIFAR-style ResNet of the MedMNIST benchmark).

With pretrained=true, ImageNet weights come from torchvision (torch hub cache under
$TORCH_HOME when offline). The adapted stem gets the 7x7 kernel resized to 3x3 by bicubic
interpolation; for 1-channel inputs the RGB kernel is summed over its input channels, which
keeps the activation scale of a grey image fed as three equal channels.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from orchard_app.errors import ModelError


def transfer_stem(weight: torch.Tensor, in_chans: int, kernel: int | None = None) -> torch.Tensor:
    """Resize a conv kernel (out, 3, k, k) to `kernel` (bicubic) and fit it to `in_chans`."""
    if kernel is not None and kernel != weight.shape[-1]:
        weight = F.interpolate(weight, size=(kernel, kernel), mode="bicubic", align_corners=False)
    if in_chans == 1:
        weight = weight.sum(dim=1, keepdim=True)
    elif in_chans != weight.shape[1]:
        raise ModelError(
            f"cannot transfer a {weight.shape[1]}-channel stem to {in_chans} input channels"
        )
    return weight


def imagenet_resnet18_state() -> dict[str, torch.Tensor]:
    """torchvision's ResNet18_Weights.IMAGENET1K_V1, from the hub cache or downloaded there."""
    from torchvision.models import ResNet18_Weights

    weights = ResNet18_Weights.IMAGENET1K_V1
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except Exception as e:
        state = (
            "is corrupt (delete it)" if path.exists() else "is missing and could not be downloaded"
        )
        raise ModelError(
            f"model.pretrained=true needs torchvision's ImageNet weights, but {path} {state} "
            f"({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}).\n"
            f"  Download {weights.url} on a machine with internet and put it at {path}\n"
            f"  (the torch hub cache; set TORCH_HOME to use another folder), or set model.pretrained=false."
        ) from None


def _resnet18(cfg, in_chans: int, num_classes: int, adapted: bool) -> nn.Module:
    from torchvision.models import resnet18

    model = resnet18(weights=None)
    state = imagenet_resnet18_state() if cfg.pretrained else None
    if state is not None:
        model.load_state_dict(state)
    if adapted:
        model.conv1 = nn.Conv2d(in_chans, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_chans != 3:
        model.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
    if state is not None:
        with torch.no_grad():
            model.conv1.weight.copy_(
                transfer_stem(state["conv1.weight"], in_chans, model.conv1.kernel_size[0])
            )
    model.fc = nn.Sequential(
        nn.Dropout(float(cfg.dropout)), nn.Linear(model.fc.in_features, num_classes)
    )
    return model


def build_resnet18_adapted(cfg, in_chans: int, num_classes: int) -> nn.Module:
    return _resnet18(cfg, in_chans, num_classes, adapted=True)


def build_resnet18(cfg, in_chans: int, num_classes: int) -> nn.Module:
    return _resnet18(cfg, in_chans, num_classes, adapted=False)
