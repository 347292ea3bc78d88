"""What each job of a `--multirun` sweep reports: one line in `<sweep dir>/jobs.jsonl`.

Every job, whatever launcher ran it (in this process, another process, a SLURM node), appends
one line: job number, outcome, value, the one-line reason of a failure (or the epoch a pruned
run stopped at) and the job's run dir. The sweep's console (orchard_app.sweep) and a launcher
that notices a lost job read and write it through this module only.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from orchard_app.distributed.rank import process_rank
from orchard_app.rundir.layout import JOBS, JOBS_LOCK, sweep_dir_of_job


def record_job(
    outcome: str, value: float | None = None, error: str | None = None, epoch: int | None = None
) -> None:
    """Append this job's end to the sweep's jobs.jsonl (no-op outside a multirun)."""
    from hydra.core.hydra_config import HydraConfig

    sweep_dir = sweep_dir_of_job()
    if sweep_dir is None or not process_rank().is_main:  # one row per job, not per process
        return
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    row = {"job": int(hc.job.num), "outcome": outcome, "value": value, "error": error,
           "run_dir": str(run_dir) if run_dir.exists() else None, "stopped_at_epoch": epoch,
           "overrides": list(hc.overrides.task)}  # fmt: skip
    if os.environ.get("SUBMITIT_EXECUTOR"):  # where this job's console output went
        with contextlib.suppress(Exception):
            import submitit

            row["log"] = str(submitit.JobEnvironment().paths.stderr)
    append_row(sweep_dir, row)


def append_row(sweep_dir: Path, row: dict[str, Any]) -> None:
    """One line of jobs.jsonl, under a lock (jobs of a sweep end at the same time)."""
    from filelock import FileLock

    sweep_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(sweep_dir / JOBS_LOCK), timeout=60)
    with lock, open(sweep_dir / JOBS, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def read_jobs(sweep_dir: Path) -> list[dict[str, Any]]:
    """The last record of each job, in job order."""
    try:
        text = (Path(sweep_dir) / JOBS).read_text(encoding="utf-8")
    except OSError:
        return []
    jobs = {int(row["job"]): row for row in read_rows(text)}
    return [jobs[k] for k in sorted(jobs)]


def read_rows(text: str) -> list[dict[str, Any]]:
    """The rows of jobs.jsonl text, in order; a damaged line or one without a job is skipped."""
    rows = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
            int(row["job"])
        except (ValueError, KeyError, TypeError):
            continue
        rows.append(row)
    return rows
