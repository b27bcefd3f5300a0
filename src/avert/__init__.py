"""avert: text-to-image generation in which the negative prompt is a first-class control."""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "GenerationRequest": "avert.request",
    "Negative": "avert.request",
    "InitImage": "avert.init_image",
    "GenerationResult": "avert.pipeline.result",
    "Runtime": "avert.pipeline.runtime",
    "Limits": "avert.schema",
    "generate": "avert.api",
    "compare": "avert.api",
    "load": "avert.api",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    """Import heavy modules (torch, diffusers) only when the API is used, so `avert --help` stays fast."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'avert' has no attribute {name!r}")
