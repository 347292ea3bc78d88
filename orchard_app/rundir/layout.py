"""Every file name of a run directory and of a sweep directory, in one place.

A run dir (`outputs/<date>/<time>_<name>-<hash>/`, or `<sweep dir>/<job>_<name>/`) holds:

    provenance.json        what ran where, and how it ended (written first, finished last)
    requirements.txt       the installed packages
    .hydra/                config.yaml, hydra.yaml, overrides.yaml (written once the lock is held)
    logs/                  run.log (text) and run.jsonl (structured)
    checkpoints/           last.pt (every epoch, exact resume) and best.pt (the monitor's best)
    predictions_test.csv   the test split's probabilities
    figures/               training curves, confusion matrix or per-label AUC, ROC, samples
    report.md              the human-readable report (report.html: the same, figures embedded)
    exports/               model.onnx, model_int8.onnx, benchmark.json (export.enabled)
    metrics.json           the run's summary: written last, so its presence means "finished"

A sweep dir holds jobs.jsonl (a line per job end), .sweep.lock (one sweep at a time), the
Optuna study's storage (optuna.db or optuna.journal), study.csv, top_trials.md,
best_config.yaml and figures/, the MLflow parent run's lock, submitit's .submitit/ job files,
and the comparison.md and comparison.csv of `python -m orchard_app.compare`.
"""

from __future__ import annotations

from pathlib import Path

# ---- a run dir
PROVENANCE = "provenance.json"
REQUIREMENTS = "requirements.txt"
HYDRA_DIR = ".hydra"
HYDRA_CONFIG, HYDRA_HYDRA, HYDRA_OVERRIDES = "config.yaml", "hydra.yaml", "overrides.yaml"
LOGS_DIR = "logs"
LOG_TEXT, LOG_JSON = "run.log", "run.jsonl"
CHECKPOINTS_DIR = "checkpoints"
LAST_CHECKPOINT, BEST_CHECKPOINT = "last.pt", "best.pt"
PREDICTIONS = "predictions_test.csv"
FIGURES_DIR = "figures"
REPORT, REPORT_HTML = "report.md", "report.html"
EXPORTS_DIR = "exports"
ONNX_FP32, ONNX_INT8, EXPORT_BENCHMARK = "model.onnx", "model_int8.onnx", "benchmark.json"
METRICS = "metrics.json"
LOCK, LOCK_HOLDER = ".run.lock", ".run.lock.json"

# ---- a sweep dir
JOBS, JOBS_LOCK = "jobs.jsonl", ".jobs.jsonl.lock"
SWEEP_LOCK, SWEEP_LOCK_HOLDER = ".sweep.lock", ".sweep.lock.json"  # held by the sweep's launcher
OPTUNA_DB, OPTUNA_JOURNAL = "optuna.db", "optuna.journal"
STUDY_CSV, TOP_TRIALS, BEST_CONFIG = "study.csv", "top_trials.md", "best_config.yaml"
MULTIRUN_YAML = "multirun.yaml"  # Hydra's own record of the sweep
SUBMITIT_DIR = ".submitit"
MLFLOW_PARENT_LOCK = ".mlflow_parent.lock"
COMPARISON_MD, COMPARISON_CSV = "comparison.md", "comparison.csv"


def last_checkpoint(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR / LAST_CHECKPOINT


def best_checkpoint(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR / BEST_CHECKPOINT


def saved_config(run_dir: Path) -> Path:
    return Path(run_dir) / HYDRA_DIR / HYDRA_CONFIG


def sweep_dir_of_job() -> Path | None:
    """The running multirun job's sweep dir (None for a single run), from its job dir
    <sweep.dir>/<sweep.subdir>: the sweep dir, claimed when first resolved, is never re-resolved."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    hc = HydraConfig.get()
    sweep_dir = Path(hc.runtime.output_dir)
    for _ in Path(str(hc.sweep.subdir)).parts:
        sweep_dir = sweep_dir.parent
    return sweep_dir.resolve()


def run_dir_of_checkpoint(checkpoint: Path) -> Path:
    """<run dir>/checkpoints/<name>.pt -> <run dir>."""
    return Path(checkpoint).parent.parent
