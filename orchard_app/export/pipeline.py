"""`export_run(cfg, checkpoint, out_dir)`, the deployment export of a trained run, is the list of
its steps, one function each, sharing an `ExportJob`: prepare (the one assembly, see
export/assemble.py), export fp32 and check it, quantize INT8 and check it, benchmark, then write
benchmark.json and the report section. Each file is written atomically; model.onnx only after it
passed the numerical check (or with export.strict=false).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from orchard_app.atomic import atomic_path, atomic_write
from orchard_app.config.resolvers import hash_container
from orchard_app.evaluation.artifacts import clean_json
from orchard_app.evaluation.metrics import evaluate_predictor, predictions
from orchard_app.evaluation.report import EXPORT_LABELS, update_export_section
from orchard_app.export.assemble import ExportParts, assemble_export
from orchard_app.export.benchmark import latency, torch_threads
from orchard_app.export.graph import Deployable, torch_predictor
from orchard_app.export.onnx_export import INPUT_NAME, OUTPUT_NAME, export_onnx, set_metadata
from orchard_app.export.quantize import SETTINGS as INT8_SETTINGS
from orchard_app.export.quantize import quantize_int8
from orchard_app.export.session import onnx_predictor, open_session
from orchard_app.export.validate import Deviation, check_deviation, max_deviation, random_images
from orchard_app.rundir.layout import EXPORT_BENCHMARK, ONNX_FP32, ONNX_INT8

log = logging.getLogger("orchard_app.export")

CALIBRATION_BATCH = 32


@dataclass
class ExportJob:
    """What the steps share: the config, the assembled parts, where the files go, and what each
    model has so far (its predictor; its test metrics, file, latency and size)."""

    cfg: Any
    parts: ExportParts
    out_dir: Path
    threads: int
    metadata: dict[str, str]
    deployable: Deployable
    labels: np.ndarray  # of the test split
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    predictors: dict[str, Callable] = field(default_factory=dict)

    @property
    def info(self):
        return self.parts.data.info

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.info.channels, self.info.resolution, self.info.resolution)

    def evaluate(self, key: str, predict) -> np.ndarray:
        """Test metrics of one model into `models[key]`; returns its probabilities."""
        test, size = self.parts.data.test, int(self.cfg.training.eval_batch_size)
        batches = (np.ascontiguousarray(test.rows(torch.arange(i, min(i + size, len(test)))).cpu().numpy())
                   for i in range(0, len(test), size))  # fmt: skip
        metrics, probs = evaluate_predictor(predict, batches, self.labels, self.info.task)
        self.models[key], self.predictors[key] = {"test": metrics}, predict
        return probs


def export_run(cfg, checkpoint: Path, out_dir: Path, data=None, ckpt: dict[str, Any] | None = None,
               report: Path | None = None) -> dict[str, Any]:  # fmt: skip
    """Export, check, quantize and benchmark `checkpoint`; returns what benchmark.json holds.
    `data` (already loaded) and `ckpt` (already read) are reused when given; `report` (a run's
    report.md) gets a "Deployment export" section."""
    job = prepare(cfg, Path(checkpoint), Path(out_dir), data, ckpt)
    with torch_threads(job.threads):
        torch_probs = job.evaluate("pytorch", torch_predictor(job.deployable))
        deviation = export_fp32(job, torch_probs)
        int8 = quantize(job, torch_probs)
        latency_record = benchmark(job)
    bench = benchmark_record(job, deviation, int8, latency_record)
    write_benchmark(job, bench, report)
    return bench


def prepare(cfg, checkpoint: Path, out_dir: Path, data, ckpt) -> ExportJob:
    """The one assembly (data, preprocessing, the checkpoint's model) and the deployable graph."""
    parts = assemble_export(cfg, checkpoint, data, ckpt)
    out_dir.mkdir(parents=True, exist_ok=True)
    threads = int(cfg.export.threads or cfg.hardware.num_threads or torch.get_num_threads())
    config_hash = hash_container(parts.config) if parts.config else "unknown"
    deployable = Deployable(parts.preprocess, parts.model, parts.data.info.multilabel).eval()
    log.info("export: model=%s from %s (epoch %s), %d thread(s), to %s", cfg.model.name,
             parts.checkpoint, parts.epoch, threads, out_dir)  # fmt: skip
    labels = parts.data.test.labels.cpu().numpy()
    return ExportJob(
        cfg, parts, out_dir, threads, _metadata(cfg, parts, config_hash), deployable, labels
    )


def export_fp32(job: ExportJob, torch_probs: np.ndarray) -> Deviation:
    """model.onnx, kept only once its deviation from PyTorch passed the check (or not strict)."""
    ec, seed, path = job.cfg.export, int(job.cfg.training.seed), job.out_dir / ONNX_FP32
    with atomic_path(path) as tmp:
        sample = torch.from_numpy(random_images(2, job.shape, seed))
        export_onnx(job.deployable, sample, tmp, int(ec.opset), job.metadata,
                    model_name=f"model={job.cfg.model.name}")  # fmt: skip
        predict = onnx_predictor(open_session(tmp, job.threads))
        rand = random_images(int(ec.random_samples), job.shape, seed + 1)
        fp32_probs = job.evaluate("onnx_fp32", predict)
        deviation = Deviation(
            random=max_deviation(job.predictors["pytorch"](rand), predict(rand)),
            test=max_deviation(torch_probs, fp32_probs), random_samples=len(rand),
            test_samples=len(fp32_probs), tolerance=float(ec.max_deviation), strict=bool(ec.strict),
        )  # fmt: skip
        check_deviation(deviation, ONNX_FP32)
    job.models["onnx_fp32"]["file"] = ONNX_FP32
    log.info("export: wrote %s (opset %s, %.1f MB)", path, ec.opset, _mb(path))
    return deviation


def quantize(job: ExportJob, torch_probs: np.ndarray) -> dict[str, Any] | None:
    """model_int8.onnx (export.int8), calibrated on training images, and its record; without
    export.int8, a stale one from an earlier export (it would not match model.onnx) is removed."""
    ec, path = job.cfg.export, job.out_dir / ONNX_INT8
    if not ec.int8:
        path.unlink(missing_ok=True)
        return None
    calibration = _calibration_batches(
        job.parts, int(ec.calibration_samples), int(job.cfg.training.seed)
    )
    with atomic_path(path) as tmp:
        quantize_int8(job.out_dir / ONNX_FP32, tmp, calibration, INPUT_NAME)
        set_metadata(tmp, {**job.metadata, "precision": _int8_precision(ec)})
        predict = onnx_predictor(open_session(tmp, job.threads))
    int8_probs = job.evaluate("onnx_int8", predict)
    job.models["onnx_int8"]["file"] = ONNX_INT8
    record = _int8_record(ec, job.models, torch_probs, int8_probs, job.info.task, calibration)
    log.info("export: wrote %s (%.1f MB)", path, _mb(path))
    return record


def benchmark(job: ExportJob) -> dict[str, Any]:
    """Latency of every model on test images, and each one's size; returns the settings."""
    ec = job.cfg.export
    warm, repeats = int(ec.latency_warmup), int(ec.latency_repeats)
    sizes = [int(b) for b in ec.latency_batch_sizes]
    images = job.parts.data.test.rows(torch.arange(min(max(sizes), len(job.labels))))
    timed = latency(job.predictors, images.cpu().numpy(), sizes, warm, repeats)
    for key, ms in timed.items():
        model = job.models[key]
        model["latency_ms"] = ms
        path = job.out_dir / model["file"] if model.get("file") else None
        model["size_mb"] = round(_mb(path), 2) if path else round(_torch_mb(job.parts.model), 2)
    return {"statistic": "median", "unit": "ms per call", "warmup": warm, "repeats": repeats,
            "batch_sizes": sizes, "threads": job.threads, "cpu": _cpu_name(),
            "torch": torch.__version__, "onnxruntime": _ort_version()}  # fmt: skip


def benchmark_record(job: ExportJob, deviation: Deviation, int8, latency_record) -> dict[str, Any]:
    """What benchmark.json holds."""
    info, ec = job.info, job.cfg.export
    return {
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "checkpoint": str(job.parts.checkpoint), "epoch": job.parts.epoch,
        "config_hash": job.metadata["config_hash"], "model": str(job.cfg.model.name),
        "dataset": info.name, "task": info.task, "opset": int(ec.opset),
        "input": {"name": INPUT_NAME, "dtype": "uint8", "layout": "NCHW",
                  "shape": ["batch", *job.shape], "values": "raw pixels 0-255, as stored"},
        "output": {"name": OUTPUT_NAME, "shape": ["batch", info.num_classes],
                   "values": _output_kind(info.multilabel)},
        "test_samples": len(job.labels), "deviation": deviation.record(), "int8": int8,
        "latency": latency_record, "models": job.models,
    }  # fmt: skip


def write_benchmark(job: ExportJob, bench: dict[str, Any], report: Path | None) -> None:
    """benchmark.json, the table in the log, and the report's "Deployment export" section."""
    atomic_write(job.out_dir / EXPORT_BENCHMARK, json.dumps(clean_json(bench), indent=2) + "\n")
    _log_table(bench)
    if report is not None and report.is_file():
        update_export_section(report, bench, _relative(job.out_dir, report.parent))


def summary_metrics(bench: dict[str, Any]) -> dict[str, float]:
    """The numbers of an export for a tracker, by their MLflow names: export/<model>/<metric>,
    latency included, and export/max_deviation."""
    from orchard_app.tracking.names import export_metric

    out = {}
    for key, model in bench["models"].items():
        for metric in ("accuracy", "auc"):
            if isinstance(model["test"].get(metric), float):
                out[export_metric(key, metric)] = model["test"][metric]
        for name, ms in model.get("latency_ms", {}).items():
            out[export_metric(key, name)] = ms
    out["export/max_deviation"] = bench["deviation"]["max"]
    return out


# ---------------------------------------------------------------------- pieces
def _calibration_batches(parts: ExportParts, n: int, seed: int) -> list[np.ndarray]:
    """`n` training images (a seeded random choice), in batches."""
    train = parts.data.train
    idx = np.sort(np.random.default_rng(seed).permutation(len(train))[: min(n, len(train))])
    images = train.rows(torch.from_numpy(idx)).cpu().numpy()
    return [images[i : i + CALIBRATION_BATCH] for i in range(0, len(images), CALIBRATION_BATCH)]


def _int8_record(ec, models, torch_probs, int8_probs, task, calibration) -> dict[str, Any]:
    ref, got = models["pytorch"]["test"]["accuracy"], models["onnx_int8"]["test"]["accuracy"]
    drop = round(100 * (ref - got), 3)
    agreement = float(np.mean(predictions(task, torch_probs) == predictions(task, int8_probs)))
    record = {
        **INT8_SETTINGS, "calibration_samples": int(sum(len(b) for b in calibration)),
        "accuracy_drop_points": drop, "max_drop_points": float(ec.max_int8_drop),
        "within_limit": drop <= float(ec.max_int8_drop), "prediction_agreement": round(agreement, 6),
        "max_deviation": max_deviation(torch_probs, int8_probs),
    }  # fmt: skip
    if not record["within_limit"]:
        log.warning(
            "export: !!! INT8 LOSES %.2f ACCURACY POINTS on the test split (%.4f -> %.4f), more "
            "than export.max_int8_drop=%g. model_int8.onnx was written, but do not ship it "
            "without checking: calibrate on more images (export.calibration_samples) or ship "
            "model.onnx. !!!", drop, ref, got, float(ec.max_int8_drop),
        )  # fmt: skip
    return record


def _metadata(cfg, parts: ExportParts, config_hash: str) -> dict[str, str]:
    info = parts.data.info
    c, r = info.channels, info.resolution
    return {
        "producer": f"orchard_app {metadata.version('orchard_app')}",
        "input_format": f"uint8 NCHW [batch, {c}, {r}, {r}]: raw pixel values 0-255 as stored "
        "in the dataset; scaling, channel expansion and normalisation are inside the graph",
        "input_dtype": "uint8", "input_size": f"{c}x{r}x{r}",
        "output": f"{OUTPUT_NAME} [batch, {info.num_classes}]: {_output_kind(info.multilabel)}",
        "preprocessing": json.dumps(parts.preprocess.describe()),
        "class_names": json.dumps(list(info.label_names)), "task": info.task,
        "config_hash": config_hash, "model": str(cfg.model.name), "dataset": info.name,
        "checkpoint_epoch": str(parts.epoch), "precision": "fp32",
    }  # fmt: skip


def _output_kind(multilabel: bool) -> str:
    return "one sigmoid probability per label" if multilabel else "softmax probabilities"


def _int8_precision(ec) -> str:
    return f"int8 (static QDQ, per-channel weights, {ec.calibration_samples} calibration images)"


def _log_table(bench: dict[str, Any]) -> None:
    sizes = bench["latency"]["batch_sizes"]
    head = f"{'':14}{'accuracy':>10}{'AUC':>8}" + "".join(f"{f'b={b} ms':>11}" for b in sizes)
    log.info("export: test split (%d images), latency median of %d runs, %d thread(s):",
             bench["test_samples"], bench["latency"]["repeats"], bench["latency"]["threads"])  # fmt: skip
    log.info("  %s", head)
    for key, model in bench["models"].items():
        test, ms = model["test"], model.get("latency_ms", {})
        auc = test.get("auc")
        line = f"{EXPORT_LABELS[key]:14}{test['accuracy']:>10.4f}" + (
            f"{auc:>8.4f}" if isinstance(auc, float) else f"{'n/a':>8}"
        )
        line += "".join(f"{ms.get(f'batch_{b}_ms', float('nan')):>11.2f}" for b in sizes)
        log.info("  %s", line)


def _relative(path: Path, base: Path) -> str:
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(path)


def _mb(path: Path) -> float:
    return path.stat().st_size / 2**20


def _torch_mb(model: torch.nn.Module) -> float:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 2**20


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__
