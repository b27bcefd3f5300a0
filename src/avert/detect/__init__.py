"""A concept detector for world images: which of `avert.world.CONCEPTS` an image shows.

`ConceptDetector.load()` loads the small CNN shipped with avert (`detector.safetensors` and
`detector.json` in this folder); `predict(images)` gives bool [N, len(CONCEPTS)].
`avert.detect.pixelstats` checks tone grades from pixel statistics alone, and
`python -m avert.detect.train --out src/avert/detect` retrains and rewrites both files.
"""

from avert.detect.detector import ConceptDetector, save_detector, to_batch
from avert.detect.model import ConceptNet

__all__ = ["ConceptDetector", "ConceptNet", "save_detector", "to_batch"]
