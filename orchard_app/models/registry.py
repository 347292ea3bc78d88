"""One registry, one factory: `build_model(cfg.model, in_chans, num_classes, resolution)`.

Each entry names its builder as "module:function" so that config validation can consult the
registry without importing torch. Adding a model is a YAML file in conf/model/ and, if no
builder fits (most timm models need none: use arch: timm), one function registered here.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from orchard_app.errors import ModelError

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class ModelSpec:
    # "module:function(model_cfg, in_chans, num_classes, resolution, exportable) -> nn.Module";
    # resolution is the input side in pixels, or None when the caller does not know it;
    # exportable=True asks for layers that ONNX export can trace (timm's `exportable`).
    builder: str
    has_pretrained: bool = False
    has_drop_path: bool = False


REGISTRY: dict[str, ModelSpec] = {
    "mini_cnn": ModelSpec("orchard_app.models.mini_cnn:build_mini_cnn"),
    "resnet18_adapted": ModelSpec(
        "orchard_app.models.resnet:build_resnet18_adapted", has_pretrained=True
    ),
    "resnet18": ModelSpec("orchard_app.models.resnet:build_resnet18", has_pretrained=True),
    "timm": ModelSpec(
        "orchard_app.models.timm_models:build_timm", has_pretrained=True, has_drop_path=True
    ),
}

# Builder keyword -> how a user turns it off (anything else comes from model.params).
_TURN_OFF = {"drop_path_rate": "set model.drop_path=0", "drop_rate": "set model.dropout=0"}


def build_model(
    model_cfg: Any,
    in_chans: int,
    num_classes: int,
    resolution: int | None = None,
    exportable: bool = False,
) -> nn.Module:
    spec = REGISTRY.get(model_cfg.arch)
    if spec is None:
        raise ModelError(
            f"model.arch={model_cfg.arch} is not a registered builder; one of "
            + ", ".join(sorted(REGISTRY))
        )
    module_name, func_name = spec.builder.split(":")
    builder = getattr(importlib.import_module(module_name), func_name)
    try:
        return builder(model_cfg, in_chans=in_chans, num_classes=num_classes,
                       resolution=resolution, exportable=exportable)  # fmt: skip
    except TypeError as e:
        # A knob the architecture does not have (model.params.<typo>, drop_path on a timm model
        # without stochastic depth) surfaces as a TypeError deep inside the constructor.
        unexpected = re.search(r"unexpected keyword argument '(\w+)'", str(e))
        if unexpected is None:
            raise
        arg = unexpected.group(1)
        fix = _TURN_OFF.get(arg, f"remove model.params.{arg} (~model.params.{arg})")
        raise ModelError(f"{model_cfg.name} has no argument '{arg}'; {fix}") from e


def build_for_data(
    model_cfg: Any, info: Any, exportable: bool = False, pretrained: bool | None = None
) -> nn.Module:
    """The model for a dataset (`info`: channels, classes, side); `pretrained=False` never reads
    pretrained weights (a model whose weights come from a checkpoint), whatever the config says."""
    if pretrained is False and (model_cfg.pretrained or model_cfg.get("weights")):
        from omegaconf import OmegaConf

        model_cfg = OmegaConf.merge(model_cfg, {"pretrained": False, "weights": None})
    return build_model(model_cfg, info.in_chans, info.num_classes, resolution=info.resolution,
                       exportable=exportable)  # fmt: skip
