"""Studies under bad input (issue 22): each refusal is one message naming the problem and the
fix, no traceback, a meaningful exit code, and nothing run."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import make_npz, run_cli
from test_hpo import (
    BARE,
    ok,
    rows,
    study_args,
)


@pytest.fixture
def npz(tmp_path):
    return make_npz(tmp_path / "tiny.npz")


def refused(result, code: int, *words: str) -> None:
    assert result.returncode == code, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    for w in words:
        assert w in result.stderr, result.stderr[-3000:]


@pytest.mark.parametrize(("space", "says"), [
    ("optimizer.lr=interval(1e-1,1e-4)", "optimizer.lr=interval(0.1, 0.0001): low > high"),
    ("optimizer.lr=tag(log,interval(0,1e-2))", "tag(log, interval(0.0, 0.01)): a log scale needs low > 0"),
    ("training.batch_size=range(32,128,0)", "range(32, 128, 0): the step is 0"),
    ("optimizer.lr=interval(1e-4,nan)", "interval(0.0001, nan): a bound is not finite"),
])  # fmt: skip
def test_a_malformed_search_space_is_refused_before_the_study(npz, tmp_path, space, says):
    sweep = tmp_path / "sweep"
    result = run_cli(*study_args(npz, sweep, space, preset=BARE), cwd=tmp_path)
    refused(result, 2, "invalid search space: optimizer.lr=" if "lr" in space else "", says)
    assert not (sweep / "optuna.db").exists()


@pytest.mark.parametrize("n", ["0", "-1"])
def test_a_study_of_no_trials_is_refused(npz, tmp_path, n):
    sweep = tmp_path / "sweep"
    result = run_cli(*study_args(npz, sweep, f"hydra.sweeper.n_trials={n}"), cwd=tmp_path)
    refused(result, 2, f"hydra.sweeper.n_trials={n}", "n_trials >= 1")
    assert not (sweep / "optuna.db").exists()


@pytest.mark.parametrize("search", ["interval(1,3)", "choice(1,2)"])
def test_a_fixed_value_and_a_search_over_one_key_are_refused(npz, tmp_path, search):
    sweep = tmp_path / "sweep"
    result = run_cli(*study_args(npz, sweep, "training.epochs=1", f"training.epochs={search}",
                                 preset=BARE), cwd=tmp_path)  # fmt: skip
    refused(result, 2, f"training.epochs=1 and training.epochs={search} both given")


def _finished_study(url: str, n: int = 1, space=None) -> None:
    """A study as a sweep leaves it: `n` completed trials (made here, not by a sweep: fast)."""
    import optuna
    from optuna.distributions import CategoricalDistribution

    from orchard_app.hpo.storage import open_storage

    study = optuna.create_study(study_name="orchard", storage=open_storage(url),
                                direction="maximize")  # fmt: skip
    space = space or {"training.batch_size": CategoricalDistribution((32, 64, 128))}
    for i in range(n):
        trial = study.ask(space)
        study.tell(trial, 0.5 + i / 10)


def test_a_journal_url_with_three_slashes_is_the_absolute_file_and_a_full_study_runs_nothing(
    npz, tmp_path
):
    journal = tmp_path / "elsewhere" / "optuna.journal"
    journal.parent.mkdir()
    _finished_study(f"journal:///{journal}")  # journal:////abs: four slashes
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    sweep = tmp_path / "sweep"
    result = ok(run_cli(*study_args(npz, sweep, f"hydra.sweeper.storage=journal://{journal}",
                                    "hydra.sweeper.n_trials=1"), cwd=cwd))  # fmt: skip
    assert "1 trial(s) so far" in result.stderr
    assert "nothing is left to run" in result.stderr
    assert not list(sweep.glob("*/provenance.json")) and not list(cwd.iterdir())


def test_a_journal_in_a_directory_that_does_not_exist_is_refused(npz, tmp_path):
    missing = tmp_path / "no" / "such" / "dir" / "optuna.journal"
    result = run_cli(*study_args(npz, tmp_path / "sweep", f"hydra.sweeper.storage=journal://{missing}"),
                     cwd=tmp_path)  # fmt: skip
    refused(result, 1, "a directory that does not exist", "journal:///<absolute path>")
    assert not missing.parent.exists()


@pytest.mark.parametrize(("before", "now", "says"), [
    ("choice", "model.dropout=choice(0.1,0.2)",
     "searched model.dropout=choice(0.1, 0.2, 0.3), now model.dropout=choice(0.1, 0.2)"),
    ("interval", "optimizer.lr=interval(1e-3,1e-1)",
     "searched optimizer.lr=interval(0.001, 0.01), now optimizer.lr=interval(0.001, 0.1)"),
])  # fmt: skip
def test_a_study_whose_search_space_changed_is_refused_before_asking(npz, tmp_path, before, now,
                                                                     says):  # fmt: skip
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    url = f"sqlite:///{sweep / 'optuna.db'}"
    _finished_study(url, space={"model.dropout": CategoricalDistribution((0.1, 0.2, 0.3))}
                    if before == "choice" else {"optimizer.lr": FloatDistribution(1e-3, 1e-2)})  # fmt: skip
    result = run_cli(*study_args(npz, sweep, now, "hydra.sweeper.n_trials=3", preset=BARE),
                     cwd=tmp_path)  # fmt: skip
    refused(result, 1, says, "another hydra.sweeper.study_name or sweep dir")
    assert len(optuna.load_study(study_name="orchard", storage=url).trials) == 1  # none asked


def _recorded_sweep(sweep, values=(0.7308, 0.6282)):
    """A sweep dir as an accuracy study leaves it: its study and a jobs.jsonl row per trial."""
    import json

    sweep.mkdir()
    _finished_study(f"sqlite:///{sweep / 'optuna.db'}", n=len(values))
    rows_ = [{"job": i, "outcome": "completed", "value": v, "run_dir": None}
             for i, v in enumerate(values)]  # fmt: skip
    (sweep / "jobs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows_))


def test_a_refused_resume_prints_no_replayed_values(npz, tmp_path):
    sweep = tmp_path / "sweep"
    _recorded_sweep(sweep)
    result = run_cli(*study_args(npz, sweep, "training.monitor=val_loss", "hydra.sweeper.n_trials=3"),
                     cwd=tmp_path)  # fmt: skip
    refused(result, 1, "made to maximize, but training.monitor=val_loss is to minimize")
    assert "0.7308" not in result.stderr and "0.6282" not in result.stderr
    assert "done:" not in result.stderr and "job(s)" not in result.stderr


def test_a_study_of_another_monitor_is_refused_before_its_values_are_shown(npz, tmp_path):
    import optuna

    sweep = tmp_path / "sweep"
    _recorded_sweep(sweep)
    optuna.load_study(
        study_name="orchard", storage=f"sqlite:///{sweep / 'optuna.db'}"
    ).set_user_attr("monitor", "val_auc")
    result = run_cli(*study_args(npz, sweep, "hydra.sweeper.n_trials=2"), cwd=tmp_path)
    refused(result, 1, "holds values of training.monitor=val_auc, not val_accuracy")
    assert "0.7308" not in result.stderr


@pytest.mark.parametrize(("space", "states"), [
    pytest.param("training.seed=choice(0,abc)", ["COMPLETE", "FAIL"], marks=pytest.mark.slow),
    ("training.no_such_key=choice(1,2)", ["FAIL", "FAIL"]),
])  # fmt: skip
def test_sampled_values_hydra_cannot_compose_fail_their_trial_and_the_study_goes_on(
    npz, tmp_path, space, states
):
    sweep = tmp_path / "sweep"
    result = ok(run_cli(*study_args(npz, sweep, "hydra/sweeper/sampler=grid", "training.epochs=1",
                                    "hydra.sweeper.max_failure_rate=1.0", space, preset=BARE),
                        cwd=tmp_path))  # fmt: skip
    table = sorted(rows(sweep), key=lambda r: r["state"])
    assert [r["state"] for r in table] == states
    assert all(
        "the sampled values do not compose" in r["error"] for r in table if r["state"] == "FAIL"
    )
    assert "queued again" not in result.stderr and "failed" in result.stderr  # its progress line


def test_a_postgresql_password_is_masked_in_what_the_sweep_prints(npz, tmp_path):
    pytest.importorskip("psycopg")
    url = "postgresql://user:s3cret@127.0.0.1:1/db"
    result = run_cli(*study_args(npz, tmp_path / "sweep", f"hydra.sweeper.storage={url}"),
                     cwd=tmp_path, timeout=120)  # fmt: skip
    refused(result, 1, "cannot open the study storage postgresql://user:***@127.0.0.1:1/db")
    assert "s3cret" not in result.stderr + result.stdout


@pytest.mark.slow
def test_a_postgresql_password_is_not_stored_in_the_jobs_files(npz, tmp_path, postgres_url):
    url = postgres_url.replace("postgres@", "postgres:s3cret@")  # trust auth: any password works
    sweep = tmp_path / "sweep"
    result = ok(run_cli(*study_args(npz, sweep, f"hydra.sweeper.storage={url}", "training.epochs=1",
                                    "hydra.sweeper.n_trials=1", "hydra.sweeper.study_name=pw"),
                        cwd=tmp_path, env={"PGPASSWORD": ""}))  # fmt: skip
    assert "s3cret" not in result.stderr and "postgres:***@" in result.stderr
    (job,) = [r["job_dir"] for r in rows(sweep)]
    stored = [p for p in Path(job).rglob("*") if p.is_file() and p.suffix in (".json", ".yaml")]
    assert stored and not [p for p in stored if "s3cret" in p.read_text(errors="replace")
                           and p.name != "hydra.yaml"]  # fmt: skip
