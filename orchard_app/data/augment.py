"""Training augmentation on whole batches as tensor ops on the training device.

No per-sample PIL: one batch is flipped with a mask, warped by one `grid_sample` whose
per-sample affine matrices combine rotation, translation, zoom and random-resized-crop, and
colour-jittered with broadcast arithmetic. Random draws come from the caller's CPU generator,
so the augmentation stream is seeded, device-independent and restored on resume. The
parameters are drawn (`draw`) apart from being applied (`apply`): a process of a multi-process
run augments its share of a global batch exactly as the whole batch would be.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class BatchAugment:
    def __init__(self, aug, channels: int):
        self.hflip, self.vflip = bool(aug.hflip), bool(aug.vflip)
        self.rotation, self.translate = float(aug.rotation), float(aug.translate)
        self.scale = float(aug.scale)
        self.rrc, self.crop_min = bool(aug.random_resized_crop), float(aug.crop_scale_min)
        self.jitter = float(aug.color_jitter)
        self.channels = channels
        self.geometric = self.rotation > 0 or self.translate > 0 or self.scale > 0 or self.rrc

    @property
    def active(self) -> bool:
        return self.hflip or self.vflip or self.geometric or self.jitter > 0

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """x: float batch in [0, 1], shape B x C x H x W, on any device."""
        return self.apply(x, self.draw(x.shape[0], g))

    def draw(self, b: int, g: torch.Generator) -> dict[str, torch.Tensor]:
        """The random parameters of a batch of b samples, one row per sample (CPU tensors).
        Rows can be selected (`{k: v[part]}`) to augment part of the batch as the whole would be."""
        p = {}
        if self.hflip:
            p["hflip"] = _coin(b, g)
        if self.vflip:
            p["vflip"] = _coin(b, g)
        if self.geometric:
            p["theta"] = self._affine(b, g)
        if self.jitter > 0:
            p["brightness"] = _uniform(b, g, 1 - self.jitter, 1 + self.jitter)
            p["contrast"] = _uniform(b, g, 1 - self.jitter, 1 + self.jitter)
            if self.channels == 3:
                p["saturation"] = _uniform(b, g, 1 - self.jitter, 1 + self.jitter)
        return p

    def apply(self, x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
        """Augment x (B x C x H x W in [0, 1]) with parameters `draw` made for its B rows."""
        b = x.shape[0]
        if "hflip" in p:
            x = torch.where(p["hflip"].view(b, 1, 1, 1).to(x.device), x.flip(3), x)
        if "vflip" in p:
            x = torch.where(p["vflip"].view(b, 1, 1, 1).to(x.device), x.flip(2), x)
        if "theta" in p:
            theta = p["theta"].to(device=x.device, dtype=x.dtype)
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if "brightness" in p:
            x = self._color(x, p)
        return x

    def _affine(self, b: int, g: torch.Generator) -> torch.Tensor:
        """Per-sample 2x3 matrices mapping output to input coordinates (grid_sample's convention)."""
        m = torch.eye(3).repeat(b, 1, 1)
        if self.rrc:  # crop a random box of area in [crop_min, 1] and aspect ratio in [3/4, 4/3]
            area = _uniform(b, g, self.crop_min, 1.0)
            log_ratio = _uniform(b, g, math.log(3 / 4), math.log(4 / 3))
            w = torch.sqrt(area * log_ratio.exp()).clamp(max=1.0)
            h = torch.sqrt(area / log_ratio.exp()).clamp(max=1.0)
            cx = _uniform(b, g, -1.0, 1.0) * (1 - w)
            cy = _uniform(b, g, -1.0, 1.0) * (1 - h)
            crop = torch.zeros(b, 3, 3)
            crop[:, 0, 0], crop[:, 1, 1], crop[:, 2, 2] = w, h, 1
            crop[:, 0, 2], crop[:, 1, 2] = cx, cy
            m = crop @ m
        if self.rotation > 0 or self.scale > 0 or self.translate > 0:
            angle = _uniform(b, g, -self.rotation, self.rotation) * (math.pi / 180)
            zoom = _uniform(b, g, 1 - self.scale, 1 + self.scale)
            # [-1, 1] spans the side
            shift = _uniform(2 * b, g, -self.translate, self.translate).view(b, 2) * 2
            cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
            warp = torch.zeros(b, 3, 3)
            warp[:, 0, 0], warp[:, 0, 1], warp[:, 1, 0], warp[:, 1, 1] = cos, -sin, sin, cos
            warp[:, :2, 2], warp[:, 2, 2] = shift, 1
            m = m @ warp
        return m[:, :2, :]

    def _color(self, x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
        shape = (x.shape[0], 1, 1, 1)
        x = x * p["brightness"].view(shape).to(x)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * p["contrast"].view(shape).to(x) + mean
        if "saturation" in p:
            luma = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype)
            gray = (x * luma.view(1, 3, 1, 1)).sum(dim=1, keepdim=True)
            x = (x - gray) * p["saturation"].view(shape).to(x) + gray
        return x.clamp(0, 1)


def _uniform(n: int, g: torch.Generator, lo: float, hi: float) -> torch.Tensor:
    return torch.rand(n, generator=g) * (hi - lo) + lo


def _coin(b: int, g: torch.Generator) -> torch.Tensor:
    return torch.rand(b, generator=g) < 0.5
