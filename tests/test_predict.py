"""`python -m orchard_app.predict` on a trained run's own test images reproduces its test
accuracy (through model.onnx and through the checkpoint, from an .npz and from PNG files);
Grad-CAM overlays for the zoo; bad inputs are one message and an exit code."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, compose, made_once, make_npz, tiny_overrides

from orchard_app import train
from orchard_app.predict.__main__ import main

QUICK_EXPORT = ["export.enabled=true", "export.int8=false", "export.latency_repeats=1",
                "export.latency_warmup=0", "export.latency_batch_sizes=[1]",
                "export.random_samples=4"]  # fmt: skip


def train_run(base: Path, *extra: str) -> tuple[Path, Path]:
    npz = make_npz(base / "d.npz", classes=3)
    run = base / "run"
    train(compose(*tiny_overrides(npz, "training.epochs=3", "dataset.label_names=[top,mid,low]",
                                  *extra)), output_dir=run)  # fmt: skip
    return run, npz


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(run dir, npz) of one tiny mini_cnn run, made once for the session (both workers read
    it): model.onnx exported, report with saliency. Read it; nothing writes into it."""

    def make(base: Path) -> list[str]:
        base.mkdir()
        return [str(p) for p in train_run(base, *QUICK_EXPORT, "evaluation.figures=true",
                                          "evaluation.saliency=true", "evaluation.sample_grid=4")]  # fmt: skip

    run, npz = made_once(tmp_path_factory, "predict_run", make)[1]
    return Path(run), Path(npz)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def png_folder(npz: Path, folder: Path) -> Path:
    from PIL import Image

    folder.mkdir()
    for i, image in enumerate(np.load(npz)["test_images"]):
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    return folder


@pytest.mark.parametrize("via", ["onnx", "checkpoint"])
@pytest.mark.parametrize("given", ["npz", "pngs"])
def test_predict_reproduces_the_runs_test_accuracy(trained, tmp_path, capsys, via, given):
    run, npz = trained
    target = run if via == "onnx" else run / "checkpoints" / "best.pt"
    source = f"{npz}:test" if given == "npz" else str(png_folder(npz, tmp_path / "pngs"))
    main([str(target), source, "--out", str(tmp_path / "out"), "--batch-size", "10"])
    rows = read_csv(tmp_path / "out" / "predictions.csv")
    names = ["top", "mid", "low"]
    labels = np.load(npz)["test_labels"].ravel()
    assert list(rows[0]) == ["input", "prediction", "prob_top", "prob_mid", "prob_low"]
    assert len(rows) == len(labels)
    index = [int(r["input"].split("[")[1][:-1]) if given == "npz" else int(Path(r["input"]).stem)
             for r in rows]  # fmt: skip
    assert index == list(range(len(labels)))
    accuracy = np.mean([r["prediction"] == names[y] for r, y in zip(rows, labels, strict=True)])
    metrics = json.loads((run / "metrics.json").read_text())
    assert accuracy == pytest.approx(metrics["test"]["accuracy"])
    assert all(abs(sum(float(r[f"prob_{n}"]) for n in names) - 1) < 1e-4 for r in rows)
    out = capsys.readouterr().out
    assert f"predicted {len(labels)} image(s) with" in out
    assert ("model.onnx" if via == "onnx" else "best.pt") in out
    assert "written:" in out and "top " in out


def test_tta_averages_the_flips(trained, tmp_path):
    run, npz = trained
    test = np.load(npz)["test_images"]
    flipped = tmp_path / "flipped.npz"
    np.savez(flipped, test_images=test[:, :, ::-1])

    def probs(*args: str) -> np.ndarray:
        out = tmp_path / str(len(list(tmp_path.iterdir())))
        main([str(run), *args, "--out", str(out)])
        return np.array([[float(v) for k, v in r.items() if k.startswith("prob_")]
                         for r in read_csv(out / "predictions.csv")])  # fmt: skip

    plain, mirrored = probs(f"{npz}:test"), probs(str(flipped))
    assert np.allclose(probs(f"{npz}:test", "--tta"), (plain + mirrored) / 2, atol=1e-5)


def test_colour_inputs_become_grey_with_a_log_line(trained, tmp_path, caplog):
    from PIL import Image

    run, npz = trained
    grey = np.load(npz)["test_images"][:4]
    for i, image in enumerate(grey):
        Image.fromarray(np.repeat(image[..., None], 3, 2)).save(tmp_path / f"{i}.png")
    with caplog.at_level("INFO", logger="orchard_app.predict"):
        main([str(run), str(tmp_path), "--out", str(tmp_path / "out")])
    assert "converted 4 RGB image(s) made grey (luma)" in caplog.text
    assert len(read_csv(tmp_path / "out" / "predictions.csv")) == 4


def test_report_has_the_saliency_figure(trained):
    run, _ = trained
    assert (run / "figures" / "saliency.png").stat().st_size > 0
    assert "figures/saliency.png" in (run / "report.md").read_text()


def test_explain_writes_an_overlay_per_image_for_mini_cnn(trained, tmp_path):
    run, npz = trained
    out = tmp_path / "out"
    main([str(run), f"{npz}:test", "--out", str(out), "--explain", "--explain-grid", "6"])
    overlays = sorted((out / "saliency").iterdir())
    assert len(overlays) == 32 and overlays[0].name == "000000_d.npz_test_0.png"
    from PIL import Image

    assert Image.open(overlays[0]).size == (224, 224)
    assert (out / "saliency_grid.png").stat().st_size > 0


@pytest.mark.slow
def test_explain_writes_an_overlay_per_image_for_resnet18_adapted(tmp_path):
    run, npz = train_run(tmp_path, "model=resnet18_adapted", "training.epochs=1")
    out = tmp_path / "out"
    main([str(run), f"{npz}:test", "--out", str(out), "--explain"])
    assert len(list((out / "saliency").iterdir())) == 32


ZOO = {"mini_cnn": 28, "resnet18_adapted": 28, "resnet18": 64, "efficientnet_b0": 64,
       "convnext_tiny": 64, "vit_tiny": 224, "timm": 64}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("model", sorted(ZOO))
def test_grad_cam_finds_a_spatial_layer_for_every_model_of_the_zoo(model):
    """The chosen layer gives a map that depends on where the image is (not blank or flat)."""
    from types import SimpleNamespace

    from orchard_app.evaluation.saliency import grad_cam
    from orchard_app.models import build_for_data

    cfg = compose(f"model={model}")
    side = ZOO[model]
    info = SimpleNamespace(in_chans=3, num_classes=4, resolution=side)
    torch.manual_seed(0)
    net = build_for_data(cfg.model, info, pretrained=False).eval()
    images = np.random.default_rng(0).integers(0, 255, (2, 3, side, side), dtype=np.uint8)
    cams = grad_cam(net, images, np.array([0, 1]))
    assert cams.shape == (2, side, side) and np.isfinite(cams).all()
    assert cams.max() > 0 and cams.std() > 0


# ---------------------------------------------------------------------- bad inputs
def predict_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "orchard_app.predict", *args], cwd=cwd, capture_output=True,
        text=True, timeout=300, stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip


@pytest.mark.parametrize("case", ["missing input", "two channels", "no checkpoint"])
def test_bad_inputs_are_one_message_and_an_exit_code(trained, tmp_path, case):
    run, npz = trained
    if case == "missing input":
        args, says = [str(run), "nowhere.png"], "nowhere.png: no such file or folder"
    elif case == "two channels":
        np.savez(tmp_path / "two.npz", test_images=np.zeros((3, 28, 28, 2), np.uint8))
        args, says = [str(run), "two.npz"], "2-channel images"
    else:
        (tmp_path / "empty_run").mkdir()
        args, says = ["empty_run", str(npz)], "has no checkpoints/best.pt nor exports/model.onnx"
    result = predict_cli(*args, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert says in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "predictions").exists()  # nothing written


@pytest.mark.slow
def test_multilabel_rows_name_the_labels_above_one_half(tmp_path, capsys):
    """Through the checkpoint (no export): one probability column per label, `;`-joined labels."""
    npz = make_npz(tmp_path / "ml.npz", classes=3, multilabel=True)
    run = tmp_path / "run"
    train(compose(*tiny_overrides(npz, "dataset.label_names=[a,b,c]")), output_dir=run)
    main([str(run), f"{npz}:test", "--out", str(tmp_path / "out")])
    rows = read_csv(tmp_path / "out" / "predictions.csv")
    assert list(rows[0]) == ["input", "prediction", "prob_a", "prob_b", "prob_c"]
    for r in rows:
        above = [n for n in "abc" if float(r[f"prob_{n}"]) > 0.5]
        assert r["prediction"] == ";".join(above)
    assert "labels above 0.5:" in capsys.readouterr().out
