"""The Python API, mirroring the CLI: a frozen request in, a result with images, seeds and metadata out.

    >>> from avert import GenerationRequest, generate
    >>> result = generate(GenerationRequest("a house on a hill", negative_prompt="green tones", seed=1))
    >>> result.images[0].image.save("house.png"); result.seeds
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from avert.conditioning.embeddings import EmbeddingLibrary, load_embeddings
from avert.models.components import Components
from avert.models.default import resolve_model_path
from avert.models.store import get_model
from avert.pipeline import compare as _compare
from avert.pipeline import generate as _generate
from avert.pipeline.result import GenerationResult
from avert.pipeline.runtime import Runtime
from avert.request import GenerationRequest
from avert.sampling.loop import StepEvent
from avert.schema import Limits

ModelArg = Components | str | Path | None


def load(
    model: ModelArg = None,
    *,
    allow_pickle: bool = False,
    config_dir: Path | None = None,
    prediction_type: str | None = None,
    zero_terminal_snr: bool = False,
) -> Components:
    """Components for `model`: already loaded, a path, or None for $AVERT_MODEL / the embedded default."""
    if isinstance(model, Components):
        return model
    return get_model(resolve_model_path(model), allow_pickle=allow_pickle, config_dir=config_dir,
                     prediction_type=prediction_type, zero_terminal_snr=zero_terminal_snr)


def generate(
    request: GenerationRequest,
    model: ModelArg = None,
    *,
    runtime: Runtime = Runtime(),
    limits: Limits = Limits(),
    on_step: Callable[[StepEvent], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    embeddings: EmbeddingLibrary | str | Path | None = None,
    maps: bool = False,
) -> GenerationResult:
    """Render a request; see `avert.pipeline.generate.generate`. `embeddings`: a folder of textual-inversion
    `.safetensors` files (or a loaded library), used by name in the prompt and the negatives; `maps`: each image
    also gets, per negative, where it acted (`GeneratedImage.maps`)."""
    library = embeddings if isinstance(embeddings, EmbeddingLibrary) else load_embeddings(embeddings)
    return _generate.generate(request, load(model), runtime=runtime, limits=limits, on_step=on_step,
                              should_stop=should_stop, embeddings=library, maps=maps)


def compare(
    request: GenerationRequest,
    negatives: Sequence[str],
    model: ModelArg = None,
    *,
    runtime: Runtime = Runtime(),
    limits: Limits = Limits(),
    on_step: Callable[[StepEvent], None] | None = None,
    embeddings: EmbeddingLibrary | str | Path | None = None,
    maps: bool = False,
) -> _compare.Comparison:
    """The same seeds without a negative and with each negative; `.grid()` draws the labelled figure (with
    `maps`, also where each negative acted and what it changed)."""
    library = embeddings if isinstance(embeddings, EmbeddingLibrary) else load_embeddings(embeddings)
    return _compare.compare(request, negatives, load(model), runtime=runtime, limits=limits, on_step=on_step,
                            embeddings=library, maps=maps)
