"""`hydra/launcher=slurm` and `hydra/launcher=local`: Hydra's submitit launchers with what a
long training job needs (found by Hydra through `hydra.plugins` entry points, pyproject.toml).

- A job that SLURM or submitit starts again (a requeue after SIGUSR2 before the time limit, a
  preemption, `scontrol requeue`) runs with `training.resume=auto`: it continues its own run
  dir from last.pt, and provenance.json lists the attempts.
- Waiting for results is bounded by the job's real state: a job that ended without a result
  (scancel, a time limit with no requeue budget left, a node failure) is reported with its state,
  reason and log, recorded in the sweep's jobs.jsonl, and the other jobs' results still come back.
- One job at a time, without waiting (`submit`, then `poll`): the study sweeper keeps
  `n_jobs` trials in flight and submits the next one the moment one ends (hpo/slots.py).
Imported at every start (plugin discovery): submitit is imported only when a sweep launches.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra_plugins.hydra_submitit_launcher import submitit_launcher as stock  # pinned 1.4.0rc3

from orchard_app.cluster.scontrol import TERMINAL
from orchard_app.errors import SubmissionError, first_line, print_error
from orchard_app.outcomes import Outcome

log = logging.getLogger("orchard_app.cluster")

RESUME = "training.resume=auto"
POLL_S, RESULT_GRACE_S = 2.0, 30.0  # a result pickle can land a little after the job ends
LOCAL_GRACE_S = 3.0  # a local job writes its result before its process exits


class _Continues:
    POLL_S = 0.5  # how often the study sweeper polls its jobs (scontrol is slower: see below)

    def __call__(self, sweep_overrides: list[str], *args: Any) -> JobReturn:
        if int(os.environ.get("SLURM_RESTART_COUNT") or 0):  # started again: continue its run dir
            sweep_overrides = [o for o in sweep_overrides if not o.startswith("training.resume=")]
            sweep_overrides.append(RESUME)
        return super().__call__(sweep_overrides, *args)  # type: ignore[misc]

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_built"}  # pickled to each job

    def submit(self, overrides: list[str], num: int) -> Any:
        """Submit job `num` alone (one SLURM job, or one local process) and return its submitit
        Job without waiting; `poll` says when it ended."""
        executor, sweep_dir = self._executor()
        log.info("\t#%d : %s", num, " ".join(stock.filter_overrides(overrides)))
        args = (list(overrides), "hydra.sweep.dir", num, f"job_id_for_{num}",
                stock.Singleton.get_state())  # fmt: skip
        job = self._submit(executor, [args], one=True)
        job.orchard_watch = {"num": num, "sweep_dir": sweep_dir.resolve()}
        return job

    def poll(self, job: Any) -> JobReturn | None:
        """The JobReturn of a job from `submit` once it ended (as `_collect` would give it:
        a lost job is a failed row in jobs.jsonl and NaN), or None while it runs or waits."""
        w = job.orchard_watch
        return _poll(job, w["sweep_dir"], w["num"], w)

    def _executor(self) -> tuple[Any, Path]:
        """hydra-submitit-launcher 1.4.0rc3's executor and sweep dir, as its launch builds them."""
        import submitit
        from omegaconf import OmegaConf

        if getattr(self, "_built", None) is not None:
            return self._built
        init_keys = {"max_num_timeout", "python"}
        executor = submitit.AutoExecutor(
            cluster=self._EXECUTOR, folder=self.params["submitit_folder"],
            **{f"{self._EXECUTOR}_{k}": v for k, v in self.params.items() if k in init_keys},
        )  # fmt: skip
        base = set(OmegaConf.structured(stock.BaseQueueConf).keys())
        executor.update_parameters(**{
            (k if k in base else f"{self._EXECUTOR}_{k}"): v
            for k, v in self.params.items() if k not in init_keys | {"submitit_folder"}
        })  # fmt: skip
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:  # e.g. ++hydra.sweep.mode=770 for a shared group
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        log.info("Submitit '%s' sweep output dir : %s", self._EXECUTOR, sweep_dir)
        self._built = executor, sweep_dir
        return self._built

    def _submit(self, executor: Any, params: list[tuple], one: bool = False) -> Any:
        return (
            executor.submit(self, *params[0])
            if one
            else executor.map_array(self, *zip(*params, strict=True))
        )


class OrchardLocalLauncher(_Continues, stock.LocalLauncher):
    pass


class OrchardSlurmLauncher(_Continues, stock.SlurmLauncher):
    STOCK_LAUNCH_SHA256 = "57903c8211a02f0e"  # [:16] of the stock source our launch mirrors
    POLL_S = 2.0  # each poll asks scontrol about every job in flight

    def launch(self, job_overrides, initial_job_idx: int) -> list[JobReturn]:
        """hydra-submitit-launcher 1.4.0rc3's launch (one job array per batch), with the wait
        at the end replaced by `_collect` (the stock one waits forever for a killed job)."""
        executor, sweep_dir = self._executor()
        params = []
        for num, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info("\t#%d : %s", num, " ".join(stock.filter_overrides(overrides)))
            params.append((list(overrides), "hydra.sweep.dir", num, f"job_id_for_{num}",
                           stock.Singleton.get_state()))  # fmt: skip
        jobs = self._submit(executor, params)
        log.info("submitted job array %s (%d tasks)", jobs[0].job_id.split("_")[0], len(jobs))
        return _collect(jobs, sweep_dir.resolve(), initial_job_idx)

    def _submit(self, executor: Any, params: list[tuple], one: bool = False) -> Any:
        """sbatch's refusal as one message naming the setting to check, exit 1 (submitit raises
        it with sbatch's stderr, after printing that itself)."""
        from submitit.core.utils import FailedJobError

        try:
            with contextlib.redirect_stderr(io.StringIO()):
                return super()._submit(executor, params, one)
        except (FailedJobError, OSError) as e:
            said = "\n".join(str(e).strip().splitlines()[-3:]) or first_line(e)
            p, low = self.params, said.lower()
            check = ("whether the cluster is up (sinfo; is slurmctld running?)" if "contact" in low
                     else f"hydra.launcher.partition (now {p.get('partition')})" if "partition" in low
                     else f"hydra.launcher.cpus_per_task (now {p.get('cpus_per_task')}), mem_gb, "
                     "gpus_per_node and tasks_per_node against what a node has (sinfo -N -l)")  # fmt: skip
            error = SubmissionError(f"{said}\n  Check {check}. No job was submitted.")
            print_error(error)
            raise SystemExit(error.exit_code) from None


def _collect(jobs: list[Any], sweep_dir: Path, first_num: int) -> list[JobReturn]:
    """Each job's JobReturn, polling result files and `scontrol`; a job that ended (or
    vanished) without a result becomes a failed row in jobs.jsonl and a NaN value."""
    results: dict[int, JobReturn] = {}
    watch: list[dict[str, Any]] = [{} for _ in jobs]
    while len(results) < len(jobs):
        for i, job in enumerate(jobs):
            if i not in results and (ret := _poll(job, sweep_dir, first_num + i, watch[i])):
                results[i] = ret
        if len(results) < len(jobs):
            time.sleep(POLL_S)
    return [results[i] for i in range(len(jobs))]


def _poll(job: Any, sweep_dir: Path, num: int, watch: dict[str, Any]) -> JobReturn | None:
    """One look at one job: its JobReturn once it ended, None while it runs, waits or is
    requeued; `watch` keeps when it was first seen ended (its result may land a little later)."""
    process = getattr(job, "_process", None)  # submitit's LocalJob  # pinned: submitit 1.5
    if job.paths.result_pickle.exists():  # (submitit waits for a local job's process to exit)
        return (
            _result(job, sweep_dir, num) if process is None or process.poll() is not None else None
        )
    state, reason = _job_state(job)
    if state in TERMINAL or state == "UNKNOWN":
        watch.setdefault("ended_at", time.monotonic())
        grace = RESULT_GRACE_S if getattr(job, "_process", None) is None else LOCAL_GRACE_S
        if time.monotonic() - watch["ended_at"] > grace:
            return _lost(job, state, reason, sweep_dir, num)
    else:
        watch.pop("ended_at", None)  # running again (requeued)
    return None


def _job_state(job: Any) -> tuple[str, str]:
    """SLURM's state from scontrol; a local job's from its process (a signal is its reason)."""
    from orchard_app.cluster.scontrol import job_state

    process = getattr(job, "_process", None)  # submitit's LocalJob  # pinned: submitit 1.5
    if process is None:
        return job_state(job.job_id)
    code = process.poll()
    if code is None:
        return "RUNNING", ""
    if code < 0:
        import signal

        return "FAILED", f"killed by {signal.Signals(-code).name}"
    return "FAILED", ""  # (asked only when there is no result: its task died)


def _result(job: Any, sweep_dir: Path, num: int) -> JobReturn:
    """The job's JobReturn; an exception that escaped the job (e.g. submitit's "timed-out too
    many times" when the requeue budget is spent) becomes a recorded failure, not a traceback."""
    try:
        ret = job.results()[0]
        if ret.status != JobStatus.FAILED:
            return ret
        with contextlib.redirect_stderr(io.StringIO()):  # its "Error executing job": ours follows
            _ = ret.return_value  # raises the job's exception
    except Exception as e:  # that one, or one that submitit pickled of its own
        error = e
    parts = str(error).split("-" * 22)  # submitit's FailedJobError: the job's trace inside
    lines = parts[len(parts) // 2].strip().splitlines()  # (else the error's own message)
    text = lines[-1] if lines else ""
    outcome = Outcome.TIMEOUT if "timed-out" in text else Outcome.FAILED
    if outcome == Outcome.TIMEOUT:
        text += " (hydra.launcher.max_num_timeout requeues were used up)"
    return _failed(job, outcome, f"{type(error).__name__}: {text}", sweep_dir, num)


def _lost(job: Any, state: str, reason: str, sweep_dir: Path, num: int) -> JobReturn:
    """A job SLURM ended without a result. A cancelled one is the job's only row (the job
    records no `interrupted` of its own on SLURM), said once: not on the log as well."""
    if state == "CANCELLED":  # (its Reason is None)
        why = f"SLURM job {job.job_id} was cancelled (scancel)"
        return _failed(job, Outcome.CANCELLED, why, sweep_dir, num)
    outcome = Outcome.TIMEOUT if state == "TIMEOUT" else Outcome.FAILED
    local = getattr(job, "_process", None) is not None
    where = f"local job (pid {job.job_id})" if local else f"SLURM job {job.job_id}"
    why = f"{where} ended {state}" + (f" ({reason})" if reason else "")
    # killed, out of memory, a node lost: a study retries it (hydra.sweeper.max_retry); not a
    # time limit, which a retry would meet again
    lost = outcome == Outcome.FAILED
    return _failed(job, outcome, why + " without a result", sweep_dir, num, lost=lost)


def _failed(job: Any, outcome: Outcome, error: str, sweep_dir: Path, num: int,
            lost: bool = False) -> JobReturn:  # fmt: skip
    from orchard_app.run.job_record import append_row

    logs = str(job.paths.stderr)
    if outcome != Outcome.CANCELLED:
        log.error("job #%d: %s; log: %s", num, error, logs)
    run_dir = next((str(p) for p in sorted(sweep_dir.glob(f"{num}_*")) if p.is_dir()), None)
    append_row(sweep_dir, {"job": num, "outcome": outcome, "value": None, "error": error,
                           "run_dir": run_dir, "log": logs, **({"lost": True} if lost else {})})  # fmt: skip
    return _nan()


def _nan() -> JobReturn:
    ret = JobReturn()
    ret.status, ret.return_value = JobStatus.COMPLETED, math.nan
    return ret
