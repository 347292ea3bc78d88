"""Read split arrays in the MedMNIST npz layout and check their structure before training.

Every source (official MedMNIST files, a user's npz, the embedded digits set) ends up as a
mapping with train/val/test images and labels and goes through `check_layout`, so a malformed
file fails here with a message instead of deep inside training.
"""

from __future__ import annotations

import math
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from filelock import FileLock

from orchard_app.atomic import atomic_path
from orchard_app.errors import DataError

SPLITS = ("train", "val", "test")
KEYS = tuple(f"{s}_{k}" for s in SPLITS for k in ("images", "labels"))


@dataclass(frozen=True)
class Layout:
    """What the arrays say about the dataset."""

    task: str  # multi-class | binary | multi-label | ordinal
    num_classes: int  # classes, or labels for multi-label
    channels: int
    height: int
    width: int
    counts: dict[str, int]


def read_npz(path: Path, hint: str) -> dict[str, np.ndarray]:
    """Load all six arrays; a truncated or corrupt archive becomes a DataError, not a zipfile trace."""
    try:
        with np.load(path, allow_pickle=False) as z:
            _refuse_missing(z.files, path, hint)
            for key in KEYS:  # before np.load allocates what a header claims
                with z.zip.open(f"{key}.npy") as src:
                    _read_header(src, path, key, z.zip.getinfo(f"{key}.npy").file_size, hint)
            return {k: z[k] for k in KEYS}
    except DataError:
        raise
    except MemoryError as e:
        raise DataError(
            f"{path} does not fit in memory ({e}); set dataset.memmap=true to read it from an "
            "uncompressed on-disk cache instead"
        ) from None
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError) as e:
        raise _corrupt(path, e, hint) from None


def _corrupt(path: Path, e: BaseException, hint: str = "") -> DataError:
    why = f"{type(e).__name__}: {e}"
    return DataError(f"{path} is corrupt or truncated and cannot be read ({why}). {hint}".strip())


def _refuse_missing(names: list[str], path: Path, hint: str) -> None:
    missing = [k for k in KEYS if k not in names]
    if missing:
        raise DataError(
            f"{path} lacks {', '.join(missing)}; an npz in the MedMNIST layout has "
            f"{', '.join(KEYS)}. {hint}"
        )


def _read_header(src, path: Path, key: str, member_size: int, hint: str):
    """Shape, Fortran flag and dtype of an .npy stream, refused if the header claims more bytes
    than the member holds (a crafted or damaged header would otherwise allocate terabytes)."""
    version = np.lib.format.read_magic(src)
    readers = {
        (1, 0): np.lib.format.read_array_header_1_0,
        (2, 0): np.lib.format.read_array_header_2_0,
    }
    if version not in readers:
        raise ValueError(f"{key}.npy has .npy format version {version}; expected 1.0 or 2.0")
    shape, fortran, dtype = readers[version](src)
    declared, held = math.prod(shape) * dtype.itemsize, member_size - src.tell()
    if declared > held:
        raise DataError(
            f"{path}: {key} declares shape {shape} of {dtype} ({_size(declared)}) but the archive "
            f"holds only {_size(held)} of it; the file is corrupt or was not written by "
            f"numpy.savez. {hint}"
        )
    return shape, fortran, dtype


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def npz_member_sizes(path: Path) -> dict[str, int]:
    """Uncompressed bytes of each array in the archive, read from the zip directory only."""
    try:
        with zipfile.ZipFile(path) as zf:
            return {i.filename.removesuffix(".npy"): i.file_size for i in zf.infolist()}
    except (zipfile.BadZipFile, OSError) as e:
        raise _corrupt(path, e) from None


def check_layout(
    arrays: Mapping[str, np.ndarray],
    where: str,
    task: str | None = None,
    num_classes: int | None = None,
    expected_counts: Mapping[str, int] | None = None,
) -> Layout:
    """Validate keys, dtypes, shapes, label ranges and split sizes; infer what is not given."""
    problems: list[str] = []
    shapes = {}
    counts = {}
    for split in SPLITS:
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.dtype != np.uint8:
            problems.append(f"{split}_images has dtype {images.dtype}; expected uint8 (0-255)")
        if images.ndim == 3:
            shapes[split] = (*images.shape[1:], 1)
        elif images.ndim == 4 and images.shape[-1] in (1, 3):
            shapes[split] = images.shape[1:]
        else:
            problems.append(
                f"{split}_images has shape {images.shape}; expected N x H x W or N x H x W x C (C = 1 or 3)"
            )
        if not np.issubdtype(labels.dtype, np.integer):
            problems.append(f"{split}_labels has dtype {labels.dtype}; expected integers")
        if labels.shape[0] != images.shape[0]:
            problems.append(f"{split} has {images.shape[0]} images but {labels.shape[0]} labels")
        if labels.ndim not in (1, 2):
            problems.append(
                f"{split}_labels has shape {labels.shape}; expected N or N x 1 (N x L for multi-label)"
            )
        counts[split] = int(images.shape[0])
        if counts[split] == 0:
            problems.append(f"{split} split is empty")
    if len(set(shapes.values())) > 1:
        problems.append(f"image shapes differ between splits: {shapes}")
    if expected_counts:
        for split in SPLITS:
            if counts.get(split) != expected_counts[split]:
                problems.append(
                    f"{split} has {counts.get(split)} samples; the official release has {expected_counts[split]}"
                )
    if problems:
        raise _invalid(where, *problems)

    height, width, channels = shapes["train"]
    if height != width:
        raise _invalid(where, f"images are {height}x{width}; only square images are supported")
    label_width = {
        s: (arrays[f"{s}_labels"].shape[1] if arrays[f"{s}_labels"].ndim == 2 else 1)
        for s in SPLITS
    }
    all_labels = np.concatenate([arrays[f"{s}_labels"].reshape(counts[s], -1) for s in SPLITS])
    if len(set(label_width.values())) > 1:
        raise _invalid(where, f"label widths differ between splits: {label_width}")
    lo, hi = int(all_labels.min()), int(all_labels.max())
    if task is None:
        task = (
            "multi-label" if label_width["train"] > 1 else ("binary" if hi <= 1 else "multi-class")
        )
    if task == "multi-label":
        n = label_width["train"]
        if lo < 0 or hi > 1:
            raise _invalid(where, f"multi-label targets must be 0/1, found values {lo}..{hi}")
        if num_classes is not None and n != num_classes:
            raise _invalid(where, f"{n} labels per sample, expected {num_classes}")
    else:
        if label_width["train"] != 1:
            width = label_width["train"]
            raise _invalid(where, f"{task} labels must be one integer per sample, found {width}")
        n = num_classes if num_classes is not None else hi + 1
        if lo < 0 or hi >= n:
            raise _invalid(where, f"labels span {lo}..{hi} but there are {n} classes (0..{n - 1})")
        if n < 2:
            raise _invalid(where, "labels have a single class; classification needs at least 2")
        if num_classes is None:  # inferred from the largest label: every class must be seen
            _refuse_unseen(arrays["train_labels"].reshape(-1), n, lo, hi, where)
    return Layout(task, int(n), int(channels), int(height), int(width), counts)


def _refuse_unseen(train: np.ndarray, n: int, lo: int, hi: int, where: str) -> None:
    """A stray label (a 7 in a binary set) would otherwise add classes the model never sees."""
    unseen = np.flatnonzero(np.bincount(train.astype(np.int64), minlength=n) == 0)
    if unseen.size:
        classes, seen = _listing(unseen), _listing(np.unique(train))
        raise _invalid(
            where,
            f"class{'es' if unseen.size > 1 else ''} {classes} "
            f"{'have' if unseen.size > 1 else 'has'} no training sample; labels span "
            f"{lo}..{hi} but train_labels holds only {seen}. Fix the stray labels, or "
            f"declare all {n} classes with dataset.label_names=[...] if some are "
            "meant to be absent from training",
        )


def _listing(values: np.ndarray, most: int = 12) -> str:
    text = ", ".join(str(v) for v in values[:most])
    return text + (f", … ({len(values)} in all)" if len(values) > most else "")


def _invalid(where: str, *problems: str) -> DataError:
    lines = "".join(f"\n  - {p}" for p in problems)
    return DataError(f"{where} is not a valid dataset file:{lines}")


def uncompressed_cache(path: Path, cache_root: Path, hint: str = "") -> dict[str, np.ndarray]:
    """Memory-map each split from an uncompressed .npy copy, written once beside the cache.

    The 128/224-px MedMNIST+ files hold several GB of images, too many to load whole. Each
    array is streamed out of the zip in chunks (np.load would inflate it all in RAM) into
    <cache>/<file stem>-<size>-<mtime>/<key>.npy, renamed into place when complete. A file
    lock lets one process (array task, DDP rank) fill the cache while the others wait for it.
    """
    stat = path.stat()
    target = cache_root / f"{path.stem}-{stat.st_size}-{stat.st_mtime_ns}"
    dests = {key: target / f"{key}.npy" for key in KEYS}
    try:
        if not all(d.exists() for d in dests.values()):
            target.mkdir(parents=True, exist_ok=True)
            with FileLock(f"{target}.lock"), zipfile.ZipFile(path) as zf:
                _refuse_missing([n.removesuffix(".npy") for n in zf.namelist()], path, hint)
                for key, dest in dests.items():
                    if not dest.exists():  # else another process wrote it while we waited
                        _stream_member(zf, path, key, dest, hint)
        return {key: np.load(dest, mmap_mode="r") for key, dest in dests.items()}
    except (zipfile.BadZipFile, zlib.error, EOFError, KeyError, ValueError) as e:
        raise _corrupt(path, e, hint) from None


def _stream_member(
    zf: zipfile.ZipFile, path: Path, key: str, dest: Path, hint: str, chunk: int = 1 << 24
) -> None:
    info = zf.getinfo(f"{key}.npy")
    with zf.open(info) as src:
        shape, fortran, dtype = _read_header(src, path, key, info.file_size, hint)
        if fortran:
            raise ValueError(f"{key}.npy is Fortran-ordered")
        with atomic_path(dest) as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
            flat = out.reshape(-1).view(np.uint8)
            pos = 0
            while pos < flat.size:
                block = src.read(min(chunk, flat.size - pos))
                if not block:
                    raise EOFError(f"{key}.npy ended early")
                flat[pos : pos + len(block)] = np.frombuffer(block, dtype=np.uint8)
                pos += len(block)
            out.flush()
            del out, flat
