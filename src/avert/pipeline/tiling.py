"""Seamless images (A1111's "Tiling"): circular padding in the convolutions of the UNet and the VAE for one run.

A1111 (`modules/sd_hijack.py`, `apply_circular`) sets `padding_mode = "circular"` on every `torch.nn.Conv2d` of
the loaded model, so each convolution sees the image as wrapped around both axes: the left edge continues into
the right one and the top into the bottom, and the image tiles without a seam. avert does the same for the run of
a request that asks for it and puts every layer back afterwards (a server runs one job at a time per model; two
threads of the Python API rendering on the same components at once must not mix tiled and plain requests).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from avert.models.components import Components


def convolutions(components: Components) -> list[torch.nn.Conv2d]:
    """Every 2-D convolution of the UNet and the VAE (the text encoder has none)."""
    parts = [p for p in (components.unet, components.vae) if p is not None]
    return [m for part in parts for m in part.modules() if isinstance(m, torch.nn.Conv2d)]


@contextlib.contextmanager
def circular(components: Components, on: bool) -> Iterator[None]:
    """Within the block, the model's convolutions pad circularly when `on`; as they were, always, after it."""
    if not on:
        yield
        return
    layers = convolutions(components)
    before = [layer.padding_mode for layer in layers]
    for layer in layers:
        layer.padding_mode = "circular"
    try:
        yield
    finally:
        for layer, mode in zip(layers, before):
            layer.padding_mode = mode
