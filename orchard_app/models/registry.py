"""One registry, one factory: `build_model(cfg.model, in_chans, num_classes)`.

Each entry names its builder as "module:function" so that config validation can consult the
registry without importing torch. Adding a model is a YAML file in conf/model/ and, if no
builder fits (most timm models need none: use arch: timm), one function registered here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class ModelSpec:
    builder: str  # "module:function(model_cfg, in_chans, num_classes) -> nn.Module"
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


def build_model(model_cfg: Any, in_chans: int, num_classes: int) -> nn.Module:
    spec = REGISTRY[model_cfg.arch]
    module_name, func_name = spec.builder.split(":")
    builder = getattr(importlib.import_module(module_name), func_name)
    return builder(model_cfg, in_chans=in_chans, num_classes=num_classes)
