"""What both evaluations share: settings, rendering fixed seeds in batches, and reading images with the detector.

Images of one prompt and negative are rendered with seeds s .. s+n-1 (s = `Settings.first_seed`, default 0)
through the ordinary pipeline (`avert.pipeline.generate.generate`, image i of a batch uses seed + i), so every
number here can be checked by re-making any single image with `avert generate --seed S`.
"""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date

import numpy as np

from avert.evaluation.speckle import is_speckled, world_threshold
from avert.schema import PARAMS_BY_NAME

SKY_CONCEPTS = ("day sky", "sunset", "night", "cloudy sky")
GROUND_CONCEPTS = ("grass", "sand", "snow", "sea")
DEFAULT_CFG = float(PARAMS_BY_NAME["cfg_scale"].default)
DEFAULT_SAMPLER = str(PARAMS_BY_NAME["sampler"].default)
DEFAULT_STEPS = 20
MAX_SEEDS = 1024


@dataclass(frozen=True)
class Settings:
    """Sampling settings of an evaluation; `None` means the request's default (cfg 7, Euler a)."""

    steps: int = DEFAULT_STEPS
    cfg_scale: float | None = None
    sampler: str | None = None
    batch_size: int = 16
    first_seed: int = 0  # seeds first_seed .. first_seed + n - 1 (a later range pools with an earlier run)

    @property
    def cfg(self) -> float:
        return DEFAULT_CFG if self.cfg_scale is None else float(self.cfg_scale)

    @property
    def sampler_name(self) -> str:
        return self.sampler or DEFAULT_SAMPLER

    def validate(self, seeds: int) -> None:
        """Raise `ValidationError` (every bad field) for settings the pipeline would refuse, `ValueError` for a
        first seed out of range."""
        from avert.schema import SEED_MAX
        from avert.validation import validate

        first = self.first_seed
        if isinstance(first, bool) or not isinstance(first, int) or not 0 <= first <= SEED_MAX - seeds + 1:
            raise ValueError(f"first_seed: {first!r} is not allowed; must be an integer from 0 to "
                             f"{SEED_MAX - seeds + 1} (the last seed, first_seed + seeds - 1, is at most {SEED_MAX})")
        validate(self.request("", "", first, min(self.batch_size, seeds)))

    def request(self, prompt: str, negative: str, seed: int, batch: int, options: tuple = ()):
        """The request for seeds seed .. seed + batch - 1; `options` are further request fields (a method),
        plus `negative_window` (start, end): the negative acts only in that fraction of the run. The guidance
        is plain CFG unless `options` name another, whatever the model's default (a method's label says what
        it measures)."""
        from avert.request import GenerationRequest, Negative

        fields = dict(options)
        window = fields.pop("negative_window", None)
        if window is not None and negative:
            fields.update(negative_prompt="", negatives=(Negative(negative, 1.0, *window),))
            negative = ""
        return GenerationRequest(prompt, negative, seed=seed, steps=self.steps, cfg_scale=self.cfg,
                                 sampler=self.sampler_name, batch_size=batch, guidance="cfg").replace(**fields)


def check_seeds(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_SEEDS:
        raise ValueError(f"seeds: {n!r} is not allowed; must be an integer from 1 to {MAX_SEEDS}")
    return n


@dataclass(frozen=True)
class Reading:
    """What the detector and the speckle check say about a set of images (one row per image)."""

    present: np.ndarray  # bool [N, len(CONCEPTS)]
    speckled: np.ndarray  # bool [N]
    well_formed: np.ndarray  # bool [N]: a sky and a ground detected, and not speckled

    def rate(self, concept: str) -> float:
        from avert.world import CONCEPT_INDEX

        return float(self.present[:, CONCEPT_INDEX[concept]].mean())

    def seeds_with(self, concept: str, first_seed: int = 0) -> tuple[int, ...]:
        """The seeds (row index + first_seed) of the images with the concept."""
        from avert.world import CONCEPT_INDEX

        return tuple(first_seed + int(i) for i in np.flatnonzero(self.present[:, CONCEPT_INDEX[concept]]))

    def mean_rate(self, concepts: Iterable[str]) -> float:
        concepts = tuple(concepts)
        return float(np.mean([self.rate(c) for c in concepts])) if concepts else float(self.well_formed.mean())


def read_images(images: np.ndarray, detector) -> Reading:
    """Detector predictions, speckle flags (world 99th percentile) and well-formedness of uint8 [N, H, W, 3]."""
    present = np.asarray(detector.predict(images), dtype=bool)
    return reading_from(present, is_speckled(images, world_threshold(images.shape[1])))


def reading_from(present: np.ndarray, speckled: np.ndarray) -> Reading:
    """A `Reading` from detector predictions bool [N, len(CONCEPTS)] and speckle flags bool [N]: an image is
    well-formed when some sky and some ground are detected and it is not speckled."""
    from avert.world import CONCEPT_INDEX

    present, speckled = np.asarray(present, dtype=bool), np.asarray(speckled, dtype=bool)
    if present.ndim != 2 or speckled.shape != (present.shape[0],):
        raise ValueError(f"present must be [N, concepts] and speckled [N]; got {present.shape}, {speckled.shape}")
    sky = present[:, [CONCEPT_INDEX[c] for c in SKY_CONCEPTS]].any(axis=1)
    ground = present[:, [CONCEPT_INDEX[c] for c in GROUND_CONCEPTS]].any(axis=1)
    return Reading(present, speckled, sky & ground & ~speckled)


class Renderer:
    """Renders (prompt, negative) with seeds s .. s+n-1 (s = settings.first_seed) in batches, each distinct pair
    once (cached)."""

    def __init__(self, components, settings: Settings, runtime=None, progress: bool = True, total: int = 0,
                 desc: str = "Rendering"):
        from avert.pipeline.runtime import Runtime

        self.components = components
        self.settings = settings
        self.runtime = runtime or Runtime()
        self.cache: dict[tuple[str, str, int, tuple], np.ndarray] = {}
        self.cost: dict[tuple[str, str, int, tuple], tuple[float, float]] = {}  # UNet evals, seconds per image
        self.warnings: list[str] = []
        self.bar = None
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="img", file=sys.stderr, leave=False)

    def images(self, prompt: str, negative: str, n: int, options: tuple = ()) -> np.ndarray:
        """uint8 [n, H, W, 3] for seeds s .. s+n-1; `options`: further request fields (see `Settings.request`)."""
        key = (prompt, negative, n, tuple(options))
        if key not in self.cache:
            self.cache[key] = self._render(key)
        return self.cache[key]

    def cost_per_image(self, prompt: str, negative: str, n: int, options: tuple = ()) -> tuple[float, float]:
        """(UNet evaluations, seconds) per image of a rendered key."""
        return self.cost[(prompt, negative, n, tuple(options))]

    def _render(self, key: tuple) -> np.ndarray:
        from avert.pipeline.generate import generate

        prompt, negative, n, options = key
        chunks, evals, timer = [], 0, Timer()
        if self.bar is not None:
            self.bar.set_postfix_str(f"{prompt!r} -n {negative!r}" if negative else repr(prompt))
        for start in range(0, n, self.settings.batch_size):
            batch = min(self.settings.batch_size, n - start)
            seed = self.settings.first_seed + start
            result = generate(self.settings.request(prompt, negative, seed, batch, options), self.components,
                              runtime=self.runtime)
            self.warnings.extend(w for w in result.warnings if w not in self.warnings)
            chunks.extend(np.asarray(g.image.convert("RGB")) for g in result.images)
            evals += result.branch_evaluations * batch
            if self.bar is not None:
                self.bar.update(batch)
        self.cost[key] = (evals / n, timer.lap() / n)
        return np.stack(chunks)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def load_detector(detector=None):
    """The detector given, else the one shipped with avert."""
    if detector is not None:
        return detector
    from avert.detect.detector import ConceptDetector

    return ConceptDetector.load()


def load_components(model):
    """Loaded components for a path / None (the embedded default) / already loaded components."""
    from avert import api

    return api.load(model)


class Timer:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        elapsed, self.start = now - self.start, now
        return elapsed


def machine() -> str:
    """CPU model, architecture and torch threads, for the docs header."""
    import torch

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    threads = torch.get_num_threads()
    return (f"{cpu or 'CPU'} ({platform.machine()}), CPU flags: {cpu_flags()}, {threads} torch thread(s), "
            f"torch {torch.__version__}")


SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16")  # what decides fp32 and bf16 speed on CPUs


def cpu_flags() -> str:
    """The CPU flags that matter for speed here (AVX-512 bf16 or not: bf16 5x fp32, or emulated far slower)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return "unknown"
    return " ".join(flag for flag in SPEED_FLAGS if flag in flags) or "none of " + ", ".join(SPEED_FLAGS)


@dataclass(frozen=True)
class RunInfo:
    """The header of a docs page: when, where, which model and settings."""

    day: str
    machine: str
    model_name: str
    model_hash: str
    n_seeds: int
    settings: Settings
    device: str

    @classmethod
    def collect(cls, components, n_seeds: int, settings: Settings, runtime=None) -> RunInfo:
        device = getattr(runtime, "device", "cpu") if runtime is not None else "cpu"
        precision = getattr(runtime, "precision", "fp32") if runtime is not None else "fp32"
        return cls(date.today().isoformat(), machine(), _shown_path(components.source.path), components.source.hash,
                   n_seeds, settings, f"{device}, {precision}")

    def line(self, command: str) -> str:
        s = self.settings
        first = s.first_seed
        return (f"Measured {self.day} by `{command}` on {self.machine} ({self.device}); model `{self.model_name}` "
                f"(hash `{self.model_hash}`); seeds {first}..{first + self.n_seeds - 1} ({self.n_seeds} images per "
                "prompt), "
                f"{s.steps} steps, CFG scale {s.cfg:g}, sampler {s.sampler_name}, batch {s.batch_size}; "
                "read by the shipped `ConceptDetector`.")


def _shown_path(path) -> str:
    """A model path relative to the working directory when it lies below it (no home folders in docs)."""
    from pathlib import Path

    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return Path(path).name


def fmt(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"
