"""A small convolutional network that reads world concepts off a 32x32 RGB image.

`ConceptNet` takes uint8 images as [N, 32, 32, 3] (channels last, as numpy and Pillow hold
them) or float images as [N, 3, 32, 32] in [0, 255], normalises them itself, and returns
one logit per entry of `avert.world.CONCEPTS`. Four conv blocks (32 -> 64 -> 128 -> 128
channels, each halving the resolution) and a pooled linear head keep it near 12 million
multiply-adds per image, so inference runs at thousands of images per second on one CPU
core.
"""

from __future__ import annotations

import torch
from torch import nn

from avert.world import CONCEPTS

IMAGE_SIZE = 32
WIDTHS: tuple[int, ...] = (32, 64, 128, 128)
# Mean and spread of world renders per channel (0-255); fixed so that weights stay portable.
CHANNEL_MEAN = (118.0, 124.0, 126.0)
CHANNEL_STD = (64.0, 60.0, 66.0)


def _block(c_in: int, c_out: int) -> nn.Sequential:
    """3x3 conv, BatchNorm, GELU, then a 2x2 max pool (halves height and width)."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.GELU(),
        nn.MaxPool2d(2),
    )


class ConceptNet(nn.Module):
    """Concept logits [N, len(CONCEPTS)] for 32x32 RGB images."""

    def __init__(self, widths: tuple[int, ...] = WIDTHS, n_concepts: int = len(CONCEPTS)):
        super().__init__()
        chans = (3, *widths)
        self.features = nn.Sequential(*(_block(a, b) for a, b in zip(chans[:-1], chans[1:])))
        self.head = nn.Linear(widths[-1] * 2, n_concepts)
        self.register_buffer("mean", torch.tensor(CHANNEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CHANNEL_STD).view(1, 3, 1, 1), persistent=False)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 [N, H, W, 3] or float [N, 3, H, W] on the 0-255 scale -> standardised float NCHW."""
        if x.dtype == torch.uint8:
            x = x.permute(0, 3, 1, 2).float()
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(self.normalise(x))
        # Average and max pooling: max keeps small bright things (stars, a far sun) visible.
        pooled = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)
        return self.head(pooled)
