"""The guide's comparison: the same seeds and settings without a negative, then with each negative."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from PIL import Image

from avert.conditioning.embeddings import EmbeddingLibrary
from avert.errors import FieldProblem, ValidationError
from avert.models.components import Components
from avert.output.grid import compare_grid
from avert.pipeline.generate import check, generate, resolve
from avert.pipeline.result import GenerationResult
from avert.pipeline.runtime import Runtime
from avert.request import GenerationRequest
from avert.sampling.loop import StepEvent
from avert.schema import Limits

NO_NEGATIVE = "No negative prompt"


@dataclass(frozen=True)
class Comparison:
    """One result per column: `columns[0]` has no negative, `columns[k]` has `negatives[k - 1]`."""

    negatives: tuple[str, ...]
    columns: tuple[GenerationResult, ...]

    def labels(self) -> tuple[str, ...]:
        return (NO_NEGATIVE,) + tuple(f"Negative prompt: {n}" for n in self.negatives)

    def grid(self, min_cell: int = 256) -> Image.Image:
        """The labelled side-by-side figure: one column per negative, one row per seed."""
        columns = [(label, [g.image for g in r.images]) for label, r in zip(self.labels(), self.columns)]
        rows = [f"seed {s}" for s in self.columns[0].seeds]
        return compare_grid(columns, title=self.columns[0].request.prompt, row_labels=rows, min_cell=min_cell)


def compare(
    request: GenerationRequest,
    negatives: Sequence[str],
    components: Components,
    *,
    runtime: Runtime = Runtime(),
    limits: Limits = Limits(),
    on_step: Callable[[StepEvent], None] | None = None,
    embeddings: EmbeddingLibrary = EmbeddingLibrary(),
) -> Comparison:
    """Render `request` without a negative and with each of `negatives` (at most `limits.max_negatives`), all with
    the same resolved seed."""
    if len(negatives) > limits.max_negatives:
        raise ValidationError([FieldProblem("negatives", f"{len(negatives)} columns", "must have at most "
                                            f"{limits.max_negatives} negatives, one column each")])
    for negative in negatives:
        check(request.replace(negative_prompt=negative), limits, components)
    base = resolve(check(request, limits, components), components)
    columns = tuple(
        generate(base.replace(negative_prompt=n, negatives=()), components, runtime=runtime, limits=limits,
                 on_step=on_step, embeddings=embeddings)
        for n in ("", *negatives)
    )
    return Comparison(tuple(negatives), columns)
