"""The study sweeper: Hydra's Optuna sweeper, plus what it cannot do.

It reuses hydra-optuna-sweeper's search-space parsing (`interval`, `choice`, `range`,
`tag(log, ...)`, grid sampler) and adds:
- pruning: each job gets its trial through `hydra.job.env_set` (trial.py) and is stopped by
  `hydra.sweeper.pruner`; a pruned job is told PRUNED, never FAIL, and is no failure;
- resumable studies: a stable study name in a storage in the sweep dir; `n_trials` is the
  study's total, so the same command after an interruption runs only the missing trials,
  numbers new jobs after the existing ones and first marks trials a killed sweep left RUNNING
  as FAIL; Ctrl-C marks the running trials FAIL and queues their parameters again;
- asynchronous slots (slots.py): with a launcher that can submit one job (hydra/launcher=local
  or slurm), n_jobs trials are in flight at all times; `asynchronous=false` keeps batches;
- several workers on one study (same storage and study name, each its own sweep dir): together
  they run n_trials, each trial once, with parameters no other trial tried;
- lost trials: a job killed outright is failed during the study (heartbeats on a database,
  the launcher's job state otherwise) and retried `max_retry` times;
- study early stop (`hpo.target`, `hpo.patience`) and the study's artifacts (report.py).
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import math
import os
import socket
import sys
import zlib
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.utils import instantiate
from hydra_plugins.hydra_optuna_sweeper._impl import (  # pinned: hydra-optuna-sweeper 1.4.0rc3
    OptunaSweeperImpl,
)
from omegaconf import DictConfig
from optuna.trial import TrialState
from sqlalchemy.exc import SQLAlchemyError

from orchard_app.config import monitor_direction
from orchard_app.errors import ConfigError, HpoError, OrchardError, first_line, print_error
from orchard_app.hpo import metadata, report, slots
from orchard_app.hpo.contract import trial_env
from orchard_app.hpo.pruners import OPTUNA_TARGETS, make_pruner
from orchard_app.hpo.space import search_space, spelled_space
from orchard_app.hpo.storage import (
    STORAGE_ERRORS,
    RetryLost,
    absolute_url,
    advice,
    dashboard_command,
    default_url,
    masked,
    open_storage,
    retried,
    why_storage_failed,
    without_password,
)
from orchard_app.outcomes import Outcome
from orchard_app.run.job_record import append_row, read_jobs
from orchard_app.rundir.layout import STUDY_CSV
from orchard_app.sweep import progress

log = logging.getLogger("orchard_app.hpo")

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


class _Grid(optuna.samplers.GridSampler):
    """The sweeper stops at the grid's size itself (n_trials); Optuna's own stop() when the
    grid is used up raises outside study.optimize, here in any study.tell."""

    def after_trial(self, *args: Any) -> None:
        pass


class StudySweeper:
    def __init__(self, sampler: Any, direction: Any, storage: str | None, study_name: str | None,
                 n_trials: int, n_jobs: int, max_failure_rate: float, params: Any = None,
                 pruner: Any = None, custom_search_space: str | None = None,
                 asynchronous: bool = True, heartbeat_interval: int | None = 30,
                 grace_period: int | None = None, max_retry: int = 1, **_: Any):  # fmt: skip
        if custom_search_space:
            raise HpoError("hydra.sweeper.custom_search_space is not supported by orchard_optuna; "
                           "write the space under hydra.sweeper.params")  # fmt: skip
        self.sampler = instantiate(sampler, _execution_whitelist_=OPTUNA_TARGETS)
        self.direction, self.storage, self.study_name = direction, storage, study_name
        self.n_trials, self.n_jobs = int(n_trials), max(1, int(n_jobs))
        self.max_failure_rate, self.params = float(max_failure_rate), params or {}
        self.pruner = make_pruner(pruner)
        self.asynchronous, self.max_retry = bool(asynchronous), int(max_retry)
        self.heartbeat, self.grace = heartbeat_interval or None, grace_period
        self.worker = f"{socket.gethostname()}:{os.getpid()}"  # who runs a trial (user attr)

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )
        self.sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()

    # ------------------------------------------------------------------ the study
    def sweep(self, arguments: list[str]) -> list[Any]:
        """Run the study; a study-level problem is one message and an exit code, no traceback
        (Hydra would print one for any exception leaving a sweeper)."""
        try:
            return self._sweep(arguments)
        except OrchardError as e:
            print_error(e)
            raise SystemExit(e.exit_code) from None
        except KeyboardInterrupt:  # in the sweeper itself (its jobs run in other processes)
            print("\norchard_app: study interrupted; its running trials were stopped and their "
                  "parameters queued again: the same command resumes it.", file=sys.stderr)  # fmt: skip
            raise SystemExit(130) from None

    def _sweep(self, arguments: list[str]) -> list[Any]:
        if self.n_trials < 1:
            raise ConfigError([f"hydra.sweeper.n_trials={self.n_trials}: a study needs at least "
                               "one trial (n_trials >= 1)"])  # fmt: skip
        space, fixed, fixed_overrides = search_space(
            [f"{k}={v}" for k, v in self.params.items()], list(arguments)
        )
        self._grid(space)
        url = (
            absolute_url(self.storage, str(self.config.hydra.runtime.cwd))
            if self.storage
            else default_url(self.sweep_dir, journal=self._on_a_cluster())
        )
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        try:
            storage = open_storage(url, self.heartbeat, self.grace, self.max_retry)
            self.study_name = metadata.study_name(
                self.study_name, optuna.get_all_study_names(storage), self.config
            )
            study = optuna.create_study(
                study_name=self.study_name, storage=storage, sampler=self.sampler,
                pruner=self.pruner, direction=self._direction(), load_if_exists=True,
            )  # fmt: skip
        except (ImportError, OSError, ValueError, RuntimeError, SQLAlchemyError) as e:
            raise HpoError(
                f"cannot open the study storage {masked(url)} ({type(e).__name__}: "
                f"{first_line(e).replace(url, masked(url))}).\n"
                "  Check hydra.sweeper.storage: sqlite:///<file>, journal:///<file> or "
                "postgresql://user@host:port/db (needs psycopg: pip install 'psycopg[binary]')."
            ) from None
        self._check_direction(study)
        self._check_space(study, space)
        self._check_monitor(study)
        progress.release()
        stale = self._fail_stale(study)  # (first: a job's own record beats a heartbeat's)
        optuna.storages.fail_stale_trials(study)  # no heartbeat for grace_period: FAIL, retried
        log.info("study '%s' in %s: %d trial(s) so far%s; %d in all, %s", self.study_name, masked(url),
                 len(study.trials), f" ({stale} left running, marked FAIL)" if stale else "",
                 self.n_trials, study.direction.name.lower())  # fmt: skip
        log.info("%s", advice(masked(url)))
        returns: list[Any] = []
        shown, (url, password) = masked(url), without_password(url)  # jobs' URL: in .hydra/
        if password is not None:
            os.environ.setdefault("PGPASSWORD", password)  # jobs inherit it (submitit, SLURM too)
            sys.argv[:] = [a.replace(self.storage, shown) for a in sys.argv]  # provenance's command
        if _done(study) >= self.n_trials:
            log.info("nothing is left to run: the study already holds %d finished trial(s), "
                     "hydra.sweeper.n_trials=%d in all (raise it to run more)", _done(study),
                     self.n_trials)  # fmt: skip
        fixed_args = [f"{k}={v}" for k, v in fixed.items()] + list(fixed_overrides)
        metadata.describe(study, self.config, {k: spelled_space(d) for k, d in space.items()},
                          fixed_args)  # fmt: skip
        self._launching: list = []
        try:
            if self.asynchronous and hasattr(self.launcher, "submit"):
                returns = slots.run(self, study, space, url, fixed_args)
            else:
                returns = self._batches(study, space, url, fixed_args)
        except BaseException as e:
            with contextlib.suppress(*STORAGE_ERRORS):  # (the storage may be what failed)
                self._requeue_interrupted(study)
                report.write(study, self.sweep_dir, self.config)
            if isinstance(e, STORAGE_ERRORS):
                raise HpoError(
                    f"the study storage {shown} stopped answering ({why_storage_failed(e)})."
                    "\n  The jobs keep their outcomes in their run dirs "
                    f"and {self.sweep_dir / 'jobs.jsonl'}; run the same command once the storage "
                    "is back: the study resumes from there."
                ) from None
            raise
        report.write(study, self.sweep_dir, self.config)
        if again := retried(study.get_trials(deepcopy=False)):
            log.info("lost and retried: %s (study.csv says why)",
                     ", ".join(f"trial {a} as {b}" for a, b in sorted(again.items())))  # fmt: skip
        self._closing(study, shown)
        return returns

    def _closing(self, study: optuna.Study, shown_url: str) -> None:
        """The sweep's last lines, after its table: the best trial, the study's files, the
        command that re-runs the best trial, the dashboard command for this storage."""
        progress.close_with(report.closing(study, self.sweep_dir, self._monitor(),
                                           dashboard_command(shown_url)))  # fmt: skip

    def _batches(self, study: optuna.Study, space: dict, url: str, fixed_args: list[str]) -> list:
        """n_jobs trials at a time, each batch waited for (`asynchronous=false`, and the basic
        launcher, which runs one job after the other in this process)."""
        returns: list[Any] = []
        while (room := self.room(study)) > 0:
            if reason := self._stop_early(study):
                log.info("study stops early: %s", reason)
                break
            batch = [
                t for t in (self.ask(study, space) for _ in range(min(self.n_jobs, room))) if t
            ]
            self._launching = batch
            for run in self._composed(study, batch, url, fixed_args):
                overrides = [self._overrides(t, url, fixed_args) for t in run]
                results = self.launcher.launch(overrides, initial_job_idx=run[0].number)
                for trial, ret in zip(run, results, strict=True):
                    self._tell(study, trial, ret)
                returns += results
            optuna.storages.fail_stale_trials(study)  # lost trials (heartbeats): retried
            report.write(study, self.sweep_dir, self.config, final=False)
            self._check_failures(study)
        return returns

    def ask(self, study: optuna.Study, space: dict) -> optuna.Trial | None:
        """The next trial (a queued one first), owned by this worker; None when another worker
        took the study's last place at the same moment (then this one is not run)."""
        self._reseed(study)
        trial = study.ask(space)
        try:
            trial.set_user_attr("worker", self.worker)
        except optuna.exceptions.UpdateFinishedTrialError:  # another worker's start-up failed it
            return None  # as a stopped sweep's (clocks apart): it does not count; ask again
        trials = study.get_trials(deepcopy=False)
        again = retried(trials)
        ahead = sum(1 for t in trials if t.number < trial.number and t.state != TrialState.WAITING
                    and _counts(t, again))  # fmt: skip
        if ahead < self.n_trials:
            return trial
        trial.set_user_attr("surplus", True)
        trial.set_user_attr("error", f"not run: the study had its {self.n_trials} trials "
                                     "(another worker asked at the same moment)")  # fmt: skip
        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        return None

    def _reseed(self, study: optuna.Study) -> None:
        """A seeded sampler draws from a seed of its own for each ask, from the seed, this sweep
        dir and the trials so far: a resumed study or a second worker on it does not draw the
        first trials' parameters again (the same RNG state would), and the same command on the
        same study still draws the same values."""
        seed = (self.config.hydra.sweeper.get("sampler") or {}).get("seed")
        if seed is None or isinstance(self.sampler, optuna.samplers.GridSampler):
            return  # (a grid never repeats a point)
        mixed = zlib.crc32(f"{seed}:{self.sweep_dir}:{len(study.trials)}".encode())
        for sampler in (self.sampler, getattr(self.sampler, "_random_sampler", None)):
            rng = getattr(sampler, "_rng", None)  # pinned: optuna 5 (LazyRandomState)
            if rng is not None and hasattr(rng, "rng"):
                rng.rng.seed(mixed)

    def room(self, study: optuna.Study) -> int:
        """Trials still to ask: n_trials less those finished or running (any worker's), not
        counting interrupted or lost trials that run again."""
        trials = study.get_trials(deepcopy=False)
        again = retried(trials)
        taken = sum(1 for t in trials if t.state != TrialState.WAITING and _counts(t, again))
        return self.n_trials - taken

    def _on_a_cluster(self) -> bool:
        """SLURM jobs share the sweep dir over a network filesystem, where SQLite's locks are
        unreliable: there the default storage is Optuna's journal file."""
        return "Slurm" in str(self.config.hydra.launcher.get("_target_", ""))

    def _overrides(self, trial: optuna.Trial, url: str, fixed_args: list[str]) -> tuple[str, ...]:
        env = trial_env(url, self.study_name, trial._trial_id, self.heartbeat)  # pinned: optuna 5
        return (*(f"{k}={v}" for k, v in trial.params.items()), *fixed_args,
                *(f"++hydra.job.env_set.{k}='{v}'" for k, v in env.items()))  # fmt: skip

    def _composed(self, study: optuna.Study, batch: list, url: str, fixed_args: list[str]):
        """The batch's trials whose values Hydra composes, in runs of consecutive numbers (a
        job's number is its trial's); one that does not compose (unknown key, wrong type, bad
        enum) is a failed trial with Hydra's message, and the study goes on."""
        runs: list[list] = [[]]
        for trial in batch:
            try:
                self.hydra_context.config_loader.load_sweep_config(
                    self.config, list(self._overrides(trial, url, fixed_args))
                )
            except Exception as e:  # Hydra's ConfigCompositionException, or OmegaConf's errors
                text = "the sampled values do not compose: " + " ".join(str(e).split())[:1000]
                trial.set_user_attr("error", text)  # not study.tell: a grid sampler's
                study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)  # stop()
                append_row(self.sweep_dir, {"job": trial.number, "outcome": Outcome.FAILED,
                                            "value": None, "error": text, "run_dir": None,
                                            "overrides": [f"{k}={v}" for k, v in trial.params.items()]})  # fmt: skip
                runs.append([])
                continue
            runs[-1].append(trial)
        return [run for run in runs if run]

    def _tell(self, study: optuna.Study, trial: optuna.Trial, ret: Any) -> None:
        """Only a job that could not tell its own end (it died, or ran outside our job code):
        the reason from its JobReturn, or from the launcher's row in jobs.jsonl (a job the
        cluster launcher lost comes back COMPLETED with NaN; the reason is only there)."""
        if _state(study, trial) in FINISHED:
            return
        if ret.status == JobStatus.COMPLETED and _finite(ret.return_value):
            study.tell(trial, float(ret.return_value), skip_if_finished=True)
            return
        if ret.status == JobStatus.FAILED:
            try:  # the public property raises the job's exception (after its own stderr line)
                with contextlib.redirect_stderr(io.StringIO()):
                    _ = ret.return_value
            except Exception as error:
                text = f"{type(error).__name__}: {error}"
        else:  # the launcher or the job recorded why in the sweep's jobs.jsonl
            rows = [r for r in read_jobs(self.sweep_dir) if r["job"] == trial.number]
            text = (
                rows[-1].get("error") if rows else None
            ) or f"the job returned {ret.return_value!r}"
            if rows and rows[-1].get("lost") and self.max_retry > 0:
                text = f"lost: {text}"  # killed outright, out of memory, a node lost: again
        trial.set_user_attr("error", text[:2000])
        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        if text.startswith("lost: "):
            RetryLost(self.max_retry)(study, study._storage.get_trial(trial._trial_id))

    # ------------------------------------------------------------------ rules
    def _monitor(self) -> str:
        return str(self.config.training.monitor)

    def _direction(self) -> str:
        wanted = monitor_direction(self._monitor(), str(self.config.training.monitor_mode))
        wanted = "maximize" if wanted == "max" else "minimize"
        given = self.direction
        if given is not None and str(getattr(given, "name", given)) != wanted:
            raise ConfigError([
                f"hydra.sweeper.direction={getattr(given, 'name', given)} contradicts "
                f"training.monitor={self._monitor()}, which is to {wanted}; drop "
                "hydra.sweeper.direction (it follows the monitor), or monitor another metric"
            ])  # fmt: skip
        return wanted

    def _check_direction(self, study: optuna.Study) -> None:
        if study.direction.name.lower() != self._direction():
            raise HpoError(
                f"the study '{self.study_name}' in this storage was made to "
                f"{study.direction.name.lower()}, but training.monitor={self._monitor()} is to "
                f"{self._direction()}.\n  Use another hydra.sweeper.study_name or sweep dir."
            )

    def _check_monitor(self, study: optuna.Study) -> None:
        """A study's values are of one monitor (its progress lines and table are labelled so)."""
        recorded = study.user_attrs.get("monitor")
        if recorded is None:
            study.set_user_attr("monitor", self._monitor())
        elif recorded != self._monitor():
            raise HpoError(
                f"the study '{self.study_name}' in this storage holds values of training.monitor="
                f"{recorded}, not {self._monitor()}.\n  Use training.monitor={recorded}, or "
                "another hydra.sweeper.study_name or sweep dir."
            )

    def _check_space(self, study: optuna.Study, space: dict) -> None:
        """Optuna cannot continue a study whose distributions changed (a traceback at the first
        ask, and one more failed trial): refuse before asking, naming both spaces."""
        for t in study.get_trials(deepcopy=False):
            for name, d in space.items():
                old = t.distributions.get(name)
                if old is not None and old != d:
                    raise HpoError(
                        f"the study '{self.study_name}' searched {name}={spelled_space(old)}, now "
                        f"{name}={spelled_space(d)}: a study keeps its search space.\n  Use another "
                        "hydra.sweeper.study_name or sweep dir for the new space."
                    )

    def _grid(self, space: dict) -> None:
        """Keep the stock grid-sampler behaviour: the grid is the space, n_trials at most its size."""
        if (
            isinstance(self.sampler, functools.partial)
            and self.sampler.func is optuna.samplers.GridSampler
        ):
            grid = {k: OptunaSweeperImpl._to_grid_sampler_choices(d) for k, d in space.items()}
            self.sampler = _Grid(*self.sampler.args, grid, **self.sampler.keywords)
            self.n_trials = min(self.n_trials, math.prod(len(v) for v in grid.values()))

    def _fail_stale(self, study: optuna.Study) -> int:
        """Trials a stopped sweep left RUNNING: a job of this sweep dir that recorded its end in
        jobs.jsonl while the storage was away is told that end; the others are failed (not
        counted: n_trials runs them again). Another live worker's trials are its own."""
        stale = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING
                 and not _alive(t.user_attrs.get("worker")) and not _just_asked(t)]  # fmt: skip
        ended = {r["job"]: r for r in read_jobs(self.sweep_dir)}
        for t in stale:  # pinned: optuna 5
            row = ended.get(t.number) or {}
            if row.get("run_dir") and _same(row["run_dir"], t.user_attrs.get("job_dir")):
                if row["outcome"] == Outcome.COMPLETED and _finite(row.get("value")):
                    study.tell(t.number, float(row["value"]), skip_if_finished=True)
                    continue
                if row["outcome"] == Outcome.PRUNED:
                    study.tell(t.number, state=TrialState.PRUNED, skip_if_finished=True)
                    continue
            study._storage.set_trial_user_attr(
                t._trial_id, "error", "left running by a stopped sweep"
            )
            study._storage.set_trial_user_attr(t._trial_id, "interrupted", True)
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        return len(stale)

    def _requeue_interrupted(self, study: optuna.Study) -> None:
        """Ctrl-C or a stop signal: the batch's unfinished trials are failed and queued again,
        so re-running the same command tries the same parameters first."""
        for trial in getattr(self, "_launching", []):
            if _state(study, trial) not in FINISHED:
                trial.set_user_attr("error", "interrupted; its parameters are queued again")
                trial.set_user_attr("interrupted", True)
                study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
                study.enqueue_trial(trial.params, skip_if_exists=False)

    def _stop_early(self, study: optuna.Study) -> str | None:
        hpo = self.config.get("hpo") or {}
        complete = sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)),
                          key=lambda t: t.number)  # fmt: skip
        if not complete:
            return None
        best = study.best_trial
        target = hpo.get("target")
        if target is not None:
            reached = (
                best.value >= target if study.direction.name == "MAXIMIZE" else best.value <= target
            )
            if reached:
                return f"trial {best.number} reached hpo.target={target} ({best.value:.4f})"
        patience = hpo.get("patience")
        since = sum(1 for t in complete if t.number > best.number)
        if patience and since >= patience:
            return f"{since} completed trials without improvement (hpo.patience={patience})"
        return None

    def _check_failures(self, study: optuna.Study) -> None:
        """Stop once the failures exceed max_failure_rate of n_trials (pruned is no failure)."""
        finished = _done(study)
        trials = study.get_trials(deepcopy=False)
        again = retried(trials)
        failed = sum(1 for t in trials if t.state == TrialState.FAIL and _counts(t, again))
        if failed > self.max_failure_rate * self.n_trials:  # more than the whole study allows
            raise HpoError(
                f"{failed} of {finished} trials failed, more than hydra.sweeper.max_failure_rate="
                f"{self.max_failure_rate} of {self.n_trials} allows; each failure's error is in "
                f"{self.sweep_dir / STUDY_CSV}."
            )


def _done(study: optuna.Study) -> int:
    """Finished trials that count toward n_trials (an interrupted one does not: it is rerun)."""
    trials = study.get_trials(deepcopy=False)
    again = retried(trials)
    return sum(1 for t in trials if t.state in FINISHED and _counts(t, again))


def _counts(trial: Any, retried: dict[int, int]) -> bool:
    """Whether a trial takes one of the study's n_trials places: not one that was interrupted
    or lost and runs again, nor one asked beyond n_trials by a second worker."""
    if trial.state != TrialState.FAIL:
        return True
    attrs = trial.user_attrs
    return not (attrs.get("interrupted") or attrs.get("surplus") or trial.number in retried)


def _same(a: str, b: str | None) -> bool:
    return b is not None and Path(a).resolve() == Path(b).resolve()


ASK_GRACE_S = 30.0


def _just_asked(trial: optuna.trial.FrozenTrial) -> bool:
    """A worker asks a trial, then names itself on it: in between, the trial is another live
    worker's, not a stopped sweep's (failing it there broke that worker's ask)."""
    started = trial.datetime_start  # naive local time, as Optuna records it
    return (
        "worker" not in trial.user_attrs
        and started is not None
        and (datetime.now() - started).total_seconds() < ASK_GRACE_S
    )


def _alive(worker: str | None) -> bool:
    """Whether the sweep that owns a trial still runs: a process on this machine is asked; one
    on another machine is assumed alive (heartbeats, where the storage has them, decide)."""
    if not worker:
        return False
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname():
        return True
    if int(pid) == os.getpid():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _state(study: optuna.Study, trial: optuna.Trial) -> TrialState:
    return study._storage.get_trial(trial._trial_id).state  # pinned: optuna 5


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
