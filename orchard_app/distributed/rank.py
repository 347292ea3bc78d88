"""Which process of a multi-process launch this is, read from the environment only.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; SLURM sets SLURM_PROCID / SLURM_NTASKS /
SLURM_LOCALID for every task of a step. A plain process is rank 0 of 1. No torch import: the
run-directory resolver needs this before anything heavy is loaded.
"""

from __future__ import annotations

import os
import re
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


def rendezvous(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """MASTER_ADDR / MASTER_PORT for the process group, where the launcher did not set them.

    torchrun sets both. Several SLURM tasks get the first host of the step's node list (where
    task 0 runs with SLURM's block distribution) and a port derived from the job id, so every
    task of the step computes the same address; set MASTER_ADDR / MASTER_PORT to choose."""
    env = os.environ if env is None else env
    out = {}
    if not env.get("MASTER_ADDR"):
        nodes = next((env[k] for k in ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST",
                                       "SLURM_NODELIST") if env.get(k)), "")  # fmt: skip
        out["MASTER_ADDR"] = first_host(nodes) if nodes else "127.0.0.1"
    if not env.get("MASTER_PORT"):
        job = env.get("SLURM_JOB_ID", "")
        out["MASTER_PORT"] = str(20000 + int(job) % 20000) if job.isdigit() else "29500"
    return out


def first_host(nodelist: str) -> str:
    """The first host of a SLURM host list: 'gpu[07-09,12],cpu1' -> 'gpu07'."""
    m = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if m is None:
        return nodelist
    prefix, ranges = m.group(1), m.group(2)
    return prefix if not ranges else prefix + ranges.split(",")[0].split("-")[0]
