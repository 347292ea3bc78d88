"""What predict reads: image files, folders of them (walked in sorted order, symlinked folders
not followed) and .npz arrays (`file.npz`: every `*_images` member; `file.npz:test`: one), in
batches of uint8 N x C x H x W at the model's side and channels, named as the CSV shows them
(the path; `file.npz:test[3]` for an array row). Files are decoded by a thread pool a few
batches ahead of the model, so decoding overlaps inference."""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from orchard_app.data.images import SUFFIXES, fit, read_image, to_channels
from orchard_app.errors import DataError

log = logging.getLogger("orchard_app.predict")

AHEAD = 3  # batches being decoded while the model runs
_CONVERSIONS = {(1, 3): "grey image(s) replicated to RGB", (3, 1): "RGB image(s) made grey (luma)"}


@dataclass
class Inputs:
    """Each source in the order given: a list of image files, or (name, N x H x W [x C] array)."""

    sources: list[list[Path] | tuple[str, np.ndarray]] = field(default_factory=list)
    ignored: int = 0  # files in the folders without an image suffix

    def __len__(self) -> int:
        return sum(len(s) if isinstance(s, list) else len(s[1]) for s in self.sources)


def collect(paths: list[str]) -> Inputs:
    inputs = Inputs()
    for given in paths:
        path, _, member = given.partition(":") if ".npz:" in given else (given, "", "")
        p = Path(path).expanduser()
        if p.is_dir():
            files, ignored = _walk(p)
            inputs.sources.append(files)
            inputs.ignored += ignored
        elif p.suffix.lower() == ".npz" and p.is_file():
            inputs.sources += _npz_arrays(p, member)
        elif p.suffix.lower() in SUFFIXES and p.is_file():
            inputs.sources.append([p])
        elif p.exists():
            raise DataError(f"{given}: not an image ({', '.join(sorted(SUFFIXES))}), a folder "
                            "or an .npz; pass those")  # fmt: skip
        else:
            raise DataError(f"{given}: no such file or folder; check the path")
    if not len(inputs):
        raise DataError(f"no images in {' '.join(paths)}: pass image files, folders of them or "
                        "an .npz with *_images arrays")  # fmt: skip
    if inputs.ignored:
        log.info("ignored %d file(s) without an image suffix", inputs.ignored)
    return inputs


def _walk(folder: Path) -> tuple[list[Path], int]:
    files, ignored = [], 0
    for root, dirs, names in os.walk(folder):  # does not follow symlinked folders: no loops
        dirs.sort()
        for name in sorted(names):
            if Path(name).suffix.lower() in SUFFIXES:
                files.append(Path(root) / name)
            elif not name.startswith("."):
                ignored += 1
    return files, ignored


def _npz_arrays(path: Path, member: str) -> list[tuple[str, np.ndarray]]:
    try:
        with np.load(path) as npz:
            keys = (
                [f"{member}_images"] if member else [k for k in npz.files if k.endswith("_images")]
            )
            missing = [k for k in keys if k not in npz.files]
            if missing or not keys:
                raise DataError(f"{path} has no {missing[0] if missing else '*_images'} array "
                                f"(it holds {', '.join(npz.files) or 'nothing'})")  # fmt: skip
            arrays = [(f"{path}:{k.removesuffix('_images')}", npz[k]) for k in keys]
    except (OSError, ValueError) as e:
        raise DataError(f"{path} cannot be read as an .npz ({e})") from None
    checked = []
    for name, a in arrays:
        if a.dtype != np.uint8:
            raise DataError(f"{name} holds {a.dtype} images; save uint8 pixel values 0-255")
        if a.ndim == 4 and a.shape[-1] == 1:
            a = a[..., 0]
        if not (a.ndim == 3 or (a.ndim == 4 and a.shape[-1] == 3)):
            channels = f"{a.shape[-1]}-channel" if a.ndim == 4 else f"{a.ndim}-D"
            raise DataError(f"{name} holds {channels} images (shape {a.shape}); predict takes grey "
                            "N x H x W or RGB N x H x W x 3 arrays")  # fmt: skip
        checked.append((name, a))
    return checked


class Batches:
    """uint8 N x C x H x W batches at (`channels`, `side`), resized with `resize` (the run's
    dataset.resize) exactly as the folder loader does; conversions are counted and logged."""

    def __init__(self, channels: int, side: int, resize: str, batch_size: int):
        self.channels, self.side, self.resize, self.batch_size = channels, side, resize, batch_size
        self.converted: Counter = Counter()
        self._lock = threading.Lock()  # decoding threads count conversions

    def __call__(self, inputs: Inputs) -> Iterator[tuple[list[str], np.ndarray]]:
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            for source in inputs.sources:
                if isinstance(source, list):
                    yield from self._files(source, pool)
                else:
                    yield from self._array(*source)
        for (got, want), n in sorted(self.converted.items()):
            log.info("converted %d %s: the model takes %d channel(s)", n,
                     _CONVERSIONS[(got, want)], want)  # fmt: skip

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """H x W [x 3] uint8 -> C x side x side."""
        got = 1 if image.ndim == 2 else 3
        if got != self.channels:
            with self._lock:
                self.converted[(got, self.channels)] += 1
            image = to_channels(image, self.channels)
        image = fit(image, self.side, self.resize)
        return image[None] if image.ndim == 2 else image.transpose(2, 0, 1)

    def _files(self, files: list[Path], pool) -> Iterator[tuple[list[str], np.ndarray]]:
        def decode(chunk: list[Path]) -> list[np.ndarray]:
            return [self.prepare(read_image(p)) for p in chunk]

        pending: deque = deque()
        step = max(1, self.batch_size // (os.cpu_count() or 1))
        for start in range(0, len(files), self.batch_size):
            chunk = files[start : start + self.batch_size]
            parts = [pool.submit(decode, chunk[i : i + step]) for i in range(0, len(chunk), step)]
            pending.append((chunk, parts))
            if len(pending) > AHEAD:
                yield self._stack(*pending.popleft())
        while pending:
            yield self._stack(*pending.popleft())

    @staticmethod
    def _stack(chunk: list[Path], parts) -> tuple[list[str], np.ndarray]:
        return [str(p) for p in chunk], np.stack([im for f in parts for im in f.result()])

    def _array(self, name: str, a: np.ndarray) -> Iterator[tuple[list[str], np.ndarray]]:
        ready = a.shape[1:3] == (self.side, self.side) and (a.ndim == 3) == (self.channels == 1)
        for start in range(0, len(a), self.batch_size):
            rows = a[start : start + self.batch_size]
            names = [f"{name}[{i}]" for i in range(start, start + len(rows))]
            if ready:
                batch = rows[:, None] if rows.ndim == 3 else rows.transpose(0, 3, 1, 2)
            else:
                batch = np.stack([self.prepare(im) for im in rows])
            yield names, np.ascontiguousarray(batch)
