"""Optuna storages from one URL string, the same in the sweeper and in every job.

`sqlite:///<path>` (the default, in the sweep dir), `postgresql://...` (a server), and
`journal:///<path>` for Optuna's journal file storage: an append-only log that works on a
shared (NFS) filesystem where SQLite's locking does not.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from orchard_app.errors import HpoError
from orchard_app.rundir.layout import OPTUNA_DB, OPTUNA_JOURNAL

JOURNAL = "journal://"


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


def open_storage(url: str):
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend

    if url.startswith(JOURNAL):
        path = Path(url[len(JOURNAL) :])
        if not path.parent.is_dir():
            raise HpoError(f"the study journal {path} is in a directory that does not exist; "
                           "create it, or check hydra.sweeper.storage=journal:///<absolute path>")  # fmt: skip
        return JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        # jobs of one batch write at once: wait for SQLite's lock instead of failing
        return RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    return RDBStorage(url)
