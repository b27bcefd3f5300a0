"""The init image of an img2img request and the mask of an inpainting one, as frozen values: read safely and
bounded, kept as RGB (image) or 8-bit grey (mask) pixels.

An image from a user is decoded by Pillow from PNG, JPEG or WebP only (no other decoder is reachable), after its
header says it has at most `MAX_INIT_PIXELS` pixels, so a decompression bomb is refused before it is decoded.
Transparent pixels are flattened onto white, as A1111 does (`img2img_background_color`, #ffffff).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from PIL import Image, UnidentifiedImageError

from avert.errors import FieldProblem, ValidationError

MAX_INIT_PIXELS = 4096 * 4096
MAX_INIT_BYTES = 64 * 1024 * 1024
FORMATS = ("PNG", "JPEG", "WEBP")


@dataclass(frozen=True)
class InitImage:
    """RGB pixels (row-major bytes) of the init image, its size, and the SHA-256 of those pixels (the record
    names the image by it; the pixels themselves are not written into the PNG)."""

    width: int
    height: int
    pixels: bytes = field(repr=False)
    sha256: str = ""

    @classmethod
    def from_pil(cls, image: Image.Image) -> "InitImage":
        rgb = _flatten(image)
        data = rgb.tobytes()
        return cls(rgb.width, rgb.height, data, hashlib.sha256(data).hexdigest())

    @classmethod
    def from_bytes(cls, data: bytes, name: str = "init_image") -> "InitImage":
        """Decode an encoded image; a problem is a `ValidationError` naming `name`."""
        with _opened(data, name) as image:
            return cls.from_pil(image)

    @classmethod
    def from_value(cls, value: object, name: str = "init_image") -> "InitImage":
        """From a JSON value: the image as base64 (or a data: URL). URLs are never fetched."""
        return cls.from_bytes(decode_base64(value, name), name)

    @classmethod
    def from_file(cls, path: str | Path, name: str = "init_image") -> "InitImage":
        return cls.from_bytes(_read_file(path, name), name)

    def to_pil(self) -> Image.Image:
        return Image.frombytes("RGB", (self.width, self.height), self.pixels)

    def describe(self) -> dict:
        """What the record keeps of it: size and hash."""
        return {"width": self.width, "height": self.height, "sha256": self.sha256}


@contextlib.contextmanager
def _opened(data: bytes, name: str) -> Iterator[Image.Image]:
    """The decoded (loaded) image of `data`, after its header passed the bounds; a problem names `name`."""
    allowed = (f"must be a PNG, JPEG or WebP image of at most {MAX_INIT_PIXELS} pixels and "
               f"{MAX_INIT_BYTES // 2**20} MiB")
    if not isinstance(data, (bytes, bytearray)) or len(data) > MAX_INIT_BYTES:
        raise ValidationError([FieldProblem(name, f"{len(data)} bytes" if isinstance(data, bytes) else data,
                                            allowed)])
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as image:
            if image.width * image.height > MAX_INIT_PIXELS or min(image.size) < 1:
                raise ValidationError([FieldProblem(name, f"{image.width}x{image.height}", allowed)])
            image.load()
    except ValidationError:
        raise
    except UnidentifiedImageError:
        raise ValidationError([FieldProblem(name, f"{len(data)} bytes", f"{allowed} (it is none of these)")]) \
            from None
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as error:
        raise ValidationError([FieldProblem(name, f"{len(data)} bytes", f"{allowed} ({error})")]) from None
    yield image


def _read_file(path: str | Path, name: str) -> bytes:
    path = Path(path)
    try:
        with path.open("rb") as handle:
            return handle.read(MAX_INIT_BYTES + 1)
    except OSError as error:
        raise ValidationError([FieldProblem(name, str(path), f"must be a readable image file ({error.strerror})")]) \
            from None


@dataclass(frozen=True)
class Mask:
    """The inpainting mask: one 8-bit channel (white = re-draw), its size and the SHA-256 of its pixels.

    As A1111's `create_binary_mask` reads it: an image with transparency (some alpha below 255) gives its alpha
    channel, `from_alpha` True (A1111 then binarizes it at 128 when mask_round is on); any other image its grey
    levels (ITU-R 601-2 luma, Pillow's "L").
    """

    width: int
    height: int
    pixels: bytes = field(repr=False)
    sha256: str = ""
    from_alpha: bool = False

    @classmethod
    def from_pil(cls, image: Image.Image) -> "Mask":
        alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or image.has_transparency_data
        channel = image.convert("RGBA").getchannel("A") if alpha else None
        from_alpha = channel is not None and channel.getextrema() != (255, 255)
        grey = channel if from_alpha else image.convert("L")
        data = grey.tobytes()
        return cls(grey.width, grey.height, data, hashlib.sha256(data).hexdigest(), from_alpha)

    @classmethod
    def from_bytes(cls, data: bytes, name: str = "mask") -> "Mask":
        with _opened(data, name) as image:
            return cls.from_pil(image)

    @classmethod
    def from_value(cls, value: object, name: str = "mask") -> "Mask":
        return cls.from_bytes(decode_base64(value, name, "a mask image"), name)

    @classmethod
    def from_file(cls, path: str | Path, name: str = "mask") -> "Mask":
        return cls.from_bytes(_read_file(path, name), name)

    def to_pil(self) -> Image.Image:
        return Image.frombytes("L", (self.width, self.height), self.pixels)

    def describe(self) -> dict:
        return {"width": self.width, "height": self.height, "sha256": self.sha256}


def decode_base64(value: object, name: str, what: str = "an image") -> bytes:
    """The bytes of a base64 image (optionally a data: URL); anything else is a problem naming `name`."""
    allowed = f"must be {what} as base64 (optionally a data: URL); URLs are never fetched"
    if not isinstance(value, str) or not value.strip():
        raise ValidationError([FieldProblem(name, value if not isinstance(value, str) else "(empty)", allowed)])
    text = value.strip()
    if re.match(r"^[a-z][a-z0-9+.-]*://", text, re.IGNORECASE):
        raise ValidationError([FieldProblem(name, text[:100], allowed)])
    if text.startswith("data:"):
        text = text.partition(",")[2]
    if len(text) > MAX_INIT_BYTES * 4 // 3 + 4:
        raise ValidationError([FieldProblem(name, f"{len(text)} characters", f"must be at most "
                                            f"{MAX_INIT_BYTES // 2**20} MiB of image")])
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValidationError([FieldProblem(name, text[:100], allowed)]) from None


def _flatten(image: Image.Image) -> Image.Image:
    """RGB, with any transparency composited onto white."""
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or image.has_transparency_data:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
