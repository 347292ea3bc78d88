"""The run summary: what metrics.json records about a finished run (`to_dict()` is the file)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass
class RunSummary:
    test: dict[str, Any] | None  # the best checkpoint's test metrics (None: a pruned trial)
    best_epoch: int | None
    monitor: dict[str, Any]  # name, mode, best_value
    epochs_run: int
    stopped_early: bool
    resumed_from: str | None
    train_seconds: float
    device: str
    dataset: dict[str, Any]
    model: dict[str, Any]
    history: list[Mapping[str, Any]]  # the epoch records (engine.resume.EpochRecord)

    @classmethod
    def of(cls, cfg, engine, data, test: dict | None, n_params: int, seconds: float) -> RunSummary:
        info, state = data.info, engine.state
        return cls(
            test=test, best_epoch=state.best_epoch,
            monitor={"name": engine.monitor, "mode": engine.mode, "best_value": state.best_value},
            epochs_run=state.epoch, stopped_early=state.stopped_early,
            resumed_from=engine.resumed_from, train_seconds=round(seconds, 2),
            device=str(engine.device),
            dataset={
                "name": info.name, "task": info.task, "num_classes": info.num_classes,
                "in_chans": info.in_chans, "resolution": info.resolution,
                "label_names": list(info.label_names), "counts": info.counts,
                "train_samples": len(data.train), "file": info.file, "md5": info.md5,
                "licence": info.licence,
            },
            model={
                "name": str(cfg.model.name), "arch": str(cfg.model.arch), "parameters": n_params,
                "pretrained": bool(cfg.model.pretrained),
            },
            history=list(state.history),
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "history": [dict(h) for h in self.history]}
