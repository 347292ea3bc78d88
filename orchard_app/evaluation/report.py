"""report.md: one page that ties a run's config, metrics and figures together."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

METRIC_LABELS = {
    "accuracy": "Accuracy",
    "balanced_accuracy": "Balanced accuracy",
    "auc": "AUC",
    "macro_f1": "Macro-F1",
    "loss": "Loss",
}


def _fmt(v: Any) -> str:
    return (
        "n/a"
        if v is None or (isinstance(v, float) and v != v)
        else (f"{v:.4f}" if isinstance(v, float) else str(v))
    )


def write_report(
    path: Path, summary: dict[str, Any], config: dict[str, Any], figures: list[str]
) -> None:
    ds, model, test = summary["dataset"], summary["model"], summary["test"]
    mon = summary["monitor"]
    lines = [
        f"# {ds['name']} · {model['name']} — run report",
        "",
        f"Task **{ds['task']}**, {ds['num_classes']} {'labels' if ds['task'] == 'multi-label' else 'classes'}, "
        f"{ds['in_chans']}x{ds['resolution']}x{ds['resolution']} input; train/val/test = "
        f"{ds['train_samples']}/{ds['counts']['val']}/{ds['counts']['test']} samples"
        + (
            f" (training capped from {ds['counts']['train']})"
            if ds["train_samples"] != ds["counts"]["train"]
            else ""
        )
        + ".",
        f"Model {model['name']} ({model['parameters']:,} parameters{', ImageNet-pretrained' if model['pretrained'] else ''}); "
        f"{summary['epochs_run']} epoch(s) on {summary['device']}"
        + (", stopped early" if summary["stopped_early"] else "")
        + (f", resumed from `{summary['resumed_from']}`" if summary.get("resumed_from") else "")
        + f"; training took {summary['train_seconds']:.0f} s.",
        "",
        f"## Test results (best epoch {summary['best_epoch']} by {mon['name']} = {_fmt(mon['best_value'])})",
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
    for h in summary["history"]:
        star = " **best**" if h["epoch"] == summary["best_epoch"] else ""
        lines.append(
            f"| {h['epoch']}{star} | {h['train_loss']:.4f} | {h['val_loss']:.4f} | {_fmt(h['val_accuracy'])} | "
            f"{_fmt(h['val_auc'])} | {h['lr']:.2e} | {h['seconds']:.1f} |"
        )
    lines += [
        "",
        "## Files",
        "",
        "`metrics.json` (all numbers), `predictions_test.csv` (per-sample predictions), `checkpoints/best.pt` "
        "and `checkpoints/last.pt`, `provenance.json` (code version, command, environment, status), "
        "`requirements.txt`, `logs/run.log` and `logs/run.jsonl`, `.hydra/` (config and overrides as Hydra composed them).",
        "",
        "## Config",
        "",
        "```yaml",
        yaml.safe_dump(config, sort_keys=False).rstrip(),
        "```",
        "",
    ]
    path.write_text("\n".join(lines))
