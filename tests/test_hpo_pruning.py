"""Pruning that spares slow starters and costs a pruned trial little: the pruner presets and
their warm-up, the pruned trial's short record, and what a study says about itself."""

from __future__ import annotations

import sys

import optuna
import pytest
from conftest import compose, make_npz, run_cli, tiny_overrides
from optuna.trial import TrialState

from orchard_app.hpo.pruners import make_pruner


def pruner_config(*overrides: str):
    return compose(*overrides, return_hydra_config=True).hydra.sweeper.pruner


@pytest.mark.parametrize(("epochs", "warmup", "steps"), [(8, None, 2), (40, None, 10),
                                                         (40, "0.5", 20), (7, "0.5", 4)])  # fmt: skip
def test_the_warm_up_is_a_fraction_of_the_trial_length(epochs, warmup, steps):
    extra = [f"hpo.warmup={warmup}"] if warmup else []
    for preset in ("median", "percentile"):
        pruner = make_pruner(pruner_config("hpo=quick", f"hpo/pruner={preset}",
                                           f"training.epochs={epochs}", *extra))  # fmt: skip
        assert pruner._n_warmup_steps == steps  # pinned: optuna 5
    hyperband = pruner_config(
        "hpo=full", "hpo/pruner=hyperband", f"training.epochs={epochs}", *extra
    )
    assert (hyperband.min_resource, hyperband.max_resource) == (steps, epochs)


def test_an_explicit_warm_up_and_no_pruner_still_compose():
    assert pruner_config("hpo=quick", "hydra.sweeper.pruner.n_warmup_steps=3").n_warmup_steps == 3
    assert pruner_config("hpo=quick", "hpo/pruner=none") is None
    own = pruner_config("hpo=quick", "hpo/pruner=none",
                        "hydra.sweeper.pruner={_target_:optuna.pruners.ThresholdPruner,lower:0.5}")  # fmt: skip
    assert isinstance(make_pruner(own), optuna.pruners.ThresholdPruner)


def test_a_pruner_preset_is_typed():
    with pytest.raises(Exception, match="n_startup_trials"):
        pruner_config("hpo=quick", "hydra.sweeper.pruner.n_startup_trials=many")


def _replay(pruner, curves: list[list[float]]) -> list[int | None]:
    """Each curve told epoch by epoch to a study with `pruner`: the epoch each was pruned at."""
    study = optuna.create_study(direction="maximize", pruner=pruner)
    stopped = []
    for curve in curves:
        trial = study.ask()
        for epoch, value in enumerate(curve, start=1):
            trial.report(value, epoch)
            if trial.should_prune():
                study.tell(trial, state=TrialState.PRUNED)
                stopped.append(epoch)
                break
        else:
            study.tell(trial, max(curve))
            stopped.append(None)
    return stopped


@pytest.mark.parametrize("preset", ["median", "percentile", "hyperband"])
def test_each_preset_prunes_a_hopeless_trial_after_its_warm_up_only(preset):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    epochs = 8  # warm-up 0.25 x 8 = 2 epochs
    pruner = make_pruner(
        pruner_config("hpo=quick", f"hpo/pruner={preset}", f"training.epochs={epochs}")
    )
    good = [[0.5 + 0.05 * e + 0.001 * k for e in range(epochs)] for k in range(8)]
    hopeless = [0.1] * epochs
    stopped = _replay(pruner, good + [hopeless, hopeless])
    assert stopped[-1] is not None and stopped[-1] >= 2  # never before the warm-up
    assert stopped[:3] == [None, None, None]  # the first trials always finish


def test_a_pruned_trial_skips_the_test_evaluation_and_records_its_validation_epochs(tmp_path):
    from orchard_app.errors import RunPruned
    from orchard_app.hpo.trial import JobTrial
    from orchard_app.outcomes import Outcome
    from orchard_app.run.train import train

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    prune_all = optuna.pruners.ThresholdPruner(lower=2.0, n_warmup_steps=2)  # at epoch 2
    study = optuna.create_study(study_name="s", storage=url, direction="maximize", pruner=prune_all)
    job = JobTrial(url, "s", study.ask()._trial_id, pruner=prune_all)
    npz = make_npz(tmp_path / "tiny.npz")
    cfg = compose(*tiny_overrides(npz, "training.epochs=4", "evaluation.figures=true"))
    run = tmp_path / "run"
    with pytest.raises(RunPruned) as pruned:
        train(cfg, output_dir=run, callbacks=[job.on_epoch_end])
    job.ended(Outcome.PRUNED, error=str(pruned.value), epoch=pruned.value.epoch)

    assert pruned.value.epoch == 2
    assert not (run / "metrics.json").exists() and not (run / "predictions_test.csv").exists()
    assert not (run / "figures").exists() and not (run / "exports").exists()
    report = (run / "report.md").read_text()
    assert "## Pruned at epoch 2" in report and "test split was not evaluated" in report
    assert "Test results" not in report and "| 2 " in report and "| 3 " not in report
    trial = optuna.load_study(study_name="s", storage=url).trials[0]
    assert trial.state == TrialState.PRUNED and trial.user_attrs["pruned_at_epoch"] == 2
    history = trial.user_attrs["val_history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert [h["val_accuracy"] for h in history] == [trial.intermediate_values[e] for e in (1, 2)]
    assert {"val_loss", "val_auc", "seconds"} <= set(history[0])


def test_a_study_is_named_after_what_it_searches_and_an_old_one_keeps_its_name(monkeypatch):
    from orchard_app.hpo import metadata

    cfg = compose("hpo=quick", "dataset=breastmnist", "model=resnet18_adapted",
                  return_hydra_config=True)  # fmt: skip
    assert metadata.study_name(None, [], cfg) == "breastmnist-resnet18_adapted-quick"
    assert metadata.study_name(None, ["orchard"], cfg) == "orchard"  # a sweep dir made before
    both = ["orchard", "breastmnist-resnet18_adapted-quick"]
    assert metadata.study_name(None, both, cfg) == "breastmnist-resnet18_adapted-quick"
    assert metadata.study_name("mine", ["orchard"], cfg) == "mine"

    study = optuna.create_study(direction="maximize")
    monkeypatch.setattr(sys, "argv", ["orchard_app/__main__.py", "-m", "hpo=quick"])
    space = {"optimizer.lr": "tag(log, interval(0.0001, 0.03))"}
    metadata.describe(study, cfg, space, ["dataset=breastmnist"])
    assert study.metric_names == ["val_accuracy"]
    attrs = study.user_attrs
    assert attrs["dataset"] == "breastmnist" and attrs["model"] == "resnet18_adapted"
    assert attrs["search_space"] == space and attrs["fixed_overrides"] == ["dataset=breastmnist"]
    assert attrs["pruner"]["_target_"] == "optuna.pruners.MedianPruner"
    assert attrs["pruner"]["n_warmup_steps"] == 5  # resolved: 0.25 x 20 epochs
    assert attrs["sampler"]["seed"] == 42
    assert attrs["command"] == "python -m orchard_app -m hpo=quick"


@pytest.mark.slow
def test_a_real_study_records_its_metadata_and_resumes_under_its_name(tmp_path):
    npz = make_npz(tmp_path / "tiny.npz")
    sweep = tmp_path / "sweep"
    args = ["-m", "hpo=quick", f"hydra.sweep.dir={sweep}", *tiny_overrides(npz),
            "hydra.sweeper.params={}", "optimizer.lr=choice(3e-3,1e-3)"]  # fmt: skip
    for n in (1, 2):
        done = run_cli(*args, f"hydra.sweeper.n_trials={n}", cwd=tmp_path)
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    storage = f"sqlite:///{sweep / 'optuna.db'}"
    (name,) = optuna.get_all_study_names(storage)
    assert name == "npz-mini_cnn-quick"
    study = optuna.load_study(study_name=name, storage=storage)
    assert len(study.trials) == 2 and study.metric_names == ["val_accuracy"]
    space = study.user_attrs["search_space"]
    assert space["optimizer.lr"] == "choice(0.003, 0.001)" and "training.batch_size" not in space
    assert "training.batch_size=16" in study.user_attrs["fixed_overrides"]
    assert "hydra.sweeper.n_trials=2" in study.user_attrs["command"]
