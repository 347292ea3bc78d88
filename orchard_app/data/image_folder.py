"""dataset=folder: one subfolder per class (or train/ val/ test/ each holding them), converted
once into the MedMNIST layout in dataset.cache_dir and read from there like an npz.

A cache entry is named by a digest of the files (relative names, sizes, mtimes) and of the
settings that change the arrays, so an added, removed or edited image builds a new one and an
unchanged folder costs one walk of its directory tree. The build decodes on every core, streams
rows into a memmap inside a temporary folder and renames that folder into place under a lock:
concurrent runs build it once, and an interrupted build leaves nothing that looks complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from itertools import repeat
from pathlib import Path

import numpy as np
from filelock import FileLock

from orchard_app.data.arrays import KEYS, SPLITS
from orchard_app.data.images import SUFFIXES, UnreadableImage, fit, read_image
from orchard_app.errors import DataError

log = logging.getLogger(__name__)

PARALLEL_FROM = 256  # fewer images are decoded in this process: a pool costs more than it saves
LAYOUT = "one subfolder per class, or train/, val/ and test/ each holding the class subfolders"


def folder_arrays(ds, cache_dir: Path) -> tuple[dict[str, np.ndarray], list[str], str]:
    """The six arrays (memory-mapped from the cache), the class names and the folder."""
    root = Path(os.path.expanduser(str(ds.path)))
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise DataError(f"dataset.path={ds.path} {what}; point it at a folder with {LAYOUT}")
    settings = {
        k: ds[k] for k in ("resolution", "resize", "split", "split_seed", "skip_unreadable")
    }
    settings["split"] = [float(f) for f in settings["split"]]
    classes, files, ignored = scan(root, settings["split"], int(ds.split_seed))
    if ignored:
        log.info(
            "%s: ignored %d files that are not images (by suffix), e.g. %s",
            root,
            len(ignored),
            ignored[0],
        )
    manifest = {"root": str(root.resolve()), "settings": settings, "classes": classes,
                "files": files}  # fmt: skip
    prefix = _digest({k: manifest[k] for k in ("root", "settings")})
    target = cache_dir / "folders" / f"{root.resolve().name}-{prefix}-{_digest(manifest)}"
    if not target.is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(target.parent / f"{prefix}.lock"):
            if not target.is_dir():  # else another process built it while we waited
                _build(root, manifest, target, ds)
                for stale in target.parent.glob(f"*-{prefix}-*"):
                    if stale != target and stale.is_dir():
                        shutil.rmtree(stale, ignore_errors=True)
    skipped = json.loads((target / "manifest.json").read_text())["skipped"]
    if skipped:
        log.warning("%s: skipped %d unreadable images (dataset.skip_unreadable=true), e.g. %s",
                    root, len(skipped), skipped[0])  # fmt: skip
    return {k: np.load(target / f"{k}.npy", mmap_mode="r") for k in KEYS}, classes, str(root)


def scan(root: Path, fractions: list[float], seed: int) -> tuple[list[str], list[list], list[str]]:
    """Class names (sorted), files as [split, label, relative name, size, mtime_ns] (sorted by
    split, class, name) and the ignored non-image files. Without split folders each class is
    split by `fractions` with numpy's default_rng(seed) over its sorted names: the same on
    every machine."""
    ignored: list[str] = []
    present = [s for s in SPLITS if (root / s).is_dir()]
    if present and len(present) < 3:
        missing = ", ".join(f"{s}/" for s in SPLITS if s not in present)
        raise DataError(f"{root} has {', '.join(f'{s}/' for s in present)} but no {missing}; "
                        "split folders need all three, or none (then dataset.split draws the split)")  # fmt: skip
    if present:
        found = {s: _classes(root / s, root, ignored) for s in SPLITS}
        classes = sorted(set().union(*found.values()))
        for s in SPLITS:
            if absent := [c for c in classes if c not in found[s]]:
                raise DataError(f"{root / s} has no class folder {', '.join(absent)}, which "
                                "another split has; every split needs every class")  # fmt: skip
        files = [[s, k, *f] for s in SPLITS for k, c in enumerate(classes) for f in found[s][c]]
        return classes, files, ignored
    found = _classes(root, root, ignored)
    classes, rng, files = sorted(found), np.random.default_rng(seed), []
    for k, c in enumerate(classes):
        n = len(found[c])
        least = int(n >= 3)  # one image each in val and test once a class has three
        n_test = max(round(n * fractions[2]), least)
        n_val = min(max(round(n * fractions[1]), least), n - n_test - 1)
        order = rng.permutation(n)
        cuts = {"val": order[:n_val], "test": order[n_val : n_val + n_test]}
        which = {int(i): s for s, idx in cuts.items() for i in idx}
        files += [[which.get(i, "train"), k, *f] for i, f in enumerate(found[c])]
    files.sort(key=lambda f: SPLITS.index(f[0]))  # stable: by class and name within a split
    return classes, files, ignored


def _classes(top: Path, root: Path, ignored: list[str]) -> dict[str, list]:
    """{class folder name: its image files, recursively}; refuses none, or an empty one."""
    classes: dict[str, list] = {}
    for entry in _entries(top):
        if entry.is_dir():
            files = classes[entry.name] = []
            _walk(Path(entry.path), root, frozenset({_inode(top)}), files, ignored)
            if not files:
                raise DataError(f"class folder {entry.path} holds no images ({', '.join(sorted(SUFFIXES))}); "
                                "add some or remove the folder")  # fmt: skip
        else:
            ignored.append(entry.path)
    if len(classes) < 2:
        raise DataError(f"{top} has {len(classes) or 'no'} class folder{'s' * (not classes)}; "
                        f"a folder dataset has {LAYOUT}, with at least two classes")  # fmt: skip
    return classes


def _walk(d: Path, root: Path, above: frozenset, out: list, ignored: list[str]) -> None:
    """Image files under `d`, sorted; symlinks are followed, and a link back up is refused."""
    me = _inode(d)
    if me in above:
        raise DataError(
            f"{d} is a symlink loop: it leads back to a folder above it; remove the link"
        )
    for entry in _entries(d):
        if entry.is_dir():
            _walk(Path(entry.path), root, above | {me}, out, ignored)
        elif entry.is_file() and Path(entry.name).suffix.lower() in SUFFIXES:
            st = entry.stat()
            out.append([Path(entry.path).relative_to(root).as_posix(), st.st_size, st.st_mtime_ns])
        else:
            ignored.append(entry.path)


def _entries(d: Path) -> list[os.DirEntry]:
    """Visible entries by name (hidden ones, .DS_Store and the like, are skipped)."""
    try:
        with os.scandir(d) as it:
            return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError as e:
        raise DataError(f"{d} cannot be listed ({e.strerror})") from None


def _inode(d: Path) -> tuple[int, int]:
    st = d.stat()
    return st.st_dev, st.st_ino


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _build(root: Path, manifest: dict, target: Path, ds) -> None:
    from tqdm.auto import tqdm

    files, side = manifest["files"], int(ds.resolution)
    log.info("%s: converting %d images to %d px (dataset.resize=%s) into %s, once", root,
             len(files), side, ds.resize, target.parent)  # fmt: skip
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.mkdir()
    try:
        work = np.lib.format.open_memmap(
            tmp / "work.npy", "w+", np.uint8, (len(files), side, side, 3)
        )
        kept, grey, skipped = np.zeros(len(files), dtype=bool), True, []
        images = _decoded([str(root / f[2]) for f in files], side, str(ds.resize))
        bar = tqdm(total=len(files), unit="img", desc=f"converting {root}", disable=None)
        with contextlib.closing(images), bar:
            for i, (image, error) in enumerate(images):
                bar.update()
                if error is None:
                    work[i] = image[..., None] if image.ndim == 2 else image
                    kept[i], grey = True, grey and image.ndim == 2
                elif ds.skip_unreadable:
                    skipped.append(files[i][2])
                else:
                    raise UnreadableImage(f"{error}; replace or remove it, or set "
                                          "dataset.skip_unreadable=true to skip such files")  # fmt: skip
        labels = np.array([f[1] for f in files], dtype=np.int64)
        for s in SPLITS:
            rows = np.flatnonzero(kept & np.array([f[0] == s for f in files]))
            out = np.lib.format.open_memmap(tmp / f"{s}_images.npy", "w+", np.uint8,
                                            (len(rows), side, side) + (() if grey else (3,)))  # fmt: skip
            step = max(1, (64 << 20) // (side * side * 3))  # rows per copy: 64 MiB at most
            for a in range(0, len(rows), step):
                block = work[rows[a : a + step]]
                out[a : a + len(block)] = block[..., 0] if grey else block
            out.flush()
            np.save(tmp / f"{s}_labels.npy", labels[rows].reshape(-1, 1))
        del work, out
        (tmp / "work.npy").unlink()
        (tmp / "manifest.json").write_text(json.dumps({"skipped": skipped, **manifest}))
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _decode(path: str, side: int, mode: str) -> tuple[np.ndarray | None, str | None]:
    try:
        return fit(read_image(path), side, mode), None
    except UnreadableImage as e:
        return None, str(e)


def _decoded(paths: list[str], side: int, mode: str):
    """(image, None) or (None, why unreadable) per path, in order, decoded on every core; at
    most one window of decoded images is held, whatever the folder's size."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if len(paths) < PARALLEL_FROM or (cores or 1) < 2:
        yield from map(_decode, paths, repeat(side), repeat(mode))
        return
    window = max(256, (64 << 20) // (side * side * 3))
    pool = ProcessPoolExecutor(cores)
    try:
        for a in range(0, len(paths), window):
            part = paths[a : a + window]
            chunk = max(1, len(part) // (4 * cores))
            yield from pool.map(_decode, part, repeat(side), repeat(mode), chunksize=chunk)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
