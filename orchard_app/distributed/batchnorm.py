"""BatchNorm with statistics over the global batch on any device and backend.

torch's SyncBatchNorm runs on GPUs only; this one takes one differentiable all-reduce of
(sum, sum of squares, count) per layer in float64, so a gloo run on CPUs normalises with the
statistics of the whole batch (and back-propagates through them) like a single process does.
NCCL runs use torch's (timm's converter, which keeps timm's BatchNormAct layers whole).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

PLAIN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class AllReduceBatchNorm(_BatchNorm):
    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, group=None):  # fmt: skip
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.group = group

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and dist.is_available() and dist.is_initialized():
            y = self._global_batch_norm(x)
        else:
            y = super().forward(x)
        for name in ("drop", "act"):  # timm's BatchNormAct2d: then dropout and activation
            if hasattr(self, name):
                y = getattr(self, name)(y)
        return y

    def _global_batch_norm(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        local = torch.cat([x.sum(dims, dtype=torch.float64), x.double().square().sum(dims),
                           x.new_full((1,), x.numel() // c, dtype=torch.float64)])  # fmt: skip
        total = _AllReduceSum.apply(local, self.group)
        n = total[-1]
        mean, var = total[:c] / n, total[c : 2 * c] / n - (total[:c] / n) ** 2
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                f = 1 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - f).add_(mean.detach().to(self.running_mean), alpha=f)
                unbiased = var.detach() * n / (n - 1).clamp(min=1)
                self.running_var.mul_(1 - f).add_(unbiased.to(self.running_var), alpha=f)
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (x - mean.to(x.dtype).view(shape)) * torch.rsqrt(var.to(x.dtype).view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


class _AllReduceSum(torch.autograd.Function):
    """Sum over the processes; the gradient of every process's input is the sum of the
    gradients of all processes' outputs."""

    @staticmethod
    def forward(ctx, t: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        t = t.clone()
        dist.all_reduce(t, group=group)
        return t

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def convert_all_reduce_batchnorm(module: nn.Module, group=None) -> nn.Module:
    """Swap BatchNorm layers (plain ones and timm's BatchNormAct) for AllReduceBatchNorm,
    keeping their parameters and buffers (the state dict keys do not change)."""
    out = module
    if isinstance(module, _BatchNorm) and _convertible(module):
        out = AllReduceBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                 module.track_running_stats, group)  # fmt: skip
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        out.running_mean, out.running_var = module.running_mean, module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        for name in ("drop", "act"):
            if isinstance(getattr(module, name, None), nn.Module):
                out.add_module(name, getattr(module, name))
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, convert_all_reduce_batchnorm(child, group))
    return out


def _convertible(module: nn.Module) -> bool:
    return type(module) in PLAIN or type(module).__name__ == "BatchNormAct2d"
