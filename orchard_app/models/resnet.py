"""ResNet-18 from torchvision: the standard one (128/224 px) and the adapted one for 28-64 px
(3x3 stride-1 stem, no max-pool: the CIFAR-style ResNet of the MedMNIST benchmark).

With pretrained=true, ImageNet weights come from torchvision (torch hub cache under
$TORCH_HOME when offline) or from model.weights. The adapted stem gets the 7x7 kernel resized
to 3x3 by bicubic interpolation; for 1-channel inputs the RGB kernel is summed over its input
channels, which keeps the activation scale of a grey image fed as three equal channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from orchard_app.errors import ModelError, cause
from orchard_app.models.weights import hub_cache_file, read_state_dict


def transfer_stem(weight: torch.Tensor, in_chans: int, kernel: int | None = None) -> torch.Tensor:
    """Resize a conv kernel (out, 3, k, k) to `kernel` (bicubic) and fit it to `in_chans`."""
    if kernel is not None and kernel != weight.shape[-1]:
        weight = F.interpolate(weight, size=(kernel, kernel), mode="bicubic", align_corners=False)
    if in_chans == 1:
        weight = weight.sum(dim=1, keepdim=True)
    elif in_chans != weight.shape[1]:
        raise ModelError(
            f"cannot transfer a {weight.shape[1]}-channel stem to {in_chans} input channels; "
            "use 1- or 3-channel images (dataset.force_rgb=true) or model.pretrained=false"
        )
    return weight


def imagenet_resnet18_state(weights_file: str | None = None) -> dict[str, torch.Tensor]:
    """torchvision's ResNet18_Weights.IMAGENET1K_V1: from `weights_file` if given, else from the
    torch hub cache (downloaded there when missing and the network allows)."""
    if weights_file:
        return read_state_dict(weights_file)
    from torchvision.models import ResNet18_Weights

    weights = ResNet18_Weights.IMAGENET1K_V1
    path = hub_cache_file(weights.url)
    try:
        return weights.get_state_dict(
            progress=True, check_hash=True, weights_only=True, map_location="cpu"
        )
    except Exception as e:  # only the download or the read of that one file runs in here
        state = (
            "could not be read (delete it to download it again)"
            if path.exists()
            else "is missing and could not be downloaded"
        )
        raise ModelError(
            f"model.pretrained=true needs torchvision's ImageNet weights, but {path} {state} "
            f"({cause(e, 160)}).\n"
            f"  Download {weights.url} on a machine with internet and put it at {path}\n"
            "  (the torch hub cache; set TORCH_HOME to use another folder), pass its path as "
            "model.weights=/path/to/file, or set model.pretrained=false."
        ) from e


def _resnet18(cfg, in_chans: int, num_classes: int, adapted: bool) -> nn.Module:
    from torchvision.models import ResNet18_Weights, resnet18

    model = resnet18(weights=None)
    state = imagenet_resnet18_state(cfg.get("weights")) if cfg.pretrained else None
    if state is not None:
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            source = cfg.get("weights") or hub_cache_file(ResNet18_Weights.IMAGENET1K_V1.url)
            raise ModelError(
                f"{source} does not hold torchvision ResNet-18 weights ({cause(e, 160)})"
            ) from e
    if adapted:
        model.conv1 = nn.Conv2d(in_chans, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_chans != 3:
        model.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
    with torch.no_grad():
        if state is not None:
            model.conv1.weight.copy_(
                transfer_stem(state["conv1.weight"], in_chans, model.conv1.kernel_size[0])
            )
        else:  # the init torchvision gives every other conv, not nn.Conv2d's default
            nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.fc = nn.Sequential(
        nn.Dropout(float(cfg.dropout)), nn.Linear(model.fc.in_features, num_classes)
    )
    return model


def build_resnet18_adapted(
    cfg, in_chans: int, num_classes: int, resolution: int | None = None, exportable: bool = False
) -> nn.Module:
    return _resnet18(cfg, in_chans, num_classes, adapted=True)


def build_resnet18(
    cfg, in_chans: int, num_classes: int, resolution: int | None = None, exportable: bool = False
) -> nn.Module:
    return _resnet18(cfg, in_chans, num_classes, adapted=False)
