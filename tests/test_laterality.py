"""Augmentation that respects what the labels mean: no horizontal flip on a set whose classes
name a side, in training, TTA or any recipe; recipes for any dataset leave out what a set forbids."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, compose, run_cli

from orchard_app import train
from orchard_app.config.laterality import is_lateral, plan_flips, side_classes
from orchard_app.config.medmnist import label_names, medmnist_2d_names
from orchard_app.errors import ConfigError
from orchard_app.run.assemble import assemble
from orchard_app.run.context import RunContext

RECIPES = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))
LATERAL_SETS = {"organamnist", "organcmnist", "organsmnist"}


def test_side_names_are_whole_words():
    names = ["kidney-left", "L lung", "rt femur", "Dexter arm", "leftover", "bright", "bladder"]
    assert side_classes(names) == ["kidney-left", "L lung", "rt femur", "Dexter arm"]


@pytest.mark.parametrize("name", medmnist_2d_names())
def test_medmnist_laterality_follows_the_label_names_in_medmnist_info(name):
    ds = compose(f"dataset={name}").dataset
    by_names = bool(side_classes(label_names(name)))
    assert is_lateral(ds) is by_names and by_names is (name in LATERAL_SETS)
    if by_names:  # stated in the set's config, so that --cfg job shows it
        assert ds.lateral is True


def test_cfg_job_shows_that_a_set_is_side_sensitive(tmp_path):
    proc = run_cli("--cfg", "job", "dataset=organamnist", cwd=tmp_path)
    assert proc.returncode == 0 and "lateral: true" in proc.stdout, proc.stderr


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("name", medmnist_2d_names())
def test_no_recipe_mirrors_a_side_sensitive_set(recipe, name):
    cfg = compose(f"experiment={recipe}", f"dataset={name}")
    use, left_out, refused = plan_flips(cfg)
    assert refused == []  # every recipe composes with every set
    if name in LATERAL_SETS:
        assert not use["dataset.augment.hflip"]
        assert not use["evaluation.tta"] or use["dataset.augment.vflip"]  # TTA: vertical only
    if cfg.dataset.upright and cfg.dataset.augment.safe_only:
        assert not use["dataset.augment.vflip"]
    asked = cfg.dataset.augment.hflip and name in LATERAL_SETS
    assert bool(left_out) is bool(asked or (cfg.dataset.upright and cfg.dataset.augment.vflip))


@pytest.mark.parametrize(
    ("override", "names"),
    [("dataset.augment.hflip=true", "kidney-left"), ("evaluation.tta=true", "lung-right")],
)
def test_a_flip_on_a_side_sensitive_set_is_refused_naming_the_classes_and_the_fix(override, names):
    with pytest.raises(ConfigError) as e:
        plan_and_validate("dataset=organamnist", override)
    text = str(e.value)
    assert override.split("=")[0] in text and names in text and "dataset.lateral=false" in text
    plan_and_validate("dataset=organamnist", override, "dataset.lateral=false")  # names mislead


def plan_and_validate(*overrides: str) -> None:
    from orchard_app.config.validate import validate

    validate(compose(*overrides))


# ---------------------------------------------------------------- data that makes the point
def blob_npz(path: Path, counts=(400, 100, 200), size: int = 28) -> Path:
    """Two classes: a bright patch on the left or on the right half; the names say so."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in zip(("train", "val", "test"), counts, strict=True):
        y = (np.arange(n) % 2).astype(np.uint8).reshape(-1, 1)
        x = rng.integers(0, 60, size=(n, size, size), dtype=np.uint8)
        for i in range(n):
            top = rng.integers(4, size - 12)
            left = rng.integers(2, size // 2 - 8) + (size // 2 if y[i, 0] else 0)
            x[i, top : top + 8, left : left + 6] += 150
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = x, y
    np.savez_compressed(path, **arrays)
    return path


def blob_overrides(npz: Path, *extra: str) -> list[str]:
    return ["dataset=npz", f"dataset.path={npz}", "dataset.label_names=[left-blob,right-blob]",
            "training.epochs=6", "evaluation.figures=false", "hardware.num_threads=2", *extra]  # fmt: skip


def test_the_blob_set_is_side_sensitive_and_refuses_flips_the_cli_way(tmp_path):
    npz = blob_npz(tmp_path / "blobs.npz")
    assert is_lateral(compose(*blob_overrides(npz)).dataset)
    proc = run_cli(*blob_overrides(npz, "dataset.augment.hflip=true"), cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "left-blob, right-blob" in proc.stderr and "dataset.lateral=false" in proc.stderr
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("*.json"))


def test_an_image_folder_whose_class_folders_name_a_side_refuses_the_mirror(tmp_path):
    for name in ("left-blob", "right-blob"):
        (tmp_path / "imgs" / name).mkdir(parents=True)
    overrides = ("dataset=folder", f"dataset.path={tmp_path / 'imgs'}")
    assert is_lateral(compose(*overrides).dataset)
    with pytest.raises(ConfigError, match="left-blob, right-blob"):
        plan_and_validate(*overrides, "dataset.augment.hflip=true")


def test_tta_on_a_side_sensitive_set_never_averages_a_mirror_image(tmp_path):
    npz = blob_npz(tmp_path / "blobs.npz", counts=(40, 20, 20))
    cfg = compose(*blob_overrides(npz, "dataset.augment.vflip=true", "evaluation.tta=true"))
    engine = assemble(cfg, RunContext.create(cfg, tmp_path)).engine
    test = engine.pipeline.data.test
    _, plain, _ = engine.evaluate(test)
    _, tta, _ = engine.evaluate(test, tta=True)
    x, _ = next(engine.pipeline.eval_batches(test, 10_000))
    with torch.no_grad():
        vflipped = torch.softmax(engine.model(x.flip(2)), 1).numpy()
    assert tta == pytest.approx((plain + vflipped) / 2, abs=1e-5)  # no horizontal view


@pytest.mark.slow
def test_the_default_recipe_and_mini_cnn_flips_both_learn_the_sides(tmp_path):
    npz = blob_npz(tmp_path / "blobs.npz")
    default = _test_accuracy(
        train(compose(*blob_overrides(npz)), tmp_path / "default"), tmp_path / "default"
    )
    cfg = compose(*blob_overrides(npz, "experiment=mini_cnn_flips", "training.epochs=6"))
    _test_accuracy(train(cfg, tmp_path / "flips"), tmp_path / "flips")
    log = (tmp_path / "flips" / "logs" / "run.log").read_text()
    assert "left out horizontal flips (the classes name a side: left-blob, right-blob)" in log
    recorded = json.loads((tmp_path / "flips" / "metrics.json").read_text())
    assert recorded["test"]["accuracy"] >= 0.95 and default >= 0.95
    saved = tmp_path / "flips" / ".hydra" / "config.yaml"
    assert not saved.exists() or "hflip: false" in saved.read_text()


def _test_accuracy(_best: float, run_dir: Path) -> float:
    return json.loads((run_dir / "metrics.json").read_text())["test"]["accuracy"]
