"""Does a negative's map (`avert.guidance.attribution`) fall where its concept is? Measured where the world
knows the answer: img2img from a render of a world scene that holds the object, so the generation keeps the
scene's layout and `avert.world.render.object_mask` says which pixels the object drew.

For each scene: the scene's caption as the prompt, the object's name as the only negative, strength 0.3 (the
layout stays), then the share of the map's mass on the object's pixels divided by the share of the image they
cover (1: no preference; 2: twice as dense on the object as the image on average). The same ratio for the pixel
change between the generations with and without the negative says how local the change itself was, and for the
cross-attention of the negative's words (`CrossAttention`, after DAAM) how the second view compares.
(`tools/maps.py` runs it and writes docs/eval/maps.md.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

STRENGTH = 0.3
STEPS = 20


@dataclass(frozen=True)
class MapCase:
    """One scene: the object's name, the prompt, the render and where the object is."""

    kind: str
    prompt: str
    image: np.ndarray
    region: np.ndarray  # bool [H, W]


@dataclass(frozen=True)
class MapReading:
    """A case's result: map and pixel-change concentration on the object (share of mass / share of area)."""

    case: MapCase
    map_ratio: float
    change_ratio: float
    attention_ratio: float  # the same for the cross-attention view (`CrossAttention`)
    map: np.ndarray
    without: Image.Image
    with_: Image.Image


def cases(kind: str, count: int, seed: int = 0, smallest: float = 0.03, largest: float = 0.3) -> list[MapCase]:
    """The first `count` world scenes (drawn from `seed`) holding a `kind` object that covers between `smallest`
    and `largest` of the image, with their captions."""
    from avert.world.captions import caption
    from avert.world.render import object_mask, render
    from avert.world.sample import sample_scene

    rng, found = np.random.default_rng(seed), []
    for _ in range(10_000):
        if len(found) == count:
            break
        scene = sample_scene(rng)
        if not any(o.kind == kind for o in scene.objects):
            continue
        region = object_mask(scene, kinds=[kind])
        if smallest < region.mean() < largest:
            text = caption(scene, np.random.default_rng(len(found)))
            found.append(MapCase(kind, text, render(scene), region))
    return found


def concentration(values: np.ndarray, region: np.ndarray) -> float:
    """(mass of `values` on `region` / total mass) / (area of `region` / image area); values are >= 0."""
    return float(values[region].sum() / values.sum() / region.mean())


def read(case: MapCase, components, method: str, seed: int) -> MapReading:
    """Generate the case without and with its negative (same seed, img2img from its render) and measure."""
    from avert.init_image import InitImage
    from avert.output.maps import resized
    from avert.pipeline.generate import generate
    from avert.request import GenerationRequest

    request = GenerationRequest(case.prompt, seed=seed, steps=STEPS, guidance=method, strength=STRENGTH,
                                init_image=InitImage.from_pil(Image.fromarray(case.image)))
    without = generate(request, components).images[0]
    height, width = case.region.shape
    factor = components.vae_scale_factor
    tokens = len(components.tokenizer(case.kind).input_ids)
    with CrossAttention(components.unet, tokens, (height // factor, width // factor)) as attention:
        made = generate(request.replace(negative_prompt=case.kind), components, maps=True).images[0]
    values, attended = made.maps[0].values, attention.total[0].numpy()
    if values.shape != case.region.shape:  # a latent-space model: the maps to pixel size
        values, attended = (resized(v, width, height) for v in (values, attended))
    change = np.abs(np.asarray(made.image, dtype=float) - np.asarray(without.image, dtype=float)).mean(axis=-1)
    return MapReading(case, concentration(values, case.region), concentration(change, case.region),
                      concentration(attended, case.region), values, without.image, made.image)


class CrossAttention:
    """The second view the maps are compared with: cross-attention attribution of the negative's tokens, after
    DAAM (Tang et al., "What the DAAM: Interpreting Stable Diffusion Using Cross Attention", ACL 2023): at every
    cross-attention layer and evaluation, the attention of the first `rows` rows of the batch (the negative's
    branch: the denoiser puts negatives first) to the negative's word tokens (not the start and end tokens),
    averaged over heads, summed over those tokens, brought to the latent size (bilinear) and summed.

    A context manager: it wraps every cross-attention processor of the UNet for the run and puts the originals
    back after. The image is unchanged (the wrapped processor makes the output; the attention is recomputed for
    the record)."""

    def __init__(self, unet, tokens: int, latent: tuple[int, int], rows: int = 1) -> None:
        import torch

        self.unet, self.tokens, self.latent, self.rows = unet, tokens, latent, rows
        self.total = torch.zeros(rows, *latent)
        self._saved: dict | None = None

    def __enter__(self) -> "CrossAttention":
        self._saved = dict(self.unet.attn_processors)
        self.unet.set_attn_processor({name: (self._wrap(p) if name.endswith("attn2.processor") else p)
                                      for name, p in self._saved.items()})
        return self

    def __exit__(self, *exc) -> None:
        self.unet.set_attn_processor(self._saved)

    def _wrap(self, processor):
        def record(attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kw):
            out = processor(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kw)
            if encoder_hidden_states is not None and hidden_states.ndim == 3:
                self._add(attn, hidden_states[: self.rows], encoder_hidden_states[: self.rows])
            return out
        return record

    def _add(self, attn, hidden, context) -> None:
        import torch.nn.functional as F

        query, key = (attn.head_to_batch_dim(t) for t in (attn.to_q(hidden), attn.to_k(context)))
        probs = attn.get_attention_scores(query, key, None)  # [rows * heads, hw, tokens]
        probs = probs.view(self.rows, attn.heads, *probs.shape[1:]).mean(dim=1)
        words = probs[..., 1: self.tokens - 1].sum(dim=-1)  # [rows, hw]
        side = int(round((words.shape[1] * self.latent[1] / self.latent[0]) ** 0.5))
        plane = words.view(self.rows, 1, words.shape[1] // side, side).float()
        self.total += F.interpolate(plane, size=self.latent, mode="bilinear", align_corners=False)[:, 0]
