"""Compare finished runs with the MedMNIST v2 paper: `python -m orchard_app.compare <dirs>...`.

Finds the run directories (those with a `metrics.json`) under the sweep or run directories it
is given, groups them by dataset and experiment (the config without `training.seed` and the
machine keys, so the seeds of one experiment form one group and any other experiment, a
recipe, is compared the same way), and reports per group the mean and the sample standard
deviation (ddof=1) over seeds of test ACC and AUC, beside the paper's ResNet-18 (28) and its
best ACC (`medmnist_v2.json`, which names its source), the differences and the seed count.

Light on purpose: no torch, so it answers at once; it reads JSON and YAML files only.
"""

from __future__ import annotations

from pathlib import Path

from orchard_app.compare.runs import find_run_dirs, read_run, seedless_hash
from orchard_app.compare.table import Comparison, group_runs, paper, to_csv, to_markdown, write

__all__ = ["compare", "paper", "seedless_hash", "to_csv", "to_markdown", "write"]


def compare(paths: list[str | Path]) -> Comparison:
    """Find, read and group the runs under `paths`."""
    run_dirs, notes = find_run_dirs(paths)
    return group_runs([read_run(p) for p in run_dirs], notes)
