"""Rules across fields, checked before any data or model is touched.

Hydra and the dataclass schema already reject unknown keys, wrong types and values outside a
list (choices.py) while composing; walk.py reports each field that is wrong on its own (a key
added with `+`/`++`, nan/inf, a value outside its range rule in schema.py). These rules need
more than one field, a file or the process (warmup below training.epochs, a resolution the
dataset or model has, a checkpoint that exists). All problems are collected and reported
together, each naming the field, the value and what is allowed.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from orchard_app.config.medmnist import medmnist_2d_names
from orchard_app.config.walk import field_problems
from orchard_app.distributed.rank import process_rank
from orchard_app.errors import ConfigError


class _Rules:
    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.problems = field_problems(cfg)

    def get(self, key: str):
        return OmegaConf.select(self.cfg, key, throw_on_missing=False)

    def fail(self, key: str, allowed: str) -> None:
        value = self.get(key)
        self.problems.append(f"{key}={'null' if value is None else value}: {allowed}")


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError listing every invalid value; return quietly when all is well."""
    r = _Rules(cfg)
    _training(r)
    _optimizer(r)
    _scheduler(r)
    _dataset(r)
    r.problems += _flips(cfg)
    _model(r)
    _hardware(r)
    if r.problems:
        raise ConfigError(r.problems)


def _training(r: _Rules) -> None:
    resume = r.get("training.resume")
    if resume not in (None, "auto") and not Path(str(resume)).expanduser().is_file():
        r.fail(
            "training.resume",
            "no such file; pass the path of a checkpoint such as <run dir>/checkpoints/last.pt, "
            "or auto (continue the run in hydra.run.dir from its last.pt, if any)",
        )


def _optimizer(r: _Rules) -> None:
    if r.get("optimizer.nesterov") and (
        r.get("optimizer.name") != "sgd" or not r.get("optimizer.momentum")
    ):
        r.fail(
            "optimizer.nesterov",
            "needs optimizer=sgd with optimizer.momentum > 0; set optimizer.nesterov=false",
        )


def _scheduler(r: _Rules) -> None:
    warmup, epochs = r.get("scheduler.warmup_epochs"), r.get("training.epochs")
    number = isinstance(warmup, int | float) and math.isfinite(warmup)  # else walk.py said so
    if number and isinstance(epochs, int) and epochs >= 1 and warmup >= epochs:
        r.fail("scheduler.warmup_epochs", "must be >= 0 and below training.epochs")
    if warmup and r.get("scheduler.name") not in ("cosine", "onecycle"):
        r.fail(
            "scheduler.warmup_epochs",
            "warmup is part of scheduler=cosine or onecycle; set it to 0 or pick one of them",
        )


def _dataset(r: _Rules) -> None:
    source, name, res = r.get("dataset.source"), r.get("dataset.name"), r.get("dataset.resolution")
    allowed = r.get("dataset.resolutions")
    if allowed is not None and res not in allowed:
        choices = ", ".join(str(a) for a in allowed)
        r.fail("dataset.resolution", f"{name} is available at {choices} px; pick one of them")
    elif not isinstance(res, int) or not 8 <= res <= 1024:
        r.fail("dataset.resolution", "must be an image side in pixels between 8 and 1024")
    if source == "npz" and not r.get("dataset.path"):
        r.fail("dataset.path", "dataset=npz needs the file: dataset.path=/path/to/data.npz")
    if source == "folder" and not r.get("dataset.path"):
        r.fail("dataset.path", "dataset=folder needs the folder: dataset.path=/data/imgs")
    if source == "medmnist":
        names = medmnist_2d_names()
        if name not in names:
            r.fail("dataset.name", "not a MedMNIST 2D dataset; one of " + ", ".join(names))


def _flips(cfg: DictConfig) -> list[str]:
    from orchard_app.config.laterality import plan_flips

    return plan_flips(cfg)[2]


def _model(r: _Rules) -> None:
    from orchard_app.models.registry import REGISTRY

    arch, name = r.get("model.arch"), r.get("model.name")
    spec = REGISTRY.get(arch)
    if spec is None:
        r.fail("model.arch", "unknown builder; one of " + ", ".join(sorted(REGISTRY)))
    elif r.get("model.pretrained") and not spec.has_pretrained:
        r.fail("model.pretrained", f"{name} has no pretrained weights; set model.pretrained=false")
    weights = r.get("model.weights")
    if weights is not None and not r.get("model.pretrained"):
        r.fail("model.weights", "is read only with model.pretrained=true; set both or neither")
    elif weights is not None and not Path(str(weights)).expanduser().is_file():
        r.fail("model.weights", "no such file; pass the path of a .pth or .safetensors file")
    if spec is not None and r.get("model.drop_path") and not spec.has_drop_path:
        r.fail("model.drop_path", f"{name} has no stochastic depth; set model.drop_path=0")
    res, allowed = r.get("dataset.resolution"), r.get("model.resolutions")
    if allowed is not None and res not in allowed:
        need = ", ".join(str(a) for a in allowed)
        r.fail(
            "dataset.resolution",
            f"{name} takes {need} px inputs; use dataset.resolution={allowed[-1]} or another model",
        )


def _hardware(r: _Rules) -> None:
    cpu = r.get("hardware.device") == "cpu"
    if r.get("hardware.amp") and r.get("hardware.amp_dtype") == "fp16" and cpu:
        r.fail(
            "hardware.amp_dtype",
            "fp16 autocast needs CUDA; on CPU use hardware.amp_dtype=bf16 (or auto)",
        )
    if r.get("hardware.backend") == "nccl" and cpu:
        r.fail("hardware.backend", "NCCL needs CUDA; on CPU use hardware.backend=gloo (or auto)")
    if r.get("hardware.distributed"):
        _distributed(r)


def _distributed(r: _Rules) -> None:
    """DDP: one device per process, and a global batch that every process gets a share of."""
    device = str(r.get("hardware.device"))
    if re.fullmatch(r"cuda:\d+", device):
        r.fail(
            "hardware.device",
            "with hardware.distributed=true each process uses cuda:<LOCAL_RANK>; "
            "set hardware.device=cuda (or auto)",
        )  # fmt: skip
    world, bs = process_rank().world_size, r.get("training.batch_size")
    each = 1 if r.get("hardware.sync_batchnorm") else 2
    if world > 1 and isinstance(bs, int) and 1 <= bs < each * world:
        why = "" if each == 1 else " (BatchNorm without hardware.sync_batchnorm needs 2)"
        r.fail(
            "training.batch_size",
            f"is the global batch, split across the {world} processes of this launch, and each "
            f"process needs at least {each} sample(s) of it{why}; use training.batch_size>="
            f"{each * world} or start fewer processes",
        )  # fmt: skip
