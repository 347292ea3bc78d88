"""What a researcher sees during and after a sweep (issue 17): the Optuna direction follows
training.monitor, launcher warnings come once, a line per finished job, a closing table."""

from __future__ import annotations

import json
import logging
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import compose, run_cli, tiny_overrides
from omegaconf import OmegaConf, open_dict

from orchard_app.hpo.storage import dashboard_command
from orchard_app.rundir.layout import JOBS as RECORD_NAME
from orchard_app.sweep.console import compact, launched
from orchard_app.sweep.direction import follow_monitor
from orchard_app.sweep.launcher_logs import route_launcher_logs
from orchard_app.sweep.progress import Progress, summary_text, total_jobs

CLOCK = r"\[\d\d:\d\d:\d\d\] "


def sweep_dir_of(tmp_path: Path) -> Path:
    (sweep,) = (tmp_path / "multirun").glob("*/*")
    return sweep


def jobs_of(sweep: Path) -> list[dict]:
    return [json.loads(line) for line in (sweep / RECORD_NAME).read_text().splitlines()]


def console_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if re.match(CLOCK, line)]


def assert_no_line_printed_twice(lines: list[str]) -> None:
    """A record reaching two handlers prints twice in a row. (Two jobs may legitimately log the
    same line in the same second, e.g. equal test metrics, with other lines between them.)"""
    doubled = [a for a, b in zip(lines, lines[1:], strict=False) if a == b]
    assert not doubled, f"a console line was printed twice: {doubled}"


def compose_hydra(*overrides: str):
    """The composed config with its `hydra` node, as the launcher process sees it."""
    return compose(*overrides, return_hydra_config=True)


def write_rows(sweep: Path, *rows: dict) -> None:
    """Rows as jobs append them (cli.record_job), e.g. from other processes."""
    with open(sweep / RECORD_NAME, "a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


# ---------------------------------------------------------------------- 1. direction
@pytest.mark.slow  # a CLI run of several seconds: the fast suite stays under 3 minutes
def test_the_stock_optuna_sweeper_maximises_accuracy_and_reports_the_best(tiny_npz, tmp_path):
    result = run_cli("-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=3",
                     "optimizer.lr=tag(log,interval(1e-4,1e-2))", *tiny_overrides(tiny_npz),
                     cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    err = result.stderr
    assert "Traceback" not in err
    assert err.count("hydra.sweeper.direction=maximize, following training.monitor") == 1
    assert "Directions: ['maximize']" in err

    values = [j["value"] for j in jobs_of(sweep_dir_of(tmp_path))]
    assert len(values) == 3
    best = float(re.search(r"Best value: (\S+)", err)[1])
    assert best == max(values)
    # a line per trial as it ends, then the table
    for k in (1, 2, 3):
        assert (
            len(re.findall(rf"{CLOCK}trial #\d done, val_accuracy \S+ \| {k} of 3 ended", err)) == 1
        ), k
    assert f"best val_accuracy {max(values):.4f}" in err
    assert re.search(r"trial +state +val_accuracy +run dir", err)
    for k in (0, 1, 2):  # one line per launched trial, with its sampled value
        assert len(re.findall(rf"{CLOCK}trial #{k} launched: lr=\d\.\d+(e-0\d)?\n", err)) == 1, k
    assert "Launching" not in err and "[I " not in err  # nor Hydra's nor Optuna's own lines
    lines = console_lines(err)
    assert_no_line_printed_twice(lines)


def test_a_direction_that_contradicts_the_monitor_is_refused_before_any_trial(tiny_npz, tmp_path):
    result = run_cli("-m", "hydra/sweeper=optuna", "hydra.sweeper.direction=minimize",
                     "optimizer.lr=tag(log,interval(1e-4,1e-2))", *tiny_overrides(tiny_npz),
                     cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    message = result.stderr[result.stderr.index("orchard_app: ") :]
    assert message.startswith(
        "orchard_app: invalid config:\n  - hydra.sweeper.direction=minimize "
        "contradicts training.monitor=val_accuracy, which is to maximize"
    )
    assert "No trial was run" in message
    assert not (tmp_path / "multirun").exists() and not (tmp_path / "outputs").exists()


@pytest.mark.parametrize(
    ("overrides", "direction", "said"),
    [
        ([], "maximize", True),
        (["training.monitor=val_loss"], "minimize", True),
        (["training.monitor=val_auc", "hydra.sweeper.direction=maximize"], "maximize", False),
        (["training.monitor=val_loss", "hydra.sweeper.direction=[minimize]"], ["minimize"], False),
        (["training.monitor=val_loss", "training.monitor_mode=max",
          "hydra.sweeper.direction=maximize"], "maximize", False),
    ],
)  # fmt: skip
def test_the_optuna_direction_follows_the_monitor(overrides, direction, said, capsys):
    cfg = compose_hydra("hydra/sweeper=optuna", *overrides)
    follow_monitor(cfg)
    got = cfg.hydra.sweeper.direction
    assert (OmegaConf.to_container(got) if OmegaConf.is_list(got) else got) == direction
    err = capsys.readouterr().err
    assert ("following training.monitor" in err) is said
    if said:  # every job's config is recomposed from these overrides and must match
        assert f"hydra.sweeper.direction={direction}" in cfg.hydra.overrides.hydra


@pytest.mark.parametrize(
    "overrides",
    [
        ["training.monitor=val_loss", "hydra.sweeper.direction=maximize"],
        ["hydra.sweeper.direction=[maximize,minimize]"],  # train() returns one value
    ],
)
def test_a_contradicting_or_multi_objective_direction_exits_2(overrides, capsys):
    cfg = compose_hydra("hydra/sweeper=optuna", *overrides)
    with pytest.raises(SystemExit) as exit_:
        follow_monitor(cfg)
    assert exit_.value.code == 2
    assert " contradicts training.monitor=" in capsys.readouterr().err


def test_the_basic_sweeper_is_left_alone(capsys):
    cfg = compose_hydra("training.monitor=val_loss")
    follow_monitor(cfg)
    assert "direction" not in cfg.hydra.sweeper and capsys.readouterr().err == ""


# ---------------------------------------------------------------------- 2. launcher warnings
def test_a_launcher_warning_is_printed_once_in_the_app_format(capfd):
    cfg = OmegaConf.create({"hydra": {"launcher": {
        "_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"}}})  # fmt: skip
    import submitit  # noqa: F401  (sets up submitit's own two handlers)

    submitit_log = logging.getLogger("submitit")
    own = (submitit_log.handlers[:], submitit_log.propagate)
    undo = route_launcher_logs(cfg)
    try:
        for call, job in ((1, 3), (2, 3), (3, 4)):  # submitit's status polls
            submitit_log.warning(f"Call #{call} - Bypassing sacct error Command '['sacct', '-j', "
                                 f"'{job}']' returned non-zero exit status 1.")  # fmt: skip
        submitit_log.warning("another warning")
    finally:
        undo()
    out, err = capfd.readouterr()
    assert out == ""
    assert len(re.findall(rf"{CLOCK}WARNING: submitit: Call #1 - Bypassing sacct", err)) == 1
    assert err.count("Bypassing sacct error") == 1 and err.count("another warning") == 1
    assert (submitit_log.handlers, submitit_log.propagate) == own  # restored after the sweep


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.timeout(300)  # without sacct, a job killed from outside would be waited for forever
def test_a_slurm_sweep_shows_each_launcher_warning_once(cluster, tiny_npz, tmp_path):
    result = run_cli("-m", "hydra/launcher=submitit_slurm", "hydra.launcher.timeout_min=5",
                     *tiny_overrides(tiny_npz, "training.seed=1,2", "hardware.num_threads=1"),
                     cwd=tmp_path, timeout=240)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    assert output.count("Bypassing sacct error") <= 1  # once, or never on a cluster with sacct
    assert "submitit WARNING" not in output  # submitit's own handlers are set aside
    for k in (1, 2):
        assert (
            len(
                re.findall(
                    rf"{CLOCK}job #\d done, val_accuracy \S+ \| {k} of 2 ended", result.stderr
                )
            )
            == 1
        )
    lines = console_lines(result.stderr)
    assert_no_line_printed_twice(lines)
    assert {j["outcome"] for j in jobs_of(sweep_dir_of(tmp_path))} == {"completed"}


# ---------------------------------------------------------------------- 4. progress
def test_a_basic_sweep_prints_a_line_per_job_and_a_table(failing_sweep):
    _, result = failing_sweep
    assert result.returncode == 1
    err = result.stderr
    assert "Traceback" not in err
    first = re.search(rf"{CLOCK}job #0 done, val_accuracy (\S+) \| 1 of 2 ended \| best so far "
                      r"\1 \(#0\) \| elapsed \d+s, ETA \d+s\n", err)  # fmt: skip
    second = re.search(rf"{CLOCK}job #1 failed \| 2 of 2 ended \| best so far \S+ \(#0\) "
                       r"\| elapsed \d+s\n", err)  # fmt: skip
    assert first and second and first.start() < second.start(), err[-3000:]
    assert err.count("1 of 2 ended") == 1 and err.count("2 of 2 ended") == 1
    # a line per launched job, with the value it sweeps; none of Hydra's per-launch lines
    assert re.search(rf"{CLOCK}job #0 launched: label_smoothing=0.1\n", err)
    assert re.search(rf"{CLOCK}job #1 launched: label_smoothing=1.5\n", err)
    assert "Launching" not in err and "\t#0 :" not in err
    table = err[err.index("sweep /") :]
    assert "2 job(s): 1 completed, 1 failed; best val_accuracy" in table
    assert re.search(r"job +state +val_accuracy +run dir\n +#0 +completed +\d\.\d{4} +/", table)
    assert re.search(r"#1 +failed +\(no run dir: the job never started\)", table)


def test_progress_lines_from_another_process_each_once_with_best_and_eta(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    progress = Progress(sweep, total=20, noun="trial", monitor="val_accuracy", direction="max")
    progress.start()
    write_rows(sweep, {"job": 4, "outcome": "completed", "value": 0.912},
               {"job": 1, "outcome": "completed", "value": 0.5})  # fmt: skip
    with open(sweep / RECORD_NAME, "a") as f:  # a row still being written
        f.write('{"job": 6, "outcome": "pruned", ')
    time.sleep(1.5)
    with open(sweep / RECORD_NAME, "a") as f:
        f.write('"value": null, "stopped_at_epoch": 3}\n')
    write_rows(sweep, {"job": 2, "outcome": "requeued", "value": None})
    progress.stop()
    lines = console_lines(capsys.readouterr().err)
    assert [re.sub(CLOCK, "", line).split(" | ")[:3] for line in lines] == [
        ["trial #4 done, val_accuracy 0.9120", "1 of 20 ended", "best so far 0.9120 (#4)"],
        ["trial #1 done, val_accuracy 0.5000", "2 of 20 ended", "best so far 0.9120 (#4)"],
        ["trial #6 pruned at epoch 3", "3 of 20 ended", "best so far 0.9120 (#4)"],
        ["trial #2 requeued (it resumes when the scheduler restarts it)", "3 of 20 ended",
         "best so far 0.9120 (#4)"],
    ]  # fmt: skip
    assert all(re.search(r"\| elapsed \d+s, ETA \d+s$", line) for line in lines)
    assert not [t for t in threading.enumerate() if t.name == "sweep-progress"]  # it has ended


@pytest.mark.parametrize("replay", [True, False])
def test_a_sweep_rerun_in_its_old_dir_prints_only_its_own_rows_unless_a_study(
    tmp_path, capsys, replay
):
    """A resumed study replays its trials so far; a basic sweep re-run in its old dir does not
    show the earlier sweep's jobs as its own progress."""
    write_rows(tmp_path, {"job": 0, "outcome": "timeout", "value": None})  # the earlier sweep
    progress = Progress(tmp_path, total=1, noun="job", monitor="val_loss", direction="min",
                        replay=replay)  # fmt: skip
    write_rows(tmp_path, {"job": 0, "outcome": "completed", "value": 0.3})  # this run's
    progress.poll()
    lines = [re.sub(CLOCK, "", line) for line in console_lines(capsys.readouterr().err)]
    assert [line.split(" | ")[0] for line in lines] == [
        *(["job #0 timeout"] if replay else []),
        "job #0 done, val_loss 0.3000",
    ]


def test_best_so_far_follows_a_loss_monitor_downwards(tmp_path, capsys):
    progress = Progress(tmp_path, total=None, noun="job", monitor="val_loss", direction="min")
    write_rows(tmp_path, {"job": 0, "outcome": "completed", "value": 0.7},
               {"job": 1, "outcome": "completed", "value": 0.3},
               {"job": 2, "outcome": "failed", "value": None})  # fmt: skip
    progress.poll()
    progress.poll()  # nothing new: nothing printed again
    last = console_lines(capsys.readouterr().err)
    assert len(last) == 3
    assert re.sub(CLOCK, "", last[-1]).startswith(
        "job #2 failed | 3 ended | best so far 0.3000 (#1)"
    )
    assert "ETA" not in last[-1]  # the total is unknown


def test_the_summary_table_names_the_epoch_a_pruned_trial_stopped_at(tmp_path):
    jobs = [{"job": 0, "outcome": "pruned", "value": None, "stopped_at_epoch": 3,
             "run_dir": str(tmp_path / "0_x"), "error": "pruned"},
            {"job": 1, "outcome": "completed", "value": 0.25, "run_dir": str(tmp_path / "1_x")}]  # fmt: skip
    text = summary_text(tmp_path, jobs, "val_loss", "min")
    head = text.splitlines()[0]
    assert head.endswith("2 job(s): 1 completed, 1 pruned; best val_loss 0.2500 (#1)")
    assert re.search(r"#0 +pruned +" + re.escape(str(tmp_path / "0_x")), text)
    assert "stopped at epoch 3" in text


@pytest.mark.parametrize(
    ("task", "params", "total"),
    [
        (["training.seed=1,2,3", "optimizer=adam,sgd", "training.epochs=2"], None, 6),
        (["training.seed=1,2"], {"optimizer.lr": "1e-3,1e-2"}, 4),
        (["training.seed=range(0,5)"], None, 5),
    ],
)
def test_the_total_of_a_basic_sweep_is_its_number_of_combinations(task, params, total):
    cfg = OmegaConf.create({"hydra": {
        "sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                    "max_batch_size": None, "params": params},
        "overrides": {"task": task, "hydra": []}}})  # fmt: skip
    assert total_jobs(cfg) == total


@pytest.mark.parametrize(("sampler", "total"), [("TPESampler", 20), ("GridSampler", None)])
def test_the_total_of_an_optuna_sweep_is_n_trials_unless_a_grid_ends_it_sooner(sampler, total):
    cfg = compose_hydra("hydra/sweeper=optuna", "hydra.sweeper.n_trials=20")
    with open_dict(cfg.hydra.sweeper.sampler):
        cfg.hydra.sweeper.sampler._target_ = f"optuna.samplers.{sampler}"
    assert total_jobs(cfg) == total


# ---------------------------------------------------------------------- sweep-only arguments
@pytest.mark.parametrize(
    ("arg", "said"),
    [
        ("hpo=quick", "runs an Optuna study of many trials, which needs -m"),
        ("hydra/sweeper=orchard_optuna", "takes effect only in a sweep, which needs -m"),
        ("optimizer.lr=tag(log,interval(1e-4,1e-2))", "asks for a sweep (several values or a "
         "search space), which needs -m"),
        ("training.batch_size=choice(16,32)", "asks for a sweep"),
        ("training.batch_size=range(16,64,16)", "asks for a sweep"),
        ("training.seed=1,2", "asks for a sweep"),
    ],
)  # fmt: skip
def test_a_sweep_argument_without_m_is_refused_before_anything_runs(arg, said, tmp_path):
    result = run_cli(arg, "training.epochs=1", cwd=tmp_path, timeout=60)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.lstrip().startswith(f"orchard_app: invalid config:\n  - {arg} {said}")
    assert (
        f"add -m for the sweep: python -m orchard_app -m {shlex.quote(arg)} training.epochs=1"
        in result.stderr
    )
    assert ("interval is searched by an Optuna study" in result.stderr) == ("interval(" in arg)
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").exists()


@pytest.mark.parametrize(("arg", "said"), [("hpo=null", "leave hpo out for its default\n"),
                                           ("experiment=null", "or use none\n")])  # fmt: skip
def test_a_null_group_in_a_single_run_is_one_message(arg, said, tmp_path):
    result = run_cli(arg, "training.epochs=1", cwd=tmp_path, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"  - {arg}: null is not an option; " in result.stderr and said in result.stderr


def test_the_config_of_an_hpo_preset_can_still_be_shown_without_m(tmp_path):
    result = run_cli("--cfg", "job", "hpo=quick", cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "hpo:" in result.stdout


# ---------------------------------------------------------------------- 5. launch and closing lines
def test_a_launch_line_names_the_trial_and_its_values_in_short(capsys):
    launched(5, {"optimizer.lr": "0.0008468008575248334", "training.batch_size": "32",
                 "scheduler": "cosine", "a.dropout": 7.068974950624607e-06, "b.dropout": 0.5})  # fmt: skip
    (line,) = console_lines(capsys.readouterr().err)
    assert re.sub(CLOCK, "", line) == ("trial #5 launched: lr=0.000847 batch_size=32 "
                                       "scheduler=cosine a.dropout=7.07e-06 b.dropout=0.5")  # fmt: skip
    assert [compact(v) for v in ("1e-3", "nan", "12", 3, "0.30000000000000004")] == [
        "0.001", "nan", "12", "3", "0.3"]  # fmt: skip


def test_hydras_launch_records_become_one_short_line_per_trial(capsys):
    """The records Hydra's basic launcher (and submitit's) logs at each launch of a study."""
    cfg = OmegaConf.create({"hydra": {"launcher": {"_target_": "hydra._internal.core_plugins."
                                                   "basic_launcher.BasicLauncher"}}})  # fmt: skip
    undo = route_launcher_logs(cfg, {"optimizer.lr", "training.batch_size"}, "trial")
    hydra_log = logging.getLogger("hydra._internal.core_plugins.basic_launcher")
    try:
        with capture_records(hydra_log) as passed:
            hydra_log.info("Launching 1 jobs locally")
            hydra_log.info("\t#7 : optimizer.lr=0.011536162338241389 training.batch_size=128 "
                           "hpo=quick dataset=npz ++hydra.job.env_set.ORCHARD_HPO_TRIAL='8'")  # fmt: skip
            hydra_log.info("something else")
    finally:
        undo()
    (line,) = console_lines(capsys.readouterr().err)
    assert re.sub(CLOCK, "", line) == "trial #7 launched: lr=0.0115 batch_size=128"
    assert passed == ["something else"]
    assert not hydra_log.filters  # taken off after the sweep


class capture_records:  # noqa: N801  (a context manager read as a phrase)
    def __init__(self, logger: logging.Logger):
        self.logger, self.messages = logger, []
        self.handler = logging.Handler()
        self.handler.emit = lambda record: self.messages.append(record.getMessage())

    def __enter__(self) -> list[str]:
        self.logger.addHandler(self.handler)
        self.level, self.logger.level = self.logger.level, logging.INFO
        return self.messages

    def __exit__(self, *exc) -> None:
        self.logger.removeHandler(self.handler)
        self.logger.level = self.level


@pytest.mark.parametrize(
    ("url", "command"),
    [
        ("sqlite:////abs/sweep/optuna.db", "optuna-dashboard sqlite:////abs/sweep/optuna.db"),
        ("journal:///abs/sweep/optuna.journal", "optuna-dashboard /abs/sweep/optuna.journal"),
        ("postgresql://ann:***@db:5432/studies",
         "optuna-dashboard 'postgresql://ann:***@db:5432/studies'   (*** is the password; "
         "or export PGPASSWORD and leave out :***)"),
        ("postgresql://ann@db/studies", "optuna-dashboard postgresql://ann@db/studies"),
    ],
)  # fmt: skip
def test_the_dashboard_command_fits_the_storage(url, command):
    assert dashboard_command(url) == command


@pytest.mark.slow  # optuna-dashboard takes 8-20 s to start here
@pytest.mark.parametrize("journal", [False, True])
def test_the_printed_dashboard_command_opens_the_study(journal, tmp_path):
    """optuna-dashboard itself, started with the printed command, lists the study."""
    pytest.importorskip("optuna_dashboard")
    import optuna

    from orchard_app.hpo.storage import default_url, open_storage

    url = default_url(tmp_path / "my sweep", journal=journal)  # a space, as a path may have
    (tmp_path / "my sweep").mkdir()
    optuna.create_study(study_name="orchard", storage=open_storage(url)).ask()
    port = free_port()
    args = [*shlex.split(dashboard_command(url)), "--port", str(port), "--host", "127.0.0.1"]
    args[0] = str(Path(sys.executable).with_name("optuna-dashboard"))
    server = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        studies = None
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as r:
                    studies = json.load(r)["study_summaries"]
                break
            except OSError:
                time.sleep(0.2)
        assert studies is not None, "optuna-dashboard did not answer"
        assert [s["study_name"] for s in studies] == ["orchard"]
    finally:
        server.terminate()
        server.wait(timeout=10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
