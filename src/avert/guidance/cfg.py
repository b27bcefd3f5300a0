"""Classifier-free guidance as pure tensor functions (no model, no state)."""

from __future__ import annotations

import torch


def cfg(positive: torch.Tensor, negative: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance with a negative prompt in the unconditional branch.

    Ho & Salimans, "Classifier-Free Diffusion Guidance" (2022), eq. 6, with the negative prediction
    e_n taking the place of the unconditional one: e = e_n + w (e_c - e_n).
    At w = 1 this is e_c exactly, so the negative has no effect; below 1 it pulls toward the negative.
    """
    return negative + scale * (positive - negative)
