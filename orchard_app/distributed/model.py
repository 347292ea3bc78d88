"""The model of a multi-process run: BatchNorm synchronised (by default) and wrapped in
DistributedDataParallel; and the rule that every process gets a share of every batch."""

from __future__ import annotations

import inspect
import logging

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel

from orchard_app.distributed.batchnorm import AllReduceBatchNorm, convert_all_reduce_batchnorm
from orchard_app.distributed.group import ProcessGroup
from orchard_app.errors import ConfigError

log = logging.getLogger("orchard_app.distributed")
# torch 2.14 renamed DDP's broadcast_buffers (deprecated, with a warning) to forward_sync_buffers
NEW_BUFFER_FLAG = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters


def wrap_model(
    model: nn.Module, group: ProcessGroup, sync_batchnorm: bool
) -> tuple[nn.Module, nn.Module]:
    """(the model, with BatchNorm over the global batch when `sync_batchnorm`; the DDP module
    that trains it). Checkpoints, evaluation and exports use the first: its state dict keys
    are those of a single-process run."""
    if sync_batchnorm:
        if group.backend == "nccl":
            from timm.layers import convert_sync_batchnorm

            model = convert_sync_batchnorm(model)
        else:
            # a gloo group of its own for the BatchNorm all-reduces, apart from DDP's
            model = convert_all_reduce_batchnorm(model, dist.new_group(backend="gloo"))
        left = sorted({type(m).__name__ for m in model.modules() if isinstance(m, _BatchNorm)
                       and not isinstance(m, AllReduceBatchNorm | torch.nn.SyncBatchNorm)})  # fmt: skip
        if left and group.is_main:
            log.warning(
                "hardware.sync_batchnorm: %s layers keep per-process statistics", ", ".join(left)
            )
    sync = not sync_batchnorm  # per-process BatchNorm: rank 0's statistics before each step
    ddp = DistributedDataParallel(
        model,
        device_ids=[group.device] if group.device.type == "cuda" else None,
        **({"forward_sync_buffers": sync} if NEW_BUFFER_FLAG else {"broadcast_buffers": sync}),
    )
    return model, ddp


def check_batches(n: int, batch_size: int, world_size: int, sync_batchnorm: bool) -> None:
    """Every process needs a share of every training batch, the last (smaller) one too."""
    last = n % batch_size
    each = 1 if sync_batchnorm else 2
    if last > 1 and last < each * world_size:  # (a last batch of 1 sample is dropped)
        raise ConfigError([
            f"training.batch_size={batch_size}: the {n} training samples leave a last batch "
            f"of {last} per epoch, too few to split across {world_size} processes (each needs "
            f"{each}); pick a batch size that divides {n} or leaves at least "
            f"{each * world_size}, or set dataset.max_samples"
        ])  # fmt: skip
