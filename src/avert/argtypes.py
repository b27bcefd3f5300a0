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


def window_arg(text: str) -> tuple[float, float]:
    """START:END, a window as fractions of the run (its range is checked with the request, as any negative's)."""
    start, _, end = text.partition(":")
    try:
        return float(start), float(end)
    except ValueError:
        raise argparse.ArgumentTypeError(str(FieldProblem("negative_window", text,
                                                          "must be START:END, two numbers from 0 to 1"))) from None


def bounded(name: str, kind: type, low: float, high: float):
    """An argparse type for a number option outside the request schema, with the schema's wording of errors."""
    noun = "an integer" if kind is int else "a number"

    def convert(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(str(FieldProblem(name, text, f"must be {noun} from {low} to {high}")))
        return value

    convert.__name__ = name
    return convert
