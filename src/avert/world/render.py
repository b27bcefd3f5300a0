"""Draw a `Scene` as a small RGB image.

The scene is drawn with Pillow at `SUPERSAMPLE` times the target size, reduced with an
antialiasing filter, and then graded with the scene's tone (a global colour transform,
applied last, on the final pixels). Rendering depends only on the scene: the same scene
always gives the same pixels.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable

import numpy as np
from PIL import Image, ImageDraw

from avert.world.attributes import OBJECT_KINDS, RGB, Scene, SceneObject

SUPERSAMPLE = 4
RESAMPLE = Image.Resampling.LANCZOS

# Light falling on the ground and on objects, per sky (multiplies RGB). Objects are lit
# less dimly than the ground at night so that they keep their colour and stand out.
GROUND_LIGHT: dict[str, tuple[float, float, float]] = {
    "day": (1.0, 1.0, 1.0),
    "sunset": (1.0, 0.86, 0.78),
    "night": (0.22, 0.27, 0.45),
    "cloudy": (0.88, 0.88, 0.9),
}
LIGHT: dict[str, tuple[float, float, float]] = {
    "day": (1.0, 1.0, 1.0),
    "sunset": (1.0, 0.88, 0.8),
    "night": (0.92, 0.93, 0.98),
    "cloudy": (0.9, 0.9, 0.92),
}
# Bright petals: they must stand out from grass in luminance too (grey and tinted grades).
FLOWER_RGB: tuple[RGB, ...] = (
    (250, 85, 95),
    (252, 222, 50),
    (250, 150, 205),
    (205, 150, 245),
    (252, 252, 252),
    (252, 155, 45),
)

# Tone grades: each maps luminance onto a ramp from a shadow to a highlight colour and
# blends that with the original; black and white and sepia replace the colours outright.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_SEPIA = np.array(
    [[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]],
    dtype=np.float32,
)
_TINTS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float], float]] = {
    # shadow, highlight (0-1), share of the tinted image
    "green tones": ((0.0, 0.14, 0.02), (0.62, 1.0, 0.5), 0.85),
    "warm tones": ((0.2, 0.05, 0.0), (1.0, 0.72, 0.36), 0.85),
    "blue tones": ((0.0, 0.04, 0.2), (0.55, 0.75, 1.0), 0.85),
}


def apply_tone(image: np.ndarray, tone: str) -> np.ndarray:
    """Grade an HxWx3 uint8 image with a tone (see `attributes.TONES`); a new array."""
    if tone == "none":
        return image.copy()
    x = image.astype(np.float32) * (1.0 / 255.0)
    if tone == "black and white":
        y = x @ _LUMA
        out = np.repeat(y[..., None], 3, axis=-1)
    elif tone == "sepia":
        out = x @ _SEPIA.T
    elif tone in _TINTS:
        shadow, light, share = _TINTS[tone]
        y = (x @ _LUMA)[..., None]
        ramp = np.asarray(shadow, np.float32) + y * (np.asarray(light, np.float32) - np.asarray(shadow, np.float32))
        out = share * ramp + (1.0 - share) * x
    else:
        raise ValueError(f"unknown tone {tone!r}")
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


def _lit(c: RGB, light: tuple[float, float, float]) -> RGB:
    return (int(c[0] * light[0]), int(c[1] * light[1]), int(c[2] * light[2]))


def _scale(c: RGB, f: float) -> RGB:
    return (min(255, int(c[0] * f)), min(255, int(c[1] * f)), min(255, int(c[2] * f)))


def _mix(a: RGB, b: RGB, t: float) -> RGB:
    return (
        int(a[0] + (b[0] - a[0]) * t),
        int(a[1] + (b[1] - a[1]) * t),
        int(a[2] + (b[2] - a[2]) * t),
    )


class _Painter:
    def __init__(self, scene: Scene, size: int):
        self.scene = scene
        self.S = S = size * SUPERSAMPLE
        self.light = LIGHT[scene.sky]
        self.rng = np.random.default_rng(scene.detail_seed)
        self.hz = hz = int(round(scene.horizon * S))
        self.line = max(1, S // 64)  # outline width: half a pixel of the final image

        p = scene.palette
        rows = np.empty((S, 3), dtype=np.float32)
        t = np.linspace(0.0, 1.0, hz, dtype=np.float32)[:, None]
        rows[:hz] = np.asarray(p.sky_top, np.float32) + t * (
            np.asarray(p.sky_bottom, np.float32) - np.asarray(p.sky_top, np.float32)
        )
        self.ground_light = gl = GROUND_LIGHT[scene.sky]
        far = np.asarray(_lit(p.ground_far, gl), np.float32)
        near = np.asarray(_lit(p.ground_near, gl), np.float32)
        t = np.linspace(0.0, 1.0, S - hz, dtype=np.float32)[:, None] ** 0.7
        rows[hz:] = far + t * (near - far)
        self.rows = rows
        bg = np.ascontiguousarray(np.broadcast_to(rows.astype(np.uint8)[:, None, :], (S, S, 3)))
        if scene.stars:
            self._stars(bg)
        self.img = Image.fromarray(bg, "RGB")
        self.draw = ImageDraw.Draw(self.img)

    def sky_at(self, y: float) -> RGB:
        i = min(max(int(y), 0), self.hz - 1)
        r = self.rows[i]
        return (int(r[0]), int(r[1]), int(r[2]))

    # --- background details ---------------------------------------------------------

    def _stars(self, bg: np.ndarray) -> None:
        S, rng = self.S, self.rng
        n = int(rng.integers(14, 30))
        k = SUPERSAMPLE
        ys = rng.integers(0, max(1, self.hz - 3 * k), n)
        xs = rng.integers(0, S - k, n)
        # Snap to the final pixel grid so that each star stays a crisp bright pixel.
        ys, xs = ys // k * k, xs // k * k
        levels = rng.integers(200, 256, n)
        for y, x, v in zip(ys, xs, levels):
            bg[y : y + k, x : x + k] = (v, v, min(255, v + 10))

    def waves(self) -> None:
        S, rng, d = self.S, self.rng, self.draw
        base = self.scene.palette.ground_far
        hi = _lit(_mix(base, (255, 255, 255), 0.45), self.ground_light)
        lo = _lit(_scale(base, 0.7), self.ground_light)
        for i in range(int(rng.integers(14, 24))):
            t = float(rng.random())
            y = self.hz + 3 + t * (S - self.hz - 4)
            x = float(rng.uniform(0, S))
            half = (4 + 10 * t) * S / 128
            d.line((x - half, y, x + half, y), fill=hi if i % 3 else lo, width=self.line + (t > 0.5))

    def ground_texture(self) -> None:
        S, rng, d = self.S, self.rng, self.draw
        g = self.scene.ground
        if g == "sea":
            self.waves()
            return
        base = self.scene.palette.ground_near
        if g == "grass":
            c = _lit(_scale(base, 0.78), self.ground_light)
            for _ in range(int(rng.integers(10, 20))):
                t = float(rng.random())
                y = self.hz + 4 + t * (S - self.hz - 4)
                x = float(rng.uniform(0, S))
                h = (2 + 4 * t) * S / 128
                d.line((x, y, x - h * 0.4, y - h), fill=c, width=self.line)
                d.line((x, y, x + h * 0.4, y - h), fill=c, width=self.line)
        else:  # sand dunes / snow drifts: a few soft curves
            c = _lit(_scale(base, 0.9 if g == "sand" else 0.93), self.ground_light)
            for _ in range(int(rng.integers(2, 4))):
                y = float(rng.uniform(self.hz + 6, S))
                x = float(rng.uniform(-S * 0.3, S * 0.8))
                w = float(rng.uniform(0.4, 0.8)) * S
                d.arc((x, y - 0.06 * S, x + w, y + 0.06 * S), 200, 340, fill=c, width=self.line * 2)

    # --- objects ----------------------------------------------------------------------

    def sun(self, o: SceneObject) -> None:
        S, d = self.S, self.draw
        X, Y, r = o.x * S, o.y * S, o.size * S / 2
        if o.variant == 1:  # rays
            for k in range(12):
                a = 2 * math.pi * k / 12
                c, s = math.cos(a), math.sin(a)
                d.line(
                    (X + c * r * 1.25, Y + s * r * 1.25, X + c * r * 1.6, Y + s * r * 1.6),
                    fill=o.color,
                    width=self.line * 2,
                )
        else:  # a soft glow
            glow = _mix(o.color, self.sky_at(Y), 0.55)
            d.ellipse((X - r * 1.25, Y - r * 1.25, X + r * 1.25, Y + r * 1.25), fill=glow)
        # A darker orange rim keeps the disc visible in grey and tinted grades.
        rim = _mix(o.color, (190, 95, 10), 0.7)
        d.ellipse((X - r, Y - r, X + r, Y + r), fill=o.color, outline=rim, width=self.line * 2)

    def moon(self, o: SceneObject) -> None:
        S, d = self.S, self.draw
        X, Y, r = o.x * S, o.y * S, o.size * S / 2
        d.ellipse((X - r, Y - r, X + r, Y + r), fill=o.color)
        if o.variant == 1:  # crescent: cut by a disc of sky
            cx, cy, cr = X + 0.45 * r, Y - 0.2 * r, 0.92 * r
            d.ellipse((cx - cr, cy - cr, cx + cr, cy + cr), fill=self.sky_at(Y))
        else:  # full moon with a few craters
            crater = _scale(o.color, 0.8)
            for dx, dy, rr in ((-0.3, -0.25, 0.22), (0.3, 0.2, 0.17), (-0.1, 0.4, 0.12)):
                cx, cy, cr = X + dx * r, Y + dy * r, rr * r
                d.ellipse((cx - cr, cy - cr, cx + cr, cy + cr), fill=crater)

    def cloud(self, o: SceneObject) -> None:
        S, d, rng = self.S, self.draw, self.rng
        W = o.width * S
        X, Y = o.x * S, o.y * S
        puffs = [(X, Y + 0.02 * W, 0.5 * W, 0.13 * W)]  # flat base (cx, cy, rx, ry)
        n = int(rng.integers(2, 4))
        for i in range(n):
            cx = X + (i - (n - 1) / 2) * W * 0.26 + float(rng.uniform(-0.04, 0.04)) * W
            rr = float(rng.uniform(0.16, 0.24)) * W
            puffs.append((cx, Y - 0.06 * W, rr, rr * 0.9))
        shadow = _scale(o.color, 0.78)
        off = 0.04 * W
        for cx, cy, rx, ry in puffs:
            d.ellipse((cx - rx, cy - ry + off, cx + rx, cy + ry + off), fill=shadow)
        for cx, cy, rx, ry in puffs:
            d.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=o.color)

    def mountain(self, o: SceneObject) -> None:
        S, d = self.S, self.draw
        X, B, h, W = o.x * S, o.y * S + 1, o.size * S, o.width * S
        top = B - h
        c = _lit(o.color, self.light)
        d.polygon([(X - W / 2, B), (X, top), (X + W / 2, B)], fill=c)
        d.polygon([(X, top), (X + W / 2, B), (X + 0.12 * W, B)], fill=_scale(c, 0.8))
        if o.variant == 1:  # snow cap
            f = 0.32
            snow = _lit((240, 242, 248), self.light)
            yb = top + f * h
            hw = f * W / 2
            d.polygon(
                [
                    (X - hw, yb),
                    (X, top),
                    (X + hw, yb),
                    (X + hw * 0.4, yb - 0.08 * h),
                    (X, yb + 0.02 * h),
                    (X - hw * 0.45, yb - 0.1 * h),
                ],
                fill=snow,
            )

    def house(self, o: SceneObject) -> None:
        S, d, lw = self.S, self.draw, self.line
        X, B, h, W = o.x * S, o.y * S, o.size * S, o.width * S
        wall, roof = _lit(o.color, self.light), _lit(o.color2, self.light)
        edge = _scale(roof, 0.55)
        wall_top = B - 0.58 * h
        d.rectangle((X - W / 2, wall_top, X + W / 2, B), fill=wall, outline=edge, width=lw)
        over = 0.1 * W
        d.polygon(
            [(X - W / 2 - over, wall_top + 1), (X, B - h), (X + W / 2 + over, wall_top + 1)], fill=roof, outline=edge
        )
        door_w, door_h = 0.22 * W, 0.34 * h
        dx = X - 0.25 * W
        d.rectangle((dx - door_w / 2, B - door_h, dx + door_w / 2, B), fill=_lit((75, 45, 30), self.light))
        night = self.scene.sky == "night"
        glass = (255, 215, 100) if night else _lit((175, 215, 240), self.light)
        ws = 0.2 * W
        wx, wy = X + 0.22 * W, B - 0.36 * h
        d.rectangle((wx - ws / 2, wy - ws / 2, wx + ws / 2, wy + ws / 2), fill=glass, outline=edge, width=lw)

    def tree(self, o: SceneObject) -> None:
        S, d, lw = self.S, self.draw, self.line
        X, B, h, W = o.x * S, o.y * S, o.size * S, o.width * S
        crown, trunk = _lit(o.color, self.light), _lit(o.color2, self.light)
        edge = _scale(crown, 0.6)
        if o.variant == 0:  # round crown
            tw = max(0.18 * W, 2.0 * SUPERSAMPLE * 0.5)
            d.rectangle((X - tw / 2, B - 0.45 * h, X + tw / 2, B), fill=trunk)
            d.ellipse((X - W / 2, B - h, X + W / 2, B - 0.3 * h), fill=crown, outline=edge, width=lw)
            hl = _scale(crown, 1.25)
            d.ellipse((X - 0.28 * W, B - 0.9 * h, X + 0.02 * W, B - 0.66 * h), fill=hl)
        else:  # pine: stacked triangles
            tw = max(0.16 * W, 2.0 * SUPERSAMPLE * 0.5)
            d.rectangle((X - tw / 2, B - 0.18 * h, X + tw / 2, B), fill=trunk)
            for i in range(3):
                apex = B - h + i * 0.22 * h
                base = apex + 0.42 * h
                hw = W * (0.3 + 0.1 * i)
                d.polygon([(X - hw, base), (X, apex), (X + hw, base)], fill=crown, outline=edge)

    def boat(self, o: SceneObject) -> None:
        S, d, lw = self.S, self.draw, self.line
        X, B, h, W = o.x * S, o.y * S, o.size * S, o.width * S
        hull, sail = _lit(o.color, self.light), _lit(o.color2, self.light)
        edge = _scale(hull, 0.5)
        deck = B - 0.2 * h
        d.polygon(
            [(X - W / 2, deck), (X + W / 2, deck), (X + 0.34 * W, B + 0.03 * h), (X - 0.34 * W, B + 0.03 * h)],
            fill=hull,
            outline=edge,
        )
        mast = _lit((70, 50, 35), self.light)
        d.line((X, deck, X, B - h), fill=mast, width=lw + 1)
        sail_edge = _scale(sail, 0.7)
        d.polygon(
            [(X + 0.04 * W, B - 0.95 * h), (X + 0.04 * W, deck - 0.05 * h), (X + 0.44 * W, deck - 0.05 * h)],
            fill=sail,
            outline=sail_edge,
        )
        d.polygon(
            [(X - 0.04 * W, B - 0.8 * h), (X - 0.04 * W, deck - 0.05 * h), (X - 0.36 * W, deck - 0.05 * h)],
            fill=sail,
            outline=sail_edge,
        )

    def flowers(self, o: SceneObject) -> None:
        S, d, rng = self.S, self.draw, self.rng
        X, Y, W = o.x * S, o.y * S, o.width * S
        n = max(5, int(o.width * 24))
        p = 0.024 * S  # petal radius
        stem = _lit((40, 110, 35), self.light)
        centre_y = _lit((250, 210, 40), self.light)
        centre_b = _lit((120, 70, 30), self.light)
        palette = [FLOWER_RGB[i] for i in rng.choice(len(FLOWER_RGB), size=int(rng.integers(1, 4)), replace=False)]
        spots = sorted(
            (float(rng.uniform(X - W / 2, X + W / 2)), float(rng.uniform(Y - 0.06 * S, Y + 0.02 * S))) for _ in range(n)
        )
        spots.sort(key=lambda s: s[1])
        for fx, fy in spots:
            col = palette[int(rng.integers(len(palette)))]
            petal = _lit(col, self.light)
            d.line((fx, fy, fx, fy + 2.5 * p), fill=stem, width=self.line)
            for k in range(5):
                a = 2 * math.pi * k / 5 + 0.3
                cx, cy = fx + math.cos(a) * p * 1.05, fy + math.sin(a) * p * 1.05
                d.ellipse((cx - p, cy - p, cx + p, cy + p), fill=petal)
            cr = 0.75 * p
            d.ellipse((fx - cr, fy - cr, fx + cr, fy + cr), fill=centre_b if col == FLOWER_RGB[1] else centre_y)

    def hand(self, o: SceneObject) -> None:
        S, d = self.S, self.draw
        tf = _hand_transform(o, S)
        H = o.size * S
        skin = _lit(o.color, tuple(0.5 + 0.5 * v for v in self.light))  # type: ignore[arg-type]
        edge = _scale(skin, 0.45)
        e = 0.028  # outline, in hand heights

        def capsule(bx: float, by: float, ang: float, length: float, w: float, grow: float) -> tuple[list, tuple]:
            ang = math.radians(ang)
            dx, dy = math.sin(ang), math.cos(ang)
            nx, ny = dy, -dx
            half = w / 2 + grow
            tx, ty = bx + dx * (length - w / 2), by + dy * (length - w / 2)
            bx2, by2 = bx - dx * 0.06, by - dy * 0.06  # root reaches into the palm
            poly = [
                tf(bx2 + nx * half, by2 + ny * half),
                tf(tx + nx * half, ty + ny * half),
                tf(tx - nx * half, ty - ny * half),
                tf(bx2 - nx * half, by2 - ny * half),
            ]
            cx, cy = tf(tx, ty)
            r = half * H
            return poly, (cx - r, cy - r, cx + r, cy + r)

        palm = [tf(px, py) for px, py in HAND_PALM]
        # Outline pass (a dilated silhouette in a darker skin tone), then the fill pass;
        # the palm goes last so that it covers the finger roots.
        d.line(palm + palm[:1], fill=edge, width=max(1, int(2 * e * H)), joint="curve")
        for grow, colour in ((e, edge), (0.0, skin)):
            for f in HAND_FINGERS:
                poly, box = capsule(*f, grow)
                d.polygon(poly, fill=colour)
                d.ellipse(box, fill=colour)
        d.polygon(palm, fill=skin)


# The hand, in units of its height: wrist at the origin, y up, thumb on +x (variant 0).
HAND_PALM = (
    (-0.17, -0.35),
    (0.17, -0.35),
    (0.17, 0.0),
    (0.205, 0.16),
    (0.215, 0.47),
    (-0.215, 0.47),
    (-0.205, 0.16),
    (-0.17, 0.0),
)
HAND_FINGERS = (  # base x, base y, angle (deg toward +x), length, width
    (0.158, 0.45, 10.0, 0.34, 0.095),  # index
    (0.053, 0.46, 3.0, 0.39, 0.097),  # middle
    (-0.053, 0.455, -4.0, 0.355, 0.094),  # ring
    (-0.158, 0.44, -12.0, 0.28, 0.085),  # little
    (0.175, 0.13, 52.0, 0.3, 0.115),  # thumb
)


def _hand_transform(o: SceneObject, scale: float):  # noqa: ANN202
    """Maps hand units to image coordinates (image fractions times `scale`)."""
    H, X, Y = o.size * scale, o.x * scale, o.y * scale
    sign = -1.0 if o.variant == 1 else 1.0
    a = math.radians(o.angle)
    ca, sa = math.cos(a), math.sin(a)

    def tf(lx: float, ly: float) -> tuple[float, float]:
        lx *= sign
        return X + (lx * ca - ly * sa) * H, Y - (lx * sa + ly * ca) * H

    return tf


def hand_box(o: SceneObject) -> tuple[float, float, float, float]:
    """Bounding box (x0, y0, x1, y1, image fractions, unclipped) of a hand as drawn."""
    tf = _hand_transform(o, 1.0)
    pts = [tf(px, py) for px, py in HAND_PALM if py >= 0]
    r = 0.07 * o.size  # finger half width plus outline
    for bx, by, ang, length, w in HAND_FINGERS:
        t = math.radians(ang)
        pts.append(tf(bx + math.sin(t) * (length - w / 2), by + math.cos(t) * (length - w / 2)))
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    return min(xs) - r, min(ys) - r, max(xs) + r, max(ys) + r


def render_pil(scene: Scene, size: int = 32) -> Image.Image:
    """The scene as a `size` x `size` RGB Pillow image (tone grade applied)."""
    return Image.fromarray(render(scene, size), "RGB")


def render(scene: Scene, size: int = 32) -> np.ndarray:
    """The scene as a `size` x `size` x 3 uint8 array (tone grade applied)."""
    if size < 8:
        raise ValueError(f"size must be at least 8, got {size}")
    p = _Painter(scene, size)
    objs = scene.objects
    for o in sorted((o for o in objs if o.kind == "mountain"), key=lambda o: -o.size):
        p.mountain(o)
    p.ground_texture()
    for o in objs:
        if o.kind == "sun":
            p.sun(o)
        elif o.kind == "moon":
            p.moon(o)
    for o in objs:
        if o.kind == "cloud":
            p.cloud(o)
    standing = sorted((o for o in objs if o.kind in ("house", "tree", "boat")), key=lambda o: o.y)
    for o in standing:
        getattr(p, o.kind)(o)
    for o in objs:
        if o.kind == "flowers":
            p.flowers(o)
    for o in objs:
        if o.kind == "hand":
            p.hand(o)
    small = p.img.resize((size, size), RESAMPLE)
    return apply_tone(np.asarray(small), scene.tone)


def object_mask(scene: Scene, size: int = 32, kinds: Iterable[str] | None = None) -> np.ndarray:
    """Bool [size, size]: the pixels the scene's objects change (only those of `kinds`, when given). Mountains
    stay in the reference (they are painted before the ground texture, which would shift without them), and so
    do the clouds of a cloudy sky (which is not a valid scene without them)."""
    kept = {"mountain", "cloud"} if scene.sky == "cloudy" else {"mountain"}
    removed = set(OBJECT_KINDS if kinds is None else kinds) - kept
    if not any(o.kind in removed for o in scene.objects):
        return np.zeros((size, size), dtype=bool)
    bare = dataclasses.replace(scene, objects=tuple(o for o in scene.objects if o.kind not in removed))
    return (render(scene, size) != render(bare, size)).any(axis=-1)
