"""Official MedMNIST files: find, verify (MD5, remembered) and download (pooch).

A present file is hashed once; the result is remembered in the cache directory keyed by path,
size and mtime, so 35 MB to several GB are not re-hashed on every run. An absent file is
downloaded by pooch, which streams to a temporary file in the same directory, checks the MD5
and only then renames it: no partial file is ever left behind. A lock in the cache directory
lets concurrent runs (array tasks, DDP ranks) download a file once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

from filelock import FileLock

from orchard_app.atomic import atomic_write
from orchard_app.config.medmnist import file_name, url_and_md5
from orchard_app.data.folders import not_a_file, writable_dir
from orchard_app.errors import DataError, first_line

log = logging.getLogger(__name__)

MEMO = "md5_verified.json"  # in dataset.cache_dir: {resolved path: {size, mtime_ns, md5}}


def official_source(name: str, resolution: int, mirror: str | None) -> tuple[str, str, str]:
    """File name, URL (on the mirror when one is set) and MD5 of an official file."""
    fname = file_name(name, resolution)
    url, md5 = url_and_md5(name, resolution)
    if mirror:
        url = mirror.rstrip("/") + "/" + fname
    return fname, url, md5


def ensure_medmnist_file(
    name: str, resolution: int, root: Path, cache_dir: Path, download: bool, mirror: str | None
) -> Path:
    """Return the path of a verified official file, downloading it if absent and allowed."""
    fname, url, md5 = official_source(name, resolution, mirror)
    not_a_file(root, "dataset.root")
    path = root / fname
    if path.is_file():
        verify_md5(path, md5, url, cache_dir)
        return path
    if not download:
        raise DataError(missing_message(fname, url, md5, root, "dataset.download=false"))
    return _download(url, fname, md5, root, cache_dir)


def _download(url: str, fname: str, md5: str, root: Path, cache_dir: Path) -> Path:
    """Download under a lock (in the cache dir, not the user's data folder), so array tasks or
    DDP ranks starting together fetch the file once: the others wait, then find it in place."""
    import pooch  # lazy: pooch pulls in requests

    writable_dir(root, "dataset.root")
    with FileLock(f"{writable_dir(cache_dir, 'dataset.cache_dir') / fname}.download.lock"):
        path = root / fname
        if path.is_file():
            verify_md5(path, md5, url, cache_dir)
            return path
        log.info("downloading %s from %s", fname, url)
        pooch.get_logger().setLevel(logging.WARNING)  # we announce the download ourselves, once
        try:
            done = pooch.retrieve(url, f"md5:{md5}", fname=fname, path=root, progressbar=True)
        except ValueError as e:  # pooch: the downloaded file's hash does not match
            raise DataError(
                f"the download of {fname} from {url} failed its MD5 check (expected {md5}); "
                f"nothing was kept. The server sent a different or incomplete file "
                f"({first_line(e)})\n" + by_hand(fname, url, md5, root)
            ) from None
        except Exception as e:  # offline, DNS, HTTP error, dropped connection (pooch cleans up)
            raise DataError(missing_message(fname, url, md5, root, network_reason(e))) from None
        _remember(Path(done), md5, cache_dir)  # pooch has just checked the MD5
        return Path(done)


def missing_message(fname: str, url: str, md5: str, root: Path, reason: str) -> str:
    head = f"{fname} is not in {root} and could not be downloaded ({reason}).\n"
    return head + by_hand(fname, url, md5, root)


def by_hand(fname: str, url: str, md5: str, root: Path) -> str:
    return (
        f"  Fetch it by hand on a machine with internet:  curl -L -o {fname} '{url}'\n"
        f"  Check it:  md5sum {fname}   (must print {md5})\n"
        f"  Put it in: {root}/   (or point dataset.root / ORCHARD_DATA_DIR at the folder with it)"
    )


def network_reason(e: BaseException) -> str:
    """A short cause instead of urllib3's nested repr."""
    text, kind = str(e), type(e).__name__
    m = re.search(r"host='([^']+)'", text) or re.search(r"https?://([^/:]+)", text)
    host = m.group(1) if m else "the server"
    if "NameResolution" in text or "Failed to resolve" in text:
        return f"cannot resolve {host}: no network?"
    if "refused" in text.lower():
        return f"connection refused by {host}"
    if "timed out" in text.lower() or "Timeout" in kind:
        return f"connection to {host} timed out"
    if "IncompleteRead" in text or "Connection broken" in text or "ChunkedEncoding" in kind:
        return "the connection dropped before the file was complete; nothing was kept"
    status = getattr(getattr(e, "response", None), "status_code", None)
    if status:
        return f"HTTP {status} from {host}"
    return f"{kind}: {first_line(e)}"


def md5_of(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_md5(path: Path, expected: str, url: str, cache_dir: Path) -> None:
    """Raise DataError unless `path` has MD5 `expected`; remember a pass by (size, mtime)."""
    not_a_file(cache_dir, "dataset.cache_dir")  # before hashing gigabytes, not after
    if _read_memo(cache_dir / MEMO).get(str(path.resolve())) == _stamp(path, expected):
        return
    log.info("verifying MD5 of %s (%d MB, once)", path.name, path.stat().st_size >> 20)
    actual = md5_of(path)
    if actual != expected:
        raise DataError(
            f"{path} fails its MD5 check: expected {expected}, got {actual}. The file is corrupt "
            f"or truncated (an interrupted download?), or was changed after it was verified.\n"
            f"  Delete it and run again to download it afresh, or:\n"
            + by_hand(path.name, url, expected, path.parent)
        )
    _remember(path, expected, cache_dir)


def recheck_md5(path: Path, expected: str, url: str, cache_dir: Path) -> None:
    """Forget a remembered pass and hash again: for a 'verified' file that fails to read (an
    edit that kept its size and mtime fools the memo, not the hash)."""
    _update_memo(cache_dir, str(path.resolve()), None)
    verify_md5(path, expected, url, cache_dir)


def _stamp(path: Path, md5: str) -> dict:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "md5": md5}


def _remember(path: Path, md5: str, cache_dir: Path) -> None:
    _update_memo(cache_dir, str(path.resolve()), _stamp(path, md5))


def _update_memo(cache_dir: Path, key: str, stamp: dict | None) -> None:
    memo_path = writable_dir(cache_dir, "dataset.cache_dir") / MEMO
    with FileLock(f"{memo_path}.lock"):
        memo = _read_memo(memo_path)
        if stamp is None:
            memo.pop(key, None)
        else:
            memo[key] = stamp
        atomic_write(memo_path, json.dumps(memo, indent=1, sort_keys=True))


def _read_memo(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
