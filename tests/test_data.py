"""The data layer: MedMNIST metadata, verified downloads, npz checks, the batch pipeline."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, compose, make_npz, run_cli, tiny_overrides

from orchard_app import train
from orchard_app.config import medmnist as mi
from orchard_app.data import files
from orchard_app.data.dataset import load_dataset
from orchard_app.data.pipeline import BatchPipeline
from orchard_app.errors import DataError

BLOOD = {
    "file": "bloodmnist.npz",
    "md5": "7053d0359d879ad8a5505303e11de1dc",
    "counts": (11959, 1712, 3421),
}


# ---------------------------------------------------------------- metadata from medmnist.INFO
def test_every_medmnist_2d_set_has_a_config_whose_task_matches_info():
    names = mi.medmnist_2d_names()
    assert len(names) == 12
    for name in names:
        cfg = compose(f"dataset={name}")
        assert cfg.dataset.source == "medmnist"
        assert cfg.dataset.task == mi.TASK_FROM_INFO[mi.medmnist_info()[name]["task"]], name


def test_info_is_read_without_importing_torch():
    code = "import sys; from orchard_app.config.medmnist import medmnist_info; medmnist_info(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_info_helpers_match_the_medmnist_package():
    import medmnist

    info = medmnist.INFO["bloodmnist"]
    assert mi.file_name("bloodmnist", 28) == "bloodmnist.npz"
    assert mi.file_name("bloodmnist", 64) == "bloodmnist_64.npz"
    assert mi.url_and_md5("bloodmnist", 224) == (info["url_224"], info["MD5_224"])
    assert mi.label_names("bloodmnist")[0] == info["label"]["0"]


def test_cfg_job_shows_chestmnist_as_multilabel(tmp_path):
    result = run_cli("--cfg", "job", "dataset=chestmnist", cwd=tmp_path)
    assert result.returncode == 0
    assert "task: multi-label" in result.stdout


def test_unknown_resolution_is_refused_before_loading(tmp_path):
    result = run_cli("dataset=bloodmnist", "dataset.resolution=100", cwd=tmp_path)
    assert result.returncode == 2 and "dataset.resolution=100" in result.stderr
    assert "28, 64, 128, 224" in result.stderr


# ---------------------------------------------------------------- downloads (loopback server)
class _Server:
    """Serves {name: bytes} on 127.0.0.1; mode 'drop' closes the connection halfway through."""

    def __init__(self, payloads: dict[str, bytes], mode: str = "ok"):
        outer = self
        self.payloads, self.mode, self.requests = payloads, mode, 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                outer.requests += 1
                body = outer.payloads.get(self.path.lstrip("/").split("?")[0])
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body if outer.mode == "ok" else body[: len(body) // 2])
                self.wfile.flush()
                if outer.mode == "drop":
                    self.connection.close()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve():
    servers = []

    def start(payloads, mode="ok"):
        servers.append(_Server(payloads, mode))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def _fake_official(monkeypatch, payload: bytes):
    """Pretend `payload` is the official bloodmnist.npz (its MD5 becomes the expected one)."""
    import hashlib

    md5 = hashlib.md5(payload).hexdigest()
    monkeypatch.setattr(
        files, "url_and_md5", lambda name, res: ("https://example.invalid/x.npz", md5)
    )
    return md5


def _fetch(root: Path, cache: Path, mirror: str | None, download: bool = True) -> Path:
    return files.ensure_medmnist_file("bloodmnist", 28, root, cache, download, mirror)


def test_download_good_file_is_verified_and_kept(serve, tmp_path, monkeypatch):
    payload = make_npz(tmp_path / "src.npz").read_bytes()
    _fake_official(monkeypatch, payload)
    server = serve({"bloodmnist.npz": payload})
    root = tmp_path / "data"
    path = _fetch(root, tmp_path / "cache", server.url)
    assert path == root / "bloodmnist.npz" and path.read_bytes() == payload
    assert sorted(p.name for p in root.iterdir()) == ["bloodmnist.npz"]  # no temp files
    assert (
        _fetch(root, tmp_path / "cache", server.url) == path and server.requests == 1
    )  # no re-download


def test_download_with_wrong_md5_leaves_nothing(serve, tmp_path, monkeypatch):
    _fake_official(monkeypatch, b"the real file")
    server = serve({"bloodmnist.npz": b"something else entirely"})
    root = tmp_path / "data"
    with pytest.raises(DataError) as err:
        _fetch(root, tmp_path / "cache", server.url)
    assert "MD5" in str(err.value) and "bloodmnist.npz" in str(err.value)
    assert "the known hash may be outdated." in str(err.value)  # pooch's reason, quoted whole
    assert not root.exists() or list(root.iterdir()) == []


def test_long_library_messages_are_shortened_only_at_a_word_boundary():
    text = files.first_line(RuntimeError("unpronounceable " * 60 + "\nsecond line"))
    assert text.endswith(" …") and all(w == "unpronounceable" for w in text[:-2].split())
    short = "pooch says no. " * 10
    assert files.first_line(ValueError(short + "\nmore")) == short.strip()


def test_connection_dropped_mid_file_leaves_nothing(serve, tmp_path, monkeypatch):
    payload = make_npz(tmp_path / "src.npz").read_bytes()
    md5 = _fake_official(monkeypatch, payload)
    server = serve({"bloodmnist.npz": payload}, mode="drop")
    root = tmp_path / "data"
    with pytest.raises(DataError) as err:
        _fetch(root, tmp_path / "cache", server.url)
    text = str(err.value)
    assert "bloodmnist.npz" in text and md5 in text and str(root) in text
    assert not root.exists() or list(root.iterdir()) == []


def test_offline_error_names_file_url_md5_and_directory(tmp_path):
    root = tmp_path / "empty"
    with pytest.raises(DataError) as err:  # a port nothing listens on: refused at once
        _fetch(root, tmp_path / "cache", "http://127.0.0.1:9/")
    text = str(err.value)
    url, md5 = mi.url_and_md5("bloodmnist", 28)
    for needle in ("bloodmnist.npz", "http://127.0.0.1:9/bloodmnist.npz", md5, str(root)):
        assert needle in text
    assert not root.exists() or list(root.iterdir()) == []


def test_download_false_does_not_touch_the_network(tmp_path):
    with pytest.raises(DataError) as err:
        _fetch(tmp_path / "empty", tmp_path / "cache", None, download=False)
    assert "dataset.download=false" in str(err.value) and mi.url_and_md5("bloodmnist", 28)[
        0
    ] in str(err.value)


def test_root_that_is_a_file_is_named_not_reported_as_a_download_failure(tmp_path):
    root = tmp_path / "data"
    root.write_text("not a folder")
    with pytest.raises(DataError) as err:
        load_dataset(compose("dataset=bloodmnist", f"dataset.root={root}").dataset, seed=0)
    assert str(err.value).startswith(f"dataset.root={root} is a file, not a directory")
    assert "ORCHARD_DATA_DIR" in str(err.value)


@pytest.mark.parametrize("memmap", ["false", "true"])
def test_cache_dir_that_is_a_file_is_named(tmp_path, monkeypatch, memmap):
    path = make_npz(tmp_path / "bloodmnist.npz", counts=BLOOD["counts"])
    monkeypatch.setattr(files, "url_and_md5", lambda n, r: ("u", files.md5_of(path)))
    cache = tmp_path / "cache"
    cache.write_text("not a folder")
    monkeypatch.setenv("ORCHARD_CACHE_DIR", str(cache))
    cfg = compose("dataset=bloodmnist", f"dataset.root={tmp_path}", f"dataset.memmap={memmap}")
    with pytest.raises(DataError) as err:
        load_dataset(cfg.dataset, seed=0)
    assert str(err.value) == (
        f"dataset.cache_dir={cache} is a file, not a directory; "
        "point ORCHARD_CACHE_DIR/dataset.cache_dir at a folder you can write to"
    )


def test_cache_dir_that_cannot_be_created_is_named(tmp_path):
    (tmp_path / "file").write_text("x")
    cache = tmp_path / "file" / "cache"
    cfg = compose("dataset=npz", f"dataset.path={make_npz(tmp_path / 'x.npz')}",
                  "dataset.memmap=true", f"dataset.cache_dir={cache}")  # fmt: skip
    with pytest.raises(DataError, match=f"dataset.cache_dir={cache} cannot be created"):
        load_dataset(cfg.dataset, seed=0)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_read_only_cache_dir_is_named(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o500)
    cfg = compose("dataset=npz", f"dataset.path={make_npz(tmp_path / 'x.npz')}",
                  "dataset.memmap=true", f"dataset.cache_dir={cache}")  # fmt: skip
    with pytest.raises(DataError, match=f"dataset.cache_dir={cache} is not writable"):
        load_dataset(cfg.dataset, seed=0)


def test_cli_empty_root_offline_fails_clearly(tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    result = run_cli(
        "dataset=bloodmnist",
        f"dataset.root={root}",
        "dataset.mirror=http://127.0.0.1:9/",
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert (
        "bloodmnist.npz" in result.stderr
        and "md5sum" in result.stderr
        and "Traceback" not in result.stderr
    )
    assert list(root.iterdir()) == []


def test_real_file_served_locally_downloads_with_its_official_md5(serve, shared_medmnist, tmp_path):
    server = serve({"bloodmnist.npz": (shared_medmnist / "bloodmnist.npz").read_bytes()})
    path = _fetch(tmp_path / "data", tmp_path / "cache", server.url)
    assert files.md5_of(path) == BLOOD["md5"] == mi.url_and_md5("bloodmnist", 28)[1]


# ---------------------------------------------------------------- verification memo
def test_md5_is_checked_once_and_again_when_the_file_changes(tmp_path, monkeypatch):
    path = make_npz(tmp_path / "bloodmnist.npz")
    md5 = files.md5_of(path)
    calls = []
    real = files.md5_of
    monkeypatch.setattr(files, "md5_of", lambda p: calls.append(p) or real(p))
    for _ in range(3):
        files.verify_md5(path, md5, "u", tmp_path / "cache")
    assert len(calls) == 1
    with open(path, "ab") as f:  # size and mtime change: hash again, and now it fails
        f.write(b"x")
    with pytest.raises(DataError, match="MD5"):
        files.verify_md5(path, md5, "u", tmp_path / "cache")
    assert len(calls) == 2


def test_edit_that_fools_the_md5_memo_is_reported_as_an_md5_mismatch(shared_medmnist, tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    path = root / "breastmnist.npz"
    shutil.copyfile(shared_medmnist / "breastmnist.npz", path)
    cfg = compose("dataset=breastmnist", f"dataset.root={root}")
    load_dataset(cfg.dataset, seed=0)  # verified once, remembered by size and mtime
    stat = path.stat()
    raw = bytearray(path.read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 16] = bytes(b ^ 0xFF for b in raw[middle : middle + 16])
    path.write_bytes(bytes(raw))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size, same mtime
    for _ in range(2):  # the memo entry is dropped: the second run hashes again, and fails again
        with pytest.raises(DataError) as err:
            load_dataset(cfg.dataset, seed=0)
        text = str(err.value)
        md5 = mi.url_and_md5("breastmnist", 28)[1]
        assert f"{path} fails its MD5 check: expected {md5}, got {files.md5_of(path)}" in text
        assert "Delete it" in text and "md5sum breastmnist.npz" in text and "note above" not in text


# ---------------------------------------------------------------- real files (../shared)
def test_bloodmnist_loads_with_official_counts_and_md5(shared_medmnist):
    cfg = compose("dataset=bloodmnist", f"dataset.root={shared_medmnist}")
    data = load_dataset(cfg.dataset, seed=0)
    assert (len(data.train), len(data.val), len(data.test)) == BLOOD["counts"]
    assert (
        data.info.md5 == BLOOD["md5"]
        and data.info.task == "multi-class"
        and data.info.num_classes == 8
    )
    assert data.train.images.shape[1:] == (3, 28, 28) and data.train.images.dtype == torch.uint8
    assert data.info.label_names[0] == "basophil"


def test_truncated_copy_of_bloodmnist_fails_clearly(shared_medmnist, tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (root / "bloodmnist.npz").write_bytes(
        (shared_medmnist / "bloodmnist.npz").read_bytes()[:5_000_000]
    )
    result = run_cli(
        "dataset=bloodmnist", f"dataset.root={root}", "training.epochs=1", cwd=tmp_path
    )
    assert result.returncode == 1
    assert "MD5" in result.stderr and "corrupt or truncated" in result.stderr
    assert "Traceback" not in result.stderr and "zipfile" not in result.stderr
    assert sorted(p.name for p in root.iterdir()) == [
        "bloodmnist.npz"
    ]  # the user's file is left alone


@pytest.mark.parametrize(
    ("name", "task", "classes", "channels"),
    [("breastmnist", "binary", 2, 1), ("retinamnist", "ordinal", 5, 3)],
)
def test_other_shared_sets_load_with_their_task(shared_medmnist, name, task, classes, channels):
    data = load_dataset(
        compose(f"dataset={name}", f"dataset.root={shared_medmnist}").dataset, seed=0
    )
    info = mi.medmnist_info()[name]
    assert (data.info.task, data.info.num_classes, data.info.channels) == (task, classes, channels)
    assert data.info.counts == info["n_samples"]


@pytest.mark.slow  # a CLI run of several seconds: the fast suite stays under 3 minutes
def test_bloodmnist_trains_one_epoch(shared_medmnist, tmp_path):
    cfg = compose("dataset=bloodmnist", f"dataset.root={shared_medmnist}", "model=mini_cnn", "training.epochs=1",
                  "dataset.max_samples=600", "evaluation.figures=false", "hardware.num_threads=1")  # fmt: skip
    value = train(cfg, output_dir=tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["dataset"]["train_samples"] == 600 and metrics["dataset"]["md5"] == BLOOD["md5"]
    assert 0 < value <= 1 and len(metrics["test"]["per_class"]) == 8
    assert "basophil" in metrics["test"]["per_class"]


# ---------------------------------------------------------------- structure checks
def _write(path: Path, **changes) -> Path:
    base = dict(np.load(make_npz(path.with_name("base.npz"))))
    base.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        base.pop(key)
    np.savez(path, **base)
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"val_labels": None}, "lacks val_labels"),
        ({"train_images": np.zeros((96, 28, 28), dtype=np.float32)}, "dtype float32"),
        (
            {"test_labels": np.full((32, 1), 7, dtype=np.uint8)},
            "labels span 0..7 but there are 3 classes",
        ),
        ({"val_images": np.zeros((31, 28, 28), dtype=np.uint8)}, "31 images but 32 labels"),
        ({"train_images": np.zeros((96, 28, 30), dtype=np.uint8)}, "shapes differ"),
    ],
)
def test_malformed_npz_is_refused_with_the_problem(tmp_path, change, message):
    path = _write(tmp_path / "bad.npz", **change)
    cfg = compose("dataset=npz", f"dataset.path={path}", "dataset.label_names=[a,b,c]")
    with pytest.raises(DataError) as err:
        load_dataset(cfg.dataset, seed=0)
    assert message in str(err.value) and str(path) in str(err.value)


def test_truncated_custom_npz_is_reported_as_corrupt(tmp_path):
    good = make_npz(tmp_path / "good.npz").read_bytes()
    bad = tmp_path / "bad.npz"
    bad.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match="corrupt or truncated"):
        load_dataset(compose("dataset=npz", f"dataset.path={bad}").dataset, seed=0)


def _npz_with_huge_header(path: Path) -> Path:
    """train_images.npy says (10**7, 1000, 1000) uint8 (9 TiB) but holds 100 bytes."""
    arrays = dict(np.load(make_npz(path.with_name("base.npz"))))
    with zipfile.ZipFile(path, "w") as zf:
        for key, value in arrays.items():
            buf = io.BytesIO()
            if key == "train_images":
                header = {"descr": "|u1", "fortran_order": False, "shape": (10**7, 1000, 1000)}
                np.lib.format.write_array_header_1_0(buf, header)
                buf.write(bytes(100))
            else:
                np.save(buf, value)
            zf.writestr(f"{key}.npy", buf.getvalue())
    return path


@pytest.mark.parametrize("memmap", ["false", "true"])
def test_header_claiming_more_than_the_file_holds_is_refused_before_allocating(tmp_path, memmap):
    path = _npz_with_huge_header(tmp_path / "huge.npz")
    cache = tmp_path / "cache"
    cfg = compose("dataset=npz", f"dataset.path={path}", f"dataset.memmap={memmap}",
                  f"dataset.cache_dir={cache}")  # fmt: skip
    with pytest.raises(DataError) as err:
        load_dataset(cfg.dataset, seed=0)
    text = str(err.value)
    assert "train_images declares shape (10000000, 1000, 1000) of uint8 (9.1 TiB)" in text
    assert "holds only 100 bytes" in text and str(path) in text
    left = [p for p in cache.rglob("*") if p.is_file() and not p.name.endswith(".lock")]
    assert left == []  # no temp file, no sparse 9 TiB copy


def test_stray_label_does_not_invent_empty_classes(tmp_path):
    base = dict(np.load(make_npz(tmp_path / "binary.npz", classes=2)))
    base["train_labels"][5] = 7
    np.savez(tmp_path / "stray.npz", **base)
    with pytest.raises(DataError) as err:
        load_dataset(compose("dataset=npz", f"dataset.path={tmp_path / 'stray.npz'}").dataset, 0)
    assert "classes 2, 3, 4, 5, 6 have no training sample; labels span 0..7" in str(err.value)
    names = "dataset.label_names=[a,b,c,d,e,f,g,h]"  # declared: empty classes are intended
    cfg = compose("dataset=npz", f"dataset.path={tmp_path / 'stray.npz'}", names)
    assert load_dataset(cfg.dataset, seed=0).info.num_classes == 8


def test_multilabel_label_never_positive_in_training_is_accepted(tmp_path):
    base = dict(np.load(make_npz(tmp_path / "ml.npz", classes=4, multilabel=True)))
    base["train_labels"][:, 3] = 0
    np.savez(tmp_path / "ml0.npz", **base)
    data = load_dataset(compose("dataset=npz", f"dataset.path={tmp_path / 'ml0.npz'}").dataset, 0)
    assert data.info.task == "multi-label" and data.info.num_classes == 4


def test_task_override_is_refused_where_the_source_fixes_the_task(tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset(compose("dataset.task=binary").dataset, seed=0)
    assert str(err.value) == (
        "dataset.task=binary has no effect for digits: its task is multi-class; remove the override"
    )
    cfg = compose("dataset=breastmnist", "dataset.task=multi-class", "dataset.download=false",
                  f"dataset.root={tmp_path}")  # fmt: skip
    with pytest.raises(DataError, match="dataset.task=multi-class has no effect for breastmnist"):
        load_dataset(cfg.dataset, seed=0)  # refused before looking for the file
    assert load_dataset(compose("dataset.task=multi-class").dataset, seed=0).info.num_classes == 10


def test_split_sizes_are_checked_against_info(tmp_path, monkeypatch):
    path = make_npz(tmp_path / "bloodmnist.npz")
    monkeypatch.setattr(files, "url_and_md5", lambda n, r: ("u", files.md5_of(path)))
    with pytest.raises(DataError, match="the official release has 11959"):
        load_dataset(compose("dataset=bloodmnist", f"dataset.root={tmp_path}").dataset, seed=0)


def test_resolution_must_match_the_file(tmp_path):
    path = make_npz(tmp_path / "x.npz", size=32)
    with pytest.raises(DataError, match="set dataset.resolution=32"):
        load_dataset(compose("dataset=npz", f"dataset.path={path}").dataset, seed=0)


# ---------------------------------------------------------------- custom npz, tasks, channels
def test_custom_npz_infers_classes_channels_and_task(tmp_path):
    path = make_npz(tmp_path / "rgb.npz", classes=4, channels=3, size=32)
    data = load_dataset(
        compose("dataset=npz", f"dataset.path={path}", "dataset.resolution=32").dataset, seed=0
    )
    assert (data.info.task, data.info.num_classes, data.info.channels, data.info.in_chans) == (
        "multi-class",
        4,
        3,
        3,
    )
    assert data.info.label_names == ("0", "1", "2", "3")
    binary = load_dataset(
        compose("dataset=npz", f"dataset.path={make_npz(tmp_path / 'b.npz', classes=2)}").dataset, 0
    )
    assert binary.info.task == "binary"


def test_label_names_and_force_rgb(tmp_path):
    cfg = compose("dataset=npz", f"dataset.path={make_npz(tmp_path / 'g.npz')}", "dataset.label_names=[cat,dog,owl]",
                  "dataset.force_rgb=true")  # fmt: skip
    data = load_dataset(cfg.dataset, seed=0)
    assert data.info.label_names == ("cat", "dog", "owl") and (
        data.info.channels,
        data.info.in_chans,
    ) == (1, 3)
    pipe = BatchPipeline(data, cfg.dataset, torch.device("cpu"))
    x, _ = pipe.train_batch(torch.arange(4), torch.Generator().manual_seed(0))
    assert x.shape == (4, 3, 28, 28) and torch.equal(x[:, 0], x[:, 2])


def test_multilabel_trains_one_epoch_and_reports_mean_auc(tmp_path):
    from medmnist.evaluator import getACC, getAUC

    npz = make_npz(tmp_path / "ml.npz", classes=4, multilabel=True)
    train(compose(*tiny_overrides(npz, "training.epochs=2")), output_dir=tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["dataset"]["task"] == "multi-label" and metrics["dataset"]["num_classes"] == 4
    import csv

    with open(tmp_path / "run" / "predictions_test.csv") as f:
        rows = list(csv.DictReader(f))
    y = np.array([[int(r[f"true_{i}"]) for i in range(4)] for r in rows])
    p = np.array([[float(r[f"prob_{i}"]) for i in range(4)] for r in rows])
    assert metrics["test"]["auc"] == pytest.approx(
        getAUC(y, p, "multi-label, binary-class"), abs=1e-4
    )
    assert metrics["test"]["accuracy"] == pytest.approx(
        getACC(y, p, "multi-label, binary-class"), abs=1e-4
    )
    assert metrics["test"]["auc"] > 0.6  # the bands are learnable


# ---------------------------------------------------------------- pipeline
def test_max_samples_keeps_class_proportions(tmp_path):
    path = make_npz(tmp_path / "x.npz", counts=(300, 30, 30))
    data = load_dataset(
        compose("dataset=npz", f"dataset.path={path}", "dataset.max_samples=60").dataset, seed=0
    )
    assert len(data.train) == 60
    assert torch.bincount(data.train.labels).tolist() == [20, 20, 20]


def test_memmap_cache_gives_the_same_batches_as_memory(tmp_path):
    path = make_npz(tmp_path / "x.npz", channels=3)
    batches = []
    for memmap in ("false", "true"):
        cfg = compose(
            "dataset=npz",
            f"dataset.path={path}",
            f"dataset.memmap={memmap}",
            "dataset.max_samples=50",
        )
        data = load_dataset(cfg.dataset, seed=0)
        pipe = BatchPipeline(data, cfg.dataset, torch.device("cpu"))
        g = torch.Generator().manual_seed(1)
        batches.append(pipe.train_batch(pipe.epoch_order(g)[:16], g))
    assert isinstance(data.train.images, np.ndarray)  # really memory-mapped the second time
    assert torch.equal(batches[0][0], batches[1][0]) and torch.equal(batches[0][1], batches[1][1])
    assert any((Path(compose().dataset.cache_dir) / "npy").rglob("train_images.npy"))


_FILL = """
import hashlib, sys, time
from pathlib import Path
from orchard_app.data.arrays import uncompressed_cache
while not Path(sys.argv[3]).exists():  # start together
    time.sleep(0.001)
arrays = uncompressed_cache(Path(sys.argv[1]), Path(sys.argv[2]))
print(hashlib.md5(b"".join(arrays[k].tobytes() for k in sorted(arrays))).hexdigest())
"""


def test_two_processes_fill_one_memmap_cache_together(tmp_path):
    path = make_npz(tmp_path / "x.npz", size=64, channels=3, counts=(2000, 100, 100))
    cache, go = tmp_path / "cache", tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _FILL, str(path), str(cache), str(go)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(2)
    ]
    time.sleep(1.0)
    go.touch()
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in results]
    with np.load(path) as z:
        expected = hashlib.md5(b"".join(z[k].tobytes() for k in sorted(z.files))).hexdigest()
    assert [out.strip() for out, _ in results] == [expected, expected]
    names = sorted(p.name for p in cache.rglob("*") if p.is_file())
    assert [n for n in names if not n.endswith(".lock")] == sorted(
        f"{s}_{k}.npy" for s in ("train", "val", "test") for k in ("images", "labels")
    )


def test_balanced_sampler_evens_out_classes(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.array([0] * 180 + [1] * 15 + [2] * 5, dtype=np.uint8).reshape(-1, 1)
    arrays = {
        f"{s}_images": rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
        for s, n in (("train", 200), ("val", 9), ("test", 9))
    }
    arrays.update(train_labels=labels, val_labels=np.arange(9, dtype=np.uint8).reshape(-1, 1) % 3,
                  test_labels=np.arange(9, dtype=np.uint8).reshape(-1, 1) % 3)  # fmt: skip
    np.savez(tmp_path / "imb.npz", **arrays)
    cfg = compose(
        "dataset=npz", f"dataset.path={tmp_path / 'imb.npz'}", "dataset.balanced_sampler=true"
    )
    data = load_dataset(cfg.dataset, seed=0)
    order = BatchPipeline(data, cfg.dataset, torch.device("cpu")).epoch_order(
        torch.Generator().manual_seed(0)
    )
    share = torch.bincount(data.train.labels[order], minlength=3).float() / len(order)
    assert len(order) == 200 and share.min() > 0.2  # ~1/3 each instead of 90/7.5/2.5 %


def test_augmentation_is_seeded_batched_and_in_range(tmp_path):
    path = make_npz(tmp_path / "x.npz", channels=3)
    cfg = compose("dataset=npz", f"dataset.path={path}", "dataset.augment.hflip=true", "dataset.augment.rotation=15",
                  "dataset.augment.translate=0.1", "dataset.augment.scale=0.1", "dataset.augment.color_jitter=0.3",
                  "dataset.augment.random_resized_crop=true")  # fmt: skip
    data = load_dataset(cfg.dataset, seed=0)
    pipe = BatchPipeline(data, cfg.dataset, torch.device("cpu"))
    idx = torch.arange(32)
    a = pipe.train_batch(idx, torch.Generator().manual_seed(5))[0]
    b = pipe.train_batch(idx, torch.Generator().manual_seed(5))[0]
    c = pipe.train_batch(idx, torch.Generator().manual_seed(6))[0]
    plain = next(pipe.eval_batches(data.train, 32))[0]
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, plain)
    assert (
        a.shape == plain.shape and a.min() >= -1.0001 and a.max() <= 1.0001
    )  # still in the normalised range


def test_hflip_alone_mirrors_some_images_exactly(tmp_path):
    cfg = compose(
        "dataset=npz", f"dataset.path={make_npz(tmp_path / 'x.npz')}", "dataset.augment.hflip=true"
    )
    data = load_dataset(cfg.dataset, seed=0)
    pipe = BatchPipeline(data, cfg.dataset, torch.device("cpu"))
    idx = torch.arange(64)
    aug = pipe.train_batch(idx, torch.Generator().manual_seed(0))[0]
    plain = next(pipe.eval_batches(data.train, 64))[0]
    flipped = [torch.equal(aug[i], plain[i].flip(-1)) for i in range(64)]
    same = [torch.equal(aug[i], plain[i]) for i in range(64)]
    assert all(f or s for f, s in zip(flipped, same, strict=True)) and 10 < sum(flipped) < 54


def test_the_shipped_digits_set_is_stratified_and_fixed():
    a = load_dataset(compose().dataset, seed=0)
    b = load_dataset(compose().dataset, seed=123)  # the split does not depend on training.seed
    assert torch.equal(a.test.labels, b.test.labels) and torch.equal(a.test.images, b.test.images)
    counts = torch.bincount(a.test.labels)
    assert counts.min() >= 35 and counts.max() <= 37
    big = load_dataset(compose("dataset.resolution=64").dataset, seed=0)
    assert big.train.images.shape[1:] == (1, 64, 64)


def test_conf_dataset_yamls_state_only_checked_values():
    """YAMLs may state the task (and laterality, checked in test_laterality.py) for readability,
    and what INFO does not know (upright images); nothing else that INFO owns (URLs, MD5s, sizes)."""
    for name in mi.medmnist_2d_names():
        text = (ROOT / "conf" / "dataset" / f"{name}.yaml").read_text()
        body = [line for line in text.splitlines() if line and not line.startswith("#")]
        keys = {line.split(":")[0] for line in body}
        assert (
            {"name", "source", "task"} <= keys <= {"name", "source", "task", "lateral", "upright"}
        )
