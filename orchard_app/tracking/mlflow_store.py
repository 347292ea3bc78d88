"""Where MLflow runs go: the tracking URI, the artifact location and the experiment.

The default store is SQLite, `sqlite:///mlflow.db` in the directory the app was started from
(MLflow's old ./mlruns file store is disabled in current versions), with artifacts in
`mlartifacts/` beside the DB, so `mlflow ui --backend-store-uri sqlite:///mlflow.db` started
there shows runs and artifacts. A new SQLite DB is created under a file lock: MLflow's schema
migrations fail when two processes create one DB at the same time.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

from filelock import FileLock
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from orchard_app.errors import TrackingError

DEFAULT_URI = "sqlite:///mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
DEFAULT_TIMEOUT_S = 15.0
# MLflow 3's UI opens an experiment on its GenAI trace overview unless it is tagged as this.
KIND_KEY = "mlflow.experimentKind"
KIND_TAG = {KIND_KEY: "custom_model_development"}
UNREACHABLE = (
    "Connection refused",
    "Name or service not known",
    "timed out",
    "No route to host",
    "Temporary failure in name resolution",
)


def start_dir() -> Path:
    """The directory the app was started from (Hydra's runtime.cwd: jobs on other nodes too)."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.cwd)
    return Path.cwd()


def resolve_uri(uri: str | None, base: Path) -> str:
    """The tracking URI with a relative SQLite path made absolute against `base`."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    scheme = uri.split(":", 1)[0].lower() if ":" in uri else ""
    if scheme in ("", "file"):
        raise TrackingError(
            f"tracking.uri={uri}: MLflow's file store (./mlruns) is disabled in current MLflow "
            f"versions. Use a SQLite file, e.g. tracking.uri={DEFAULT_URI} (the default), or a "
            "tracking server, e.g. tracking.uri=http://host:5000"
        )
    db = sqlite_path(uri)
    if db is not None and not db.is_absolute():
        return "sqlite:///" + str((base / db).resolve())
    return uri


def sqlite_path(uri: str) -> Path | None:
    """The DB file of a `sqlite:///path` URI (None for other stores and in-memory SQLite)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def artifact_location(uri: str, configured: str | None, base: Path) -> str | None:
    """Explicit, so MLflow never falls back to a ./mlruns path: `configured` (relative paths
    against `base`), else `mlartifacts/` beside a SQLite DB, else the server's default (None)."""
    if configured:
        if "://" in configured or configured.startswith("file:"):
            return configured
        return (base / configured).resolve().as_uri()
    db = sqlite_path(uri)
    return (db.parent / ARTIFACTS_DIR).as_uri() if db is not None else None


def connect(tracking, base: Path | None = None) -> tuple[MlflowClient, str, str]:
    """(client, experiment id, absolute tracking URI) for the `tracking` config node."""
    base = base or start_dir()
    uri = resolve_uri(tracking.uri, base)
    location = artifact_location(uri, tracking.get("artifact_location"), base)
    name = str(tracking.experiment)
    timeout_s = tracking.get("timeout_s", DEFAULT_TIMEOUT_S)
    limit_http_waits(timeout_s)
    started = time.monotonic()
    with _creation_lock(uri, location):
        try:
            client = MlflowClient(tracking_uri=uri)
            return client, _experiment(client, name, location), uri
        except MlflowException as e:
            raise TrackingError(_unreachable(uri, tracking.uri, timeout_s, started, e)) from e


def _experiment(client: MlflowClient, name: str, location: str | None) -> str:
    """The id of experiment `name`, created (or tagged) as a model-training experiment."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, artifact_location=location, tags=KIND_TAG)
        except MlflowException:  # created meanwhile (a server shared by several jobs)
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if KIND_KEY not in experiment.tags:  # made by an older orchard_app or by hand
        client.set_experiment_tag(experiment.experiment_id, KIND_KEY, KIND_TAG[KIND_KEY])
    return experiment.experiment_id


def limit_http_waits(timeout_s: float | None) -> None:
    """Bound how long one MLflow call waits for a tracking server: each request times out after
    `timeout_s` and the retries of a refused connection end within it. MLflow's defaults (7
    retries, backoff up to 2 min) take about 250 s to give up on a server that is not there.
    None leaves MLflow's own settings (its defaults or the user's environment)."""
    if timeout_s is None:
        return
    retries, slept = 0, 0.0
    while True:  # urllib3 sleeps 0, then factor * 2**(n-1) + jitter (<= 1 s) before retry n
        wait = 0.0 if retries == 0 else 2.0**retries + 1.0
        if slept + wait > timeout_s:
            break
        retries, slept = retries + 1, slept + wait
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(max(1, math.ceil(timeout_s)))
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(retries)
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = "1"
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_JITTER"] = "1.0"


def _unreachable(uri: str, given, timeout_s, started: float, e: Exception) -> str:
    text = str(e)
    reason = next((r for r in UNREACHABLE if r in text), None)
    where = f"the MLflow store {uri} (tracking.uri={given})"
    if reason is None or not uri.startswith(("http://", "https://")):
        return f"could not open {where}: {text[:600]}"
    waited = f"{time.monotonic() - started:.0f} s"
    limit = "null" if timeout_s is None else f"{timeout_s:g}"
    return (
        f"could not reach {where}: {reason} (gave up after {waited}; tracking.timeout_s="
        f"{limit}).\n  Start the tracking server (mlflow server --host <host> --port "
        f"<port>), fix tracking.uri, or use the local default tracking.uri={DEFAULT_URI}."
    )


@contextlib.contextmanager
def _creation_lock(uri: str, location: str | None):
    """Serialise opening a SQLite DB (its creation and schema migrations) across processes."""
    db = sqlite_path(uri)
    if db is None:
        yield
        return
    local = local_path(location)
    lock_path = local / ".create.lock" if local else db.with_name(db.name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock_path), timeout=300):
        yield


def local_path(location: str | None) -> Path | None:
    """The directory of a `file:` artifact location (None for remote ones)."""
    if not location or not location.startswith("file:"):
        return None
    return Path(url2pathname(urlparse(location).path))
