"""LoRA files, applied for one run through diffusers and peft, and A1111's `<lora:NAME:WEIGHT>` in the prompt.

A1111 writes a LoRA into the prompt as `<lora:NAME:WEIGHT>` (WEIGHT 1 when left out); the tag is taken out of the
text before it is encoded and stays in the prompt the infotext and record keep, so `--from` and A1111 read it back.
NAME is a `.safetensors` file of the LoRA library (`--lora-dir`, by file stem, or a file given with `--lora`);
nothing else is read (no pickles), and a server takes names only, never paths.

A LoRA is loaded by diffusers' own loader (`load_lora_weights`, which reads the kohya / A1111 layout and diffusers'
own, and injects peft layers into the UNet and the text encoder), weighted by `set_adapters`, and unloaded when the
run ends, on an error too, so one request's LoRA never reaches the next. The layers stay unmerged: the image then
equals diffusers' pipeline with the same LoRA loaded (`tests/test_lora.py`). Each LoRA costs its low-rank products
in every layer it touches; merging would save that per step but costs a weight copy per layer per run.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from avert.errors import AvertError, FieldProblem, ValidationError

TAG = re.compile(r"<lora:([^:<>]+?)(?::(-?\d+(?:\.\d+)?))?>")
MAX_LORAS = 8  # LoRAs one request may apply
WEIGHT_RANGE = (-4.0, 4.0)
ACTIVE = "_avert_loras"  # set on a text encoder while LoRAs are applied: the text encodings' cache keys read it


@dataclass(frozen=True)
class LoraUse:
    name: str
    weight: float


@dataclass(frozen=True)
class LoraLibrary:
    """LoRA files by name (file stem); only `.safetensors`."""

    files: Mapping[str, Path] = field(default_factory=dict)
    folder: Path | None = None

    def with_files(self, paths) -> "LoraLibrary":
        """This library and the files given (a file's stem names it)."""
        added = {}
        for path in map(Path, paths):
            if path.suffix != ".safetensors" or not path.is_file():
                raise AvertError(f"lora: {str(path)!r} must be a .safetensors file")
            added[path.stem] = path
        return LoraLibrary({**self.files, **added}, self.folder)


def load_loras(folder: Path | str | None) -> LoraLibrary:
    """Every `*.safetensors` in `folder` (not recursive), by file stem; None: none."""
    if folder is None:
        return LoraLibrary()
    folder = Path(folder)
    if not folder.is_dir():
        raise AvertError(f"lora-dir: {str(folder)!r} does not exist or is not a folder")
    return LoraLibrary({p.stem: p for p in sorted(folder.glob("*.safetensors")) if p.is_file()}, folder)


def lora_uses(text: str) -> tuple[LoraUse, ...]:
    """The `<lora:NAME:WEIGHT>` tags of a text, in order."""
    return tuple(LoraUse(m.group(1).strip(), float(m.group(2)) if m.group(2) else 1.0) for m in TAG.finditer(text))


def without_tags(text: str) -> str:
    """The text the text encoder reads: the tags taken out (as A1111 does), nothing else changed."""
    return TAG.sub("", text) if "<lora:" in text else text


def lora_problems(prompt: str, negatives: list[tuple[str, str]], library: LoraLibrary) -> list[FieldProblem]:
    """Tags naming no file of the library, weights out of range, too many; a tag in a negative (a LoRA changes the
    model, so it belongs in the prompt)."""
    problems = [FieldProblem(name, text[:100], "must not hold <lora:...> tags: a LoRA changes the model for the "
                             "whole image; write it in the prompt") for name, text in negatives if TAG.search(text)]
    uses = lora_uses(prompt)
    if len(uses) > MAX_LORAS:
        problems.append(FieldProblem("prompt", f"{len(uses)} <lora:...> tags", f"must have at most {MAX_LORAS}"))
    for use in uses:
        if use.name not in library.files:
            known = ", ".join(sorted(library.files)) or "none (give --lora FILE or --lora-dir DIR)"
            problems.append(FieldProblem("prompt", f"<lora:{use.name}>", f"must name a LoRA file; known: {known}"))
        elif not WEIGHT_RANGE[0] <= use.weight <= WEIGHT_RANGE[1]:
            problems.append(FieldProblem("prompt", f"<lora:{use.name}:{use.weight:g}>",
                                         f"must have a weight from {WEIGHT_RANGE[0]:g} to {WEIGHT_RANGE[1]:g}"))
    return problems


def file_hash(path: Path) -> str:
    """The first 12 hex digits of the file's SHA-256 (what the infotext's `Lora hashes` holds)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def _pipeline(components):
    """A diffusers pipeline over the components' own modules (no copy), for its LoRA loader."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    scheduler = DDIMScheduler()  # the pipelines' constructors want one; the loader never reads it
    if components.is_sdxl:
        return StableDiffusionXLPipeline(components.vae, components.text_encoder, components.text_encoder_2,
                                         components.tokenizer, components.tokenizer_2, components.unet, scheduler)
    return StableDiffusionPipeline(components.vae, components.text_encoder, components.tokenizer, components.unet,
                                   scheduler, None, None, requires_safety_checker=False)


@contextlib.contextmanager
def applied(components, uses: tuple[LoraUse, ...], library: LoraLibrary) -> Iterator[tuple[tuple[str, str], ...]]:
    """The LoRAs in the UNet and text encoder(s) for the block, weighted, and out again after it (on an error too);
    yields (name, hash) of each."""
    if not uses:
        yield ()
        return
    pipe = _pipeline(components)
    names = [f"avert_{i}" for i in range(len(uses))]
    encoders = [e for e in (components.text_encoder, components.text_encoder_2) if e is not None]
    hashes = tuple((u.name, file_hash(library.files[u.name])) for u in uses)
    try:
        for use, adapter in zip(uses, names):
            try:
                pipe.load_lora_weights(str(library.files[use.name]), adapter_name=adapter)
            except (ValueError, KeyError, OSError, RuntimeError) as error:
                raise ValidationError([FieldProblem("prompt", f"<lora:{use.name}>", "must be a LoRA for this model "
                                                    f"(diffusers could not load it: {str(error)[:200]})")]) from None
        pipe.set_adapters(names, [u.weight for u in uses])
        for encoder in encoders:
            setattr(encoder, ACTIVE, tuple((h, u.weight) for (_, h), u in zip(hashes, uses)))
        yield hashes
    finally:
        for encoder in encoders:
            if hasattr(encoder, ACTIVE):
                delattr(encoder, ACTIVE)
        pipe.unload_lora_weights()
