"""The process group of a multi-process run, started from the environment that torchrun or
SLURM sets (ranks.py), and the collective answers the engine asks for (engine/collective.py).

Stop flags, metrics and predictions travel through a gloo group on the CPU, so agreeing on a
stop after every step costs no CUDA synchronisation; gradients and losses use the main backend
(NCCL on CUDA). A process that leaves with the others (a completed run, a stop they agreed on)
waits for all of them first, so rank 0 finishes its files before a launcher that ends the
remaining processes when one exits can cut it short.
"""

from __future__ import annotations

import datetime
import logging
import os
import re
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from orchard_app.distributed.collective import SingleProcess
from orchard_app.distributed.rank import ProcessRank, rendezvous
from orchard_app.errors import ConfigError, DistributedError, RunPruned, first_line
from orchard_app.outcomes import is_pruned

log = logging.getLogger("orchard_app.distributed")
# A collective waiting longer than this fails instead of hanging (torch's default: 30 min). Work
# that only rank 0 does while the others wait (a checkpoint, the test report) stays well below.
TIMEOUT = datetime.timedelta(minutes=10)


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, end) of `rank`'s contiguous share of n items; shares differ by at most one."""
    return rank * n // world_size, (rank + 1) * n // world_size


def join(hardware, process: ProcessRank, device: torch.device) -> ProcessGroup:
    """Start this process's part of the group (every process of the launch calls this)."""
    backend = str(hardware.backend)
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and not dist.is_nccl_available():
        raise DistributedError(
            f"hardware.backend=nccl, but this torch build ({torch.__version__}) has no NCCL; "
            "use hardware.backend=gloo"
        )
    os.environ.update(rendezvous())
    where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    try:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(
            backend, init_method="env://", rank=process.rank, world_size=process.world_size,
            device_id=device if backend == "nccl" else None, timeout=TIMEOUT,
        )  # fmt: skip
    except Exception as e:  # a peer that never came, an address in use, a driver problem
        raise DistributedError(
            f"process {process.rank} of {process.world_size} could not join the {backend} "
            f"process group at {where} ({type(e).__name__}: {first_line(e, 300)}).\n  Start all processes "
            "of a run together (torchrun --nproc_per_node=N, or SLURM tasks_per_node=N) with "
            "the same MASTER_ADDR/MASTER_PORT, or run one process without hardware=ddp."
        ) from None
    return ProcessGroup(process, device, backend)


class ProcessGroup(SingleProcess):
    def __init__(self, process: ProcessRank, device: torch.device, backend: str):
        self.rank, self.world_size, self.is_main = process.rank, process.world_size, process.is_main
        self.device, self.backend = device, backend
        self.cpu = None if backend == "gloo" else dist.new_group(backend="gloo")  # None: main
        self._together: BaseException | None = None

    def shard(self, n: int) -> slice:
        return slice(*shard_bounds(n, self.rank, self.world_size))

    def any(self, flag: bool) -> bool:
        t = torch.tensor([int(flag)])
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.cpu)
        return bool(t.item())

    def mean_(self, t: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(t)
        return t.div_(self.world_size)

    def sum(self, value: float) -> float:
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t, group=self.cpu)
        return float(t.item())

    def gather(self, t: torch.Tensor, n: int) -> torch.Tensor:
        sizes = [b - a for a, b in (shard_bounds(n, r, self.world_size) for r in range(self.world_size))]  # fmt: skip
        padded = t.new_zeros((max(sizes), *t.shape[1:]))
        padded[: len(t)] = t
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded, group=self.cpu)
        return torch.cat([p[:k] for p, k in zip(parts, sizes, strict=True)])

    def broadcast(self, obj: Any) -> Any:
        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.cpu)
        return box[0]

    def all_gather_object(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self.cpu)
        return out

    def agree(self, settings: dict[str, Any]) -> None:
        """Refuse processes started with different settings (another batch size or seed on
        one rank): they would wait forever for steps the others never take."""
        everyone = [_flat(s) for s in self.all_gather_object(settings)]
        keys = sorted(set().union(*everyone))
        differ = [k for k in keys if len({repr(s.get(k)) for s in everyone}) > 1]
        if differ:
            shown = "; ".join(f"{k[:-1]}=" + " / ".join(repr(s.get(k)) for s in everyone) for k in differ[:6])  # fmt: skip
            raise ConfigError([
                f"the {self.world_size} processes of this run were given different settings "
                f"(rank by rank: {shown}); start every process with the same command and "
                "overrides (torchrun --nproc_per_node=N, or SLURM tasks)"
            ])  # fmt: skip

    def agree_on_data(self, sizes: dict[str, int]) -> None:
        """Refuse processes that read different data (another file at the same path on one
        node): with another number of steps per epoch they would wait for each other forever."""
        everyone = self.all_gather_object(sizes)
        differ = [k for k in sizes if len({s.get(k) for s in everyone}) > 1]
        if differ:
            shown = "; ".join(f"{k} " + " / ".join(str(s.get(k)) for s in everyone) for k in differ)
            raise ConfigError([
                f"the {self.world_size} processes of this run read different data (rank by rank: "
                f"{shown}); every process must read the same dataset files: check dataset.path "
                "and dataset.root (ORCHARD_DATA_DIR) on each node"
            ])  # fmt: skip

    def sync_buffers(self, module: torch.nn.Module) -> None:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)

    def on_main(self, fn: Callable[..., Any], *args: Any) -> None:
        """Rank 0 runs fn; a pruning there prunes every process, another error there stops
        every process with a DistributedError pointing at rank 0's report."""
        error = None
        if self.is_main:
            try:
                fn(*args)
            except Exception as e:
                error = e
        verdict = None
        if error is not None:
            verdict = (is_pruned(error), f"{type(error).__name__}: {error}", getattr(error, "epoch", None))  # fmt: skip
        verdict = self.broadcast(verdict)
        if error is not None:
            raise self.together(error)
        if verdict is not None:
            pruned, message, epoch = verdict
            raise self.together(
                RunPruned(message, epoch) if pruned
                else DistributedError(f"rank 0 stopped the run ({message}); its output says why")
            )  # fmt: skip

    def together(self, error: BaseException) -> BaseException:
        self._together = error
        return error

    def close(self, error: BaseException | None = None) -> None:
        try:
            if error is None or error is self._together:
                dist.barrier(group=self.cpu)
        except RuntimeError as e:  # a process already gone: nothing left to wait for
            log.warning("leaving the process group without the others: %s", e)
        finally:
            dist.destroy_process_group()
        if isinstance(error, dist.DistError) or "/gloo/" in str(error):  # a peer died, timed out
            said = re.sub(r"^\[[^\]]*\]\s*", "", first_line(error, 200))  # (gloo's C++ source line)
            raise DistributedError(f"another process of this run stopped answering ({said}); its "
                                   "output says why. Continue with training.resume=auto.") from None  # fmt: skip


def _flat(tree: Any, key: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} as {"a.b.": 1}."""
    if not isinstance(tree, dict) or not tree:
        return {key: tree}
    return {k: v for n, sub in tree.items() for k, v in _flat(sub, f"{key}{n}.").items()}
