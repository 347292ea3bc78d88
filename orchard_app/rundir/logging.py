"""Logging through structlog: readable lines on the console and in logs/run.log for people,
JSON lines in logs/run.jsonl for machines.

During a run the root logger has exactly our three handlers (Hydra's console handler is set
aside, so no line is printed twice), Python warnings are captured, and third-party loggers
(Hydra, pooch, MLflow, ...) go through the same handlers. Every record written by a run's
handlers carries its run id, whichever thread logged it.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import structlog

from orchard_app.rundir.layout import LOG_JSON, LOG_TEXT

# Chatty at INFO (alembic prints every MLflow schema migration); warnings still come through.
QUIET = ("matplotlib", "PIL", "urllib3", "alembic", "mlflow", "git", "filelock", "numexpr", "h5py",
         "sqlalchemy", "httpx")  # fmt: skip
# Loggers that libraries give handlers of their own (propagate=False): routed through ours.
ROUTED = ("mlflow", "submitit")


def _shared_processors() -> list:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(allow=("console", "fields")),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def _for_people(_, __, ed: dict) -> str:
    """`[12:03:11] message` (+ level for warnings/errors); the `console` extra replaces the event."""
    text = ed.get("console") or str(ed.get("event", ""))
    if ed.get("exc_info") and ed.get("level") in ("error", "critical", "exception"):
        text += "\n" + structlog.processors.format_exc_info(
            None, "", {"exc_info": ed["exc_info"]}
        ).get("exception", "")
    level = ed.get("level", "info")
    prefix = "" if level in ("info", "debug") else f"{level.upper()}: "
    return f"[{_local_clock(ed.get('timestamp'))}] {prefix}{text}"


def _local_clock(timestamp: str | None) -> str:
    """HH:MM:SS in local time (the run dir names use local time too); JSON keeps UTC."""
    try:
        return dt.datetime.fromisoformat(str(timestamp)).astimezone().strftime("%H:%M:%S")
    except ValueError:
        return ""


def duration(seconds: float) -> str:
    """42s, 4m05s, 12m, 1h05m: an elapsed time or an ETA on a console line."""
    s = round(max(seconds, 0))
    if s < 600:
        return f"{s}s" if s < 60 else f"{s // 60}m{s % 60:02d}s"
    return f"{s // 60}m" if s < 3600 else f"{s // 3600}h{s % 3600 // 60:02d}m"


def _for_machines(_, __, ed: dict) -> dict:
    ed.pop("console", None)
    ed.update(ed.pop("fields", None) or {})
    return ed


def _add_run_id(run_id: str):
    def add(_, __, ed: dict) -> dict:
        ed.setdefault("run_id", run_id)
        return ed

    return add


@functools.cache  # once per process
def _configure_structlog() -> None:
    structlog.configure(
        processors=[*_shared_processors(), structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def _formatter(last: list) -> logging.Formatter:
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_shared_processors(),
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *last],
    )


def setup_console_only(level: int = logging.WARNING) -> Callable[[], None]:
    """Console only, from `level` up: the non-main processes of a multi-process run."""
    return setup_logging(None, "", console_level=level)


def setup_logging(
    log_dir: Path | None, run_id: str, console_level: int = logging.INFO
) -> Callable[[], None]:
    """Route all logging to the console, logs/run.log and logs/run.jsonl; returns the undo."""
    _configure_structlog()
    add_run_id = _add_run_id(run_id)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(_formatter([_for_people]))
    console.setLevel(console_level)
    console.addFilter(_not_a_retry)
    ours = [console] if log_dir is None else [console, *_file_handlers(log_dir, add_run_id)]
    return _install(ours, run_id)


def _not_a_retry(record: logging.LogRecord) -> bool:
    """urllib3's "Retrying (Retry(total=2, ...))" lines stay in the files: the console gets the
    one message that follows when the retries are spent (or nothing, when one succeeds)."""
    return not (record.name == "urllib3.connectionpool" and record.levelno < logging.ERROR)


def _file_handlers(log_dir: Path, add_run_id) -> list[logging.Handler]:
    log_dir.mkdir(parents=True, exist_ok=True)
    text = logging.FileHandler(log_dir / LOG_TEXT, encoding="utf-8")
    text.setFormatter(_formatter([_for_people]))
    jsonl = logging.FileHandler(log_dir / LOG_JSON, encoding="utf-8")
    jsonl.setFormatter(
        _formatter(
            [
                add_run_id,
                structlog.processors.format_exc_info,
                _for_machines,
                structlog.processors.JSONRenderer(),
            ]
        )
    )
    return [text, jsonl]


def _install(ours: list[logging.Handler], run_id: str) -> Callable[[], None]:
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    for handler in saved_handlers:  # Hydra's console handler would print every line twice
        root.removeHandler(handler)
    for handler in ours:
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    quiet = {name: logging.getLogger(name).level for name in QUIET}
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
    routed = {}
    for name in ROUTED:
        logger = logging.getLogger(name)
        routed[name] = (logger.handlers[:], logger.propagate)
        logger.handlers, logger.propagate = [], True
    logging.captureWarnings(True)
    structlog.contextvars.bind_contextvars(run_id=run_id)

    def undo() -> None:
        structlog.contextvars.unbind_contextvars("run_id")
        logging.captureWarnings(False)
        for handler in ours:
            root.removeHandler(handler)
            handler.close()
        for handler in saved_handlers:
            root.addHandler(handler)
        root.setLevel(saved_level)
        for name, level in quiet.items():
            logging.getLogger(name).setLevel(level)
        for name, (handlers, propagate) in routed.items():
            logger = logging.getLogger(name)
            logger.handlers, logger.propagate = handlers, propagate

    return undo
