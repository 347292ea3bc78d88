"""Range and cross-field rules, checked before any data or model is touched.

Hydra and the dataclass schema already reject unknown keys, wrong types and values outside a
list (choices.py) while composing; these rules catch what a type cannot express (epochs=0,
lr<0, a resolution a dataset or model does not have). walk.py finds the keys Hydra's `+`/`++`
add, nan/inf in any float field, and repeats the list checks for a config built without types.
All problems are collected and reported together, each naming the field, the value and what is
allowed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from orchard_app.config.walk import literal_mismatches, nonfinite_floats, unknown_keys
from orchard_app.distributed.rank import process_rank
from orchard_app.errors import ConfigError


class _Rules:
    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.problems: list[str] = []
        self.nonfinite = nonfinite_floats(cfg)  # reported once, by their rule when they have one

    def get(self, key: str):
        return OmegaConf.select(self.cfg, key, throw_on_missing=False)

    def check(
        self, key: str, ok: Callable[[object], bool], allowed: str, nullable: bool = False
    ) -> None:
        """Report `key` unless ok(value); a null passes only when `nullable`."""
        value = self.get(key)
        if value is None and nullable:
            return
        if self.nonfinite.pop(key, None) is not None:
            self.fail(key, value, _finite(allowed, many=OmegaConf.is_list(value)))
            return
        try:
            good = ok(value)
        except (TypeError, ValueError):
            good = False
        if not good:
            self.fail(key, value, allowed)

    def fail(self, key: str, value: object, allowed: str) -> None:
        self.problems.append(f"{key}={_show(value)}: {allowed}")


def _show(value: object) -> str:
    if isinstance(value, list | tuple):
        return "[" + ",".join(str(v) for v in value) + "]"
    return "null" if value is None else str(value)


def _finite(allowed: str, many: bool) -> str:
    """'must be > 0' -> 'must be a finite number > 0' ('must be finite numbers: ...' for lists)."""
    head = "must be "
    rest = allowed.removeprefix(head) if allowed.startswith(head) else f"and {allowed}"
    return head + ("finite numbers: " if many else "a finite number ") + rest


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError listing every invalid value; return quietly when all is well."""
    r = _Rules(cfg)
    r.problems += unknown_keys(cfg)
    for key, value, allowed in literal_mismatches(cfg):
        r.fail(key, value, allowed)
    _training(r)
    _optimizer(r)
    _scheduler(r)
    _dataset(r)
    _model(r)
    _hardware(r)
    _export(r)
    r.check(
        "tracking.timeout_s",
        lambda v: v > 0,
        "must be > 0 seconds, or null for MLflow's own retries (about 4 minutes)",
        nullable=True,
    )
    r.check("evaluation.sample_grid", lambda v: v >= 0, "must be >= 0 (0 = no sample grid)")
    for key, value in r.nonfinite.items():  # float fields without a rule of their own
        r.fail(key, value, "must be a finite number")
    if r.problems:
        raise ConfigError(r.problems)


def _training(r: _Rules) -> None:
    r.check("training.epochs", lambda v: v >= 1, "must be an integer >= 1, e.g. training.epochs=10")
    r.check(
        "training.batch_size",
        lambda v: v >= 1,
        "must be an integer >= 1, e.g. training.batch_size=64",
    )
    r.check("training.eval_batch_size", lambda v: v >= 1, "must be an integer >= 1")
    r.check("training.seed", lambda v: v >= 0, "must be an integer >= 0")
    r.check(
        "training.early_stop_patience",
        lambda v: v >= 1,
        "must be >= 1 epoch, or null to disable",
        nullable=True,
    )
    r.check(
        "training.grad_clip",
        lambda v: v > 0,
        "must be > 0 (max gradient norm), or null to disable",
        nullable=True,
    )
    r.check("training.label_smoothing", lambda v: 0 <= v < 1, "must be in [0, 1)")
    r.check("training.mixup_alpha", lambda v: v >= 0, "must be >= 0 (0 = no mixup)")
    resume = r.get("training.resume")
    if resume not in (None, "auto") and not Path(str(resume)).expanduser().is_file():
        r.fail(
            "training.resume",
            resume,
            "no such file; pass the path of a checkpoint such as <run dir>/checkpoints/last.pt, "
            "or auto (continue the run in hydra.run.dir from its last.pt, if any)",
        )


def _optimizer(r: _Rules) -> None:
    r.check("optimizer.lr", lambda v: v > 0, "must be > 0, e.g. optimizer.lr=1e-3")
    r.check("optimizer.weight_decay", lambda v: v >= 0, "must be >= 0")
    r.check("optimizer.momentum", lambda v: 0 <= v < 1, "must be in [0, 1)")
    r.check(
        "optimizer.betas",
        lambda v: len(v) == 2 and all(0 <= b < 1 for b in v),
        "must be two values in [0, 1), e.g. [0.9,0.999]",
    )
    if r.get("optimizer.nesterov") and (
        r.get("optimizer.name") != "sgd" or not r.get("optimizer.momentum")
    ):
        r.fail(
            "optimizer.nesterov",
            True,
            "needs optimizer=sgd with optimizer.momentum > 0; set optimizer.nesterov=false",
        )


def _scheduler(r: _Rules) -> None:
    epochs = r.get("training.epochs")
    epochs_ok = isinstance(epochs, int) and epochs >= 1  # else already reported; do not cascade
    r.check(
        "scheduler.warmup_epochs",
        lambda v: v >= 0 and (not epochs_ok or v < epochs),
        "must be >= 0 and below training.epochs",
    )
    if r.get("scheduler.warmup_epochs") and r.get("scheduler.name") not in ("cosine", "onecycle"):
        r.fail(
            "scheduler.warmup_epochs",
            r.get("scheduler.warmup_epochs"),
            "warmup is part of scheduler=cosine or onecycle; set it to 0 or pick one of them",
        )
    r.check("scheduler.min_lr", lambda v: v >= 0, "must be >= 0")
    r.check(
        "scheduler.milestones",
        lambda v: len(v) > 0 and all(0 < m < 1 for m in v) and list(v) == sorted(v),
        "must be increasing fractions of training.epochs in (0, 1), e.g. [0.5,0.75]",
    )
    r.check("scheduler.gamma", lambda v: 0 < v <= 1, "must be in (0, 1]")
    r.check("scheduler.step_size", lambda v: v >= 1, "must be >= 1 epoch")
    r.check("scheduler.patience", lambda v: v >= 0, "must be >= 0 epochs")
    r.check(
        "scheduler.max_lr",
        lambda v: v > 0,
        "must be > 0, or null to use optimizer.lr",
        nullable=True,
    )


def _dataset(r: _Rules) -> None:
    source, name, res = r.get("dataset.source"), r.get("dataset.name"), r.get("dataset.resolution")
    allowed = r.get("dataset.resolutions")
    if allowed is not None and res not in allowed:
        choices = ", ".join(str(a) for a in allowed)
        r.fail("dataset.resolution", res, f"{name} is available at {choices} px; pick one of them")
    elif not isinstance(res, int) or not 8 <= res <= 1024:
        r.fail("dataset.resolution", res, "must be an image side in pixels between 8 and 1024")
    if source == "npz" and not r.get("dataset.path"):
        r.fail("dataset.path", None, "dataset=npz needs the file: dataset.path=/path/to/data.npz")
    if source == "folder":
        if not r.get("dataset.path"):
            r.fail("dataset.path", None, "dataset=folder needs the folder: dataset.path=/data/imgs")
        r.check(
            "dataset.split",
            lambda v: len(v) == 3 and min(v) > 0 and abs(sum(v) - 1) < 1e-6,
            "must be three fractions > 0 (train, val, test) that sum to 1",
        )
    if source == "medmnist":
        from orchard_app.data.medmnist_info import medmnist_2d_names

        names = medmnist_2d_names()
        if name not in names:
            r.fail("dataset.name", name, "not a MedMNIST 2D dataset; one of " + ", ".join(names))
    r.check(
        "dataset.max_samples",
        lambda v: v >= 1,
        "must be >= 1, or null for the whole training split",
        nullable=True,
    )
    r.check("dataset.std", lambda v: v > 0, "must be > 0")
    r.check("dataset.augment.rotation", lambda v: 0 <= v <= 180, "must be in [0, 180] degrees")
    r.check(
        "dataset.augment.translate",
        lambda v: 0 <= v <= 0.5,
        "must be in [0, 0.5] (fraction of the side)",
    )
    r.check("dataset.augment.scale", lambda v: 0 <= v < 1, "must be in [0, 1)")
    r.check("dataset.augment.color_jitter", lambda v: 0 <= v <= 1, "must be in [0, 1]")
    r.check("dataset.augment.crop_scale_min", lambda v: 0 < v <= 1, "must be in (0, 1]")


def _model(r: _Rules) -> None:
    from orchard_app.models.registry import REGISTRY

    arch, name = r.get("model.arch"), r.get("model.name")
    spec = REGISTRY.get(arch)
    if spec is None:
        r.fail("model.arch", arch, "unknown builder; one of " + ", ".join(sorted(REGISTRY)))
    elif r.get("model.pretrained") and not spec.has_pretrained:
        r.fail(
            "model.pretrained",
            True,
            f"{name} has no pretrained weights; set model.pretrained=false",
        )
    weights = r.get("model.weights")
    if weights is not None and not r.get("model.pretrained"):
        r.fail(
            "model.weights", weights, "is read only with model.pretrained=true; set both or neither"
        )
    elif weights is not None and not Path(str(weights)).expanduser().is_file():
        r.fail(
            "model.weights", weights, "no such file; pass the path of a .pth or .safetensors file"
        )
    r.check("model.dropout", lambda v: 0 <= v < 1, "must be in [0, 1)")
    r.check("model.drop_path", lambda v: 0 <= v < 1, "must be in [0, 1)")
    if spec is not None and r.get("model.drop_path") and not spec.has_drop_path:
        r.fail(
            "model.drop_path",
            r.get("model.drop_path"),
            f"{name} has no stochastic depth; set model.drop_path=0",
        )
    res, allowed = r.get("dataset.resolution"), r.get("model.resolutions")
    if allowed is not None and res not in allowed:
        need = ", ".join(str(a) for a in allowed)
        r.fail(
            "dataset.resolution",
            res,
            f"{name} takes {need} px inputs; use dataset.resolution={allowed[-1]} or another model",
        )


def _hardware(r: _Rules) -> None:
    r.check(
        "hardware.device",
        lambda v: v in ("cpu", "cuda", "auto") or re.fullmatch(r"cuda:\d+", v) is not None,
        "must be cpu, cuda, cuda:<index> or auto",
    )
    r.check(
        "hardware.num_threads",
        lambda v: v >= 1,
        "must be >= 1, or null for torch's default",
        nullable=True,
    )
    if (
        r.get("hardware.amp")
        and r.get("hardware.amp_dtype") == "fp16"
        and r.get("hardware.device") == "cpu"
    ):
        r.fail(
            "hardware.amp_dtype",
            "fp16",
            "fp16 autocast needs CUDA; on CPU use hardware.amp_dtype=bf16 (or auto)",
        )
    if r.get("hardware.backend") == "nccl" and r.get("hardware.device") == "cpu":
        r.fail(
            "hardware.backend",
            "nccl",
            "NCCL needs CUDA; on CPU use hardware.backend=gloo (or auto)",
        )
    if r.get("hardware.distributed"):
        _distributed(r)


def _distributed(r: _Rules) -> None:
    """DDP: one device per process, and a global batch that every process gets a share of."""
    device = str(r.get("hardware.device"))
    if re.fullmatch(r"cuda:\d+", device):
        r.fail(
            "hardware.device", device,
            "with hardware.distributed=true each process uses cuda:<LOCAL_RANK>; "
            "set hardware.device=cuda (or auto)",
        )  # fmt: skip
    world, bs = process_rank().world_size, r.get("training.batch_size")
    each = 1 if r.get("hardware.sync_batchnorm") else 2
    if world > 1 and isinstance(bs, int) and 1 <= bs < each * world:
        why = "" if each == 1 else " (BatchNorm without hardware.sync_batchnorm needs 2)"
        r.fail(
            "training.batch_size", bs,
            f"is the global batch, split across the {world} processes of this launch, and each "
            f"process needs at least {each} sample(s) of it{why}; use training.batch_size>="
            f"{each * world} or start fewer processes",
        )  # fmt: skip


def _export(r: _Rules) -> None:
    r.check(
        "export.opset",
        lambda v: 18 <= v <= 25,
        "must be an ONNX opset from 18 to 25 (the torch exporter cannot convert models down to "
        "older opsets), e.g. export.opset=18",
    )
    r.check("export.max_deviation", lambda v: v > 0, "must be > 0, e.g. export.max_deviation=1e-4")
    r.check("export.random_samples", lambda v: v >= 1, "must be >= 1 random image")
    r.check("export.calibration_samples", lambda v: v >= 1, "must be >= 1 training image")
    r.check("export.max_int8_drop", lambda v: 0 <= v <= 100, "must be in [0, 100] accuracy points")
    r.check(
        "export.threads",
        lambda v: v >= 1,
        "must be >= 1, or null for hardware.num_threads",
        nullable=True,
    )
    r.check(
        "export.latency_batch_sizes",
        lambda v: len(v) > 0 and all(isinstance(b, int) and b >= 1 for b in v),
        "must be a list of batch sizes >= 1, e.g. [1,64]",
    )
    r.check("export.latency_warmup", lambda v: v >= 0, "must be >= 0 runs")
    r.check("export.latency_repeats", lambda v: v >= 1, "must be >= 1 run")
