"""Textual-inversion embeddings (Gal et al., "An Image is Worth One Word", 2022), found by name in a folder.

A file `EasyNegative.safetensors` makes the word `EasyNegative` in a prompt or negative stand for the file's
vectors, in place of the word's own tokens. Formats read (safetensors only; never pickle):

- AUTOMATIC1111: a tensor under `emb_params`, or under `string_to_param.<token>` (one only);
- diffusers (`load_textual_inversion` / `save_pretrained` of a concept): one tensor under any key
  (usually the placeholder token, e.g. `<cat-toy>`), shape [dim] or [n, dim];
- SDXL (A1111, ComfyUI, kohya): `clip_l` [n, 768] for the first text encoder and `clip_g` [n, 1280] for the second;
  an SDXL model takes each encoder's vectors from its key (`EmbeddingLibrary.second`), and a file without `clip_g`
  is an error there, naming the file, when a prompt uses it.

A file that cannot be read, or whose vectors do not fit the model's text encoder, is an error naming the file
when a prompt uses its name (unused bad files do not stop a run; `EmbeddingLibrary.problems` lists them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch

from avert.errors import AvertError

SUFFIX = ".safetensors"


class EmbeddingError(AvertError):
    """An embedding file that cannot be used (unreadable, unknown layout, or the wrong width for the model)."""


@dataclass(frozen=True)
class Embedding:
    """A named sequence of token vectors, shape [n, dim]; an SDXL file's second-encoder vectors in `vectors_2`."""

    name: str
    vectors: torch.Tensor
    path: Path
    vectors_2: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return int(self.vectors.shape[0])


@dataclass(frozen=True)
class EmbeddingLibrary:
    """The embeddings of a folder by name, and the files that could not be read (name -> reason)."""

    embeddings: Mapping[str, Embedding] = field(default_factory=dict)
    problems: Mapping[str, str] = field(default_factory=dict)
    folder: Path | None = None

    def names(self) -> tuple[str, ...]:
        return tuple(sorted(set(self.embeddings) | set(self.problems)))

    def second(self) -> "EmbeddingLibrary":
        """The library an SDXL model's second text encoder reads: each file's `clip_g` vectors; files without them
        are problems (named when a prompt uses them)."""
        found = {n: Embedding(n, e.vectors_2, e.path) for n, e in self.embeddings.items() if e.vectors_2 is not None}
        missing = {n: f"embedding {e.path.name}: has no vectors for SDXL's second text encoder ('clip_g'); made for "
                      "SD 1.x/2.x?" for n, e in self.embeddings.items() if e.vectors_2 is None}
        return EmbeddingLibrary(found, {**self.problems, **missing}, self.folder)

    def fingerprint(self) -> tuple:
        """Identifies the set of embeddings (for caches): names, files and sizes."""
        return tuple((n, str(e.path), tuple(e.vectors.shape)) for n, e in sorted(self.embeddings.items()))


def load_embeddings(folder: Path | str | None) -> EmbeddingLibrary:
    """Every `*.safetensors` in `folder` (not recursive), by file stem. None or a missing folder: none."""
    if folder is None:
        return EmbeddingLibrary()
    folder = Path(folder)
    if not folder.is_dir():
        raise EmbeddingError(f"embeddings folder {str(folder)!r} does not exist or is not a folder")
    found, problems = {}, {}
    for path in sorted(folder.glob("*" + SUFFIX)):
        if not path.is_file():  # a FIFO or a device would block
            problems[path.stem] = f"embedding {path.name}: not a regular file"
            continue
        try:
            first, second = read_vectors(path)
            found[path.stem] = Embedding(path.stem, first, path, second)
        except EmbeddingError as exc:
            problems[path.stem] = str(exc)
    return EmbeddingLibrary(found, problems, folder)


def read_embedding(path: Path) -> torch.Tensor:
    """The vectors [n, dim] stored in one embedding file, in A1111 or diffusers layout (SDXL: `clip_l`)."""
    return read_vectors(path)[0]


def read_vectors(path: Path) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The first encoder's vectors [n, dim] of one embedding file, and an SDXL file's second encoder's (else None)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise EmbeddingError(f"embedding {path.name}: not a readable .safetensors file ({exc})") from None
    if "clip_l" in tensors and "clip_g" in tensors:
        return _checked(tensors["clip_l"], path), _checked(tensors["clip_g"], path)
    return _checked(_pick(tensors, path), path), None


def _checked(vectors: torch.Tensor, path: Path) -> torch.Tensor:
    if vectors.ndim == 1:
        vectors = vectors[None]
    if vectors.ndim != 2 or vectors.numel() == 0 or not vectors.is_floating_point():
        raise EmbeddingError(f"embedding {path.name}: expected float vectors of shape [n, dim], "
                             f"found {tuple(vectors.shape)} {vectors.dtype}")
    return vectors.float()


def _pick(tensors: dict[str, torch.Tensor], path: Path) -> torch.Tensor:
    if "emb_params" in tensors:
        return tensors["emb_params"]
    a1111 = [k for k in tensors if k.startswith("string_to_param.")]
    if len(a1111) == 1:
        return tensors[a1111[0]]
    if len(tensors) == 1:
        return next(iter(tensors.values()))
    raise EmbeddingError(f"embedding {path.name}: unknown layout with keys {sorted(tensors)[:6]}; expected "
                         "'emb_params', one 'string_to_param.*' key, a single tensor (diffusers), or 'clip_l' and "
                         "'clip_g' (SDXL)")


def check_width(embedding: Embedding, width: int) -> None:
    """Refuse vectors that do not fit the text encoder's token embedding width."""
    if embedding.vectors.shape[1] != width:
        raise EmbeddingError(f"embedding {embedding.path.name}: vectors have width {embedding.vectors.shape[1]}, "
                             f"but this model's text encoder takes {width} (made for another model family?)")
