"""dataset=folder: image folders converted into the MedMNIST layout, cached, and refused with
one message each when malformed."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_MEDMNIST, compose, make_npz, run_cli
from PIL import Image

from orchard_app import train
from orchard_app.config.validate import validate
from orchard_app.data.dataset import load_dataset
from orchard_app.data.digits import digits_arrays
from orchard_app.data.images import fit, read_image
from orchard_app.errors import ConfigError, DataError

SPLITS = ("train", "val", "test")


def write_folder(root: Path, arrays: dict, split_folders: bool = True, fmt: str = "png") -> Path:
    """Each split's images as files in <root>/[split/]c<label>/, in the arrays' order."""
    for s in SPLITS:
        for i, (x, y) in enumerate(
            zip(arrays[f"{s}_images"], arrays[f"{s}_labels"][:, 0], strict=True)
        ):
            d = root / s / f"c{y}" if split_folders else root / f"c{y}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x).save(d / f"{s}{i:05d}.{fmt}")
    return root


def by_label(arrays: dict) -> dict:
    """The arrays in the folder loader's order: by class, then by file name."""
    out = {}
    for s in SPLITS:
        order = np.argsort(arrays[f"{s}_labels"][:, 0], kind="stable")
        out[f"{s}_images"], out[f"{s}_labels"] = (
            arrays[f"{s}_images"][order],
            arrays[f"{s}_labels"][order],
        )
    return out


def small(root: Path, classes: int = 2, per_class: int = 6, size=(28, 28)) -> Path:
    """A tiny folder without split folders: <root>/c<k>/<i>.png."""
    rng = np.random.default_rng(0)
    for k in range(classes):
        (root / f"c{k}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8)).save(
                root / f"c{k}" / f"{i:03d}.png"
            )
    return root


def load(root: Path, *overrides: str):
    return load_dataset(compose("dataset=folder", f"dataset.path={root}", *overrides).dataset, 0)


def cache_entries() -> list[Path]:
    """The built datasets in the cache (not the lock files)."""
    return sorted(
        p for p in (Path(os.environ["ORCHARD_CACHE_DIR"]) / "folders").glob("*") if p.is_dir()
    )


@pytest.mark.slow
def test_digits_folder_trains_and_matches_the_npz_run(tmp_path):
    arrays = by_label(digits_arrays(28))
    root = write_folder(tmp_path / "digits", arrays)
    names = ",".join(f"c{k}" for k in range(10))
    np.savez(tmp_path / "digits.npz", **arrays)
    common = ["model=mini_cnn", "training.epochs=1", "training.batch_size=32", "dataset.max_samples=300", "evaluation.figures=false",
              "hardware.num_threads=2", "hardware.deterministic=true", "training.seed=3"]  # fmt: skip
    runs = {}
    for name, *data in (
        ("npz", f"dataset.path={tmp_path / 'digits.npz'}", f"dataset.label_names=[{names}]"),
        ("folder", f"dataset.path={root}", "dataset.split_seed=0"),
    ):
        train(compose(f"dataset={name}", *data, *common), output_dir=tmp_path / name)
        runs[name] = json.loads((tmp_path / name / "metrics.json").read_text())
    assert runs["folder"]["test"] == runs["npz"]["test"]
    assert runs["folder"]["dataset"]["label_names"] == [f"c{k}" for k in range(10)]
    assert runs["folder"]["dataset"]["file"] == str(root)


def test_split_is_stratified_seeded_and_recorded(tmp_path):
    root = small(tmp_path / "f", classes=3, per_class=20)
    a, b = load(root), load(root)
    assert a.info.counts == {"train": 42, "val": 6, "test": 12}
    assert np.array_equal(a.test.images, b.test.images)
    for split in (a.train, a.val, a.test):  # every class in every split
        assert len(np.unique(split.labels.numpy())) == 3
    other = load(root, "dataset.split_seed=1")
    assert not np.array_equal(a.test.images, other.test.images)
    manifests = [json.loads((p / "manifest.json").read_text()) for p in cache_entries()]
    [manifest] = [m for m in manifests if m["settings"]["split_seed"] == 0]
    splits = {f[2]: f[0] for f in manifest["files"]}
    assert (
        sum(s == "test" for s in splits.values()) == 12 and manifest["settings"]["split_seed"] == 0
    )


@pytest.mark.parametrize("override", ["dataset.split=[0.5,0.5,0.5]", "dataset.split=[0.8,0.2,0]"])
def test_split_fractions_are_validated(override):
    with pytest.raises(ConfigError, match="dataset.split=.*sum to 1"):
        validate(compose("dataset=folder", "dataset.path=/x", override))


def test_cache_is_reused_until_a_file_changes(tmp_path):
    root = small(tmp_path / "f")
    load(root)
    [entry] = cache_entries()
    stamp = (entry / "manifest.json").stat().st_mtime_ns
    load(root)  # reused: the same entry, its manifest untouched (no timing: load varies)
    assert cache_entries() == [entry] and (entry / "manifest.json").stat().st_mtime_ns == stamp
    seen = {entry}
    for change in (
        lambda: Image.fromarray(np.zeros((28, 28), np.uint8)).save(root / "c0" / "000.png"),
        lambda: Image.fromarray(np.zeros((28, 28), np.uint8)).save(root / "c1" / "new.png"),
        lambda: (root / "c1" / "001.png").unlink(),
    ):
        change()
        data = load(root)
        [now] = cache_entries()  # rebuilt, and the stale entry removed
        assert now not in seen
        seen.add(now)
    assert sum(data.info.counts.values()) == 12


def _truncated(root: Path) -> None:
    small(root)
    png = root / "c1" / "002.png"
    png.write_bytes(png.read_bytes()[:60])


def _symlink_loop(root: Path) -> None:
    small(root)
    (root / "c0" / "again").symlink_to(root / "c0")


def _missing_class(root: Path) -> None:
    for s in SPLITS:
        small(root / s, classes=2 if s == "val" else 3)


BAD = {
    "missing": (lambda root: None, "does not exist"),
    "no classes": (
        lambda root: (root.mkdir(), (root / "a.png").write_bytes(b"")),
        "has no class folders",
    ),
    "one class": (lambda root: small(root, classes=1), "has 1 class folder"),
    "empty class": (lambda root: (small(root), (root / "c2").mkdir()), "c2 holds no images"),
    "missing class": (_missing_class, "val has no class folder c2"),
    "missing split": (lambda root: (small(root / "train"), small(root / "test")), "but no val/"),
    "truncated": (_truncated, "002.png cannot be read as an image"),
    "symlink loop": (_symlink_loop, "again is a symlink loop"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_folder_is_refused_with_one_message_and_nothing_cached(tmp_path, case):
    make, message = BAD[case]
    make(tmp_path / "f")
    with pytest.raises(DataError, match=message):
        load(tmp_path / "f")
    assert cache_entries() == []


def test_bad_folder_message_on_the_command_line_has_no_traceback(tmp_path):
    _truncated(tmp_path / "f")
    r = run_cli("dataset=folder", f"dataset.path={tmp_path / 'f'}", "model=mini_cnn", cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "002.png cannot be read" in r.stderr and "dataset.skip_unreadable=true" in r.stderr


def test_unreadable_images_can_be_skipped_and_are_counted(tmp_path, caplog):
    _truncated(tmp_path / "f")
    with caplog.at_level(logging.INFO):
        data = load(tmp_path / "f", "dataset.skip_unreadable=true")
    assert sum(data.info.counts.values()) == 11
    assert "skipped 1 unreadable images" in caplog.text


def test_other_files_are_ignored_and_counted_and_sizes_may_differ(tmp_path, caplog):
    root = small(tmp_path / "f")
    small(root / "c0" / "more", classes=1, per_class=2, size=(40, 17))  # nested, another size
    (root / "c0" / "notes.txt").write_text("x")
    (root / "README.md").write_text("x")
    (root / "c1" / ".DS_Store").write_bytes(b"")
    with caplog.at_level(logging.INFO):
        data = load(root, "dataset.resize=crop")
    assert sum(data.info.counts.values()) == 14 and data.info.resolution == 28
    assert "ignored 2 files that are not images" in caplog.text


def test_grey_stays_one_channel_and_colour_makes_three(tmp_path):
    root = small(tmp_path / "f")
    assert load(root).info.channels == 1
    rgba = np.random.default_rng(1).integers(0, 256, (28, 28, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(root / "c0" / "colour.png")
    data = load(root)
    assert data.info.channels == 3 and data.train.images.shape[1] == 3


def test_sixteen_bit_tiff_and_rgba_png_read_right(tmp_path):
    deep = (np.arange(30 * 40, dtype=np.uint16).reshape(30, 40) * 54).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.tif")
    grey = read_image(tmp_path / "deep.tif")
    assert grey.dtype == np.uint8 and grey.shape == (30, 40)
    assert np.array_equal(grey, np.round(deep / 257).astype(np.uint8))
    rgba = np.random.default_rng(1).integers(0, 256, (20, 30, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert np.array_equal(read_image(tmp_path / "a.png"), rgba[..., :3])


def test_resize_modes(tmp_path):
    wide = np.full((20, 40), 255, np.uint8)
    pad, crop, stretch = (fit(wide, 28, m) for m in ("pad", "crop", "stretch"))
    assert pad.shape == crop.shape == stretch.shape == (28, 28)
    assert pad[0].max() == 0 and pad[14].min() == 255  # aspect kept: black bands above and below
    assert crop.min() == stretch.min() == 255
    square = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)
    assert np.array_equal(fit(square, 28, "pad"), square)


def test_dicom_without_pydicom_names_the_extra(tmp_path, monkeypatch):
    root = small(tmp_path / "f")
    (root / "c0" / "scan.dcm").write_bytes(b"\0" * 132 + b"DICM")
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(DataError, match=r"pip install orchard_app\[dicom\]"):
        load(root)


@pytest.mark.slow
def test_breastmnist_written_as_pngs_loads_the_same_arrays_and_trains(tmp_path):
    path = SHARED_MEDMNIST / "breastmnist.npz"
    if not path.is_file():
        pytest.skip(f"{path} not found (the workplace's shared MedMNIST files)")
    with np.load(path) as z:
        arrays = by_label({k: z[k] for k in z.files})
    root = write_folder(tmp_path / "breast", arrays)
    data = load(root)
    for s in SPLITS:
        assert np.array_equal(getattr(data, s).images[:, 0].numpy(), arrays[f"{s}_images"])
    value = train(compose("dataset=folder", f"dataset.path={root}", "model=mini_cnn", "training.epochs=1",
                          "evaluation.figures=false", "hardware.num_threads=2"), output_dir=tmp_path / "run")  # fmt: skip
    assert 0 < value <= 1


def test_tiny_npz_as_split_folders_of_bmps_keeps_every_pixel_and_trains(tmp_path):
    make_npz(tmp_path / "t.npz", channels=3)
    with np.load(tmp_path / "t.npz") as z:
        arrays = by_label({k: z[k] for k in z.files})
    root = write_folder(tmp_path / "f", arrays, fmt="bmp")
    data = load(root)
    assert data.info.channels == 3
    assert np.array_equal(data.val.images.permute(0, 2, 3, 1).numpy(), arrays["val_images"])
    cfg = compose("dataset=folder", f"dataset.path={root}", "model=mini_cnn", "training.epochs=1",
                  "training.batch_size=32", "evaluation.figures=false", "hardware.num_threads=2")  # fmt: skip
    assert 0 < train(cfg, output_dir=tmp_path / "run") <= 1
