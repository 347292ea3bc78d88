"""report.md: one page that ties a run's config, metrics and figures together (written
atomically, as is its export section), and report.html, the same with its figures embedded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from orchard_app.atomic import atomic_write
from orchard_app.evaluation.report_html import write_html
from orchard_app.evaluation.summary import RunSummary
from orchard_app.rundir.layout import EXPORTS_DIR, ONNX_INT8

METRIC_LABELS = {
    "accuracy": "Accuracy",
    "balanced_accuracy": "Balanced accuracy",
    "auc": "AUC",
    "macro_f1": "Macro-F1",
    "loss": "Loss",
}


def _fmt(v: Any) -> str:
    missing = v is None or (isinstance(v, float) and v != v)
    return "n/a" if missing else (f"{v:.4f}" if isinstance(v, float) else str(v))


def write_report(path: Path, summary: RunSummary, config: dict[str, Any], figures: list[str],
                 pruned_at: int | None = None) -> None:  # fmt: skip
    """The run's report; a trial stopped by its pruner (`pruned_at`, its last epoch) has no test
    evaluation: its report says so and keeps the validation epochs and the config."""
    ds, model, test, mon = summary.dataset, summary.model, summary.test, summary.monitor
    capped = ds["train_samples"] != ds["counts"]["train"]
    lines = [
        f"# {ds['name']} · {model['name']} — run report",
        "",
        f"Task **{ds['task']}**, {ds['num_classes']} {'labels' if ds['task'] == 'multi-label' else 'classes'}, "
        f"{ds['in_chans']}x{ds['resolution']}x{ds['resolution']} input; train/val/test = "
        f"{ds['train_samples']}/{ds['counts']['val']}/{ds['counts']['test']} samples"
        + (f" (training capped from {ds['counts']['train']})" if capped else "")
        + ".",
        f"Model {model['name']} ({model['parameters']:,} parameters{', ImageNet-pretrained' if model['pretrained'] else ''}); "
        f"{summary.epochs_run} epoch(s) on {summary.device}"
        + (", stopped early" if summary.stopped_early else "")
        + (f", resumed from `{summary.resumed_from}`" if summary.resumed_from else "")
        + f"; training took {summary.train_seconds:.0f} s.",
        "",
    ]
    if pruned_at is not None:
        lines += [
            f"## Pruned at epoch {pruned_at}",
            "",
            f"The study's pruner stopped this trial after epoch {pruned_at} ({mon['name']}: best "
            f"{_fmt(mon['best_value'])} at epoch {summary.best_epoch}); the test split was not "
            "evaluated and no figures were drawn.",
            "",
        ]
    else:
        lines += [
            f"## Test results (best epoch {summary.best_epoch} by {mon['name']} = {_fmt(mon['best_value'])})",
            "",
            "| metric | test |",
            "| --- | --- |",
            *[f"| {label} | {_fmt(test.get(key))} |" for key, label in METRIC_LABELS.items()],
            "",
            "The test split is evaluated once, with the best checkpoint; model selection uses validation only.",
            "",
            "### Per class",
            "",
            "| class | precision | recall | F1 | support |",
            "| --- | --- | --- | --- | --- |",
            *[
                f"| {name} | {_fmt(c['precision'])} | {_fmt(c['recall'])} | {_fmt(c['f1'])} | {c['support']} |"
                for name, c in test["per_class"].items()
            ],
            "",
        ]
    if figures:
        lines += ["## Figures", ""] + [f"![{Path(f).stem}]({f})" for f in figures] + [""]
    lines += [
        "## Epochs",
        "",
        "| epoch | train loss | val loss | val accuracy | val AUC | lr | s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for h in summary.history:
        star = " **best**" if h["epoch"] == summary.best_epoch else ""
        lines.append(
            f"| {h['epoch']}{star} | {h['train_loss']:.4f} | {h['val_loss']:.4f} | {_fmt(h['val_accuracy'])} | "
            f"{_fmt(h['val_auc'])} | {h['lr']:.2e} | {h['seconds']:.1f} |"
        )
    lines += [
        "",
        "## Files",
        "",
        (
            ""
            if pruned_at is not None
            else "`metrics.json` (all numbers), `predictions_test.csv` (per-sample predictions), "
        )
        + "`checkpoints/best.pt` "
        "and `checkpoints/last.pt`, `provenance.json` (code version, command, environment, status), "
        "`requirements.txt`, `logs/run.log` and `logs/run.jsonl`, `.hydra/` (config and overrides as Hydra composed them)"
        + (
            "."
            if pruned_at is not None
            else "; with `export.enabled=true`, `exports/` (ONNX models and benchmark.json)."
        ),
        "",
        "## Config",
        "",
        "```yaml",
        yaml.safe_dump(config, sort_keys=False).rstrip(),
        "```",
        "",
    ]
    atomic_write(path, "\n".join(lines))
    write_html(path)


EXPORT_BEGIN, EXPORT_END = "<!-- export -->", "<!-- /export -->"
EXPORT_LABELS = {"pytorch": "PyTorch fp32", "onnx_fp32": "ONNX fp32", "onnx_int8": "ONNX INT8"}


def export_section(bench: dict[str, Any], folder: str = EXPORTS_DIR) -> list[str]:
    """The "Deployment export" section: accuracy, AUC, size and latency of each model."""
    lat, dev, int8 = bench["latency"], bench["deviation"], bench.get("int8")
    sizes = lat["batch_sizes"]
    shape = "x".join(str(d) for d in bench["input"]["shape"])
    files = [f"`{folder}/{m['file']}`" for m in bench["models"].values() if m.get("file")]
    lines = [
        EXPORT_BEGIN,
        "## Deployment export",
        "",
        f"{' and '.join(files)} (opset {bench['opset']}) take `{bench['input']['name']}`: uint8 "
        f"NCHW {shape}, the raw pixels as stored; scaling, channel expansion, normalisation and "
        f"the {bench['output']['values']} are inside the graph. Checkpoint `{bench['checkpoint']}` "
        f"(epoch {bench['epoch']}), config hash `{bench['config_hash'][:12]}`.",
        "",
        f"Numerical check against PyTorch: max |Δp| = {dev['max']:.2e} ({dev['random_samples']} "
        f"random and {dev['test_samples']} test images; export.max_deviation = "
        f"{dev['tolerance']:g}): **{'passed' if dev['passed'] else 'FAILED'}**.",
        "",
        "| model | test accuracy | test AUC | Δ accuracy (points) | "
        + " | ".join(f"latency batch {b} (ms)" for b in sizes)
        + " | size (MB) |",
        "| --- | --- | --- | --- | " + " | ".join("---" for _ in sizes) + " | --- |",
    ]
    ref = bench["models"]["pytorch"]["test"]["accuracy"]
    for key, m in bench["models"].items():
        test, ms = m["test"], m.get("latency_ms", {})
        delta = "" if key == "pytorch" else f"{100 * (test['accuracy'] - ref):+.2f}"
        cells = [
            EXPORT_LABELS.get(key, key),
            _fmt(test.get("accuracy")),
            _fmt(test.get("auc")),
            delta,
        ]
        cells += [f"{ms[f'batch_{b}_ms']:.2f}" if f"batch_{b}_ms" in ms else "" for b in sizes]
        lines.append("| " + " | ".join([*cells, f"{m.get('size_mb', 0):.1f}"]) + " |")
    lines += [
        "",
        f"Latency: median of {lat['repeats']} runs after {lat['warmup']} warm-up runs, "
        f"{lat['threads']} thread(s), {lat['cpu']}; torch {lat['torch']}, onnxruntime "
        f"{lat['onnxruntime']}.",
    ]
    if int8:
        lines += [
            "",
            f"INT8: static {int8['format']}, weights {int8['weights']}, activations "
            f"{int8['activations']}, calibrated ({int8['calibration']}) on "
            f"{int8['calibration_samples']} training images; predictions agree with PyTorch on "
            f"{100 * int8['prediction_agreement']:.1f}% of the test images.",
        ]
        if not int8["within_limit"]:
            lines += [
                "",
                f"**Warning: INT8 loses {int8['accuracy_drop_points']:.2f} accuracy points, more "
                f"than export.max_int8_drop = {int8['max_drop_points']:g}. Check it before "
                f"shipping {ONNX_INT8}.**",
            ]
    return [*lines, EXPORT_END, ""]


def update_export_section(path: Path, bench: dict[str, Any], folder: str = EXPORTS_DIR) -> None:
    """Put the export section into a run's report.md: replacing an earlier one, else before
    the epoch table (or at the end)."""
    text = path.read_text(encoding="utf-8")
    section = "\n".join(export_section(bench, folder))
    begin, end = text.find(EXPORT_BEGIN), text.find(EXPORT_END)
    if begin != -1 and end != -1:
        rest = text[end + len(EXPORT_END) :].lstrip("\n")
        text = text[:begin] + section + "\n" + rest
    elif (at := text.find("\n## Epochs")) != -1:
        text = text[: at + 1] + section + "\n" + text[at + 1 :]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    atomic_write(path, text)
    write_html(path)
