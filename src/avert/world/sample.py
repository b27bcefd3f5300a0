"""Random scenes with a balanced distribution of skies, grounds, objects and tone grades.

Probabilities (before objects that find no free room are dropped):

* sky: day 0.40, sunset 0.20, night 0.20, cloudy 0.20
* ground: grass 0.38, sand 0.20, snow 0.20, sea 0.22
* tone: none 0.50, each of the five grades 0.10
* sun: 0.80 of day and 0.85 of sunset skies; moon: 0.75 and stars: 0.80 of night skies
* tree(s): 0.60 of land scenes; house: 0.50 of land scenes (colour uniform)
* boat(s): 0.70 of sea scenes; flowers: 0.50 of grass scenes
* cloud(s): always in a cloudy sky, else 0.35; mountain(s): 0.35; hand: 0.20

Objects that stand side by side (trees, house, boats, hand) and sky objects (sun, moon,
clouds) are laid out so that they hardly cover one another: an object that finds no free
room is left out, so the ground truth never lists a hidden object.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TypeVar

import numpy as np

from avert.world.attributes import (
    HOUSE_COLORS,
    RGB,
    Palette,
    Scene,
    SceneObject,
)
from avert.world.render import hand_box

SKY_P = {"day": 0.40, "sunset": 0.20, "night": 0.20, "cloudy": 0.20}
GROUND_P = {"grass": 0.38, "sand": 0.20, "snow": 0.20, "sea": 0.22}
TONE_P = {
    "none": 0.50,
    "green tones": 0.10,
    "warm tones": 0.10,
    "blue tones": 0.10,
    "black and white": 0.10,
    "sepia": 0.10,
}
P_SUN = {"day": 0.80, "sunset": 0.85}
P_MOON_NIGHT = 0.75
P_STARS_NIGHT = 0.80
P_TREE_LAND = 0.60
P_HOUSE_LAND = 0.5
P_BOAT_SEA = 0.70
P_FLOWERS_GRASS = 0.50
P_CLOUD_CLEAR = 0.35
P_MOUNTAIN = 0.35
P_HAND = 0.20

SKY_COLORS: dict[str, tuple[RGB, RGB]] = {  # (top, at the horizon)
    "day": ((60, 120, 215), (165, 205, 245)),
    "sunset": ((85, 55, 125), (250, 145, 70)),
    "night": ((4, 6, 24), (20, 28, 66)),
    "cloudy": ((125, 130, 140), (180, 184, 190)),
}
GROUND_COLORS: dict[str, tuple[RGB, RGB]] = {  # (far, near)
    "grass": ((135, 185, 85), (95, 160, 55)),
    "sand": ((232, 208, 150), (215, 185, 125)),
    "snow": ((225, 232, 245), (248, 250, 255)),
    "sea": ((45, 100, 170), (20, 65, 135)),
}
HOUSE_RGB: dict[str, RGB] = {
    "red": (205, 40, 35),
    "blue": (45, 85, 205),
    "yellow": (240, 205, 40),
    "white": (240, 240, 235),
}
ROOF_RGB: tuple[RGB, ...] = ((70, 60, 60), (100, 62, 40), (60, 66, 80), (45, 45, 50))
SKIN_RGB: tuple[RGB, ...] = (
    (255, 219, 185),
    (240, 190, 150),
    (225, 170, 125),
    (198, 134, 90),
    (160, 105, 70),
    (115, 75, 50),
)
HULL_RGB: tuple[RGB, ...] = ((120, 70, 40), (150, 40, 35), (40, 50, 95), (60, 45, 40))
T = TypeVar("T")
MOUNTAIN_RGB: tuple[RGB, ...] = ((105, 110, 135), (125, 105, 95), (90, 110, 125), (120, 120, 130))


def _jitter(rng: np.random.Generator, color: RGB, amount: float = 15) -> RGB:
    c = np.asarray(color, dtype=float) + rng.normal(0.0, amount, 3)
    return tuple(int(v) for v in np.clip(np.round(c), 0, 255))  # type: ignore[return-value]


def _choice(rng: np.random.Generator, table: dict[str, float]) -> str:
    keys = list(table)
    p = np.asarray([table[k] for k in keys])
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def _pick(rng: np.random.Generator, items: tuple[RGB, ...]) -> RGB:
    return items[int(rng.integers(len(items)))]


Box = tuple[float, float, float, float]  # x0, y0, x1, y1


class _Layout:
    """Boxes already taken; a new box may cover at most `slack` of the smaller box's area."""

    def __init__(self, slack: float = 0.08):
        self.boxes: list[Box] = []
        self.slack = slack

    def fits(self, box: Box) -> bool:
        x0, y0, x1, y1 = box
        area = (x1 - x0) * (y1 - y0)
        for a0, b0, a1, b1 in self.boxes:
            ow = min(x1, a1) - max(x0, a0)
            oh = min(y1, b1) - max(y0, b0)
            if ow > 0 and oh > 0 and ow * oh > self.slack * min(area, (a1 - a0) * (b1 - b0)):
                return False
        return True

    def place(self, propose: Callable[[], tuple[Box, T]], tries: int = 30) -> T | None:
        """The first proposal whose box fits (and take its box), or None."""
        for _ in range(tries):
            box, value = propose()
            if self.fits(box):
                self.boxes.append(box)
                return value
        return None


def _count(rng: np.random.Generator, weights: tuple[float, ...]) -> int:
    """1 + an index drawn from weights."""
    p = np.asarray(weights)
    return 1 + int(rng.choice(len(p), p=p / p.sum()))


def sample_scene(rng: np.random.Generator) -> Scene:
    """One random valid scene (deterministic for a given generator state)."""
    sky = _choice(rng, SKY_P)
    ground = _choice(rng, GROUND_P)
    tone = _choice(rng, TONE_P)
    land = ground != "sea"
    horizon = float(rng.uniform(0.45, 0.66))

    top, bottom = SKY_COLORS[sky]
    far, near = GROUND_COLORS[ground]
    palette = Palette(_jitter(rng, top, 12), _jitter(rng, bottom, 12), _jitter(rng, far, 10), _jitter(rng, near, 10))

    want_hand = rng.random() < P_HAND
    want_house = land and rng.random() < P_HOUSE_LAND
    n_trees = _count(rng, (0.45, 0.3, 0.15, 0.1)) if land and rng.random() < P_TREE_LAND else 0
    n_boats = _count(rng, (0.8, 0.2)) if ground == "sea" and rng.random() < P_BOAT_SEA else 0
    want_flowers = ground == "grass" and rng.random() < P_FLOWERS_GRASS
    want_sun = rng.random() < P_SUN.get(sky, 0.0)
    want_moon = sky == "night" and rng.random() < P_MOON_NIGHT
    stars = sky == "night" and rng.random() < P_STARS_NIGHT
    if sky == "cloudy":
        n_clouds = _count(rng, (0.0, 0.35, 0.4, 0.25))
    elif rng.random() < P_CLOUD_CLEAR:
        n_clouds = _count(rng, (0.5, 0.35, 0.15))
    else:
        n_clouds = 0
    n_mountains = _count(rng, (0.45, 0.35, 0.2)) if rng.random() < P_MOUNTAIN else 0

    objects: list[SceneObject] = []
    layout = _Layout()
    depth = 1.0 - horizon

    def base_y(lo: float, hi: float) -> tuple[float, float]:
        """A base line between two depths (0: horizon, 1: bottom) and its perspective scale."""
        t = float(rng.uniform(lo, hi))
        return horizon + t * depth, 0.75 + 0.45 * t

    # The hand first: it is big, in front, and everything else keeps out of its way.
    hand_area: Box | None = None
    if want_hand:
        size = float(rng.uniform(0.62, 0.8))
        skin = _jitter(rng, _pick(rng, SKIN_RGB), 8)

        def propose_hand() -> tuple[Box, SceneObject]:
            angle = float(rng.uniform(-18, 18))
            variant = int(rng.integers(2))
            y = float(rng.uniform(1.0, 1.06))
            probe = SceneObject("hand", 0.0, y, size, skin, variant=variant, angle=angle)
            x0, y0, x1, _ = hand_box(probe)
            # Keep the whole hand but a sliver in the frame.
            x = float(rng.uniform(-x0 - 0.03, 1.03 - x1))
            obj = dataclasses.replace(probe, x=x)
            return (x + x0, y0, x + x1, 1.0), obj

        hand = layout.place(propose_hand)
        if hand is not None:
            objects.append(hand)
            hand_area = layout.boxes[-1]

    if want_sun:
        day = sky == "day"
        d = float(rng.uniform(0.15, 0.22)) if day else float(rng.uniform(0.2, 0.28))
        color = _jitter(rng, (255, 225, 60), 8) if day else _jitter(rng, (255, 228, 140), 8)
        variant = int(rng.integers(2)) if day else 0
        r = d / 2 + (0.04 if variant else 0.01)

        def propose_sun() -> tuple[Box, SceneObject]:
            x = float(rng.uniform(0.02 + d / 2, 0.98 - d / 2))
            if day:
                y = float(rng.uniform(0.05 + d / 2, min(horizon - 0.2, 0.3)))
            else:
                y = float(rng.uniform(horizon - 0.18, horizon - d / 2 - 0.01))
            return (x - r, y - r, x + r, y + r), SceneObject("sun", x, y, d, color, variant=variant)

        sun = layout.place(propose_sun)
        if sun is not None:
            objects.append(sun)

    if want_moon:
        d = float(rng.uniform(0.14, 0.2))
        color = _jitter(rng, (240, 238, 215), 6)
        variant = int(rng.integers(2))

        def propose_moon() -> tuple[Box, SceneObject]:
            x = float(rng.uniform(0.02 + d / 2, 0.98 - d / 2))
            y = float(rng.uniform(0.06 + d / 2, min(horizon - 0.2, 0.3)))
            r = d / 2 + 0.01
            return (x - r, y - r, x + r, y + r), SceneObject("moon", x, y, d, color, variant=variant)

        moon = layout.place(propose_moon)
        if moon is not None:
            objects.append(moon)

    if want_house:
        name = HOUSE_COLORS[int(rng.integers(len(HOUSE_COLORS)))]
        wall = _jitter(rng, HOUSE_RGB[name], 10)
        roof = _jitter(rng, _pick(rng, ROOF_RGB), 8)
        aspect = float(rng.uniform(0.95, 1.25))

        def propose_house() -> tuple[Box, SceneObject]:
            y, s = base_y(0.15, 0.65)
            size = float(rng.uniform(0.24, 0.32)) * s
            width = size * aspect
            x = float(rng.uniform(0.03 + width / 2, 0.97 - width / 2))
            obj = SceneObject("house", x, y, size, wall, roof, width=width, color_name=name)
            return (x - width / 2 - 0.02, y - size, x + width / 2 + 0.02, y), obj

        house = layout.place(propose_house)
        if house is not None:
            objects.append(house)

    for _ in range(n_boats):
        hull = _jitter(rng, _pick(rng, HULL_RGB), 10)
        sail = _jitter(rng, (245, 242, 232), 6)

        def propose_boat() -> tuple[Box, SceneObject]:
            y, s = base_y(0.2, 0.7)
            size = float(rng.uniform(0.24, 0.32)) * s
            width = size * 0.95
            x = float(rng.uniform(0.02 + width / 2, 0.98 - width / 2))
            obj = SceneObject("boat", x, y, size, hull, sail, width=width)
            return (x - width / 2, y - size, x + width / 2, y + 0.03), obj

        boat = layout.place(propose_boat)
        if boat is not None:
            objects.append(boat)

    pine_p = 0.8 if ground == "snow" else 0.3
    for _ in range(n_trees):
        variant = int(rng.random() < pine_p)
        crown = _jitter(rng, (38, 108, 36) if variant == 0 else (26, 86, 46), 10)
        trunk = _jitter(rng, (100, 65, 35), 8)

        def propose_tree() -> tuple[Box, SceneObject]:
            y, s = base_y(0.05, 0.7)
            size = float(rng.uniform(0.26, 0.4)) * s
            width = size * (0.55 if variant == 0 else 0.5)
            x = float(rng.uniform(0.01 + width / 2, 0.99 - width / 2))
            obj = SceneObject("tree", x, y, size, crown, trunk, variant=variant, width=width)
            return (x - width / 2, y - size, x + width / 2, y), obj

        tree = layout.place(propose_tree)
        if tree is not None:
            objects.append(tree)

    cloud_rgb = {
        "day": (248, 248, 252),
        "sunset": (250, 200, 195),
        "night": (85, 90, 120),
        "cloudy": (205, 206, 212),
    }[sky]
    for i in range(n_clouds):
        shade = _jitter(rng, cloud_rgb, 18 if sky == "cloudy" else 5)

        def propose_cloud() -> tuple[Box, SceneObject]:
            w = float(rng.uniform(0.22, 0.36))
            x = float(rng.uniform(0.0, 1.0))
            y = float(rng.uniform(0.08, max(0.1, horizon - 0.25)))
            return (x - w / 2, y - 0.3 * w, x + w / 2, y + 0.2 * w), SceneObject("cloud", x, y, w, shade, width=w)

        cloud = layout.place(propose_cloud)
        if cloud is None and sky == "cloudy" and i == 0:
            # A cloudy sky keeps at least one cloud, even over something else.
            cloud = propose_cloud()[1]
        if cloud is not None:
            objects.append(cloud)

    for _ in range(n_mountains):
        h = float(rng.uniform(0.14, min(0.32, horizon - 0.12)))
        w = h * float(rng.uniform(1.6, 2.8))
        for _try in range(20):
            x = float(rng.uniform(0.05, 0.95))
            # Keep the peak clear of the hand.
            if hand_area is None or not hand_area[0] - 0.05 < x < hand_area[2] + 0.05:
                break
        else:
            continue
        colour = _jitter(rng, _pick(rng, MOUNTAIN_RGB), 10)
        objects.append(SceneObject("mountain", x, horizon, h, colour, variant=int(rng.random() < 0.5), width=w))

    if want_flowers:
        w = float(rng.uniform(0.3, 0.55))

        def propose_flowers() -> tuple[Box, SceneObject]:
            x = float(rng.uniform(w / 2, 1 - w / 2))
            y = float(rng.uniform(0.86, 0.95))
            return (x - w / 2, y - 0.06, x + w / 2, y + 0.03), SceneObject("flowers", x, y, 0.08, (0, 0, 0), width=w)

        flowers = layout.place(propose_flowers)
        if flowers is not None:
            objects.append(flowers)

    return Scene(
        sky=sky,
        ground=ground,
        tone=tone,
        horizon=horizon,
        palette=palette,
        objects=tuple(objects),
        stars=stars,
        detail_seed=int(rng.integers(2**31)),
    )
