"""The guide's comparison: the same seeds and settings without a negative, then with each negative."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from PIL import Image

from avert.conditioning.embeddings import EmbeddingLibrary
from avert.models.lora import LoraLibrary
from avert.errors import FieldProblem, ValidationError
from avert.models.components import Components
from avert.output.grid import compare_grid
from avert.output.maps import difference, overlay, shared_range
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

    @property
    def has_maps(self) -> bool:
        return any(g.maps for r in self.columns[1:] for g in r.images)

    def grid(self, min_cell: int = 256) -> Image.Image:
        """The labelled side-by-side figure: one column per negative, one row per seed; with maps, two more rows
        per seed: where each negative acted, and what it changed (`avert.output.maps`)."""
        columns = [(label, [g.image for g in r.images]) for label, r in zip(self.labels(), self.columns)]
        rows = [f"seed {s}" for s in self.columns[0].seeds]
        if self.has_maps:
            columns = [(label, [cell for i in range(len(rows)) for cell in cells[3 * i: 3 * i + 3]])
                       for (label, _), cells in zip(columns, self.map_cells())]
            rows = [line for s in rows for line in (s, f"{s}: where the negative acted", f"{s}: pixel change")]
        return compare_grid(columns, title=self.columns[0].request.prompt, row_labels=rows, min_cell=min_cell)

    def map_cells(self) -> list[list[Image.Image]]:
        """Per column, per seed: the image, its map over it (no map: the image in grey) and its change from the
        column without a negative; the maps of one seed share one range."""
        cells: list[list[Image.Image]] = [[] for _ in self.columns]
        for i, plain in enumerate(self.columns[0].images):
            low, high = shared_range(r.images[i].maps[0].values for r in self.columns[1:] if r.images[i].maps)
            for column, r in zip(cells, self.columns):
                made = r.images[i]
                shown = overlay(made.image, made.maps[0].values, low, high) if made.maps else \
                    made.image.convert("L").convert("RGB")
                column += [made.image, shown, difference(plain.image, made.image)]
        return cells


def compare(
    request: GenerationRequest,
    negatives: Sequence[str],
    components: Components,
    *,
    runtime: Runtime = Runtime(),
    limits: Limits = Limits(),
    on_step: Callable[[StepEvent], None] | None = None,
    embeddings: EmbeddingLibrary = EmbeddingLibrary(),
    maps: bool = False,
    loras: LoraLibrary = LoraLibrary(),
) -> Comparison:
    """Render `request` without a negative and with each of `negatives` (at most `limits.max_negatives`), all with
    the same resolved seed; with `maps`, each negative's column also records where it acted
    (`avert.guidance.attribution`)."""
    if len(negatives) > limits.max_negatives:
        raise ValidationError([FieldProblem("negatives", f"{len(negatives)} columns", "must have at most "
                                            f"{limits.max_negatives} negatives, one column each")])
    for negative in negatives:
        check(request.replace(negative_prompt=negative), limits, components)
    base = resolve(check(request, limits, components), components)
    columns = tuple(
        generate(base.replace(negative_prompt=n, negatives=()), components, runtime=runtime, limits=limits,
                 on_step=on_step, embeddings=embeddings, maps=maps and bool(n), loras=loras)
        for n in ("", *negatives)
    )
    return Comparison(tuple(negatives), columns)
