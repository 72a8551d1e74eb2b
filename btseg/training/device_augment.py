"""Training augmentation batched in torch on the training device (train.speed.augment_on: device).

The same transforms and ranges as the albumentations path (btseg/training/augment.py), drawn per slice,
but applied to a whole batch at once where the batch already is: on a GPU they cost a few
kernel launches instead of the loader processes' CPU time (albumentations' brightness/contrast
and elastic transforms manage only ~100-300 slices/s per core on float data).

- flips: exact index reversals;
- affine (rotate / scale / shift) and elastic: one `grid_sample` for the batch, bilinear for
  images and nearest for masks (masks stay 0/1), zeros outside as in the CPU path;
- brightness/contrast, gamma, noise: on each slice rescaled to [0, 1] by its min and max,
  clipped there and mapped back, the way the CPU path treats z-scored intensities;
- fill: one `where` over the channels, before everything else, as on the CPU.

Random draws come from a generator seeded per (seed, epoch, batch): the same run draws the same
transforms, whatever the number of loader processes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from btseg.config import AugmentParams
from btseg.training.augment import any_active, batch_seed, fill_channels, fill_choice, fill_source

ELASTIC_ALPHA, ELASTIC_SIGMA = 30.0, 5.0  # pixels, as the CPU path's ElasticTransform


class DeviceAugmenter:
    def __init__(self, params: AugmentParams, seed: int, channels: tuple[str, ...] = ()):
        self.params, self.seed = params, seed
        self.source, self.channels = fill_source(params, channels), len(channels)
        self.active = any_active(params, self.source)
        self._kernels: dict[torch.device, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, masks: torch.Tensor, epoch: int,
                 batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment float images (B, C, H, W) and float 0/1 masks (B, K, H, W) on their device; new tensors."""
        p, device = self.params, images.device
        generator = torch.Generator(device=device)
        generator.manual_seed(batch_seed(self.seed, epoch, batch))
        count = len(images)

        def chosen(probability: float) -> torch.Tensor:
            return torch.rand(count, device=device, generator=generator) < probability

        def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
            return low + (high - low) * torch.rand(count, *shape, device=device, generator=generator)

        # draw everything up front, so a transform's draws do not depend on which others are on
        hflip, vflip, affine, elastic = chosen(p.hflip), chosen(p.vflip), chosen(p.affine), chosen(p.elastic)
        angle = uniform(-p.rotate_degrees, p.rotate_degrees) * (math.pi / 180)
        scale = uniform(1 - p.scale, 1 + p.scale)
        shift = uniform(-p.shift, p.shift, 2)
        noise_field = uniform(-1.0, 1.0, 2, *images.shape[2:]) if p.elastic > 0 else None
        contrast = chosen(p.brightness_contrast)
        beta = uniform(-p.brightness_contrast_limit, p.brightness_contrast_limit)
        alpha = 1 + uniform(-p.brightness_contrast_limit, p.brightness_contrast_limit)
        gamma, gamma_power = chosen(p.gamma), uniform(0.8, 1.2)
        noisy = chosen(p.noise)

        # which steps run depends on the params only, never on the draws: no GPU -> CPU syncs
        if self.source is not None:  # drawn last, so turning it on leaves the other transforms' draws as they were
            filled = chosen(p.fill)
            subset = torch.randint(1, 2 ** (self.channels - 1), (count,), device=device, generator=generator)
            images = fill_channels(images, fill_choice(filled, subset, self.source, self.channels), self.source)
        if p.hflip > 0:
            images, masks = _flip(images, hflip, -1), _flip(masks, hflip, -1)
        if p.vflip > 0:
            images, masks = _flip(images, vflip, -2), _flip(masks, vflip, -2)
        if p.affine > 0 or p.elastic > 0:
            grid = self._grid(images.shape, affine, angle, scale, shift, elastic, noise_field)
            images = F.grid_sample(images, grid.to(images.dtype), mode="bilinear", padding_mode="zeros",
                                   align_corners=False)
            masks = F.grid_sample(masks, grid.to(masks.dtype), mode="nearest", padding_mode="zeros",
                                  align_corners=False)
        if p.brightness_contrast > 0 or p.gamma > 0 or p.noise > 0:
            images = self._intensity(images, contrast, alpha, beta, gamma, gamma_power, noisy, generator)
        return images, masks

    def _grid(self, shape, affine, angle, scale, shift, elastic, noise_field) -> torch.Tensor:
        """Sampling grid (B, H, W, 2): output pixel -> input position, identity where nothing was drawn."""
        count, _, height, width = shape
        device = angle.device
        # theta maps output to input coordinates: the inverse of rotate-by-angle, scale, then shift
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.zeros(count, 2, 3, device=device)
        theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
        # a shift of s (fraction of the size) moves content by 2s in normalised coordinates
        theta[:, :, 2] = -2 * torch.einsum("bij,bj->bi", theta[:, :, :2], shift)
        identity = torch.eye(2, 3, device=device).expand(count, 2, 3)
        theta = torch.where(affine.view(-1, 1, 1), theta, identity)
        grid = F.affine_grid(theta, [count, 1, height, width], align_corners=False)
        if noise_field is not None:
            smooth = self._smooth(noise_field) * ELASTIC_ALPHA  # pixels
            pixels_to_normalised = torch.tensor([2.0 / width, 2.0 / height], device=device)
            displacement = smooth.permute(0, 2, 3, 1) * pixels_to_normalised
            grid = grid + displacement * elastic.view(-1, 1, 1, 1)
        return grid

    def _smooth(self, field: torch.Tensor) -> torch.Tensor:
        """Gaussian blur (sigma ELASTIC_SIGMA px) of a (B, 2, H, W) field, separable, zero-padded."""
        kernel = self._kernels.get(field.device)
        if kernel is None:
            radius = int(4 * ELASTIC_SIGMA)
            x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=field.device)
            kernel = torch.exp(-0.5 * (x / ELASTIC_SIGMA) ** 2)
            kernel = self._kernels[field.device] = kernel / kernel.sum()
        radius = len(kernel) // 2
        out = F.conv2d(field, kernel.view(1, 1, 1, -1).expand(2, 1, 1, -1), padding=(0, radius), groups=2)
        return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(2, 1, -1, 1), padding=(radius, 0), groups=2)

    def _intensity(self, images, contrast, alpha, beta, gamma, gamma_power, noisy, generator) -> torch.Tensor:
        p = self.params
        low = images.amin(dim=(1, 2, 3), keepdim=True)
        span = images.amax(dim=(1, 2, 3), keepdim=True) - low
        span = torch.where(span > 0, span, torch.ones_like(span))
        unit = (images - low) / span
        view = (-1, 1, 1, 1)
        # brightness and contrast together, as albumentations: alpha * x + beta, clipped to [0, 1]
        unit = torch.where(contrast.view(view), (unit * alpha.view(view) + beta.view(view)).clamp(0, 1), unit)
        unit = torch.where(gamma.view(view), unit.pow(gamma_power.view(view)), unit)
        if p.noise > 0:
            noise = torch.randn(unit.shape, device=unit.device, generator=generator) * (p.noise_std / 4)
            unit = torch.where(noisy.view(view), (unit + noise).clamp(0, 1), unit)
        return unit * span + low


def _flip(tensor: torch.Tensor, chosen: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.where(chosen.view(-1, 1, 1, 1), tensor.flip(dim), tensor)
