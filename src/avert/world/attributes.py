"""The ground truth of one procedural scene, as frozen values.

A `Scene` says everything that is in a picture: the sky, the ground, every object with
its place, size and colour, and the global tone grade applied last. `Scene.concepts()`
turns that into the canonical concept names (`CONCEPTS`) used to measure what a
generated image contains or avoids.

Coordinates are fractions of the image: x from the left edge, y from the top edge, both
in [0, 1] (a hand may start slightly below the bottom edge). Sizes are fractions of the
image height. Colours are sRGB (0-255) before the scene's lighting and tone grade.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

RGB = tuple[int, int, int]

SKIES: tuple[str, ...] = ("day", "sunset", "night", "cloudy")
GROUNDS: tuple[str, ...] = ("grass", "sand", "snow", "sea")
TONES: tuple[str, ...] = (
    "none",
    "green tones",
    "warm tones",
    "blue tones",
    "black and white",
    "sepia",
)
HOUSE_COLORS: tuple[str, ...] = ("red", "blue", "yellow", "white")
OBJECT_KINDS: tuple[str, ...] = (
    "sun",
    "moon",
    "tree",
    "house",
    "cloud",
    "boat",
    "mountain",
    "flowers",
    "hand",
)

# Concept name of each sky (ground and object kinds are their own concept names).
SKY_CONCEPT: dict[str, str] = {
    "day": "day sky",
    "sunset": "sunset",
    "night": "night",
    "cloudy": "cloudy sky",
}

CONCEPTS: tuple[str, ...] = (
    "sun",
    "moon",
    "tree",
    "house",
    "red house",
    "blue house",
    "yellow house",
    "white house",
    "cloud",
    "boat",
    "mountain",
    "flowers",
    "hand",
    "stars",
    "day sky",
    "sunset",
    "night",
    "cloudy sky",
    "grass",
    "sand",
    "snow",
    "sea",
    "green tones",
    "warm tones",
    "blue tones",
    "black and white",
    "sepia",
)
CONCEPT_INDEX: dict[str, int] = {name: i for i, name in enumerate(CONCEPTS)}

# Where each object kind may appear (None: anywhere).
ALLOWED_SKIES: dict[str, frozenset[str]] = {
    "sun": frozenset({"day", "sunset"}),
    "moon": frozenset({"night"}),
}
ALLOWED_GROUNDS: dict[str, frozenset[str]] = {
    "boat": frozenset({"sea"}),
    "tree": frozenset({"grass", "sand", "snow"}),
    "house": frozenset({"grass", "sand", "snow"}),
    "flowers": frozenset({"grass"}),
}
MAX_COUNT: dict[str, int] = {
    "sun": 1,
    "moon": 1,
    "tree": 4,
    "house": 1,
    "cloud": 5,
    "boat": 2,
    "mountain": 3,
    "flowers": 1,
    "hand": 1,
}

# Drawing variants: tree 0 round / 1 pine; moon 0 full / 1 crescent; sun 0 plain / 1 rays;
# mountain 0 bare / 1 snow cap; hand 0 right / 1 left (mirrored).
VARIANTS: dict[str, int] = {"tree": 2, "moon": 2, "sun": 2, "mountain": 2, "hand": 2}


@dataclass(frozen=True)
class SceneObject:
    """One object in a scene.

    `x` is the horizontal centre. `y` is the base line for things that stand on the
    ground or float on water (tree, house, boat, flowers, hand wrist, mountain) and the
    centre for things in the sky (sun, moon, cloud). `size` is the object's height as a
    fraction of the image height (a cloud's or a flower patch's width, a sun's or moon's
    diameter). `color` is the main colour (house walls, tree crown, hull, skin, ...) and
    `color2` a secondary one (roof, trunk, sail, ...). `color_name` is set for houses only.
    """

    kind: str
    x: float
    y: float
    size: float
    color: RGB
    color2: RGB = (0, 0, 0)
    variant: int = 0
    angle: float = 0.0  # degrees, counter-clockwise (hand only)
    width: float = 0.0  # as a fraction of the image width; 0: derived from size
    color_name: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in OBJECT_KINDS:
            raise ValueError(f"unknown object kind {self.kind!r}; one of {OBJECT_KINDS}")
        if self.kind == "house":
            if self.color_name not in HOUSE_COLORS:
                raise ValueError(f"a house needs color_name in {HOUSE_COLORS}, got {self.color_name!r}")
        elif self.color_name is not None:
            raise ValueError(f"only a house has a color_name, not a {self.kind}")
        if not 0 <= self.variant < VARIANTS.get(self.kind, 1):
            raise ValueError(f"variant {self.variant} out of range for a {self.kind}")
        if not self.size > 0:
            raise ValueError(f"size must be positive, got {self.size}")


@dataclass(frozen=True)
class Palette:
    """Background colours: sky gradient (top to horizon) and ground gradient (horizon to bottom)."""

    sky_top: RGB
    sky_bottom: RGB
    ground_far: RGB
    ground_near: RGB


@dataclass(frozen=True)
class Scene:
    """Everything in one picture. Invalid combinations raise ValueError on construction."""

    sky: str
    ground: str
    tone: str
    horizon: float  # y of the horizon line, fraction of the image height
    palette: Palette
    objects: tuple[SceneObject, ...] = ()
    stars: bool = False
    detail_seed: int = 0  # fixes small details: star, flower and wave positions
    _concepts: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        problems = scene_problems(self)
        if problems:
            raise ValueError("invalid scene: " + "; ".join(problems))
        object.__setattr__(self, "_concepts", _concepts_of(self))

    def count(self, kind: str) -> int:
        """How many objects of `kind` the scene holds."""
        return sum(1 for o in self.objects if o.kind == kind)

    def of_kind(self, kind: str) -> tuple[SceneObject, ...]:
        return tuple(o for o in self.objects if o.kind == kind)

    @property
    def house_color(self) -> str | None:
        houses = self.of_kind("house")
        return houses[0].color_name if houses else None

    def concepts(self) -> frozenset[str]:
        """The names in `CONCEPTS` that are true of this scene."""
        return self._concepts

    def concept_vector(self) -> list[bool]:
        """One bool per entry of `CONCEPTS`, in that order."""
        present = self._concepts
        return [name in present for name in CONCEPTS]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (lists for tuples); `Scene.from_dict` reverses it."""
        d = asdict(self)
        d.pop("_concepts", None)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scene:
        objects = tuple(
            SceneObject(
                **{
                    **o,
                    "color": tuple(o["color"]),
                    "color2": tuple(o["color2"]),
                }
            )
            for o in d.get("objects", ())
        )
        palette = Palette(**{k: tuple(v) for k, v in d["palette"].items()})
        rest = {k: v for k, v in d.items() if k not in ("objects", "palette", "_concepts")}
        return cls(objects=objects, palette=palette, **rest)


def scene_problems(scene: Scene) -> list[str]:
    """Every broken constraint of a scene, in words (empty when the scene is valid)."""
    problems: list[str] = []
    if scene.sky not in SKIES:
        problems.append(f"sky {scene.sky!r} not in {SKIES}")
    if scene.ground not in GROUNDS:
        problems.append(f"ground {scene.ground!r} not in {GROUNDS}")
    if scene.tone not in TONES:
        problems.append(f"tone {scene.tone!r} not in {TONES}")
    if not 0.2 <= scene.horizon <= 0.85:
        problems.append(f"horizon {scene.horizon} outside [0.2, 0.85]")
    if scene.stars and scene.sky != "night":
        problems.append("stars need a night sky")
    counts: dict[str, int] = {}
    for o in scene.objects:
        counts[o.kind] = counts.get(o.kind, 0) + 1
        skies = ALLOWED_SKIES.get(o.kind)
        if skies is not None and scene.sky not in skies:
            problems.append(f"a {o.kind} cannot be in a {scene.sky} sky")
        grounds = ALLOWED_GROUNDS.get(o.kind)
        if grounds is not None and scene.ground not in grounds:
            problems.append(f"a {o.kind} cannot be on {scene.ground}")
    for kind, n in counts.items():
        if n > MAX_COUNT[kind]:
            problems.append(f"{n} x {kind} (at most {MAX_COUNT[kind]})")
    if scene.sky == "cloudy" and counts.get("cloud", 0) == 0:
        problems.append("a cloudy sky needs clouds")
    return problems


def _concepts_of(scene: Scene) -> frozenset[str]:
    names = {o.kind for o in scene.objects}
    for o in scene.objects:
        if o.kind == "house":
            names.add(f"{o.color_name} house")
    if scene.stars:
        names.add("stars")
    names.add(SKY_CONCEPT[scene.sky])
    names.add(scene.ground)
    if scene.tone != "none":
        names.add(scene.tone)
    return frozenset(names)
