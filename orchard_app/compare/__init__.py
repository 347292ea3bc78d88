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
from orchard_app.errors import CompareError

__all__ = ["compare", "paper", "seedless_hash", "to_csv", "to_markdown", "write"]


def compare(paths: list[str | Path]) -> Comparison:
    """Find, read and group the runs under `paths`; a run that cannot be read is noted and
    left out (an error only when no run can be read)."""
    run_dirs, notes = find_run_dirs(paths)
    runs, unreadable = [], []
    for path in run_dirs:
        try:
            runs.append(read_run(path))
        except CompareError as e:
            unreadable.append(e)
    if unreadable and not runs:
        raise unreadable[0]
    return group_runs(runs, notes + [f"left out: {e}".split("\n")[0] for e in unreadable])
