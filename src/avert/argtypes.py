"""Argument types shared by the `avert` subcommands (errors in the schema's wording)."""

from __future__ import annotations

import argparse

from avert.errors import FieldProblem


def device_arg(text: str) -> str:
    """A torch device this machine has (cpu, cuda, cuda:1, mps ...), refused by name otherwise."""
    import torch

    try:
        device = torch.device(text)
        available = device.type == "cpu" or (getattr(torch, device.type, None) is not None
                                             and getattr(torch, device.type).is_available())
    except (RuntimeError, AttributeError):
        available = False
    if not available:
        raise argparse.ArgumentTypeError(str(FieldProblem("device", text, "must be a torch device available here, "
                                                          "e.g. cpu, or cuda when a GPU is present")))
    return text
