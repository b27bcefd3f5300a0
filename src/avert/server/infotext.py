"""A1111's `infotext` request field (1.8+): the parameters of a pasted infotext fill the fields a request leaves out.

As A1111's `apply_infotext` does: the infotext is parsed as `avert generate --from` parses one (A1111's
`parse_generation_parameters`); the fields the client sent, null included, are never overwritten; infotext keys
that are A1111 options (`Clip skip`) go into `override_settings` unless the request sets them there. avert adds its
own `Guidance` key the same way (`avert_guidance`). Values are cast to the field's type where they convert; a value
that does not is passed on as text, so validation names the field.
"""

from __future__ import annotations

from typing import Any

from avert.errors import FieldProblem, ValidationError
from avert.output.pnginfo import ParsedParameters, parse_parameters
from avert.pipeline.metadata import convert_value as _cast  # as `avert generate --from` casts infotext values

MAX_INFOTEXT_CHARS = 32768  # a prompt and a negative of 8192 characters each and their parameters fit
# infotext key -> (request field, type)
FIELDS = {"Steps": ("steps", int), "Sampler": ("sampler_name", str), "Schedule type": ("scheduler", str),
          "CFG scale": ("cfg_scale", float), "Seed": ("seed", int), "Batch size": ("batch_size", int),
          "Denoising strength": ("denoising_strength", float), "Tiling": ("tiling", bool)}
# infotext key -> option it sets through override_settings
OPTIONS = {"Clip skip": ("CLIP_stop_at_last_layers", int), "Guidance": ("avert_guidance", str),
           "Eta": ("eta_ancestral", float), "Eta DDIM": ("eta_ddim", float)}


def apply_infotext(body: dict) -> dict:
    """`body` with the fields its `infotext` gives and it does not set itself (the body itself without one)."""
    text = body.get("infotext")
    if text is None or text == "":
        return body
    if not isinstance(text, str) or len(text) > MAX_INFOTEXT_CHARS:
        raise ValidationError([FieldProblem("infotext", text if not isinstance(text, str) else text[:100] + "...",
                                            f"must be the text of an infotext of at most {MAX_INFOTEXT_CHARS} "
                                            "characters, or null")])
    parsed = parse_parameters(text)
    filled = {"prompt": parsed.prompt, "negative_prompt": parsed.negative_prompt, **_fields(parsed)}
    merged = {**{k: v for k, v in filled.items() if k not in body}, **body}
    options = _options(parsed, body.get("override_settings"))
    if options:
        merged["override_settings"] = {**options, **(body.get("override_settings") or {})}
    return merged


def _fields(parsed: ParsedParameters) -> dict[str, Any]:
    fields = {name: _cast(parsed.get(key), kind) for key, (name, kind) in FIELDS.items() if parsed.get(key)}
    size = parsed.get("Size") or ""
    width, x, height = size.partition("x")
    if x:
        fields.update(width=_cast(width, int), height=_cast(height, int))
    if isinstance(fields.get("scheduler"), str):
        fields["scheduler"] = fields["scheduler"].lower()  # A1111 writes the label (Karras), takes the name
    return fields


def _options(parsed: ParsedParameters, override: Any) -> dict[str, Any]:
    """The options the infotext sets, where the request's override_settings does not set them."""
    given = override if isinstance(override, dict) else {}
    return {option: _cast(parsed.get(key), kind) for key, (option, kind) in OPTIONS.items()
            if parsed.get(key) is not None and option not in given}

