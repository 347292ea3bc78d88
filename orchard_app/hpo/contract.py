"""The sweeper/job contract: the sweeper passes the study storage, study name and trial id to
each job through `hydra.job.env_set`; the job (trial.py) reads them back. Light (no optuna):
the command-line entry checks for a trial before anything heavy is imported."""

from __future__ import annotations

ENV_STORAGE, ENV_STUDY, ENV_TRIAL = "ORCHARD_HPO_STORAGE", "ORCHARD_HPO_STUDY", "ORCHARD_HPO_TRIAL"
ENV_HEARTBEAT = "ORCHARD_HPO_HEARTBEAT"  # seconds between the job's heartbeats (RDB storages)


def trial_env(
    storage: str, study: str, trial_id: int, heartbeat: int | None = None
) -> dict[str, str]:
    env = {ENV_STORAGE: storage, ENV_STUDY: study, ENV_TRIAL: str(trial_id)}
    return {**env, ENV_HEARTBEAT: str(heartbeat)} if heartbeat else env
