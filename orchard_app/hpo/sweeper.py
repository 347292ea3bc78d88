"""The study sweeper: Hydra's Optuna sweeper, plus what it cannot do.

It reuses hydra-optuna-sweeper's search-space parsing (`interval`, `choice`, `range`,
`tag(log, ...)`, grid sampler) and adds:
- pruning: each job gets its trial through `hydra.job.env_set` (trial.py) and is stopped by
  `hydra.sweeper.pruner`; a pruned job is told PRUNED, never FAIL, and is no failure;
- resumable studies: a stable study name in a storage in the sweep dir; `n_trials` is the
  study's total, so the same command after an interruption runs only the missing trials,
  numbers new jobs after the existing ones and first marks trials a killed sweep left RUNNING
  as FAIL; Ctrl-C marks the running trials FAIL and queues their parameters again;
- study early stop (`hpo.target`, `hpo.patience`) and the study's artifacts (report.py).
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

import optuna
from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.utils import instantiate
from hydra_plugins.hydra_optuna_sweeper._impl import (  # pinned: hydra-optuna-sweeper 1.4.0rc3
    OptunaSweeperImpl,
    create_params_from_overrides,
)
from omegaconf import DictConfig
from optuna.trial import TrialState
from sqlalchemy.exc import SQLAlchemyError

from orchard_app.config import monitor_direction
from orchard_app.errors import ConfigError, HpoError, OrchardError, first_line, print_error
from orchard_app.hpo import metadata, report
from orchard_app.hpo.contract import trial_env
from orchard_app.hpo.pruners import OPTUNA_TARGETS, make_pruner
from orchard_app.hpo.storage import (
    absolute_url,
    dashboard_command,
    default_url,
    masked,
    open_storage,
    without_password,
)
from orchard_app.outcomes import Outcome
from orchard_app.run.job_record import append_row, read_jobs
from orchard_app.rundir.layout import STUDY_CSV
from orchard_app.sweep import progress

log = logging.getLogger("orchard_app.hpo")

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


class StudySweeper:
    def __init__(self, sampler: Any, direction: Any, storage: str | None, study_name: str | None,
                 n_trials: int, n_jobs: int, max_failure_rate: float, params: Any = None,
                 pruner: Any = None, custom_search_space: str | None = None, **_: Any):  # fmt: skip
        if custom_search_space:
            raise HpoError("hydra.sweeper.custom_search_space is not supported by orchard_optuna; "
                           "write the space under hydra.sweeper.params")  # fmt: skip
        self.sampler = instantiate(sampler, _execution_whitelist_=OPTUNA_TARGETS)
        self.direction, self.storage, self.study_name = direction, storage, study_name
        self.n_trials, self.n_jobs = int(n_trials), max(1, int(n_jobs))
        self.max_failure_rate, self.params = float(max_failure_rate), params or {}
        self.pruner = make_pruner(pruner)

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

    def _sweep(self, arguments: list[str]) -> list[Any]:
        if self.n_trials < 1:
            raise ConfigError([f"hydra.sweeper.n_trials={self.n_trials}: a study needs at least "
                               "one trial (n_trials >= 1)"])  # fmt: skip
        space, fixed, fixed_overrides = _search_space(
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
            storage = open_storage(url)
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
        stale = self._fail_stale(study)
        log.info("study '%s' in %s: %d trial(s) so far%s; %d in all, %s", self.study_name, masked(url),
                 len(study.trials), f" ({stale} left running, marked FAIL)" if stale else "",
                 self.n_trials, study.direction.name.lower())  # fmt: skip
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
        metadata.describe(study, self.config, {k: _space(d) for k, d in space.items()}, fixed_args)
        try:
            while (to_go := self.n_trials - _done(study)) > 0:
                if reason := self._stop_early(study):
                    log.info("study stops early: %s", reason)
                    break
                batch = [study.ask(space) for _ in range(min(self.n_jobs, to_go))]
                self._launching = batch
                for run in self._composed(study, batch, url, fixed_args):
                    overrides = [self._overrides(t, url, fixed_args) for t in run]
                    results = self.launcher.launch(overrides, initial_job_idx=run[0].number)
                    for trial, ret in zip(run, results, strict=True):
                        self._tell(study, trial, ret)
                    returns += results
                report.write(study, self.sweep_dir, self.config, final=False)
                self._check_failures(study)
        except BaseException:
            self._requeue_interrupted(study)
            report.write(study, self.sweep_dir, self.config)
            raise
        report.write(study, self.sweep_dir, self.config)
        self._closing(study, shown)
        return returns

    def _closing(self, study: optuna.Study, shown_url: str) -> None:
        """The sweep's last lines, after its table: the best trial, the study's files, the
        command that re-runs the best trial, the dashboard command for this storage."""
        progress.close_with(report.closing(study, self.sweep_dir, self._monitor(),
                                           dashboard_command(shown_url)))  # fmt: skip

    def _on_a_cluster(self) -> bool:
        """SLURM jobs share the sweep dir over a network filesystem, where SQLite's locks are
        unreliable: there the default storage is Optuna's journal file."""
        return "Slurm" in str(self.config.hydra.launcher.get("_target_", ""))

    def _overrides(self, trial: optuna.Trial, url: str, fixed_args: list[str]) -> tuple[str, ...]:
        env = trial_env(url, self.study_name, trial._trial_id)  # pinned: optuna 5
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
        trial.set_user_attr("error", text[:2000])
        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)

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
                        f"the study '{self.study_name}' searched {name}={_space(old)}, now "
                        f"{name}={_space(d)}: a study keeps its search space.\n  Use another "
                        "hydra.sweeper.study_name or sweep dir for the new space."
                    )

    def _grid(self, space: dict) -> None:
        """Keep the stock grid-sampler behaviour: the grid is the space, n_trials at most its size."""
        if (
            isinstance(self.sampler, functools.partial)
            and self.sampler.func is optuna.samplers.GridSampler
        ):
            grid = {k: OptunaSweeperImpl._to_grid_sampler_choices(d) for k, d in space.items()}
            self.sampler = self.sampler(grid)
            self.n_trials = min(self.n_trials, math.prod(len(v) for v in grid.values()))

    def _fail_stale(self, study: optuna.Study) -> int:
        stale = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING]
        for t in stale:  # pinned: optuna 5
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
        failed = sum(1 for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
                     if not t.user_attrs.get("interrupted"))  # fmt: skip
        if failed > self.max_failure_rate * self.n_trials:  # more than the whole study allows
            raise HpoError(
                f"{failed} of {finished} trials failed, more than hydra.sweeper.max_failure_rate="
                f"{self.max_failure_rate} of {self.n_trials} allows; each failure's error is in "
                f"{self.sweep_dir / STUDY_CSV}."
            )


def _search_space(preset: list[str], given: list[str]):
    """Hydra's parse of the space, each distribution checked first (Optuna's own refusals are
    tracebacks); a fixed value on the command line narrows a preset's search over its key, but
    a fixed value and a search both given there contradict each other."""
    problems = []
    for arg in preset + given:
        try:
            space, _, _ = create_params_from_overrides([arg])
        except ValueError as e:
            problems.append(f"invalid search space: {_spelled(arg)}: {_reason(e)}")
            continue
        for d in space.values():
            if any(isinstance(b, float) and not math.isfinite(b) for b in vars(d).values()):
                problems.append(f"invalid search space: {_spelled(arg)}: a bound is not finite")
    if problems:
        raise ConfigError(problems)
    searched, fixed = {}, {}
    for arg in given:
        space, value, _ = create_params_from_overrides([arg])
        searched.update({k: arg for k in space}), fixed.update({k: arg for k in value})
    if both := sorted(set(searched) & set(fixed)):
        raise ConfigError([f"{fixed[k]} and {searched[k]} both given: keep the fixed value or "
                           "the search, not both" for k in both])  # fmt: skip
    space, fixed, fixed_overrides = create_params_from_overrides(preset + given)
    for name in fixed:
        space.pop(name, None)
    return space, fixed, fixed_overrides


def _spelled(arg: str) -> str:
    """`optimizer.lr=interval(0.1, 0.0001)`, as Hydra reads the override."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        o = OverridesParser.create().parse_override(arg)
    except Exception:
        return arg
    v = o.value()
    if hasattr(v, "end"):  # IntervalSweep
        text = f"interval({v.start}, {v.end})"
    elif hasattr(v, "stop"):  # RangeSweep
        text = f"range({v.start}, {v.stop}, {v.step})"
    else:
        return arg
    return f"{o.get_key_element()}={f'tag(log, {text})' if 'log' in v.tags else text}"


def _reason(e: ValueError) -> str:
    text = first_line(e)
    if "low <= high" in text:
        return "low > high"
    if "low > 0" in text:
        return "a log scale needs low > 0"
    return "the step is 0" if "nonzero step" in text else text


def _space(d: Any) -> str:
    """A distribution as the override that asks for it: choice(16, 32), interval(0.1, 1.0)."""
    if isinstance(d, optuna.distributions.CategoricalDistribution):
        return f"choice({', '.join(map(str, d.choices))})"
    if d.step not in (None, 1) or isinstance(d, optuna.distributions.IntDistribution):
        text = f"range({d.low}, {d.high}, {d.step})"
    else:
        text = f"interval({d.low}, {d.high})"
    return f"tag(log, {text})" if d.log else text


def _done(study: optuna.Study) -> int:
    """Finished trials that count toward n_trials (an interrupted one does not: it is rerun)."""
    return sum(1 for t in study.get_trials(deepcopy=False, states=FINISHED)
               if not t.user_attrs.get("interrupted"))  # fmt: skip


def _state(study: optuna.Study, trial: optuna.Trial) -> TrialState:
    return study._storage.get_trial(trial._trial_id).state  # pinned: optuna 5


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
