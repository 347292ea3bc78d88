"""What the engine asks of the other processes of a run, answered for a run of one process.

A multi-process run passes `orchard_app.distributed.ProcessGroup`, which has the same methods
backed by torch.distributed. The engine calls them at the same points on every process, so
all processes agree on every decision: which samples each one trains and evaluates, when to
stop, whether the loss is finite, what an epoch callback decided.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class SingleProcess:
    rank = 0
    world_size = 1
    is_main = True

    def shard(self, n: int) -> slice | None:
        """This process's contiguous share of n items (None: all of them)."""
        return None

    def any(self, flag: bool) -> bool:
        """Whether `flag` is set on any process (every process gets the same answer)."""
        return flag

    def mean_(self, t: torch.Tensor) -> torch.Tensor:
        """Average `t` over the processes, in place."""
        return t

    def sum(self, value: float) -> float:
        return value

    def gather(self, t: torch.Tensor, n: int) -> torch.Tensor:
        """The rows of every process's `shard(n)`, in order: all n rows, on every process."""
        return t

    def broadcast(self, obj: Any) -> Any:
        """The main process's `obj`, on every process."""
        return obj

    def all_gather_object(self, obj: Any) -> list[Any]:
        return [obj]

    def sync_buffers(self, module: torch.nn.Module) -> None:
        """Give every process the main process's buffers (BatchNorm running statistics)."""

    def on_main(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run fn on the main process only; what it raises ends every process there."""
        fn(*args)

    def together(self, error: BaseException) -> BaseException:
        """Mark an error that every process raises at the same point (see `close`)."""
        return error

    def close(self, error: BaseException | None = None) -> None:
        """End of the run: a multi-process run waits for all processes, then tears down."""
