"""Optuna storages from one URL string, the same in the sweeper and in every job.

`sqlite:///<path>` (the default, in the sweep dir), `postgresql://...` (a server), and
`journal:///<path>` for Optuna's journal file storage: an append-only log that works on a
shared (NFS) filesystem where SQLite's locking does not.
"""

from __future__ import annotations

import shlex
import warnings
from pathlib import Path

from optuna.exceptions import StorageInternalError
from sqlalchemy.exc import SQLAlchemyError

from orchard_app.errors import HpoError, first_line
from orchard_app.rundir.layout import OPTUNA_DB, OPTUNA_JOURNAL

JOURNAL = "journal://"
# A database or a journal file that went away (Optuna re-raises a database's error as its own
# StorageInternalError, whose message blames "invalid data in the commit": its cause says why).
STORAGE_ERRORS = (SQLAlchemyError, StorageInternalError, OSError)
# Optuna's heartbeats warn at every use (experimental; "supposed to be used with optimize"):
# the sweeper and its jobs use them on purpose.
warnings.filterwarnings(
    "ignore", message=r".*(heartbeat|Heartbeat|fail_stale_trials|RetryHeartbeat)"
)


def default_url(sweep_dir: str | Path, journal: bool = False) -> str:
    """SQLite in the sweep dir; a journal file there for jobs on other nodes (NFS)."""
    if journal:
        return f"{JOURNAL}{Path(sweep_dir).resolve() / OPTUNA_JOURNAL}"
    return f"sqlite:///{Path(sweep_dir).resolve() / OPTUNA_DB}"


def absolute_url(url: str, base: str | Path) -> str:
    """A relative SQLite or journal path made absolute, so every job finds the same file.
    `journal:///abs/x.log` (as default_url writes it) is absolute, like `journal:////abs/x.log`;
    `journal://x.log` is relative to `base`."""
    if url.startswith(JOURNAL):
        path = url[len(JOURNAL) :]
        path = "/" + path.lstrip("/") if path.startswith("/") else path
        return JOURNAL + str((Path(base) / path).resolve())
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///") :])
        if not path.is_absolute():
            return "sqlite:///" + str((Path(base) / path).resolve())
    return url


def masked(url: str) -> str:
    """`postgresql://user:***@host/db`: a URL as it may be shown or stored."""
    head, sep, tail = url.partition("://")
    creds, at, host = tail.rpartition("@")
    if not sep or not at or ":" not in creds:
        return url
    return f"{head}://{creds.split(':', 1)[0]}:***@{host}"


def without_password(url: str) -> tuple[str, str | None]:
    """The URL the jobs get (their config is written to disk) and the password, which they get
    through libpq's PGPASSWORD instead (psycopg honours it, and ~/.pgpass)."""
    if masked(url) == url:
        return url, None
    head, _, tail = url.partition("://")
    creds, _, host = tail.rpartition("@")
    user, _, password = creds.partition(":")
    from urllib.parse import unquote

    return f"{head}://{user}@{host}", unquote(password)


def dashboard_command(url: str) -> str:
    """The optuna-dashboard command that opens this storage (`url` as shown: `masked`).
    SQLite: the URL as it is, `sqlite:////abs/path` (three slashes, then the absolute path);
    a journal: its file's path (optuna-dashboard reads a file given as a path as a journal);
    PostgreSQL: the URL, its password as `***`."""
    target = url[len(JOURNAL) :] if url.startswith(JOURNAL) else url
    command = shlex.join(["optuna-dashboard", target])
    if ":***@" in url:  # as `masked` shows a password
        command += "   (*** is the password; or export PGPASSWORD and leave out :***)"
    return command


def open_storage(url: str, heartbeat: int | None = None, grace: int | None = None,
                 retries: int | None = None):  # fmt: skip
    """The storage behind `url`. On a database (SQLite, PostgreSQL) `heartbeat` seconds turn on
    Optuna's heartbeats: a trial whose job stopped beating for `grace` seconds (2 x heartbeat
    by default) is failed, and retried `retries` times (as a new trial with its parameters)."""
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend

    if url.startswith(JOURNAL):
        path = Path(url[len(JOURNAL) :])
        if not path.parent.is_dir():
            raise HpoError(f"the study journal {path} is in a directory that does not exist; "
                           "create it, or check hydra.sweeper.storage=journal:///<absolute path>")  # fmt: skip
        return JournalStorage(JournalFileBackend(str(path)))
    beats = {}
    if heartbeat:
        beats = {"heartbeat_interval": int(heartbeat), "grace_period": grace and int(grace),
                 "heartbeat_stale_trial_callback": RetryLost(retries)}  # fmt: skip
    kwargs: dict = dict(beats)
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        # jobs write at once: wait for SQLite's lock instead of failing
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    from sqlalchemy.exc import DBAPIError, IntegrityError

    for attempt in range(5):  # two sweeps creating one storage at once race on its tables
        try:
            return RDBStorage(url, **kwargs)
        except DBAPIError as e:  # "table ... already exists", a duplicate alembic_version row
            raced = isinstance(e, IntegrityError) or "already exists" in str(e)
            if attempt == 4 or not raced:
                raise
            import time

            time.sleep(0.3 * (attempt + 1))
    raise AssertionError  # (unreachable)


def retried(trials) -> dict[int, int]:
    """{lost trial number: the number of the trial that retried it}."""
    return {t.system_attrs["retry_history"][-1]: t.number for t in trials
            if t.system_attrs.get("retry_history")}  # fmt: skip


class RetryLost:
    """Optuna's retry of a lost trial (a new WAITING trial with its parameters, `retries` times
    at most), without the lost trial's own records (its error, job dir, epochs)."""

    def __init__(self, retries: int | None) -> None:
        import warnings

        import optuna

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=retries)

    def __call__(self, study, trial) -> None:
        import copy

        trial = copy.copy(trial)
        trial.user_attrs = {}
        self.retry(study, trial)


def advice(url: str) -> str:
    """What this storage suits, and how to watch the study live (the start-up line)."""
    watch = f"Watch it live: {dashboard_command(url)}"
    if url.startswith(JOURNAL):
        return ("a journal file suits one machine (or one node writing at a time); for several "
                f"nodes or workers use PostgreSQL: a journal shared over NFS may race. {watch}")  # fmt: skip
    if url.startswith("sqlite:"):
        return ("SQLite suits one machine; for several nodes or workers use PostgreSQL (SQLite's "
                f"locks are unreliable on network filesystems). {watch}")  # fmt: skip
    return f"a database server: any number of nodes and workers. {watch}"


def why_storage_failed(e: BaseException) -> str:
    """The real reason a storage call failed, in one line (the cause Optuna wrapped)."""
    cause = e.__cause__ if isinstance(e, StorageInternalError) and e.__cause__ else e
    text = " ".join(first_line(cause).split())
    return f"{type(cause).__name__}: {text[:300]}"
