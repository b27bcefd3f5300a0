"""The request bodies as JSON Schema, for the OpenAPI document: derived from the same declarations that validate
them (`avert.schema.PARAMS`, the A1111 field tables), so that a client generated from the document sends what
the server accepts. What a schema cannot say (the work budget, a negative per image matching the batch, eta per
sampler, a method's own options) is said in the descriptions; the server names it when it refuses.
"""

from __future__ import annotations

from typing import Any

from avert.sampling.samplers import SAMPLER_NAMES
from avert.schema import PARAMS_BY_NAME, Limits
from avert.server.bodies import REQUEST_FIELDS

NULL = {"type": "null"}
WORK = ("Every request is held to the server's work budget (avert serve --max-work, in megapixel steps: width x "
        "height / 10^6 x model evaluations x branches x images); over it, 422 names the figure and the limit.")


def field_schema(name: str, limits: Limits = Limits()) -> dict:
    """The JSON schema of a request field from `avert.schema` (type, default, bounds, choices, help); a field
    whose default is None (the model's size, its method, ...) also takes null."""
    param = PARAMS_BY_NAME.get(name)
    if param is None:
        return {}
    kind = {int: "integer", float: "number", str: "string", bool: "boolean"}.get(param.type, "string")
    schema: dict[str, Any] = {"type": kind, "description": param.help}
    if param.choices:
        schema["enum"] = list(param.choices)
    if param.low is not None and param.type not in (str, bool):
        schema["minimum"] = param.low(limits)
    if param.high is not None:
        schema["maxLength" if param.type is str else "maximum"] = param.high(limits)
    if param.multiple_of:
        schema["multipleOf"] = param.multiple_of
    if param.pattern is not None:
        schema["pattern"] = f"^{param.pattern[0]}$"
    if param.allow:
        schema = {"anyOf": [schema, {"enum": list(param.allow)}], "description": param.help}
    if param.default is None:
        return {"anyOf": [schema, NULL], "default": None, "description": param.help}
    return {**schema, "default": param.default}


def negative_schema(limits: Limits = Limits()) -> dict:
    text = {"type": "string", "maxLength": limits.max_prompt_chars}
    share = {"type": "number", "minimum": 0, "maximum": 1}
    return {"anyOf": [text, {"type": "object", "additionalProperties": False, "required": ["text"], "properties": {
        "text": text, "weight": {"type": "number", "minimum": -10, "maximum": 10, "default": 1.0},
        "start": {**share, "default": 0.0}, "end": {**share, "default": 1.0}}}],
        "description": "a negative: a text (weight 1, the whole run), or {text, weight, start, end} (start < end, "
        "fractions of the run)"}


def native_body(extra: dict[str, Any], limits: Limits = Limits()) -> dict:
    """`/v1/generate` (and, with `extra`, `/v1/compare`): every request field by name, and `model`."""
    properties = {name: field_schema(name, limits) for name in REQUEST_FIELDS}
    text = {"type": "string", "maxLength": limits.max_prompt_chars}
    properties["negative_prompt"] = {"description": "a string, or a list with one negative per image (as many as "
                                     "batch_size)", "anyOf": [text, {"type": "array", "items": text,
                                                                      "maxItems": limits.max_batch_size}]}
    properties["negatives"] = {"type": "array", "items": negative_schema(limits), "maxItems": limits.max_negatives,
                               "description": "negatives with weights and windows"}
    properties["model"] = {"type": "string", "description": "a served model's name (GET /v1/models)"}
    properties["init_image"] = {"anyOf": [{"type": "string", "contentEncoding": "base64"}, NULL], "default": None,
                                "description": "img2img: a PNG, JPEG or WebP image as base64 (or a data: URL; URLs are "
                                "never fetched); strength and resize_mode apply with it"}
    properties["mask"] = {"anyOf": [{"type": "string", "contentEncoding": "base64"}, NULL], "default": None,
                          "description": "inpainting, with init_image: a PNG, JPEG or WebP image as base64, white (or "
                          "opaque, if it has transparency) where the image is re-drawn; mask_blur ... overlay_inpaint "
                          "apply with it"}
    properties.update(extra)
    return _body({"type": "object", "additionalProperties": False, "properties": properties}, WORK)


def compare_body(max_columns: int, limits: Limits = Limits()) -> dict:
    """`/v1/compare`: the native body without negatives of its own, and `columns`."""
    body = native_body({"columns": {"type": "array", "items": negative_schema(limits), "minItems": 1,
                                    "maxItems": max_columns, "description": "negatives, one column each"},
                        "map": {"type": "boolean", "default": False, "description": "with each image of a negative's "
                                "column, where the negative acted (map_png: its share of the guided prediction, "
                                "summed over the steps, over the image) and what it changed (difference_png: the "
                                "pixel change from the column without a negative); costs the empty prompt's branch"}},
                       limits)
    schema = body["requestBody"]["content"]["application/json"]["schema"]
    schema["properties"]["negative_prompt"] = {"enum": ["", None], "description": "must be empty: put each negative "
                                               "in columns"}
    schema["properties"]["negatives"] = {"type": "array", "maxItems": 0, "description": "must be empty"}
    schema["required"] = ["columns"]
    return body


def txt2img_body(defaults: dict[str, Any], fixed: dict[str, dict], ignored: tuple[str, ...],
                 limits: Limits = Limits(), kind: str = "txt2img") -> dict:
    """`/sdapi/v1/txt2img`: A1111's fields with their defaults; avert's own under the same name as declared;
    fields avert does not implement limited to the values where they have no effect (`fixed`)."""
    properties: dict[str, Any] = {}
    own = {**A1111_OWN, **(IMG2IMG_OWN if kind == "img2img" else {})}
    for name, default in defaults.items():
        if name in own:
            schema = own[name]
        elif name in PARAMS_BY_NAME:  # avert's own field; null means its default where A1111 has no value for it
            schema = field_schema(name, limits)
            schema = schema if name in A1111_VALUED else {"anyOf": [schema, NULL]}
        elif name in fixed:
            schema = fixed[name]
        elif name in ignored:
            schema = {"description": "accepted and ignored (it changes nothing here)"}
        else:
            schema = {}
        properties[name] = {**schema, "default": default}
    return _body({"type": "object", "properties": properties, "additionalProperties": {
        "description": "a field A1111 does not have: ignored, as A1111 ignores it, and named in info.ignored_fields"}},
                 f"AUTOMATIC1111's {kind} fields and defaults. " + WORK)


ETA_OPTION = {"type": ["number", "null"], "minimum": 0, "maximum": 1}
A1111_VALUED = ("prompt", "seed", "steps", "cfg_scale", "width", "height", "batch_size")  # null is not a value
SAMPLER_CHOICE = {"anyOf": [{"enum": list(SAMPLER_NAMES)}, NULL]}
NOISE_MULTIPLIER = {"type": "number", "minimum": 0, "maximum": 1.5}
A1111_OWN: dict[str, Any] = {
    "styles": {"anyOf": [{"type": "array", "maxItems": 32, "items": {"type": "string"}}, NULL], "description":
               "names from GET /sdapi/v1/prompt-styles (the server's --styles file), applied in order to the prompt "
               "and the negative as A1111 applies them"},
    "negative_prompt": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
                        "description": "a string, or (avert's extension) a list with one negative per image"},
    "sampler_name": SAMPLER_CHOICE, "sampler_index": SAMPLER_CHOICE,
    "scheduler": {"enum": ["automatic", "karras", "Automatic", "Karras", "", None]},
    "n_iter": {"type": "integer", "minimum": 1, "maximum": Limits().max_batch_size},
    "eta": {"anyOf": [{"type": "number"}, NULL], "description": "0 to 1 for the ancestral and SDE samplers and DDIM; "
            "any number for the others (they do not use it); null: eta_ancestral or eta_ddim"},
    "infotext": {"anyOf": [{"type": "string", "maxLength": 32768}, NULL], "description": "an A1111 infotext whose "
                 "parameters fill the fields the request leaves out (the request's own fields win)"},
    "override_settings": {"anyOf": [NULL, {"type": "object", "additionalProperties": False, "properties": {
        "sd_model_checkpoint": {"type": "string"}, "CLIP_stop_at_last_layers": {"type": "integer", "minimum": 1,
                                                                               "maximum": 12},
        "avert_guidance": field_schema("guidance"), "eta_ancestral": ETA_OPTION, "eta_ddim": ETA_OPTION,
        "overlay_inpaint": {"type": "boolean"}, "initial_noise_multiplier": NOISE_MULTIPLIER}}]},
}
IMG2IMG_OWN: dict[str, Any] = {
    "init_images": {"type": "array", "minItems": 1, "maxItems": 16, "items": {"type": "string", "contentEncoding": "base64"},
                    "description": "PNG, JPEG or WebP images as base64 (or data: URLs; URLs are never fetched): one is "
                    "repeated over the batch; k (at most batch_size) make a batch of k, image i from init image i"},
    "resize_mode": {"enum": [0, 1, 2, 3], "description": "0 just resize, 1 crop and resize, 2 resize and fill, 3 just "
                    "resize (latent upscale)"},
    "denoising_strength": {"anyOf": [{"type": "number", "minimum": 0, "maximum": 1}, NULL],
                           "description": "A1111's step rule: int(min(d, 0.999) * steps) + 1 steps run"},
    "mask": {"anyOf": [{"type": "string", "contentEncoding": "base64"}, NULL], "description": "inpainting: white (or "
             "opaque) where the image is re-drawn"},
    "mask_blur": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 64}, NULL],
                  "description": "sets mask_blur_x and mask_blur_y"},
    "mask_blur_x": {"type": "integer", "minimum": 0, "maximum": 64, "description": "the horizontal blur"},
    "mask_blur_y": {"type": "integer", "minimum": 0, "maximum": 64},
    "inpainting_fill": {"enum": [0, 1, 2, 3], "description": "0 fill, 1 original, 2 latent noise, 3 latent nothing"},
    "inpainting_mask_invert": {"enum": [0, 1], "description": "1: re-draw what the mask leaves black"},
    "inpaint_full_res": {"type": "boolean", "description": "only the masked area, at width x height, pasted back"},
    "inpaint_full_res_padding": {"type": "integer", "minimum": 0, "maximum": 1024},
    "mask_round": {"type": "boolean"},
    "initial_noise_multiplier": {"anyOf": [NOISE_MULTIPLIER, NULL], "description": "the noise scaled (\"Noise "
                                 "multiplier\"); null: the option initial_noise_multiplier (1)"},
}


def png_info_body() -> dict:
    return _body({"type": "object", "additionalProperties": False, "required": ["image"], "properties": {
        "image": {"type": "string", "contentEncoding": "base64", "description": "a PNG as base64, optionally a data: "
                  "URL; URLs are never fetched"}}}, "A PNG whose generation parameters are read")


def options_body(fixed: dict[str, Any], models: tuple[str, ...]) -> dict:
    """POST /sdapi/v1/options: sd_model_checkpoint switches the model, CLIP_stop_at_last_layers and avert_guidance
    set request defaults, the fixed options keep their values, and any other option is kept without effect."""
    from avert.guidance.strategy import method_names

    properties = {k: {"const": v} for k, v in fixed.items()}
    properties["sd_model_checkpoint"] = {"enum": list(models)}
    properties["CLIP_stop_at_last_layers"] = {"type": ["integer", "null"], "minimum": 1, "maximum": 12}
    properties["avert_guidance"] = {"enum": [*method_names(), None]}
    properties.update(eta_ancestral=ETA_OPTION, eta_ddim=ETA_OPTION)
    kept = {"propertyNames": {"pattern": "^[A-Za-z0-9_.\\-]{1,128}$"}, "maxProperties": 64}
    return _body({"type": "object", "properties": properties, **kept},
                 "A1111's options: sd_model_checkpoint switches the model; CLIP_stop_at_last_layers and "
                 "avert_guidance set the clip skip and guidance of A1111 requests that do not set them; the options "
                 "shown with a fixed value must keep it; any other option is kept and returned, without effect")


def _body(schema: dict, description: str) -> dict:
    return {"requestBody": {"required": True, "description": description,
                            "content": {"application/json": {"schema": schema}}}}
