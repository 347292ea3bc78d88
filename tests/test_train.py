"""End to end: `train(cfg)` in-process on tiny data, and the command line on the default."""

from __future__ import annotations

import json

import pytest
from conftest import compose, only_run_dir, run_cli, tiny_overrides

from orchard_app import train


def test_one_epoch_on_tiny_data_writes_the_run_directory(finished_run):
    run, value = finished_run  # train(compose(*tiny_overrides(npz)), output_dir=run)

    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["test"]) >= {"accuracy", "auc", "macro_f1", "balanced_accuracy", "per_class"}
    assert metrics["best_epoch"] == 1
    (epoch,) = metrics["history"]
    assert set(epoch) >= {
        "epoch",
        "train_loss",
        "val_loss",
        "val_accuracy",
        "val_auc",
        "lr",
        "seconds",
    }
    assert (
        value
        == pytest.approx(epoch["val_accuracy"])
        == pytest.approx(metrics["monitor"]["best_value"])
    )
    for name in ("checkpoints/best.pt", "checkpoints/last.pt", "logs/run.log", "logs/run.jsonl", "report.md",
                 "predictions_test.csv", "provenance.json", "requirements.txt"):  # fmt: skip
        assert (run / name).is_file(), name
    assert "epoch 1/1" in (run / "logs" / "run.log").read_text()
    written = {n: (run / n).stat().st_mtime_ns for n in ("predictions_test.csv", "report.md")}
    assert (run / "metrics.json").stat().st_mtime_ns >= max(written.values())  # last: "finished"


def test_returns_the_monitored_value(tiny_npz, tmp_path):
    value = train(
        compose(*tiny_overrides(tiny_npz, "training.monitor=val_loss")), output_dir=tmp_path / "r"
    )
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["monitor"] == {
        "name": "val_loss",
        "mode": "min",
        "best_value": pytest.approx(value),
    }
    assert value == pytest.approx(metrics["history"][0]["val_loss"])


@pytest.mark.slow  # twenty epochs of 1,257 images: a quarter of the fast suite's CPU time
def test_default_run_learns_digits(tmp_path):
    """The embedded default (digits, mini_cnn, 20 epochs): what `make train` does."""
    value = train(
        compose("hardware.num_threads=1", "evaluation.figures=false"), output_dir=tmp_path / "run"
    )
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] >= 0.98
    assert value == pytest.approx(metrics["monitor"]["best_value"]) and value >= 0.97
    assert len(metrics["history"]) == 20
    assert metrics["dataset"]["counts"] == {"train": 1257, "val": 180, "test": 360}


def test_cli_one_epoch_writes_hydra_run_dir(tmp_path):
    result = run_cli("training.epochs=1", "evaluation.figures=false", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run = only_run_dir(tmp_path)
    assert run.name.startswith("digits_mini_cnn_")
    for name in (".hydra/config.yaml", ".hydra/overrides.yaml", "metrics.json", "checkpoints/best.pt",
                 "checkpoints/last.pt", "logs/run.log"):  # fmt: skip
        assert (run / name).is_file(), name
    assert "epoch 1/1" in result.stderr and str(run.name) in result.stderr
    assert "Traceback" not in result.stderr
