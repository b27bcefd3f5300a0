"""What a request costs the machine, in megapixel steps, and the cap a server holds every request to.

One megapixel step is one model evaluation of one conditioned sample of a one-megapixel image. A request costs

    work = (width x height / 10^6) x evaluations x branches x images

where `evaluations` is the number of model evaluations the sampler makes over the run (steps, or twice that for
the second-order samplers Heun, DPM2 and DPM++ SDE: counted from the scheduler's own timesteps), `branches` the
conditioned samples each evaluation carries for one image (the prompt's AND parts, each negative's AND parts and
the empty prompt where the method needs it; an upper bound, since windows and intervals only ever drop branches)
and `images` the batch. Time on a given machine is roughly proportional (attention makes large sizes dearer):
`docs/security.md` gives the seconds per megapixel step measured for the embedded model by `tools/redteam.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from avert.errors import FieldProblem, ValidationError
from avert.guidance.perturb import KINDS as PERTURBATIONS
from avert.guidance.strategy import CFG_BRANCH_METHODS
from avert.models.components import Components
from avert.prompts.composable import split_and
from avert.request import GenerationRequest
from avert.sampling.samplers import sampler_spec

MEGAPIXEL = 1_000_000


@dataclass(frozen=True)
class Work:
    """A request's cost, factor by factor."""

    megapixels: float
    evaluations: int
    branches: int
    images: int
    extra: float = 0.0  # megapixel steps of a second pass (the hires fix's)

    @property
    def megapixel_steps(self) -> float:
        return self.megapixels * self.evaluations * self.branches * self.images + self.extra

    def describe(self) -> str:
        second = f" + {self.extra:.3g} of the hires pass" if self.extra else ""
        return (f"{self.megapixels:.3g} MP x {self.evaluations} evaluations x {self.branches} branches x "
                f"{self.images} images{second} = {self.megapixel_steps:.3g} megapixel steps")


def estimate(request: GenerationRequest, components: Components, method: str, maps: bool = False) -> Work:
    """The work of a validated request with its size resolved; `method` is the guidance method it runs with;
    `maps`: it records where its negatives acted."""
    return Work(request.width * request.height / MEGAPIXEL, evaluations(request, components),
                branches(request, method, maps), request.batch_size)


def evaluations(request: GenerationRequest, components: Components) -> int:
    """Model evaluations over the run: the length of the sampler's timesteps for `request.steps` steps."""
    scheduler = sampler_spec(request.sampler).build(components.scheduler_config, 0, None, request.schedule_type)
    scheduler.set_timesteps(request.steps)
    return len(scheduler.timesteps)


def branches(request: GenerationRequest, method: str, maps: bool = False) -> int:
    """Conditioned samples per evaluation per image, at most (see `avert.guidance.strategy.Guidance.branches`):
    the prompt's AND parts, plus the empty prompt alone without negatives; with negatives, each negative's AND
    parts, plus the empty prompt unless plain cfg (or a method of `CFG_BRANCH_METHODS`) has one negative of weight 1
    in one part and no map is made (`avert.guidance.attribution`); pag, seg and slg add their perturbed branch."""
    prompt = len(split_and(request.prompt)) + (method in PERTURBATIONS)
    negatives = request.guided_negatives()
    if not negatives:
        return prompt + 1
    weights = [n.weight * part.weight for n in negatives for part in split_and(n.text)]
    plain = method in CFG_BRANCH_METHODS or (method == "cfg" and request.negative_scale in (None, request.cfg_scale))
    return prompt + len(weights) + (0 if plain and weights == [1.0] and not maps else 1)


def check(works: Iterable[Work], max_work: float | None, field: str = "work") -> None:
    """Raise a `ValidationError` naming the total and the limit when `works` together cost over `max_work`."""
    works = list(works)
    total = sum(w.megapixel_steps for w in works)
    if max_work is None or total <= max_work:
        return
    shown = works[0].describe() if len(works) == 1 else f"{len(works)} renders, {total:.3g} megapixel steps in all"
    raise ValidationError([FieldProblem(field, shown, f"must be at most {max_work:g} megapixel steps on this server "
                                        "(width x height / 10^6 x model evaluations x branches x images; its "
                                        "operator sets the limit with avert serve --max-work): use fewer steps, "
                                        "a smaller size or batch, or fewer negatives")])
