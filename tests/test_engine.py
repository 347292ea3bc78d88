"""The training engine: recipe pieces, checkpoints, exact resume, signals, evaluation, report."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import compose, made_once, make_npz, run_cli, tiny_overrides

from orchard_app import train
from orchard_app.engine.checkpoint import load_checkpoint, save_checkpoint
from orchard_app.engine.loop import Engine
from orchard_app.engine.optim import build_optimizer, build_schedule
from orchard_app.errors import CheckpointError, NonFiniteLossError, TrainingInterrupted
from orchard_app.run.assemble import assemble
from orchard_app.run.context import RunContext

RECIPE = ["training.epochs=3", "hardware.deterministic=true", "dataset.augment.hflip=true",
          "dataset.augment.rotation=10", "training.mixup_alpha=0.2", "scheduler.warmup_epochs=1"]  # fmt: skip


@pytest.fixture(scope="session")
def recipe_run(tmp_path_factory, shared_npz) -> Path:
    """One uninterrupted deterministic run of RECIPE, `tiny_overrides(shared_npz, *RECIPE)`."""
    return made_once(tmp_path_factory, "recipe_run",
                     lambda p: train(compose(*tiny_overrides(shared_npz, *RECIPE)), p))[0]  # fmt: skip


def make_engine(tmp_path, npz, *overrides: str) -> Engine:
    cfg = compose(*tiny_overrides(npz, *overrides))
    return assemble(cfg, RunContext.create(cfg, tmp_path)).engine


def at_step(n: int, action):
    """A step hook that calls `action(engine)` after the n-th training step of the run."""
    calls = [0]

    def hook(engine):
        calls[0] += 1
        if calls[0] == n:
            action(engine)

    return hook


def read_metrics(run) -> dict:
    return json.loads((run / "metrics.json").read_text())


# ---------------------------------------------------------------- optimisers and schedules
def _lrs(name: str, epochs=8, steps=10, **sched) -> list[float]:
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(model, compose("optimizer=sgd", "optimizer.lr=0.1").optimizer)
    cfg = compose(f"scheduler={name}", *[f"scheduler.{k}={v}" for k, v in sched.items()]).scheduler
    schedule = build_schedule(opt, cfg, 0.1, epochs, steps, "max")
    lrs = []
    for _ in range(epochs):
        for _ in range(steps):
            opt.step()
            if schedule.interval == "step":
                schedule.scheduler.step()
        lrs.append(opt.param_groups[0]["lr"])
        if schedule.interval == "epoch":
            schedule.scheduler.step()
        elif schedule.interval == "plateau":
            schedule.scheduler.step(0.5)  # never improves
    return lrs


def test_multistep_is_the_medmnist_protocol():
    lrs = _lrs("multistep", epochs=8)
    assert lrs == pytest.approx([0.1] * 4 + [0.01] * 2 + [0.001] * 2)


def test_cosine_warms_up_then_decays_to_min_lr():
    lrs = _lrs("cosine", epochs=10, warmup_epochs=2, min_lr=0.001)
    assert lrs[0] < lrs[1] == pytest.approx(0.1, rel=0.02)
    assert all(a > b for a, b in zip(lrs[1:], lrs[2:], strict=False)) and lrs[-1] == pytest.approx(
        0.001
    )


def test_step_plateau_onecycle_and_none():
    assert _lrs("step", epochs=6, step_size=2) == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    )
    plateau = _lrs("plateau", epochs=6, patience=1)
    assert plateau[0] == 0.1 and plateau[-1] < 0.01
    onecycle = _lrs("onecycle", epochs=10, max_lr=0.5)
    assert max(onecycle) == pytest.approx(0.5, rel=0.1) and onecycle[-1] < 0.01
    assert _lrs("none") == [0.1] * 8


def test_optimizer_settings_reach_torch():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
    sgd = build_optimizer(model, compose("optimizer=sgd", "optimizer.momentum=0.8").optimizer)
    assert (
        isinstance(sgd, torch.optim.SGD)
        and sgd.defaults["nesterov"]
        and sgd.defaults["momentum"] == 0.8
    )
    adam = build_optimizer(model, compose("optimizer=adam", "optimizer.betas=[0.8,0.9]").optimizer)
    assert type(adam) is torch.optim.Adam and adam.defaults["betas"] == (0.8, 0.9)
    adamw = build_optimizer(
        model, compose("optimizer=adamw", "optimizer.weight_decay=0.1").optimizer
    )
    decay, no_decay = adamw.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])


@pytest.mark.parametrize("name", ["cosine", "multistep", "step", "plateau", "onecycle"])
def test_schedule_state_survives_a_weights_only_checkpoint(name, tmp_path):
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(model, compose().optimizer)
    schedule = build_schedule(opt, compose(f"scheduler={name}").scheduler, 1e-3, 4, 5, "max")
    for _ in range(7):
        opt.step()
        schedule.scheduler.step(*([0.5] if name == "plateau" else []))
    save_checkpoint(
        tmp_path / "s.pt", {"schedule": schedule.state_dict(), "fingerprint": {}, "model": {}}
    )
    fresh = build_schedule(opt, compose(f"scheduler={name}").scheduler, 1e-3, 4, 5, "max")
    fresh.load_state_dict(load_checkpoint(tmp_path / "s.pt")["schedule"])
    restored, saved = fresh.scheduler.state_dict(), schedule.scheduler.state_dict()
    assert restored["last_epoch"] == saved["last_epoch"] == 7
    assert restored == saved  # every counter, e.g. the plateau's best value and bad epochs


# ---------------------------------------------------------------- loss recipe pieces
def test_grad_clip_bounds_the_gradient_norm(tiny_npz, tmp_path):
    engine = make_engine(tmp_path, tiny_npz, "training.grad_clip=0.001")
    x, y = engine.pipeline.train_batch(torch.arange(16), engine.gen)
    engine._train_step(x, y)
    norm = torch.linalg.vector_norm(
        torch.stack([p.grad.norm() for p in engine.model.parameters() if p.grad is not None])
    )
    assert norm <= 0.001 * 1.01


def test_label_smoothing_and_class_weights_change_the_loss(tiny_npz, tmp_path):
    plain = make_engine(tmp_path, tiny_npz)
    smooth = make_engine(tmp_path, tiny_npz, "training.label_smoothing=0.2")
    logits, y = torch.tensor([[20.0, 0.0, 0.0]]), torch.tensor([0])
    assert plain._loss(logits, y, train=True) < 1e-6 < smooth._loss(logits, y, train=True)
    assert smooth._loss(logits, y, train=False) < 1e-6  # validation loss is the plain one
    imbalanced = make_npz(tmp_path / "imb.npz", counts=(96, 32, 32))
    weighted = make_engine(
        tmp_path, imbalanced, "training.class_weighted_loss=true", "dataset.max_samples=40"
    )
    counts = weighted.pipeline.data.class_counts()
    expected = counts.sum() / (len(counts) * counts)
    assert torch.allclose(weighted.loss.class_weight, expected)


def test_mixup_mixes_inputs_and_soft_targets(tiny_npz, tmp_path):
    engine = make_engine(tmp_path, tiny_npz, "training.mixup_alpha=0.4")
    x, y = engine.pipeline.train_batch(torch.arange(16), engine.gen)
    mixed, target = engine.loss.mixup(x, y, engine.gen)
    assert mixed.shape == x.shape and not torch.equal(mixed, x)
    assert target.shape == (16, 3) and torch.allclose(target.sum(1), torch.ones(16))
    assert ((target > 0) & (target < 1)).any()


def test_bf16_autocast_and_channels_last_on_cpu(tiny_npz, tmp_path):
    engine = make_engine(tmp_path, tiny_npz, "hardware.amp=true", "hardware.channels_last=true")
    assert engine.amp_dtype == torch.bfloat16
    seen = []
    first_conv = next(m for m in engine.model.modules() if isinstance(m, torch.nn.Conv2d))
    first_conv.register_forward_hook(
        lambda m, i, o: seen.append(
            (o.dtype, i[0].is_contiguous(memory_format=torch.channels_last))
        )
    )
    x, y = engine.pipeline.train_batch(torch.arange(16), engine.gen)
    loss = engine._train_step(x, y)
    assert torch.isfinite(loss) and seen == [(torch.bfloat16, True)]
    assert first_conv.weight.is_contiguous(memory_format=torch.channels_last)


def wrap_evaluate(wrapper):
    """A step hook that, at the run's first step, wraps that engine's `evaluate` in
    `wrapper(engine, real_evaluate)` (the Engine class is left alone)."""

    def wrap(engine):
        engine.evaluate = wrapper(engine, engine.evaluate)

    return at_step(1, wrap)


def test_early_stopping_after_patience(tiny_npz, tmp_path):
    def freeze_after_epoch_2(record, engine):
        """From epoch 3 on the model no longer changes (learning rate 0, BatchNorm statistics
        kept), so no later epoch improves on the validation loss of epoch 2."""
        if record.epoch == 2:
            for group in engine.optimizer.param_groups:
                group["lr"] = 0.0
            for m in engine.model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.momentum = 0.0

    overrides = ("training.epochs=7", "training.early_stop_patience=3", "scheduler=none",
                 "training.monitor=val_loss")  # fmt: skip
    train(compose(*tiny_overrides(tiny_npz, *overrides)), output_dir=tmp_path / "r",
          callbacks=[freeze_after_epoch_2])  # fmt: skip
    metrics = read_metrics(tmp_path / "r")
    assert metrics["epochs_run"] == 5 and metrics["stopped_early"] and metrics["best_epoch"] == 2


# ---------------------------------------------------------------- checkpoints and resume
def test_checkpoints_hold_full_state_and_load_weights_only(tiny_npz, tmp_path):
    run = tmp_path / "run"
    train(compose(*tiny_overrides(tiny_npz, "training.epochs=2")), output_dir=run)
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert {
        "model",
        "optimizer",
        "schedule",
        "scaler",
        "state",
        "rng",
        "fingerprint",
        "best_model",
    } <= set(last)
    assert last["state"]["epoch"] == 2 and len(last["state"]["history"]) == 2
    assert last["fingerprint"]["model"] == "mini_cnn" and last["fingerprint"]["num_classes"] == 3
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert best["epoch"] == read_metrics(run)["best_epoch"] and "optimizer" not in best
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "best.pt",
        "last.pt",
    ]  # no temp files


def test_deterministic_runs_are_identical(recipe_run, shared_npz, tmp_path):
    runs = [recipe_run, tmp_path / "b"]  # (recipe_run was trained as b is)
    train(compose(*tiny_overrides(shared_npz, *RECIPE)), output_dir=runs[1])
    a, b = (read_metrics(r) for r in runs)
    assert a["test"] == b["test"]
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]


@pytest.mark.parametrize(
    "stop_at_batch", [9, 12]
)  # mid-epoch 2, and its last step (epoch boundary)
def test_interrupted_then_resumed_run_matches_uninterrupted(
    recipe_run, shared_npz, tmp_path, stop_at_batch
):
    straight = recipe_run  # the same run, not interrupted

    sigterm = at_step(stop_at_batch, lambda engine: os.kill(os.getpid(), signal.SIGTERM))
    first = tmp_path / "first"
    with pytest.raises(TrainingInterrupted) as err:
        train(compose(*tiny_overrides(shared_npz, *RECIPE)), output_dir=first, step_hooks=[sigterm])
    assert err.value.exit_code == 143 and err.value.checkpoint.endswith("last.pt")
    assert json.loads((first / "provenance.json").read_text())["status"] == "interrupted"

    resumed = tmp_path / "resumed"
    train(
        compose(*tiny_overrides(shared_npz, *RECIPE, f"training.resume={err.value.checkpoint}")),
        output_dir=resumed,
    )
    a, b = read_metrics(straight), read_metrics(resumed)
    assert (
        a["test"] == b["test"] and a["history"][-1]["train_loss"] == b["history"][-1]["train_loss"]
    )
    assert b["resumed_from"] == err.value.checkpoint and len(b["history"]) == 3


@pytest.mark.slow  # a CLI run of several seconds: the fast suite stays under 3 minutes
def test_checkpoint_of_another_model_is_refused_before_loading(finished_run, shared_npz, tmp_path):
    run = finished_run[0]  # mini_cnn: train(compose(*tiny_overrides(shared_npz)), run)
    last = run / "checkpoints" / "last.pt"
    result = run_cli(
        *tiny_overrides(shared_npz, "model=resnet18_adapted", f"training.resume={last}"),
        cwd=tmp_path,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "model=mini_cnn" in result.stderr and "model=resnet18_adapted" in result.stderr
    with pytest.raises(CheckpointError, match="num_classes"):
        other = make_npz(tmp_path / "four.npz", classes=4)
        train(compose(*tiny_overrides(other, f"training.resume={last}")), output_dir=tmp_path / "x")
    with pytest.raises(CheckpointError, match="model weights only"):
        train(
            compose(
                *tiny_overrides(shared_npz, f"training.resume={run / 'checkpoints' / 'best.pt'}")
            ),
            output_dir=tmp_path / "y",
        )


def test_garbage_checkpoint_is_a_clear_error(tiny_npz, tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        train(
            compose(*tiny_overrides(tiny_npz, f"training.resume={junk}")), output_dir=tmp_path / "r"
        )


def test_non_finite_loss_stops_with_epoch_and_step_and_keeps_last_good(tiny_npz, tmp_path):
    def poison(engine):  # epoch 2, step 3 (6 steps an epoch)
        engine.state.epoch_losses[engine.state.step - 1] = float("nan")

    run = tmp_path / "run"
    with pytest.raises(NonFiniteLossError) as err:
        train(compose(*tiny_overrides(tiny_npz, "training.epochs=3")), output_dir=run,
              step_hooks=[at_step(9, poison)])  # fmt: skip
    assert "epoch 2, step 3/6" in str(err.value) and "optimizer.lr" in str(err.value)
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["state"]["epoch"] == 1
    assert json.loads((run / "provenance.json").read_text())["status"] == "failed"


def _cli(args: list[str], cwd) -> subprocess.CompletedProcess:
    cwd.mkdir(parents=True, exist_ok=True)
    return run_cli(*args, cwd=cwd)


def _sigterm_after_first_epoch(args: list[str], cwd) -> tuple[int, str]:
    """Start the CLI, send SIGTERM once epoch 1 is logged; return (exit code, stderr)."""
    cwd.mkdir(parents=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchard_app", *args], cwd=cwd, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if "epoch 1/" in line:
            proc.send_signal(signal.SIGTERM)
            break
    lines += proc.stderr.readlines()
    proc.wait(timeout=300)
    return proc.returncode, "".join(lines)


def _resume_command(text: str) -> list[str]:
    command = text.split("Resume with:")[1].strip().splitlines()[0].split()
    assert command[:3] == ["python", "-m", "orchard_app"]
    assert command[-1].startswith("training.resume=")
    return [sys.executable, *command[1:]]


def _test_metrics(cwd) -> dict:
    (path,) = cwd.glob("outputs/*/*/metrics.json")
    return json.loads(path.read_text())["test"]


@pytest.mark.slow
def test_bloodmnist_deterministic_runs_and_a_sigterm_resume_match(shared_medmnist, tmp_path):
    """Issue 6's acceptance run on the real file: 2,000 training samples, mini_cnn, deterministic;
    two straight runs agree, and a run stopped by SIGTERM and resumed matches them."""
    args = ["dataset=bloodmnist", f"dataset.root={shared_medmnist}", "dataset.max_samples=2000",
            "model=mini_cnn", "hardware.deterministic=true", "training.epochs=3", "hardware.num_threads=1"]  # fmt: skip
    first = _cli(args, tmp_path / "a")
    assert first.returncode == 0, first.stderr
    assert _cli([*args, "evaluation.figures=false"], tmp_path / "b").returncode == 0
    a = _test_metrics(tmp_path / "a")
    assert a == _test_metrics(tmp_path / "b") and a["accuracy"] > 0.5

    # SIGTERM from outside: the run stops at a step boundary and prints a resume command that
    # works; the interrupted run writes no metrics.json, the resumed one does (one file in all)
    code, text = _sigterm_after_first_epoch([*args, "evaluation.figures=false"], tmp_path / "c")
    assert code == 143, f"not interrupted (did it finish first?):\n{text}"
    assert "SIGTERM" in text and "Traceback" not in text
    command = _resume_command(text)
    resumed = subprocess.run(command, cwd=tmp_path / "c", capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert _test_metrics(tmp_path / "c") == a

    other = [c if not c.startswith("model=") else "model=resnet18_adapted" for c in command]
    refused = subprocess.run(other, cwd=tmp_path / "c", capture_output=True, text=True)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "model=mini_cnn" in refused.stderr and "model=resnet18_adapted" in refused.stderr

    (run,) = (tmp_path / "a").glob("outputs/*/*")
    assert (run / "report.md").is_file() and len(list((run / "figures").glob("*.png"))) == 4


# ---------------------------------------------------------------- evaluation and report
def test_tta_averages_the_flipped_views(tiny_npz, tmp_path):
    engine = make_engine(tmp_path, tiny_npz)
    test = engine.pipeline.data.test
    _, plain, _ = engine.evaluate(test)
    _, tta, _ = engine.evaluate(test, tta=True)
    x, _ = next(engine.pipeline.eval_batches(test, 10_000))
    with torch.no_grad():
        flipped = torch.softmax(engine.model(x.flip(3)), 1).numpy()
    assert tta == pytest.approx((plain + flipped) / 2, abs=1e-5)


def test_test_split_is_evaluated_once_with_the_best_checkpoint(tiny_npz, tmp_path):
    seen = []

    def record_test_weights(engine, real):
        def evaluate(split, tta=False):
            if split is engine.pipeline.data.test:
                seen.append({k: v.clone() for k, v in engine.model.state_dict().items()})
            return real(split, tta)

        return evaluate

    train(compose(*tiny_overrides(tiny_npz, "training.epochs=3")), output_dir=tmp_path / "r",
          step_hooks=[wrap_evaluate(record_test_weights)])  # fmt: skip
    assert len(seen) == 1
    best = torch.load(tmp_path / "r" / "checkpoints" / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(seen[0][k], best[k]) for k in best)


def test_predictions_csv_has_one_row_per_test_sample(tiny_npz, tmp_path):
    import csv

    train(
        compose(*tiny_overrides(tiny_npz, "dataset.label_names=[top,middle,bottom]")),
        output_dir=tmp_path / "r",
    )
    with open(tmp_path / "r" / "predictions_test.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 32
    assert set(rows[0]) == {
        "index",
        "true",
        "true_name",
        "pred",
        "pred_name",
        "prob_top",
        "prob_middle",
        "prob_bottom",
    }
    assert sum(float(rows[0][f"prob_{n}"]) for n in ("top", "middle", "bottom")) == pytest.approx(
        1, abs=1e-4
    )
    per_class = read_metrics(tmp_path / "r")["test"]["per_class"]
    assert set(per_class) == {"top", "middle", "bottom"} and set(per_class["top"]) == {
        "precision",
        "recall",
        "f1",
        "support",
    }


@pytest.mark.parametrize("multilabel", [False, True])
def test_report_and_figures_are_written(tmp_path, multilabel):
    npz = make_npz(tmp_path / "d.npz", classes=4, multilabel=multilabel)
    train(
        compose(
            *tiny_overrides(
                npz, "training.epochs=2", "evaluation.figures=true", "evaluation.sample_grid=8"
            )
        ),
        output_dir=tmp_path / "r",
    )
    figures = sorted(p.name for p in (tmp_path / "r" / "figures").iterdir())
    second = "auc_per_label.png" if multilabel else "confusion_matrix.png"
    assert figures == sorted(["training_curves.png", second, "roc_curves.png", "test_samples.png"])
    assert all((tmp_path / "r" / "figures" / f).stat().st_size > 10_000 for f in figures)
    report = (tmp_path / "r" / "report.md").read_text()
    accuracy = read_metrics(tmp_path / "r")["test"]["accuracy"]
    assert f"| Accuracy | {accuracy:.4f} |" in report
    assert all(f"(figures/{f})" in report for f in figures) and "## Config" in report


@pytest.mark.slow
def test_torch_compile_trains(tiny_npz, tmp_path):
    value = train(
        compose(*tiny_overrides(tiny_npz, "hardware.compile=true")), output_dir=tmp_path / "r"
    )
    assert 0 <= value <= 1
