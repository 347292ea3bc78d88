"""Every allowed-value list, written once as a Literal type.

Schema fields carry these types, so OmegaConf refuses any other value while composing
("Invalid value 'x', expected one of [...]"), and the values stay plain strings in the config,
in checkpoints and in logs. `options(T)` lists a type's values for messages and code.
"""

from __future__ import annotations

from typing import Literal, get_args

Optimizer = Literal["sgd", "adam", "adamw"]
Scheduler = Literal["cosine", "multistep", "step", "plateau", "onecycle", "none"]
Source = Literal["digits", "medmnist", "npz", "folder"]  # embedded | official | dataset.path
Resize = Literal["pad", "crop", "stretch"]  # how a folder's images reach dataset.resolution
Task = Literal["multi-class", "binary", "multi-label", "ordinal"]
Tracker = Literal["none", "mlflow"]
Monitor = Literal["val_loss", "val_accuracy", "val_balanced_accuracy", "val_auc", "val_macro_f1"]
Direction = Literal["min", "max"]
MonitorMode = Literal["auto", "min", "max"]  # auto: min for a loss, max otherwise
AmpDtype = Literal["auto", "bf16", "fp16"]  # auto: bf16 where supported, else fp16 (CUDA)
DistBackend = Literal["auto", "nccl", "gloo"]  # auto: NCCL on CUDA, gloo on CPU


def options(kind: object) -> tuple[str, ...]:
    """The values of a Literal type, in order."""
    return get_args(kind)
