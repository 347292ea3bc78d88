"""Shared fixtures: compose real configs, make tiny synthetic datasets, run the CLI."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from orchard_app.config import compose  # noqa: F401  (the tests import it from here)

ROOT = Path(__file__).resolve().parents[1]
SHARED_MEDMNIST = ROOT.parent / "shared" / "data" / "medmnist"
LOCAL_SLURM = ROOT.parent / "shared" / "slurm" / "local-slurm.sh"
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")  # gw0, gw1, ... under `pytest -n`

if XDIST_WORKER:  # one worker per core: one thread each, here and in the CLI runs they start
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


@pytest.fixture(autouse=True)
def _one_thread():
    """A run given hardware.num_threads=2 leaves torch at 2; the next test gets one again."""
    yield
    if XDIST_WORKER and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the xdist_group marks
def pytest_collection_modifyitems(items):
    """Tests on the one-node SLURM cluster share one xdist worker: one sweep at a time."""
    for item in items:
        if item.get_closest_marker("slurm") or "cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("slurm"))


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path_factory, monkeypatch):
    """Keep tests away from ~/.medmnist and ~/.cache: data and caches live in temp dirs."""
    monkeypatch.setenv("ORCHARD_DATA_DIR", str(tmp_path_factory.mktemp("data")))
    monkeypatch.setenv("ORCHARD_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


def tiny_overrides(npz: Path, *extra: str) -> list[str]:
    """A run small enough for unit tests: tiny npz, mini_cnn, 1 epoch, no figures."""
    return ["dataset=npz", f"dataset.path={npz}", "model=mini_cnn", "training.epochs=1",
            "training.batch_size=16", "evaluation.figures=false", "hardware.num_threads=1", *extra]  # fmt: skip


def make_npz(
    path: Path,
    classes: int = 3,
    size: int = 28,
    channels: int = 1,
    counts: tuple[int, int, int] = (96, 32, 32),
    multilabel: bool = False,
    seed: int = 0,
) -> Path:
    """A learnable synthetic set: class k lights up horizontal band k (several bands if multi-label)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    band = size // classes
    for split, n in zip(("train", "val", "test"), counts, strict=True):
        if multilabel:
            y = (rng.random((n, classes)) < 0.4).astype(np.uint8)
            y[np.arange(n), rng.integers(0, classes, n)] = 1  # at least one positive per sample
        else:
            y = (np.arange(n) % classes).astype(np.uint8).reshape(-1, 1)
        x = rng.integers(0, 60, size=(n, size, size, channels), dtype=np.uint8)
        for i in range(n):
            for k in np.flatnonzero(y[i]) if multilabel else [int(y[i, 0])]:
                x[i, k * band : (k + 1) * band] += 150
        arrays[f"{split}_images"] = x[..., 0] if channels == 1 else x
        arrays[f"{split}_labels"] = y
    np.savez_compressed(path, **arrays)
    return path


@pytest.fixture
def tiny_npz(tmp_path) -> Path:
    return make_npz(tmp_path / "tiny.npz")


def made_once(tmp_path_factory, name: str, make: Callable[[Path], object]) -> tuple[Path, object]:
    """(path, what `make(path)` returned), made once for the whole test session: the first
    xdist worker that asks makes it under a lock, the others wait for it and reuse it. Tests
    read it; a test that writes into it copies it first (shutil.copytree into its tmp_path)."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    shared = root.parent if XDIST_WORKER else root  # the workers' temp dirs share a parent
    path, done = shared / name, shared / f"{name}.made.json"
    with FileLock(f"{path}.lock"):
        if not done.is_file():
            done.write_text(json.dumps(make(path)))
    return path, json.loads(done.read_text())


@pytest.fixture(scope="session")
def shared_npz(tmp_path_factory) -> Path:
    """`tiny_npz` made once: the data set of the session's shared runs."""
    return made_once(tmp_path_factory, "tiny.npz", lambda p: str(make_npz(p)))[0]


def sigterm_at(n: int):
    """A step hook that sends this process SIGTERM after the n-th training step."""
    import signal

    calls = [0]

    def hook(engine):
        calls[0] += 1
        if calls[0] == n:
            os.kill(os.getpid(), signal.SIGTERM)

    return hook


INTERRUPTED = ("training.epochs=3", "hardware.deterministic=true")  # stopped mid-epoch 2


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, shared_npz) -> tuple[Path, float]:
    """(run dir, train()'s value) of one finished tiny run, `tiny_overrides(shared_npz)`.
    Read it; copy it before writing into it."""
    from orchard_app import train

    return made_once(tmp_path_factory, "finished_run",
                     lambda p: train(compose(*tiny_overrides(shared_npz)), p))  # fmt: skip


@pytest.fixture(scope="session")
def interrupted_run(tmp_path_factory, shared_npz) -> Path:
    """The run dir of a tiny run stopped by SIGTERM in the middle of epoch 2 (step 9 of 18),
    `tiny_overrides(shared_npz, *INTERRUPTED)`; its checkpoints/last.pt resumes it."""
    from orchard_app import train
    from orchard_app.errors import TrainingInterrupted

    def make(path: Path) -> str:
        try:
            train(compose(*tiny_overrides(shared_npz, *INTERRUPTED)), path,
                  step_hooks=[sigterm_at(9)])  # fmt: skip
        except TrainingInterrupted as err:
            return err.checkpoint
        raise AssertionError("the run was not interrupted")

    return made_once(tmp_path_factory, "interrupted_run", make)[0]


@pytest.fixture
def shared_medmnist() -> Path:
    if not (SHARED_MEDMNIST / "bloodmnist.npz").is_file():
        pytest.skip(
            f"real MedMNIST files not found at {SHARED_MEDMNIST} (the workplace's shared data folder)"
        )
    return SHARED_MEDMNIST


@pytest.fixture(scope="session")
def cluster():
    """The workplace's one-node SLURM cluster, started if it is not running (and then stopped)."""
    if not LOCAL_SLURM.is_file():
        pytest.skip(f"the local SLURM cluster script is not at {LOCAL_SLURM}")
    was_up = subprocess.run([LOCAL_SLURM, "status"], capture_output=True).returncode == 0
    # The node advertises `nproc` CPUs, and nproc obeys OMP_NUM_THREADS, which an xdist worker
    # sets to 1: a 2-task job would then be refused ("More processors requested than permitted").
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    started = subprocess.run([LOCAL_SLURM, "start"], capture_output=True, text=True, env=env,
                             stdin=subprocess.DEVNULL, timeout=300)  # fmt: skip
    assert started.returncode == 0, started.stdout + started.stderr
    yield
    if not was_up:
        subprocess.run([LOCAL_SLURM, "stop"], capture_output=True, stdin=subprocess.DEVNULL,
                       timeout=120)  # fmt: skip


def sigint_as_in_a_terminal() -> None:
    """preexec_fn for a child a test stops with SIGINT. A shell starts background jobs with SIGINT
    ignored and the ignore is inherited: under `make test-slow &` the child would never see the
    test's Ctrl-C (a process that ignores SIGINT at start-up keeps ignoring it). A terminal's
    foreground process has the default disposition; give the child that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_cli(
    *args: str, cwd: Path, env: dict | None = None, timeout: float = 300, python_args: tuple = ()
) -> subprocess.CompletedProcess:
    """`python -m orchard_app <args>` in `cwd`, as a user would run it."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, *python_args, "-m", "orchard_app", *args],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )  # fmt: skip


@pytest.fixture(scope="session")
def failing_sweep(tmp_path_factory, shared_npz) -> tuple[Path, subprocess.CompletedProcess]:
    """(the dir it ran in, its result) of one basic sweep of two tiny jobs whose second fails
    its config validation: `-m <tiny> training.label_smoothing=0.1,1.5`, run once."""

    def make(path: Path) -> dict:
        path.mkdir()
        result = run_cli("-m", *tiny_overrides(shared_npz), "training.label_smoothing=0.1,1.5",
                         cwd=path)  # fmt: skip
        return {"returncode": result.returncode, "stdout": result.stdout, "stderr": result.stderr}

    path, made = made_once(tmp_path_factory, "failing_sweep", make)
    return path, subprocess.CompletedProcess(["orchard_app", "-m"], **made)


def only_run_dir(base: Path) -> Path:
    """The single run directory under <base>/outputs/<date>/."""
    dirs = [p for p in (base / "outputs").glob("*/*") if p.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres_server():
    """A throw-away PostgreSQL server on 127.0.0.1 (Debian's `postgresql` package; .ci/run
    installs it) that a test can stop and start again: (url, ctl). initdb refuses to run as
    root, so as root it runs as the postgres user."""
    import shutil
    import tempfile

    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not bins:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    pytest.importorskip("psycopg", reason="psycopg[binary] is a dev dependency (make install)")
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    data = Path(tempfile.mkdtemp(prefix="orchard-pg-", dir="/tmp"))
    if as_user:
        shutil.chown(data, "postgres", "postgres")
    port = _free_port()

    def pg(*args: str) -> None:
        done = subprocess.run([*as_user, str(bins[-1].parent / args[0]), *args[1:]],
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert done.returncode == 0, done.stderr

    def ctl(action: str) -> None:
        extra = (
            ["-o", f"-p {port} -k {data} -c listen_addresses=127.0.0.1"]
            if action == "start"
            else []
        )
        pg("pg_ctl", "-D", str(data / "db"), "-l", str(data / "log"), "-m", "fast", "-w", action,
           *extra)  # fmt: skip

    pg("initdb", "-D", str(data / "db"), "-A", "trust", "-U", "postgres")
    ctl("start")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres", ctl
    finally:
        with contextlib.suppress(AssertionError):  # a test may have stopped it
            ctl("stop")
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server):
    return postgres_server[0]
