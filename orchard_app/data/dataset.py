"""Turn `cfg.dataset` into in-memory (or memory-mapped) uint8 splits plus what the model and
reports need to know: task, classes, channels, label names. Every source goes through the same
structural checks (arrays.check_layout)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from orchard_app.config import medmnist as mi
from orchard_app.data.arrays import (
    SPLITS,
    check_layout,
    npz_member_sizes,
    read_npz,
    uncompressed_cache,
)
from orchard_app.data.folders import writable_dir
from orchard_app.errors import DataError

log = logging.getLogger(__name__)

MEMMAP_AUTO_BYTES = 2 << 30  # images above this size are memory-mapped instead of loaded


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    task: str  # multi-class | binary | multi-label | ordinal
    num_classes: int  # classes; labels for multi-label
    channels: int  # as stored
    in_chans: int  # as fed to the model (3 with force_rgb)
    resolution: int
    label_names: tuple[str, ...]
    counts: dict[str, int]
    source: str
    file: str | None = None
    md5: str | None = None
    licence: str | None = None

    @property
    def multilabel(self) -> bool:
        return self.task == "multi-label"


@dataclass
class Split:
    images: torch.Tensor | np.ndarray  # N x C x H x W uint8 (a tensor, or a read-only memmap)
    labels: torch.Tensor  # N long (class index), or N x L float (multi-label)
    indices: np.ndarray | None = field(default=None)  # rows used (max_samples); None = all

    def __len__(self) -> int:
        return len(self.labels)

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        """uint8 images N x C x H x W for the given sample indices (on the images' device)."""
        if isinstance(self.images, torch.Tensor):
            return self.images[idx.to(self.images.device)]
        # memory-mapped: read rows in file order, then restore the requested order
        rows = idx.cpu().numpy() if self.indices is None else self.indices[idx.cpu().numpy()]
        order = np.argsort(rows, kind="stable")
        block = np.take(self.images, rows[order], axis=0)
        x = torch.empty((len(rows), *block.shape[1:]), dtype=torch.uint8)
        x[torch.from_numpy(order)] = torch.from_numpy(block)
        return x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)


@dataclass
class DataBundle:
    info: DatasetInfo
    train: Split
    val: Split
    test: Split

    def class_counts(self) -> torch.Tensor:
        y = self.train.labels
        if self.info.multilabel:
            return y.sum(0)
        return torch.bincount(y, minlength=self.info.num_classes).float()


def load_dataset(ds, seed: int) -> DataBundle:
    """Load train/val/test for `cfg.dataset`; raises DataError with a fix for any problem."""
    resolution = int(ds.resolution)
    cache_dir = Path(os.path.expanduser(str(ds.cache_dir)))
    memmap = ds.memmap
    file, md5, licence, expected = None, None, None, None
    if ds.source in ("digits", "medmnist"):
        _refuse_task_override(ds)
    if ds.source == "digits":
        from orchard_app.data.digits import LABEL_NAMES, digits_arrays

        arrays, names, where = digits_arrays(resolution), LABEL_NAMES, "digits"
        task, num_classes = "multi-class", 10
    elif ds.source == "folder":
        from orchard_app.data.image_folder import folder_arrays

        arrays, folders, file = folder_arrays(ds, writable_dir(cache_dir, "dataset.cache_dir"))
        names, task, num_classes, where = ds.label_names or folders, ds.task, len(folders), file
        big = sum(v.nbytes for v in arrays.values()) > MEMMAP_AUTO_BYTES
        if not (big if memmap is None else memmap):
            arrays = {k: np.array(v) for k, v in arrays.items()}  # small: in RAM, as an npz
    else:
        if ds.source == "medmnist":
            from orchard_app.data import files

            root = Path(os.path.expanduser(str(ds.root)))
            path = files.ensure_medmnist_file(
                ds.name, resolution, root, cache_dir, bool(ds.download), ds.mirror
            )
            info = mi.medmnist_info()[ds.name]
            names, task = mi.label_names(ds.name), mi.task_of(ds.name)
            num_classes, expected, licence = len(names), info["n_samples"], info.get("license")
            md5 = mi.url_and_md5(ds.name, resolution)[1]
            hint = "Delete the file and run again to download it afresh."
        else:
            path = Path(os.path.expanduser(str(ds.path)))
            if not path.is_file():
                raise DataError(
                    f"dataset.path={ds.path}: no such file. Pass the path of an .npz in the MedMNIST layout."
                )
            names, task, num_classes = ds.label_names, ds.task, None
            hint = "Rewrite it with numpy.savez / savez_compressed."
        file, where = str(path), str(path)
        if memmap is None:
            sizes = npz_member_sizes(path)
            memmap = sum(v for k, v in sizes.items() if k.endswith("_images")) > MEMMAP_AUTO_BYTES
        cache = writable_dir(cache_dir, "dataset.cache_dir") / "npy" if memmap else None
        try:
            arrays = uncompressed_cache(path, cache, hint) if cache else read_npz(path, hint)
        except DataError:
            if ds.source == "medmnist":  # the MD5 memo may have been fooled: hash it again
                _, url, _ = files.official_source(ds.name, resolution, ds.mirror)
                files.recheck_md5(path, md5, url, cache_dir)
            raise
        if ds.source == "npz" and names is not None:
            num_classes = len(names)

    layout = check_layout(arrays, where, task, num_classes, expected)
    if layout.height != resolution:
        raise DataError(
            f"{where} holds {layout.height}x{layout.width} images but dataset.resolution={resolution}; "
            f"set dataset.resolution={layout.height}"
        )
    if names is None:
        names = [str(i) for i in range(layout.num_classes)]
    if len(names) != layout.num_classes:
        raise DataError(
            f"dataset.label_names has {len(names)} names but {where} has {layout.num_classes} classes"
        )
    info = DatasetInfo(
        name=str(ds.name),
        task=layout.task,
        num_classes=layout.num_classes,
        channels=layout.channels,
        in_chans=3 if ds.force_rgb else layout.channels,
        resolution=resolution,
        label_names=tuple(names),
        counts=layout.counts,
        source=str(ds.source),
        file=file,
        md5=md5,
        licence=licence,
    )
    splits = {s: _to_split(arrays[f"{s}_images"], arrays[f"{s}_labels"], info) for s in SPLITS}
    if ds.max_samples is not None and ds.max_samples < len(splits["train"]):
        splits["train"] = _cap(splits["train"], int(ds.max_samples), seed, info)
    return DataBundle(info=info, **splits)


def _refuse_task_override(ds) -> None:
    """dataset.task is read only for npz files; elsewhere the source fixes the task."""
    own = "multi-class" if ds.source == "digits" else mi.task_of(ds.name)
    if ds.task is not None and ds.task != own:
        raise DataError(
            f"dataset.task={ds.task} has no effect for {ds.name}: its task is {own}; remove "
            "the override"
        )


def _to_split(images: np.ndarray, labels: np.ndarray, info: DatasetInfo) -> Split:
    if isinstance(images, np.memmap):
        # Memory-mapped (large) sets stay on disk; channels-last files are made NCHW per batch.
        data: torch.Tensor | np.ndarray = images
    else:
        t = torch.from_numpy(np.ascontiguousarray(images))
        data = (t.unsqueeze(1) if t.ndim == 3 else t.permute(0, 3, 1, 2)).contiguous()
    labels = labels.reshape(len(labels), -1)
    y = labels.astype(np.float32) if info.multilabel else labels[:, 0].astype(np.int64)
    return Split(images=data, labels=torch.from_numpy(y))


def _cap(split: Split, n: int, seed: int, info: DatasetInfo) -> Split:
    """Keep n training samples, stratified by class where every class can be represented."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(split))
    stratify = None if info.multilabel else split.labels.numpy()
    try:
        keep, _ = train_test_split(idx, train_size=n, stratify=stratify, random_state=seed)
    except ValueError:  # a class too small to stratify: fall back to a uniform random subset
        log.warning(
            "dataset.max_samples=%d: some classes are too small to stratify; sampling uniformly", n
        )
        keep, _ = train_test_split(idx, train_size=n, random_state=seed)
    keep = np.sort(keep)
    images = split.images[keep] if isinstance(split.images, torch.Tensor) else split.images
    indices = None if isinstance(split.images, torch.Tensor) else keep
    return Split(images=images, labels=split.labels[keep], indices=indices)
