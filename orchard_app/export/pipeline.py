"""The deployment export of a trained run: `export_run(cfg, checkpoint, out_dir)`.

Composed from the one assembly (`export.assemble.assemble_export`: data, the pipeline's own
preprocessing module, the checkpoint's model rebuilt without pretrained weights), the export
steps (`orchard_app/export`) and the one evaluation function (`evaluate_predictor`, the same
for a PyTorch module and an onnxruntime session). Used by `train()` with `export.enabled=true`
(after training, main process only) and by `python -m orchard_app.export <run dir>`.

Writes <out_dir>/model.onnx (fp32), model_int8.onnx (static INT8) and benchmark.json, each
atomically; model.onnx only after it passed the numerical check (or with export.strict=false).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import platform
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from orchard_app.atomic import atomic_path, atomic_write
from orchard_app.config.resolvers import hash_container
from orchard_app.evaluation.artifacts import clean_json
from orchard_app.evaluation.metrics import evaluate_predictor, predictions
from orchard_app.evaluation.report import update_export_section
from orchard_app.export.assemble import ExportParts, assemble_export
from orchard_app.export.benchmark import latency, torch_threads
from orchard_app.export.graph import Deployable, torch_predictor
from orchard_app.export.onnx_export import INPUT_NAME, OUTPUT_NAME, export_onnx, set_metadata
from orchard_app.export.quantize import SETTINGS as INT8_SETTINGS
from orchard_app.export.quantize import quantize_int8
from orchard_app.export.session import onnx_predictor, open_session
from orchard_app.export.validate import Deviation, check_deviation, max_deviation, random_images

log = logging.getLogger("orchard_app.export")

EXPORT_DIR = "exports"
FP32_FILE, INT8_FILE, BENCHMARK_FILE = "model.onnx", "model_int8.onnx", "benchmark.json"
LABELS = {"pytorch": "PyTorch fp32", "onnx_fp32": "ONNX fp32", "onnx_int8": "ONNX INT8"}
CALIBRATION_BATCH = 32


def export_run(
    cfg,
    checkpoint: Path,
    out_dir: Path,
    data=None,
    ckpt: dict[str, Any] | None = None,
    report: Path | None = None,
) -> dict[str, Any]:
    """Export, check, quantize and benchmark `checkpoint`; returns what benchmark.json holds.
    `data` (already loaded) and `ckpt` (already read) are reused when given; `report` (a run's
    report.md) gets a "Deployment export" section."""
    ec = cfg.export
    parts = assemble_export(cfg, Path(checkpoint), data, ckpt)
    info = parts.data.info
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    threads = int(ec.threads or cfg.hardware.num_threads or torch.get_num_threads())
    seed = int(cfg.training.seed)
    shape = (info.channels, info.resolution, info.resolution)
    task, labels = info.task, parts.data.test.labels.cpu().numpy()
    config_hash = hash_container(parts.config) if parts.config else "unknown"
    metadata = _metadata(cfg, parts, config_hash)
    deployable = Deployable(parts.preprocess, parts.model, info.multilabel).eval()
    name = f"model={cfg.model.name}"
    log.info("export: %s from %s (epoch %s), %d thread(s), to %s", name, parts.checkpoint,
             parts.epoch, threads, out_dir)  # fmt: skip

    with torch_threads(threads):
        torch_predict = torch_predictor(deployable)
        models: dict[str, dict[str, Any]] = {}
        models["pytorch"], torch_probs = _evaluate(torch_predict, parts, labels, cfg)

        fp32_path = out_dir / FP32_FILE
        with atomic_path(fp32_path) as tmp:  # kept only once the check passed (or not strict)
            sample = torch.from_numpy(random_images(2, shape, seed))
            export_onnx(deployable, sample, tmp, int(ec.opset), metadata, model_name=name)
            fp32_predict = onnx_predictor(open_session(tmp, threads))
            rand = random_images(int(ec.random_samples), shape, seed + 1)
            models["onnx_fp32"], fp32_probs = _evaluate(fp32_predict, parts, labels, cfg)
            deviation = Deviation(
                random=max_deviation(torch_predict(rand), fp32_predict(rand)),
                test=max_deviation(torch_probs, fp32_probs), random_samples=len(rand),
                test_samples=len(labels), tolerance=float(ec.max_deviation), strict=bool(ec.strict),
            )  # fmt: skip
            check_deviation(deviation, FP32_FILE)
        models["onnx_fp32"]["file"] = FP32_FILE
        log.info("export: wrote %s (opset %s, %.1f MB)", fp32_path, ec.opset, _mb(fp32_path))
        predictors = {"pytorch": torch_predict, "onnx_fp32": fp32_predict}

        int8 = None
        int8_path = out_dir / INT8_FILE
        if ec.int8:
            calibration = _calibration_batches(parts, int(ec.calibration_samples), seed)
            with atomic_path(int8_path) as tmp:
                quantize_int8(fp32_path, tmp, calibration, INPUT_NAME)
                set_metadata(tmp, {**metadata, "precision": _int8_precision(ec)})
                int8_predict = onnx_predictor(open_session(tmp, threads))
            models["onnx_int8"], int8_probs = _evaluate(int8_predict, parts, labels, cfg)
            models["onnx_int8"]["file"] = INT8_FILE
            predictors["onnx_int8"] = int8_predict
            int8 = _int8_record(ec, models, torch_probs, int8_probs, task, calibration)
            log.info("export: wrote %s (%.1f MB)", int8_path, _mb(int8_path))
        elif int8_path.exists():  # a stale one from an earlier export would not match model.onnx
            int8_path.unlink()

        warm, repeats = int(ec.latency_warmup), int(ec.latency_repeats)
        sizes = [int(b) for b in ec.latency_batch_sizes]
        timing_images = parts.data.test.rows(torch.arange(min(max(sizes), len(labels))))
        timed = latency(predictors, timing_images.cpu().numpy(), sizes, warm, repeats)
    for key, ms in timed.items():
        models[key]["latency_ms"] = ms
        path = out_dir / models[key]["file"] if models[key].get("file") else None
        models[key]["size_mb"] = round(_mb(path), 2) if path else round(_torch_mb(parts.model), 2)

    bench = {
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "checkpoint": str(parts.checkpoint),
        "epoch": parts.epoch,
        "config_hash": config_hash,
        "model": str(cfg.model.name),
        "dataset": info.name,
        "task": task,
        "opset": int(ec.opset),
        "input": {
            "name": INPUT_NAME,
            "dtype": "uint8",
            "layout": "NCHW",
            "shape": ["batch", *shape],
            "values": "raw pixels 0-255, as stored",
        },
        "output": {
            "name": OUTPUT_NAME,
            "shape": ["batch", info.num_classes],
            "values": _output_kind(info.multilabel),
        },
        "test_samples": len(labels),
        "deviation": deviation.record(),
        "int8": int8,
        "latency": {
            "statistic": "median",
            "unit": "ms per call",
            "warmup": warm,
            "repeats": repeats,
            "batch_sizes": sizes,
            "threads": threads,
            "cpu": _cpu_name(),
            "torch": torch.__version__,
            "onnxruntime": _ort_version(),
        },
        "models": models,
    }
    atomic_write(out_dir / BENCHMARK_FILE, json.dumps(clean_json(bench), indent=2) + "\n")
    _log_table(bench)
    if report is not None and report.is_file():
        update_export_section(report, bench, _relative(out_dir, report.parent))
    return bench


def summary_metrics(bench: dict[str, Any]) -> dict[str, float]:
    """Flat numbers of an export for a tracker: export_<model>_<metric>, latency included."""
    out = {}
    for key, model in bench["models"].items():
        for metric in ("accuracy", "auc"):
            if isinstance(model["test"].get(metric), float):
                out[f"export_{key}_{metric}"] = model["test"][metric]
        for name, ms in model.get("latency_ms", {}).items():
            out[f"export_{key}_{name}"] = ms
    out["export_max_deviation"] = bench["deviation"]["max"]
    return out


# ---------------------------------------------------------------------- pieces
def _test_batches(parts: ExportParts, batch_size: int) -> Iterator[np.ndarray]:
    test = parts.data.test
    for start in range(0, len(test), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(test)))
        yield np.ascontiguousarray(test.rows(idx).cpu().numpy())


def _evaluate(predict, parts: ExportParts, labels: np.ndarray, cfg) -> tuple[dict, np.ndarray]:
    batches = _test_batches(parts, int(cfg.training.eval_batch_size))
    metrics, probs = evaluate_predictor(predict, batches, labels, parts.data.info.task)
    return {"test": metrics}, probs


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
        **INT8_SETTINGS,
        "calibration_samples": int(sum(len(b) for b in calibration)),
        "accuracy_drop_points": drop,
        "max_drop_points": float(ec.max_int8_drop),
        "within_limit": drop <= float(ec.max_int8_drop),
        "prediction_agreement": round(agreement, 6),
        "max_deviation": max_deviation(torch_probs, int8_probs),
    }
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
        "input_dtype": "uint8",
        "input_size": f"{c}x{r}x{r}",
        "output": f"{OUTPUT_NAME} [batch, {info.num_classes}]: {_output_kind(info.multilabel)}",
        "preprocessing": json.dumps(parts.preprocess.describe()),
        "class_names": json.dumps(list(info.label_names)),
        "task": info.task,
        "config_hash": config_hash,
        "model": str(cfg.model.name),
        "dataset": info.name,
        "checkpoint_epoch": str(parts.epoch),
        "precision": "fp32",
    }


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
        line = f"{LABELS[key]:14}{test['accuracy']:>10.4f}" + (
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
