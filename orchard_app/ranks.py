"""Which process of a multi-process launch this is, read from the environment only.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; SLURM sets SLURM_PROCID / SLURM_NTASKS /
SLURM_LOCALID for every task of a step. A plain process is rank 0 of 1. No torch import: the
run-directory resolver needs this before anything heavy is loaded.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class ProcessRank:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launcher: str = "process"  # process | torchrun | slurm
    launch_id: str = ""  # the same in every process of one launch

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def process_rank(env: Mapping[str, str] | None = None) -> ProcessRank:
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        launch = ":".join(
            env.get(k, "") for k in ("TORCHELASTIC_RUN_ID", "MASTER_ADDR", "MASTER_PORT")
        )
        return ProcessRank(int(env["RANK"]), int(env["WORLD_SIZE"]),
                           int(env.get("LOCAL_RANK", 0)), "torchrun", launch)  # fmt: skip
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_PROCID" in env:
        launch = ".".join(env.get(k, "") for k in ("SLURM_JOB_ID", "SLURM_STEP_ID"))
        return ProcessRank(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]),
                           int(env.get("SLURM_LOCALID", 0)), "slurm", launch)  # fmt: skip
    return ProcessRank()
