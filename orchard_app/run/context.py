"""The run context: built once per process from `cfg.hardware` and the environment.

It answers what every writer needs to know: which process this is (rank, world size, local
rank, `is_main`), which device it trains on, which run directory it uses and how it stops
(`stop`, the signal policy) and how it works with the other processes of its launch (`group`).
Only the main process claims the run directory and writes there; the others use the same
directory and write nothing (see `ranks.py` for the detection). With `hardware.distributed`,
the processes form a process group (orchard_app/distributed) for the life of the context:
use it as `with RunContext.create(...) as ctx:`.
"""

from __future__ import annotations

import logging
import os
import random
import signal
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from orchard_app.config.resolvers import experiment_view, resolved_container
from orchard_app.distributed.collective import SingleProcess
from orchard_app.distributed.rank import ProcessRank, process_rank
from orchard_app.engine.interrupts import StopSignals
from orchard_app.errors import ConfigError, DistributedError

log = logging.getLogger("orchard_app.run")


@dataclass
class RunContext:
    run_dir: Path
    device: torch.device
    process: ProcessRank = field(default_factory=ProcessRank)
    stop: StopSignals = field(default_factory=StopSignals)
    group: SingleProcess = field(default_factory=SingleProcess)

    @property
    def distributed(self) -> bool:
        """DistributedDataParallel across the processes of the launch."""
        return self.group.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.process.is_main

    @property
    def rank(self) -> int:
        return self.process.rank

    @property
    def world_size(self) -> int:
        return self.process.world_size

    @classmethod
    def create(cls, cfg, run_dir: str | Path, stop: StopSignals | None = None) -> RunContext:
        """Seed, set threads and determinism, pick this process's device; join the process
        group with `hardware.distributed` in a multi-process launch."""
        process = process_rank()
        device = setup_torch(cfg.hardware, int(cfg.training.seed), process.local_rank)
        group = SingleProcess()
        if cfg.hardware.get("distributed") and process.world_size > 1:
            from orchard_app.distributed.group import join

            group = join(cfg.hardware, process, device)
            try:
                group.agree(experiment_view(resolved_container(cfg)))
            except Exception as e:
                group.close(e)
                raise
        elif cfg.hardware.get("distributed") and process.is_main:
            log.warning("hardware=ddp but this is one process: start it with torchrun "
                        "--nproc_per_node=N -m orchard_app ... or as SLURM tasks to train on N")  # fmt: skip
        return cls(Path(run_dir), device, process, stop or StopSignals(), group)

    def __enter__(self) -> RunContext:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.group.close(exc)


def stop_policy() -> StopSignals:
    """Which signals stop a run at the next step boundary with a last.pt: SIGTERM and SIGINT
    everywhere; under submitit on SLURM also SIGUSR2, the warning before a time limit or a
    preemption, after which the job is requeued and resumes (`training.resume=auto`)."""
    if os.environ.get("SUBMITIT_EXECUTOR") == "slurm":
        return StopSignals(requeue=(signal.SIGUSR2,))
    return StopSignals()


def setup_torch(hardware, seed: int, local_rank: int = 0) -> torch.device:
    """Seed everything, set threads and determinism, and pick the device."""
    if hardware.num_threads:
        torch.set_num_threads(int(hardware.num_threads))
    if hardware.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    else:  # (only when needed: the call imports torch._inductor, ~2 s)
        if torch.are_deterministic_algorithms_enabled():
            torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = True
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    wanted = str(hardware.device)
    if wanted == "auto":
        wanted = "cuda" if torch.cuda.is_available() else "cpu"
    if wanted.startswith("cuda") and not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise ConfigError(
            [
                f"hardware.device={wanted}: torch sees no CUDA device (torch {torch.__version__}, {build}); use hardware=cpu or hardware=auto"
            ]
        )
    if wanted == "cuda":  # one GPU per process of a multi-process run
        visible = torch.cuda.device_count()
        if local_rank >= visible > 1:
            raise DistributedError(
                f"this is process {local_rank} on its node (LOCAL_RANK), but only {visible} CUDA "
                f"devices are visible; start at most {visible} processes per node"
            )
        wanted = f"cuda:{local_rank if visible > 1 else 0}"  # 1 visible: SLURM bound this one
    return torch.device(wanted)
