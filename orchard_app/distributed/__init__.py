"""Multi-process training with DistributedDataParallel, composed by the runtime: the process
group started from the launcher's environment (group.py) and the model wrapped for it
(model.py). The engine sees only the collective answers it asks for (engine/collective.py)."""

from orchard_app.distributed.group import ProcessGroup, join, shard_bounds
from orchard_app.distributed.model import check_batches, wrap_model

__all__ = ["ProcessGroup", "check_batches", "join", "shard_bounds", "wrap_model"]
