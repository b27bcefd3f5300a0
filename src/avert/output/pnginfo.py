"""Generation metadata in PNG files, readable by AUTOMATIC1111's web UI and its ecosystem.

Two text chunks are written:

* ``parameters``: the A1111 "infotext" (prompt, ``Negative prompt: ...`` and a
  ``Key: value, ...`` line), which A1111's "PNG Info" tab, civitai and tools such
  as sd-parsers read;
* ``avert``: the full generation record as JSON, for avert itself.

The infotext format follows A1111's ``create_infotext`` in ``modules/processing.py``
and ``parse_generation_parameters`` in ``modules/infotext_utils.py`` (formerly
``generation_parameters_copypaste.py``).
"""

from __future__ import annotations

import io
import json
import os
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, PngImagePlugin, UnidentifiedImageError

from avert.errors import AvertError

PARAMETERS_KEY = "parameters"
RECORD_KEY = "avert"
NEGATIVE_PREFIX = "Negative prompt:"

# A1111's ``re_param_code`` (modules/infotext_utils.py) in linear time. A1111's pattern,
# r'\s*(\w[\w \-/]+):\s*(...)', backtracks quadratically: a line of 32768 spaces, or of word characters without a
# colon, took 8 to 12 s in a one-off timing (tests/test_pnginfo.py holds ours to 0.5 s on 8 times longer lines). Here a match starts only where a word does (a later start in the same word reaches the same
# end and fails the same way), without the leading \s* (it skipped whitespace that is not captured), and a key has at
# most 64 characters; matches are A1111's for every shorter key (tested on random lines against A1111's pattern).
_PARAM_RE = re.compile(r'(?<!\w)(\w[\w \-/]{1,63}):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
MAX_PARAMETERS_LINE = 262144  # a longer last line is read as prompt text (avert's longest is under 80 KiB)
# A key A1111's parser can read back: what the regex's key group accepts, with no edge spaces.
_KEY_RE = re.compile(r"\w(?:[\w \-/]*[\w\-/])?")
_MIN_PARAMS = 3  # A1111 treats the last line as parameters only with at least 3 matches
_PNG_MODES = frozenset({"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"})


def _quote(value: object) -> str:
    """Write one value as A1111's ``infotext_utils.quote`` does.

    A1111 leaves a value alone unless its text holds ``,``, a newline or ``:``, and
    then writes ``json.dumps(value, ensure_ascii=False)``. Numbers are written as
    Python prints them (``f"{k}: {v}"``): A1111's line is
    ``generation_params_text = ", ".join([k if k == v else f'{k}: {infotext_utils.quote(v)}'
    for k, v in generation_params.items() if v is not None])``, with ``"CFG scale": p.cfg_scale``,
    so a float 7.0 gives ``CFG scale: 7.0`` and an int 7 gives ``CFG scale: 7`` (the UI
    shows ``7`` only because Gradio hands the slider value over as an int; the API,
    whose field is a float, writes ``7.0``). We do the same: the value's ``str()``.
    One deliberate difference: a non-string needing quotes is quoted as its ``str()``
    (A1111 would ``json.dumps`` a list into ``[...]``, which its own parser cannot read).
    """
    text = str(value)
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def _unquote(text: str) -> str:
    """Undo :func:`_quote` as A1111's ``infotext_utils.unquote`` does (bad JSON stays as is)."""
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, str) else text


def format_parameters(prompt: str, negative_prompt: str, params: Sequence[tuple[str, object]]) -> str:
    """Return the A1111 infotext for a prompt, a negative prompt and ordered parameters.

    Entries whose value is None are left out; an empty negative prompt leaves out the
    ``Negative prompt:`` line. A1111 also writes a bare key when a value equals its
    key (``k if k == v``); that form cannot be parsed back, so it is not reproduced.
    Raises ValueError for a key A1111's parser could not read back.
    """
    for key, _ in params:
        if not _KEY_RE.fullmatch(key) or len(key) < 2:
            raise ValueError(
                f"parameter key {key!r} cannot be read back by A1111's parser; "
                "use 2 or more letters, digits, '-', '/' or inner spaces"
            )
    body = ", ".join(f"{key}: {_quote(value)}" for key, value in params if value is not None)
    negative = f"\n{NEGATIVE_PREFIX} {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{body}".strip()


@dataclass(frozen=True)
class ParsedParameters:
    """An infotext split into prompt, negative prompt and ordered ``(key, value)`` strings."""

    prompt: str
    negative_prompt: str
    params: tuple[tuple[str, str], ...]

    def get(self, key: str, default: str | None = None) -> str | None:
        """Return the value of ``key`` (the last one when repeated, as A1111's dict keeps), else ``default``."""
        for name, value in reversed(self.params):
            if name == key:
                return value
        return default


def _split_prompts(lines: Sequence[str]) -> tuple[str, str]:
    """Split prompt lines: the first line starting ``Negative prompt:`` and all after it are the negative.

    A1111 also cuts the prefix off later negative lines that start with it; keeping
    them intact lets such a negative prompt survive a round trip.
    """
    prompt: list[str] = []
    negative: list[str] = []
    for raw in lines:
        line = raw.strip()
        if not negative and line.startswith(NEGATIVE_PREFIX):
            negative.append(line[len(NEGATIVE_PREFIX):].strip())
        elif negative:
            negative.append(line)
        else:
            prompt.append(line)
    return "\n".join(prompt), "\n".join(negative)


def parse_parameters(text: str) -> ParsedParameters:
    """Parse an A1111 infotext as ``parse_generation_parameters`` does.

    The last line holds the parameters only when A1111's regex matches it at least 3
    times; otherwise it belongs to the prompt. Lines are stripped, as in A1111, so
    leading or trailing spaces on a prompt line do not survive a round trip. Values
    are kept as strings (``Size: 512x512`` is not split), quoted ones JSON-unquoted. Unlike A1111, keys are at
    most 64 characters and a last line over `MAX_PARAMETERS_LINE` is prompt text (see `_PARAM_RE`).
    """
    *lines, last = text.strip().split("\n")
    found = _PARAM_RE.findall(last) if len(last) <= MAX_PARAMETERS_LINE else []
    if len(found) < _MIN_PARAMS:
        lines.append(last)
        found = []
    prompt, negative = _split_prompts(lines)
    params = tuple((key, _unquote(value) if value.startswith('"') else value) for key, value in found)
    return ParsedParameters(prompt=prompt, negative_prompt=negative, params=params)


def _png_info(parameters: str, record: Mapping) -> PngImagePlugin.PngInfo:
    """Build the text chunks: ``parameters`` as A1111 writes it, ``avert`` as iTXt JSON."""
    info = PngImagePlugin.PngInfo()
    # add_text writes tEXt when the text is latin-1 and falls back to iTXt otherwise.
    info.add_text(PARAMETERS_KEY, parameters)
    info.add_itxt(RECORD_KEY, json.dumps(dict(record), ensure_ascii=False, sort_keys=True))
    return info


def _png_ready(image: Image.Image) -> Image.Image:
    """Return ``image`` in a mode PNG can store: RGBA for the others when they carry alpha (PA, premultiplied
    RGBa; not LAB, whose A band is a colour), else RGB."""
    if image.mode in _PNG_MODES:
        return image
    return image.convert("RGBA" if image.has_transparency_data else "RGB")


def png_bytes(image: Image.Image, parameters: str, record: Mapping) -> bytes:
    """Encode ``image`` as PNG bytes carrying the ``parameters`` and ``avert`` chunks."""
    buffer = io.BytesIO()
    _png_ready(image).save(buffer, format="PNG", pnginfo=_png_info(parameters, record))
    return buffer.getvalue()


def save_png(image: Image.Image, path: Path, parameters: str, record: Mapping) -> None:
    """Write ``image`` to ``path`` as a PNG with the metadata chunks.

    The bytes go to a temporary file beside ``path`` that then replaces it, so a
    reader never sees half a file. Raises AvertError naming the file when it cannot be written.
    """
    path = Path(path)
    data = png_bytes(image, parameters, record)
    temp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(temp, "xb") as file:
            file.write(data)
        os.replace(temp, path)
    except OSError as error:
        temp.unlink(missing_ok=True)
        raise AvertError(f"cannot write PNG file {path}: {error.strerror or error}") from error


@dataclass(frozen=True)
class PngMetadata:
    """The metadata found in a PNG: the A1111 infotext and avert's record, each None when absent."""

    parameters: str | None
    record: dict | None


MAX_METADATA_PIXELS = 4096 * 4096  # pixels over all frames decoded to reach text chunks after the image data


def _open_png(source: Path | str | bytes, name: str) -> Image.Image:
    """Open a PNG from a path or bytes, or raise AvertError naming ``name``.

    Text chunks may follow the image data, and Pillow decodes every frame to reach them; so a PNG (or APNG)
    whose frames hold more than `MAX_METADATA_PIXELS` pixels in all is refused before anything is decoded
    (a decompression bomb costs nothing but its header)."""
    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except Image.DecompressionBombError as error:
        raise AvertError(f"cannot read {name}: {error}") from error
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as error:
        raise AvertError(f"cannot read {name} as an image: {error}") from error
    if image.format != "PNG":
        image.close()
        raise AvertError(f"{name} is not a PNG file (found {image.format})")  # Pillow names what it opened
    if image.width * image.height * image.n_frames > MAX_METADATA_PIXELS:  # PNG images count their frames
        image.close()
        raise AvertError(f"{name} holds {image.width}x{image.height} pixels in {image.n_frames} "
                         f"frame(s); metadata is read from PNGs of at most {MAX_METADATA_PIXELS} pixels in all")
    return image


def _text_chunks(image: Image.Image, name: str) -> dict[str, str]:
    """Return an image's text chunks, including any after the image data."""
    try:
        chunks = image.text if isinstance(image, PngImagePlugin.PngImageFile) else image.info
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as error:
        raise AvertError(f"cannot read {name}: damaged PNG ({error})") from error
    return {key: value for key, value in chunks.items() if isinstance(value, str)}


def _parse_record(text: str | None, name: str) -> dict | None:
    """Decode the ``avert`` chunk, or raise AvertError naming the chunk and the file."""
    if text is None:
        return None
    try:
        record = json.loads(text)
    except ValueError as error:
        raise AvertError(f"{name}: the '{RECORD_KEY}' PNG text chunk is not valid JSON ({error})") from error
    if not isinstance(record, dict):
        raise AvertError(f"{name}: the '{RECORD_KEY}' PNG text chunk holds {type(record).__name__}, not a JSON object")
    return record


def read_png_metadata(source: Path | str | bytes | Image.Image) -> PngMetadata:
    """Read the ``parameters`` and ``avert`` chunks from a PNG file, PNG bytes or an opened image.

    Raises AvertError, naming the file, when it cannot be read or is not a PNG, and
    when the ``avert`` chunk is not a JSON object.
    """
    if isinstance(source, Image.Image):
        name = getattr(source, "filename", "") or "the image"
        chunks = _text_chunks(source, name)
    else:
        name = "the PNG data" if isinstance(source, bytes) else f"file {source}"
        if not isinstance(source, bytes) and not Path(source).is_file():  # a FIFO or a device would block
            state = "does not exist" if not Path(source).exists() else "is not a regular file"
            raise AvertError(f"cannot read {name}: it {state}")
        with _open_png(source, name) as image:
            chunks = _text_chunks(image, name)
    return PngMetadata(parameters=chunks.get(PARAMETERS_KEY), record=_parse_record(chunks.get(RECORD_KEY), name))
