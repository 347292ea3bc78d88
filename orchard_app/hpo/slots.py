"""Asynchronous slots: `n_jobs` trials in flight at all times.

Hydra's launchers take a batch and return when all of it ended, so with pruning most slots
sit idle while the slowest trial of a batch finishes. Our submitit launchers (cluster/plugin.py)
also submit one job and return its submitit Job at once (`submit`), and say when it ended
(`poll`, the same bounded wait and lost-job record as their batch launch). Here the sweeper
keeps `n_jobs` of them running: the moment one ends (completed, pruned, failed, lost) it is told
to the study, and the next trial is asked and submitted. On SLURM each trial is its own job,
so a requeued trial keeps its job, trial id and run dir. The launcher is used through those two
methods only (hpo does not import cluster).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from typing import Any

import optuna
from optuna.trial import TrialState

from orchard_app.hpo import report

log = logging.getLogger("orchard_app.hpo")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)

CANCEL_WAIT_S = 60.0  # for cancelled local jobs to write their last.pt and record their end


def run(sweeper: Any, study: optuna.Study, space: dict, url: str, fixed_args: list[str]) -> list:
    """Keep n_jobs trials in flight until the study has n_trials (any worker's), or an early
    stop: then no new trial is asked, and the running ones finish. A slot is free as soon as
    its trial told the study its end (its process may take seconds more to exit)."""
    launcher, returns, artifacts = sweeper.launcher, [], _Artifacts(sweeper, study)
    in_flight: dict[int, tuple[optuna.Trial, Any]] = {}
    exiting: dict[int, tuple[optuna.Trial, Any]] = {}  # told the study; the process ends
    stopped, waiting_said, beat_at = None, False, time.monotonic()
    try:
        while True:
            while stopped is None and len(in_flight) < sweeper.n_jobs and sweeper.room(study) > 0:
                trial = sweeper.ask(study, space)
                if trial is None or not sweeper._composed(study, [trial], url, fixed_args):
                    continue  # asked beyond n_trials by another worker, or did not compose
                job = launcher.submit(sweeper._overrides(trial, url, fixed_args), trial.number)
                in_flight[trial.number] = trial, job
                sweeper._launching = [t for t, _ in in_flight.values()]
            if not in_flight and not exiting and (stopped or not _others_running(sweeper, study)):
                break
            if not in_flight and not exiting and not waiting_said:
                waiting_said = True
                log.info("waiting for other workers' trials (a lost one is retried here)")
            time.sleep(launcher.POLL_S)
            ended = False
            for number, (trial, job) in [*in_flight.items(), *exiting.items()]:
                ret = launcher.poll(job)
                if ret is None and (number in exiting or _state(study, trial) not in FINISHED):
                    continue
                in_flight.pop(number, None)
                exiting[number] = trial, job
                if ret is not None:  # the job's own record (a lost job: the launcher's)
                    del exiting[number]
                    sweeper._tell(study, trial, ret)
                    returns.append(ret)
                ended = True
            sweeper._launching = [t for t, _ in [*in_flight.values(), *exiting.values()]]
            if ended:
                artifacts.write()
                sweeper._check_failures(study)
                if stopped is None and (stopped := sweeper._stop_early(study)):
                    log.info("study stops early: %s; no new trial is started, %d running "
                             "trial(s) finish", stopped, len(in_flight))  # fmt: skip
            if beats(study) and time.monotonic() - beat_at > sweeper.heartbeat:
                beat_at = time.monotonic()
                for trial, _ in in_flight.values():  # queued or requeued jobs cannot beat
                    study._storage.record_heartbeat(trial._trial_id)  # pinned: optuna 5
                optuna.storages.fail_stale_trials(study)  # other workers' lost trials too
    except BaseException:
        _cancel([job for _, job in in_flight.values()])  # (exiting ones are ending anyway)
        raise
    finally:
        artifacts.join()
    return returns


class _Artifacts:
    """report.write beside the loop: its figures take seconds, and no slot waits for them.
    One writer at a time; an end seen while it writes makes it write once more."""

    def __init__(self, sweeper: Any, study: optuna.Study) -> None:
        self.sweeper, self.study = sweeper, study
        self.thread: threading.Thread | None = None
        self.again = False

    def write(self) -> None:
        if self.thread is not None and self.thread.is_alive():
            self.again = True
            return
        self.thread = threading.Thread(target=self._write, name="study-artifacts", daemon=True)
        self.thread.start()

    def _write(self) -> None:
        while True:
            self.again = False
            try:
                report.write(self.study, self.sweeper.sweep_dir, self.sweeper.config, final=False)
            except Exception as e:  # the sweeper writes them once more at its end
                log.debug("study artifacts not written now: %s", e)
            if not self.again:
                return

    def join(self) -> None:
        if self.thread is not None:
            self.thread.join()


def _state(study: optuna.Study, trial: optuna.Trial) -> TrialState:
    return study._storage.get_trial(trial._trial_id).state  # pinned: optuna 5


def _others_running(sweeper: Any, study: optuna.Study) -> bool:
    """Whether to wait for other workers' running trials: only where heartbeats tell a lost one
    (which this worker then retries); elsewhere each worker answers for its own."""
    if not beats(study):
        return False
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    return bool(running) or sweeper.room(study) > 0


def beats(study: optuna.Study) -> bool:
    """Whether the study's storage has heartbeats (a database opened with heartbeat_interval)."""
    interval = getattr(study._storage, "get_heartbeat_interval", None)  # pinned: optuna 5
    return bool(interval and interval())


def _cancel(jobs: list[Any]) -> None:
    """Ctrl-C or an error: the jobs in flight are stopped (a local job gets SIGTERM and saves
    its last.pt; a SLURM job is scancelled), so that nothing keeps running after the sweep."""
    for job in jobs:
        with contextlib.suppress(Exception):
            if getattr(job, "_process", None) is not None:  # submitit's local controller
                job._process.send_signal(signal.SIGTERM)  # forwards it, quietly (SIGINT: a trace)
            else:
                job.cancel(check=False)
    deadline = time.monotonic() + CANCEL_WAIT_S
    for job in jobs:
        process = getattr(job, "_process", None)  # a local job: wait for its end
        if process is not None:
            with contextlib.suppress(Exception):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
