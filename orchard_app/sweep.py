"""A `--multirun` sweep's own record and its closing summary.

Every job, whatever launcher ran it (in this process, another process, a SLURM node), appends
one line to `<sweep dir>/jobs.jsonl`: job number, outcome, value, the one-line reason of a
failure and the job's run dir. When the sweep ends, `SweepSummary` (a Hydra callback, see
conf/config.yaml) prints a short table from it and makes the exit code non-zero when a job
failed. Light on purpose (no torch): Hydra instantiates it before any job starts.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

RECORD_NAME = "jobs.jsonl"


def sweep_dir_of_job() -> Path | None:
    """The sweep directory of the running multirun job (None for a single run)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    hc = HydraConfig.get()
    sweep_dir = Path(hc.runtime.output_dir)
    for _ in Path(str(hc.sweep.subdir)).parts:  # <sweep.dir>/<sweep.subdir>, never re-resolved
        sweep_dir = sweep_dir.parent
    return sweep_dir.resolve()


def record_job(
    outcome: str, value: float | None = None, error: str | None = None, epoch: int | None = None
) -> None:
    """Append this job's end to the sweep's jobs.jsonl (no-op outside a multirun)."""
    from hydra.core.hydra_config import HydraConfig

    sweep_dir = sweep_dir_of_job()
    if sweep_dir is None:
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
    lock = FileLock(str(sweep_dir / f".{RECORD_NAME}.lock"), timeout=60)
    with lock, open(sweep_dir / RECORD_NAME, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def read_jobs(sweep_dir: Path) -> list[dict[str, Any]]:
    """The last record of each job, in job order."""
    jobs: dict[int, dict] = {}
    try:
        lines = (Path(sweep_dir) / RECORD_NAME).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        jobs[int(row["job"])] = row
    return [jobs[k] for k in sorted(jobs)]


def summary_text(sweep_dir: Path, jobs: list[dict[str, Any]]) -> str:
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job["outcome"]] = counts.get(job["outcome"], 0) + 1
    head = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))
    lines = [f"sweep {sweep_dir}: {len(jobs)} job(s): {head}"]
    for job in jobs:
        value = "" if job.get("value") is None else f"{job['value']:.4f}"
        where = job.get("run_dir") or "(no run dir: the job never started)"
        lines.append(f"  #{job['job']:<3} {job['outcome']:<11} {value:>8}  {where}")
        if job.get("error"):
            lines.append(f"       {job['error']}")
        if job.get("log") and job["outcome"] not in ("completed", "pruned"):
            lines.append(f"       log: {job['log']}")
    return "\n".join(lines)


class SweepSummary(Callback):
    """Print the sweep's summary at its end; exit 1 when a job failed."""

    def on_multirun_end(self, config, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        jobs = read_jobs(sweep_dir)
        if not jobs:
            return
        print("\n" + summary_text(sweep_dir, jobs), file=sys.stderr, flush=True)
        outcomes = {job["outcome"] for job in jobs}
        study = str(config.hydra.sweeper.get("_target_", "")).startswith("orchard_app.hpo.")
        if outcomes & {"failed", "timeout"} and "interrupted" not in outcomes and not study:
            raise SystemExit(1)  # (a study's failed trials are data; it ends on max_failure_rate)
