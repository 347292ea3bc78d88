"""Dataclass schemas for every config group, registered in Hydra's ConfigStore.

The top-level `OrchardConfig` types each group, so Hydra rejects a misspelt key, a value of
the wrong type or one outside its list (`choices.py`) while composing. Range and cross-field
rules live in `validate.py`. Nothing here imports torch: `--help`, `--cfg job` and validation
stay fast.
"""

from __future__ import annotations

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
    Scheduler,
    Source,
    Task,
    Tracker,
)

MEDMNIST_RESOLUTIONS = [28, 64, 128, 224]


@dataclass
class AugmentConfig:
    """Batched tensor augmentations, applied to training batches only (0 / false = off)."""

    hflip: bool = False
    vflip: bool = False
    rotation: float = 0.0  # max degrees, uniform in [-rotation, rotation]
    translate: float = 0.0  # max shift as a fraction of the image side
    scale: float = 0.0  # max zoom in/out as a fraction (0.1 -> [0.9, 1.1])
    color_jitter: float = 0.0  # brightness/contrast strength in [0, 1]; saturation too for RGB
    random_resized_crop: bool = False
    crop_scale_min: float = 0.6  # smallest crop area for random_resized_crop


@dataclass
class DatasetConfig:
    name: str = MISSING  # digits, bloodmnist, ..., or npz for a file of your own
    source: Source = MISSING
    root: str = "${oc.env:ORCHARD_DATA_DIR,'~/.medmnist'}"
    resolution: int = 28
    resolutions: list[int] | None = field(
        default_factory=lambda: list(MEDMNIST_RESOLUTIONS)
    )  # null = any
    path: str | None = None  # npz only: the file
    task: Task | None = None  # null: inferred from the data
    label_names: list[str] | None = None  # npz only: names for reports
    max_samples: int | None = None  # cap on training samples (stratified)
    force_rgb: bool = False  # replicate grayscale to 3 channels
    mean: float = 0.5  # normalisation: (x/255 - mean) / std, as the MedMNIST benchmark does
    std: float = 0.5
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
    dropout: float = 0.0
    drop_path: float = 0.0
    resolutions: list[int] | None = None  # input sizes the model can take; null = any
    params: dict[str, Any] = field(default_factory=dict)  # extra builder arguments


@dataclass
class OptimizerConfig:
    name: Optimizer = MISSING
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only
    nesterov: bool = False  # sgd only
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adam/adamw only


@dataclass
class SchedulerConfig:
    name: Scheduler = MISSING
    warmup_epochs: float = 0.0
    min_lr: float = 0.0
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])  # fractions of epochs
    gamma: float = 0.1
    step_size: int = 30  # epochs, for step
    patience: int = 5  # epochs without improvement, for plateau
    max_lr: float | None = None  # onecycle peak (null: optimizer.lr)


@dataclass
class HardwareConfig:
    device: str = "cpu"  # cpu | cuda | cuda:N | auto
    deterministic: bool = False
    num_threads: int | None = None  # torch intra-op threads; null = torch's default
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
    timeout_s: float | None = 15.0  # a tracking server's time to answer; null: MLflow's own


@dataclass
class TrainingConfig:
    epochs: int = 20
    batch_size: int = 64
    eval_batch_size: int = 512
    seed: int = 42
    resume: str | None = None  # a checkpoint (last.pt) to continue from, or auto (see README)
    monitor: Monitor = "val_accuracy"  # picks best.pt; train() returns its best value
    monitor_mode: MonitorMode = "auto"
    early_stop_patience: int | None = None  # epochs without improvement; null = off
    grad_clip: float | None = None  # max gradient norm; null = off
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0  # 0 = off
    class_weighted_loss: bool = False


@dataclass
class EvaluationConfig:
    tta: bool = False  # average predictions over flips at test time
    figures: bool = True
    sample_grid: int = 32  # test images shown in the sample grid
    saliency: bool = False  # a Grad-CAM figure of test images (correct and wrong) in report.md


@dataclass
class HpoConfig:
    """Study-level settings of `-m hpo=...` (the search space lives in hydra.sweeper.params)."""

    target: float | None = None  # stop the study once the best value reaches this
    patience: int | None = None  # stop after this many completed trials without improvement


@dataclass
class ExportConfig:
    """Deployment export: ONNX fp32 and INT8 with the preprocessing inside the graph, validated
    against PyTorch and benchmarked side by side (orchard_app/export, README "Deployment export")."""

    enabled: bool = False  # export checkpoints/best.pt at the end of training
    opset: int = 18  # ONNX opset (18 is the oldest the torch exporter writes reliably)
    max_deviation: float = 1e-4  # max |p_onnx - p_torch| over the probabilities
    strict: bool = True  # a deviation beyond max_deviation fails the export (false: a warning)
    random_samples: int = 32  # random uint8 images checked besides the real test images
    int8: bool = True  # also write model_int8.onnx (static QDQ, per-channel weights)
    calibration_samples: int = 256  # training images that calibrate the INT8 ranges
    max_int8_drop: float = 1.0  # test accuracy points INT8 may lose before a loud warning
    threads: int | None = 1  # torch and onnxruntime threads; null = hardware.num_threads or torch's
    latency_batch_sizes: list[int] = field(default_factory=lambda: [1, 64])
    latency_warmup: int = 5  # untimed runs per model and batch size
    latency_repeats: int = 30  # timed runs per model and batch size (the median is reported)


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
