"""The run context and the one assembly: hooks, outcomes, resume=auto with attempts, NaN
monitors, weight-decay groups, and one run dir for a multi-process launch."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import INTERRUPTED, compose, make_npz, tiny_overrides

from orchard_app import train
from orchard_app.errors import NonFiniteLossError, RunPruned, TrainingInterrupted
from orchard_app.outcomes import Outcome, exit_code, outcome_of


def read_json(path):
    return json.loads(path.read_text())


def test_epoch_callbacks_see_every_epoch_after_its_checkpoints(tiny_npz, tmp_path):
    seen = []

    def callback(record, engine):
        seen.append((record["epoch"], engine.checkpoints.last.is_file(), engine.state.epoch))

    train(compose(*tiny_overrides(tiny_npz, "training.epochs=3")), tmp_path / "r", [callback])
    assert seen == [(1, True, 1), (2, True, 2), (3, True, 3)]


def test_a_callback_can_prune_and_the_run_says_pruned_not_failed(tiny_npz, tmp_path):
    def prune(record, engine):
        if record["epoch"] == 2:
            raise RunPruned("median pruner: worse than the median at epoch 2", epoch=2)

    run = tmp_path / "r"
    with pytest.raises(RunPruned) as err:
        train(compose(*tiny_overrides(tiny_npz, "training.epochs=5")), run, [prune])
    assert outcome_of(err.value) is Outcome.PRUNED and exit_code(err.value) == 0
    prov = read_json(run / "provenance.json")
    assert prov["status"] == "pruned" and prov["stopped_at_epoch"] == 2
    assert prov["attempts"][-1]["outcome"] == "pruned"
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["state"]["epoch"] == 2


def test_optuna_trial_pruned_maps_to_pruned_by_name():
    class TrialPruned(Exception):  # optuna.TrialPruned is matched without importing optuna
        pass

    assert outcome_of(TrialPruned()) is Outcome.PRUNED
    assert outcome_of(ValueError()) is Outcome.FAILED
    interrupted = TrainingInterrupted("stop", signal.SIGTERM)
    assert outcome_of(interrupted) is Outcome.INTERRUPTED and exit_code(interrupted) == 143
    interrupted.requeue = True
    assert outcome_of(interrupted) is Outcome.REQUEUED


def test_resume_auto_continues_the_same_dir_and_lists_both_attempts(
    interrupted_run, shared_npz, tmp_path
):
    args = tiny_overrides(shared_npz, *INTERRUPTED)  # training.epochs=3, deterministic
    straight = tmp_path / "straight"
    train(compose(*args), straight)

    run = tmp_path / "run"  # a copy of: train(compose(*args), run, step_hooks=[SIGTERM at 9])
    shutil.copytree(interrupted_run, run)  # (stopped mid-epoch 2)
    assert read_json(run / "provenance.json")["status"] == "interrupted"

    train(compose(*args, "training.resume=auto"), run)
    prov = read_json(run / "provenance.json")
    assert [a["outcome"] for a in prov["attempts"]] == ["interrupted", "completed"]
    assert prov["status"] == "completed" and prov["attempts"][1]["resumed_from"].endswith("last.pt")
    assert all(a["host"] and a["started"] and a["finished"] for a in prov["attempts"])
    assert read_json(run / "metrics.json")["test"] == read_json(straight / "metrics.json")["test"]


def test_resume_auto_without_a_checkpoint_starts_fresh(tiny_npz, tmp_path):
    run = tmp_path / "run"
    train(compose(*tiny_overrides(tiny_npz, "training.resume=auto")), run)
    metrics = read_json(run / "metrics.json")
    assert metrics["resumed_from"] is None and len(metrics["history"]) == 1
    assert [a["outcome"] for a in read_json(run / "provenance.json")["attempts"]] == ["completed"]


def _one_class_val(npz, tmp_path):
    """`npz` with every validation label 0: the validation AUC is undefined (NaN)."""
    arrays = dict(np.load(npz))
    arrays["val_labels"] = np.zeros_like(arrays["val_labels"])
    np.savez(tmp_path / "one_class_val.npz", **arrays)
    return tmp_path / "one_class_val.npz", torch.from_numpy(np.load(npz)["val_labels"][:, 0]).long()


def test_a_nan_monitor_is_never_the_best_epoch(tiny_npz, tmp_path):
    npz, real_labels = _one_class_val(tiny_npz, tmp_path)

    def real_labels_after_epoch_1(record, engine):  # epoch 1: NaN; then real AUCs
        if record.epoch == 1:
            engine.pipeline.data.val.labels = real_labels

    value = train(
        compose(*tiny_overrides(npz, "training.epochs=3", "training.monitor=val_auc")),
        tmp_path / "r", callbacks=[real_labels_after_epoch_1],
    )  # fmt: skip
    metrics = read_json(tmp_path / "r" / "metrics.json")
    aucs = [h["val_auc"] for h in metrics["history"]]
    assert aucs[0] is None and None not in aucs[1:]  # (metrics.json writes NaN as null)
    best = metrics["best_epoch"]
    assert best >= 2 and value == aucs[best - 1] == max(aucs[1:])


def test_a_monitor_that_is_nan_throughout_is_a_clear_failure(tiny_npz, tmp_path):
    npz, _ = _one_class_val(tiny_npz, tmp_path)
    with pytest.raises(NonFiniteLossError, match="val_auc was NaN in all 2 epochs"):
        train(
            compose(*tiny_overrides(npz, "training.epochs=2", "training.monitor=val_auc")),
            tmp_path / "r",
        )
    assert read_json(tmp_path / "r" / "provenance.json")["status"] == "failed"


def test_vit_position_embedding_and_class_token_are_not_decayed():
    from orchard_app.engine.optim import build_optimizer
    from orchard_app.models import build_model

    cfg = compose("model=vit_tiny", "dataset.resolution=224", "optimizer=adamw",
                  "optimizer.weight_decay=0.05")  # fmt: skip
    model = build_model(cfg.model, 3, 4, resolution=224)
    decay, no_decay = build_optimizer(model, cfg.optimizer).param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert "pos_embed" not in decayed and "cls_token" not in decayed
    assert any(n.endswith("qkv.weight") for n in decayed)


@pytest.mark.slow
def test_ranks_of_one_launch_share_one_run_dir_and_only_rank_0_writes(tmp_path):
    """Two processes of one launch (as torchrun starts them): one run dir, written by rank 0."""
    npz = make_npz(tmp_path / "d.npz")
    launch = {"TORCHELASTIC_RUN_ID": f"test-{os.getpid()}", "MASTER_ADDR": "127.0.0.1",
              "MASTER_PORT": "29999", "WORLD_SIZE": "2", "PYTHONUNBUFFERED": "1"}  # fmt: skip
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "orchard_app", *tiny_overrides(npz)], cwd=tmp_path,
            env={**os.environ, **launch, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for r in (0, 1)
    ]  # fmt: skip
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    (run,) = [p for p in (tmp_path / "outputs").glob("*/*") if p.is_dir()]
    prov = read_json(run / "provenance.json")
    assert prov["world_size"] == 2 and prov["pid"] == procs[0].pid
    assert "epoch 1/1" in outs[0][1] and "epoch 1/1" not in outs[1][1]  # rank 1: warnings only
    assert (run / "metrics.json").is_file() and (run / "checkpoints" / "last.pt").is_file()


def test_training_samples_are_identical_through_the_assembly(tiny_npz, tmp_path):
    """The assembled pipeline feeds the engine the same batches for the same seed."""
    from orchard_app.run.assemble import assemble
    from orchard_app.run.context import RunContext

    cfg = compose(*tiny_overrides(tiny_npz, "dataset.augment.hflip=true"))
    batches = []
    for _ in range(2):
        engine = assemble(cfg, RunContext.create(cfg, tmp_path)).engine
        order = engine.pipeline.epoch_order(engine.gen)
        batches.append(engine.pipeline.train_batch(order[:16], engine.gen)[0].numpy())
    np.testing.assert_array_equal(*batches)
