"""A procedural world with known ground truth, for training and measuring negative prompts.

`sample_scene` draws a random `Scene` (sky, ground, objects, tone grade), `render` draws
it as a small RGB image, `caption` describes a random true subset of it, and
`make_dataset` puts many of them together reproducibly. `CONCEPTS` lists the concept
names used for measuring; `Scene.concepts()` gives those present in a scene and
`mentioned_concepts(text)` those a text names.
"""

from avert.world.attributes import (
    CONCEPT_INDEX,
    CONCEPTS,
    GROUNDS,
    HOUSE_COLORS,
    OBJECT_KINDS,
    SKIES,
    TONES,
    Palette,
    Scene,
    SceneObject,
)
from avert.world.captions import caption, caption_with_concepts, captions, mentioned_concepts
from avert.world.dataset import WorldDataset, concept_matrix, load_npz, make_dataset, save_npz
from avert.world.render import apply_tone, render, render_pil
from avert.world.sample import sample_scene

__all__ = [
    "CONCEPTS",
    "CONCEPT_INDEX",
    "GROUNDS",
    "HOUSE_COLORS",
    "OBJECT_KINDS",
    "SKIES",
    "TONES",
    "Palette",
    "Scene",
    "SceneObject",
    "WorldDataset",
    "apply_tone",
    "caption",
    "caption_with_concepts",
    "captions",
    "concept_matrix",
    "load_npz",
    "make_dataset",
    "mentioned_concepts",
    "render",
    "render_pil",
    "sample_scene",
    "save_npz",
]
