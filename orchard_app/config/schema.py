"""Dataclass schemas for every config group, registered in Hydra's ConfigStore.

The top-level `OrchardConfig` types each group, so Hydra rejects a misspelt key, a value of
the wrong type or one outside its list (`choices.py`) while composing. A field's range rule is
its metadata (`rule`), checked by walk.py; rules across fields live in `validate.py`. Nothing
here imports torch: `--help`, `--cfg job` and validation stay fast.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from orchard_app.config.choices import (
    AmpDtype,
    DistBackend,
    Monitor,
    MonitorMode,
    Optimizer,
    Resize,
    Scheduler,
    Source,
    Task,
    Tracker,
)
from orchard_app.config.medmnist import medmnist_sides


def rule(default: Any, says: str = "{}", ok: Callable[[Any], bool] | None = None, **bounds) -> Any:
    """A field whose value (each item, for a list) keeps within `bounds` (ge, gt, le, lt) and
    passes `ok`; a null passes where the type is Optional. `says` words the rule after
    "must be ", `{}` standing for the bounds ("in [0, 1)", ">= 1")."""
    lo, hi = bounds.get("ge", bounds.get("gt")), bounds.get("le", bounds.get("lt"))
    if hi is None:
        worded = f"{'>=' if 'ge' in bounds else '>'} {lo}"
    else:
        worded = f"in {'[' if 'ge' in bounds else '('}{lo}, {hi}{']' if 'le' in bounds else ')'}"
    meta = {"bounds": bounds, "ok": ok, "says": says.format(worded)}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class AugmentConfig:
    """Batched tensor augmentations, applied to training batches only (0 / false = off)."""

    hflip: bool = False
    vflip: bool = False
    # max degrees, uniform in [-rotation, rotation]
    rotation: float = rule(0.0, "{} degrees", ge=0, le=180)
    # max shift as a fraction of the image side
    translate: float = rule(0.0, "{} (fraction of the side)", ge=0, le=0.5)
    scale: float = rule(0.0, ge=0, lt=1)  # max zoom in/out as a fraction (0.1 -> [0.9, 1.1])
    # brightness/contrast strength in [0, 1]; saturation too for RGB
    color_jitter: float = rule(0.0, ge=0, le=1)
    random_resized_crop: bool = False
    crop_scale_min: float = rule(0.6, gt=0, le=1)  # smallest crop area for random_resized_crop
    safe_only: bool = (
        False  # leave out the flips this set forbids, saying so (config/laterality.py)
    )


@dataclass
class DatasetConfig:
    name: str = MISSING  # digits, bloodmnist, ..., or npz for a file of your own
    source: Source = MISSING
    root: str = "${oc.env:ORCHARD_DATA_DIR,'~/.medmnist'}"
    resolution: int = 28
    resolutions: list[int] | None = field(default_factory=medmnist_sides)  # null = any
    path: str | None = None  # npz: the file; folder: the folder of class subfolders
    task: Task | None = None  # null: inferred from the data
    label_names: list[str] | None = None  # npz only: names for reports
    lateral: bool | None = None  # class names name a side: no horizontal flips (null: inferred)
    upright: bool = False  # images have a canonical up (X-ray, CT, ultrasound, OCT)
    # folder only (data/image_folder.py): split fractions when there are no train/val/test
    # folders, drawn per class with split_seed (not training.seed: the test set stays put)
    split: list[float] = rule([0.7, 0.1, 0.2], "three fractions {} (train, val, test) that sum to 1",
                              lambda v: len(v) == 3 and abs(sum(v) - 1) < 1e-6, gt=0)  # fmt: skip
    split_seed: int = 0
    resize: Resize = "pad"  # pad: keep the aspect ratio; crop: the centred square; stretch
    skip_unreadable: bool = False  # skip (and count) images that fail to decode, else refuse
    # cap on training samples (stratified)
    max_samples: int | None = rule(None, "{}, or null for the whole training split", ge=1)
    force_rgb: bool = False  # replicate grayscale to 3 channels
    mean: float = 0.5  # normalisation: (x/255 - mean) / std, as the MedMNIST benchmark does
    std: float = rule(0.5, gt=0)
    balanced_sampler: bool = False  # draw training batches with class-balanced probabilities
    download: bool = True  # fetch missing MedMNIST files from the official URL
    mirror: str | None = None  # base URL serving the same file names (an internal mirror)
    cache_dir: str = "${oc.env:ORCHARD_CACHE_DIR,'~/.cache/orchard_app'}"  # MD5 memo, memmap caches
    memmap: bool | None = None  # read splits from an uncompressed on-disk cache; null = when large
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class ModelConfig:
    name: str = MISSING  # shown in run names and reports
    arch: str = MISSING  # registry key of the builder (orchard_app/models/registry.py)
    pretrained: bool = False
    weights: str | None = None  # pretrained weights file to read instead of the download cache
    dropout: float = rule(0.0, ge=0, lt=1)
    drop_path: float = rule(0.0, ge=0, lt=1)
    resolutions: list[int] | None = None  # input sizes the model can take; null = any
    params: dict[str, Any] = field(default_factory=dict)  # extra builder arguments


@dataclass
class OptimizerConfig:
    name: Optimizer = MISSING
    lr: float = rule(1e-3, "{}, e.g. optimizer.lr=1e-3", gt=0)
    weight_decay: float = rule(0.0, ge=0)
    momentum: float = rule(0.9, ge=0, lt=1)  # sgd only
    nesterov: bool = False  # sgd only
    # adam/adamw only
    betas: list[float] = rule([0.9, 0.999], "two values {}, e.g. [0.9,0.999]",
                              lambda v: len(v) == 2, ge=0, lt=1)  # fmt: skip


@dataclass
class SchedulerConfig:
    name: Scheduler = MISSING
    warmup_epochs: float = rule(0.0, "{} and below training.epochs", ge=0)
    min_lr: float = rule(0.0, ge=0)
    milestones: list[float] = rule(
        [0.5, 0.75], "increasing fractions of training.epochs {}, e.g. [0.5,0.75]",
        lambda v: len(v) > 0 and list(v) == sorted(v), gt=0, lt=1,
    )  # fmt: skip
    gamma: float = rule(0.1, gt=0, le=1)
    step_size: int = rule(30, "{} epoch", ge=1)  # epochs, for step
    patience: int = rule(5, "{} epochs", ge=0)  # epochs without improvement, for plateau
    max_lr: float | None = rule(None, "{}, or null to use optimizer.lr", gt=0)  # onecycle peak


@dataclass
class HardwareConfig:
    device: str = rule(
        "cpu", "cpu, cuda, cuda:<index> or auto",
        lambda v: re.fullmatch(r"cpu|cuda|cuda:\d+|auto", v) is not None,
    )  # fmt: skip
    deterministic: bool = False
    # torch intra-op threads
    num_threads: int | None = rule(None, "{}, or null for torch's default", ge=1)
    amp: bool | None = False  # mixed precision: bf16 on CPU, amp_dtype on CUDA; null: where native
    amp_dtype: AmpDtype = "auto"
    channels_last: bool = False
    compile: bool = False
    # DistributedDataParallel over the processes of a torchrun / SLURM launch (hardware=ddp);
    # training.batch_size stays the global batch, split across the processes
    distributed: bool = False
    sync_batchnorm: bool = True  # BatchNorm statistics over the global batch, not per process
    backend: DistBackend = "auto"


@dataclass
class TrackingConfig:
    name: Tracker = "none"
    uri: str | None = None  # null: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db
    experiment: str = "orchard_app"
    artifact_location: str | None = None  # null: mlartifacts/ beside a SQLite DB
    # a tracking server's time to answer
    timeout_s: float | None = rule(
        15.0, "{} seconds, or null for MLflow's own retries (about 4 minutes)", gt=0
    )


@dataclass
class TrainingConfig:
    epochs: int = rule(20, "an integer {}, e.g. training.epochs=10", ge=1)
    batch_size: int = rule(64, "an integer {}, e.g. training.batch_size=64", ge=1)
    eval_batch_size: int = rule(512, "an integer {}", ge=1)
    seed: int = rule(42, "an integer {}", ge=0)
    resume: str | None = None  # a checkpoint (last.pt) to continue from, or auto (see README)
    monitor: Monitor = "val_accuracy"  # picks best.pt; train() returns its best value
    monitor_mode: MonitorMode = "auto"
    # epochs without improvement, then stop
    early_stop_patience: int | None = rule(None, "{} epoch, or null to disable", ge=1)
    grad_clip: float | None = rule(None, "{} (max gradient norm), or null to disable", gt=0)
    label_smoothing: float = rule(0.0, ge=0, lt=1)
    mixup_alpha: float = rule(0.0, "{} (0 = no mixup)", ge=0)
    class_weighted_loss: bool = False


@dataclass
class EvaluationConfig:
    tta: bool = False  # average predictions over flips at test time
    figures: bool = True
    # test images shown in the sample grid
    sample_grid: int = rule(32, "{} (0 = no sample grid)", ge=0)
    saliency: bool = False  # a Grad-CAM figure of test images (correct and wrong) in report.md


@dataclass
class HpoConfig:
    """Study-level settings of `-m hpo=...` (the search space lives in hydra.sweeper.params)."""

    target: float | None = None  # stop the study once the best value reaches this
    patience: int | None = None  # stop after this many completed trials without improvement
    # the pruner presets' warm-up (hpo/pruner=...): no trial is pruned before this fraction of
    # training.epochs (rounded up), so a slow starter is judged once it had time to learn
    warmup: float = rule(0.25, "a fraction of training.epochs {}, e.g. hpo.warmup=0.25", ge=0, le=1)


@dataclass
class ExportConfig:
    """Deployment export: ONNX fp32 and INT8 with the preprocessing inside the graph, validated
    against PyTorch and benchmarked side by side (orchard_app/export, README "Deployment export")."""

    enabled: bool = False  # export checkpoints/best.pt at the end of training
    opset: int = rule(
        18, "an ONNX opset from 18 to 25 (the torch exporter cannot convert models down to older "
        "opsets), e.g. export.opset=18", ge=18, le=25,
    )  # fmt: skip
    # max |p_onnx - p_torch| over the probabilities
    max_deviation: float = rule(1e-4, "{}, e.g. export.max_deviation=1e-4", gt=0)
    strict: bool = True  # a deviation beyond max_deviation fails the export (false: a warning)
    # random uint8 images checked besides the real test images
    random_samples: int = rule(32, "{} random image", ge=1)
    int8: bool = True  # also write model_int8.onnx (static QDQ, per-channel weights)
    # training images that calibrate the INT8 ranges
    calibration_samples: int = rule(256, "{} training image", ge=1)
    # test accuracy points INT8 may lose before a loud warning
    max_int8_drop: float = rule(1.0, "{} accuracy points", ge=0, le=100)
    # torch and onnxruntime threads (null: hardware.num_threads, else torch's)
    threads: int | None = rule(1, "{}, or null for hardware.num_threads", ge=1)
    latency_batch_sizes: list[int] = rule(
        [1, 64], "a list of batch sizes {}, e.g. [1,64]",
        lambda v: len(v) > 0 and all(isinstance(b, int) for b in v), ge=1,
    )  # fmt: skip
    latency_warmup: int = rule(5, "{} runs", ge=0)  # untimed runs per model and batch size
    # timed runs per model and batch size (the median is reported)
    latency_repeats: int = rule(30, "{} run", ge=1)


@dataclass
class OrchardConfig:
    dataset: DatasetConfig = MISSING
    model: ModelConfig = MISSING
    optimizer: OptimizerConfig = MISSING
    scheduler: SchedulerConfig = MISSING
    hardware: HardwareConfig = MISSING
    tracking: TrackingConfig = MISSING
    training: TrainingConfig = field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    hpo: HpoConfig = field(default_factory=HpoConfig)
    export: ExportConfig = field(default_factory=ExportConfig)


def register() -> None:
    """Store the schema as `orchard_schema`, the first entry of conf/config.yaml's defaults."""
    ConfigStore.instance().store(name="orchard_schema", node=OrchardConfig, replace=True)
