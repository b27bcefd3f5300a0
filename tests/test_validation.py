"""Every validation error names the field, the value and what is allowed; all problems are listed at once."""

from __future__ import annotations

import pytest

from avert.errors import ValidationError
from avert.init_image import InitImage
from avert.request import GenerationRequest, Negative
from avert.schema import Limits
from avert.validation import prompt_fields, validate

OK = GenerationRequest("a house", seed=1, width=512, height=512)


@pytest.mark.parametrize("field, value, allowed", [
    ("width", 500, "multiple of 8"),
    ("width", 56, "from 64 to 2048"),
    ("height", 4096, "from 64 to 2048"),
    ("height", "512", "an integer"),
    ("steps", 0, "from 1 to 150"),
    ("steps", 151, "from 1 to 150"),
    ("steps", 2.5, "an integer"),
    ("cfg_scale", -0.5, "from 0 to 30"),
    ("cfg_scale", 30.5, "from 0 to 30"),
    ("cfg_scale", float("nan"), "a number"),
    ("cfg_scale", float("inf"), "a number"),
    ("batch_size", 0, "from 1 to 16"),
    ("batch_size", 17, "from 1 to 16"),
    ("seed", -2, "(or -1)"),
    ("seed", 2**32, "from 0 to 4294967295"),
    ("seed", True, "an integer"),
    ("sampler", "Euler A", "one of: Euler a, Euler, LMS"),
    ("sampler", "k_euler", "DPM++ 2M Karras"),
    ("prompt", "x" * 8193, "at most 8192 characters"),
    ("negative_prompt", "x" * 8193, "at most 8192 characters"),
    ("negative_prompt", None, "text"),
])
def test_each_bad_field_is_named_with_value_and_allowed(field, value, allowed):
    with pytest.raises(ValidationError) as info:
        validate(OK.replace(**{field: value}))
    (problem,) = info.value.problems
    assert problem.field == field
    assert allowed in problem.allowed
    assert str(problem).startswith(f"{field}: {value!r} is not allowed")


@pytest.mark.parametrize("changes", [
    {}, {"seed": -1}, {"seed": 0}, {"seed": 2**32 - 1}, {"width": None, "height": None}, {"width": 64},
    {"width": 2048}, {"cfg_scale": 0}, {"cfg_scale": 30}, {"steps": 150}, {"batch_size": 16},
    {"sampler": "DPM++ SDE Karras"}, {"negative_prompt": ""}, {"prompt": "x" * 8192}, {"negative_prompt": "x" * 8192},
])
def test_values_at_the_bounds_are_accepted(changes):
    assert validate(OK.replace(**changes)) == OK.replace(**changes)


def test_all_problems_are_reported_together():
    with pytest.raises(ValidationError) as info:
        validate(OK.replace(steps=0, width=3, sampler="nope"))
    assert [p.field for p in info.value.problems] == ["steps", "width", "sampler"]


def test_limits_are_configurable():
    limits = Limits(min_size=32, max_size=128, max_batch_size=2)
    assert validate(OK.replace(width=32, height=128, batch_size=2), limits)
    with pytest.raises(ValidationError, match="from 32 to 128"):
        validate(OK.replace(width=256), limits)


def test_a_request_without_guidance_is_checked_against_the_models_method():
    """`guidance` None is the model's method: gated refuses a negative_scale, and the message says the method
    came from the model; with a plain-CFG model, or guidance named, the same request is valid."""
    request = OK.replace(negative_prompt="sun", negative_scale=9.0)
    assert validate(request) is request
    assert validate(request, model_guidance="cfg") is request
    with pytest.raises(ValidationError) as info:
        validate(request, model_guidance="gated")
    assert str(info.value) == ("negative_scale: 9.0 is not allowed; must be left unset with guidance gated (the "
                               "model's default; set guidance, e.g. cfg, for another), which weighs each negative "
                               "as plain cfg does, by cfg_scale - 1 times its gate")
    assert validate(request.replace(guidance="cfg"), model_guidance="gated").guidance == "cfg"
    prior = OK.replace(posterior_prior=0.5)
    assert validate(prior, model_guidance="gated") is prior
    with pytest.raises(ValidationError, match="posterior_prior: 0.5 is not allowed; applies only with guidance "
                       r"posterior or gated \(leave it at 0.8 for guidance cfg \(the model's default"):
        validate(prior)


def problems_of(request: GenerationRequest, limits: Limits = Limits(), **kwargs) -> list[str]:
    try:
        validate(request, limits, **kwargs)
    except ValidationError as error:
        return [str(p) for p in error.problems]
    return []


@pytest.mark.parametrize("negative, shown", [
    (Negative("sun", weight=2.0), "weight 2 from 0 to 1"),
    (Negative("sun", start=0.5), "weight 1 from 0.5 to 1"),
    (Negative("sun", end=0.5), "weight 1 from 0 to 0.5"),
])
def test_joined_negatives_take_no_weight_and_no_window(negative, shown):
    joined = GenerationRequest("a house", negatives=(Negative("clouds"), negative), negatives_rule="joined")
    assert problems_of(joined) == [
        f"negatives_rule: 'joined' is not allowed; joins only negatives of weight 1 over the whole run; negatives[1] "
        f"has {shown} (use another rule, or give it in the text as (words:weight) and [words:from])"]
    assert problems_of(joined.replace(negatives_rule="strongest")) == []
    assert problems_of(joined.replace(negatives=(Negative("clouds"), Negative("sun")))) == []


def test_each_bad_negative_is_named_by_its_index_and_field():
    negatives = (Negative("fine"), Negative("x" * 8193), Negative("w", weight=10.5), Negative("s", start=-0.1),
                 Negative("e", end=1.5), Negative("order", start=0.5, end=0.5), Negative("nan", weight=float("nan")),
                 Negative("bool", start=True), Negative("edges", weight=-10.0, start=0.0, end=1.0))
    assert problems_of(OK.replace(negatives=negatives), Limits(max_negatives=9)) == [
        f"negatives[1].text: {'x' * 8193!r} is not allowed; must be text of at most 8192 characters",
        "negatives[2].weight: 10.5 is not allowed; must be a number from -10 to 10",
        "negatives[3].start: -0.1 is not allowed; must be a number from 0 to 1",
        "negatives[4].end: 1.5 is not allowed; must be a number from 0 to 1",
        "negatives[5].start: 0.5 is not allowed; must be below end (0.5)",
        "negatives[6].weight: nan is not allowed; must be a number from -10 to 10",
        "negatives[7].start: True is not allowed; must be a number from 0 to 1",
    ]
    edges = (Negative("a" * 8192, weight=10.0, start=0.0, end=1.0), Negative("b", weight=-10, start=0.99, end=1))
    assert problems_of(OK.replace(negatives=edges)) == []


def test_negatives_must_be_a_tuple_of_negatives_within_the_limit():
    assert problems_of(OK.replace(negatives=["a"])) == [
        "negatives: ['a'] is not allowed; must be a list of {text, weight, start, end}"]
    assert problems_of(OK.replace(negatives=(Negative("a"), "b"))) == [
        "negatives: (Negative(text='a', weight=1.0, start=0.0, end=1.0), 'b') is not allowed; must be a list of "
        "{text, weight, start, end}"]
    assert problems_of(OK.replace(negatives=(Negative("a"),) * 8)) == []
    assert problems_of(OK.replace(negatives=(Negative("a"),) * 9)) == [
        "negatives: '9 entries' is not allowed; must have at most 8"]
    assert problems_of(OK.replace(negatives=(Negative("a"),) * 3), Limits(max_negatives=2)) == [
        "negatives: '3 entries' is not allowed; must have at most 2"]
    assert problems_of(OK.replace(negatives=(Negative(7),))) == [
        "negatives[0].text: 7 is not allowed; must be text of at most 8192 characters"]


def test_prompt_fields_name_the_prompt_the_negative_prompt_if_given_and_each_negative():
    request = OK.replace(negative_prompt="n", negatives=(Negative("a"), Negative("b")))
    assert prompt_fields(request) == [("prompt", "a house"), ("negative_prompt", "n"), ("negatives[0].text", "a"),
                                      ("negatives[1].text", "b")]
    assert prompt_fields(OK.replace(negative_prompt="")) == [("prompt", "a house")]


def test_and_parts_are_counted_over_the_prompt_and_every_negative():
    """32 parts in all pass; 33 do not, wherever they are; the limit is configurable."""
    prompt = " AND ".join(["a"] * 16)
    negatives = (Negative(" AND ".join(["b"] * 8)), Negative(" AND ".join(["c"] * 7)))
    request = OK.replace(prompt=prompt, negative_prompt="n", negatives=negatives)
    assert problems_of(request) == []
    assert problems_of(request.replace(negative_prompt="n AND m")) == [
        "prompt: '33 AND parts over the prompt and negatives' is not allowed; must have at most 32 AND parts in all "
        "(each is evaluated at every step)"]
    assert problems_of(OK.replace(prompt="a AND b AND c"), Limits(max_prompt_parts=2)) == [
        "prompt: '3 AND parts over the prompt and negatives' is not allowed; must have at most 2 AND parts in all "
        "(each is evaluated at every step)"]
    assert problems_of(OK.replace(prompt="a AND b"), Limits(max_prompt_parts=2)) == []


def test_distinct_text_to_encode_is_bounded_over_the_run():
    """Each step of an alternation is a text of its own: [a|b] over 4 steps encodes 'a' and 'b' twice each
    at most, counted once per distinct text."""
    request = OK.replace(prompt="x" * 100, negative_prompt="y" * 50, steps=4)
    assert problems_of(request, Limits(max_encoded_chars=150)) == []
    assert problems_of(request, Limits(max_encoded_chars=149)) == [
        "prompt: '150 characters of distinct text over 4 steps' is not allowed; must need at most 149 characters "
        "encoded in all (each [a|b] alternation or [from:to:when] edit is a text of its own)"]
    alternation = OK.replace(prompt="[" + "a" * 10 + "|" + "b" * 10 + "]", steps=4)
    assert problems_of(alternation, Limits(max_encoded_chars=20)) == []
    assert problems_of(alternation, Limits(max_encoded_chars=19))[0].startswith("prompt: '20 characters")
    negative = OK.replace(prompt="p", negatives=(Negative("q" * 30),), steps=3)
    assert problems_of(negative, Limits(max_encoded_chars=30))[0].startswith("prompt: '31 characters of distinct "
                                                                             "text over 3 steps'")


def test_a_parser_bomb_is_refused_in_the_field_it_is_in_and_other_fields_still_count():
    bomb = "[" * 40 + "a" + ":b:0.5]" * 40
    problems = problems_of(OK.replace(negatives=(Negative("fine"), Negative(bomb))))
    assert len(problems) == 1 and problems[0].startswith(f"negatives[1].text: {bomb!r} is not allowed; must have "
                                                         "at most 64 bracket, colon and bar characters")
    both = problems_of(OK.replace(prompt=bomb, negative_prompt=bomb))
    assert [p.split(":")[0] for p in both] == ["prompt", "negative_prompt"]


def test_text_work_is_checked_only_once_every_field_is_valid():
    """A bad steps value must not reach the parser (it would schedule over a wrong number of steps)."""
    assert problems_of(OK.replace(prompt=" AND ".join(["a"] * 40), steps=0)) == [
        "steps: 0 is not allowed; must be an integer from 1 to 150"]


def test_guidance_window_and_sigma_window_must_be_ordered():
    assert problems_of(OK.replace(guidance_start=0.5, guidance_end=0.5)) == [
        "guidance_start: 0.5 is not allowed; must be below guidance_end (0.5)"]
    assert problems_of(OK.replace(guidance_start=0.4, guidance_end=0.5)) == []
    assert problems_of(OK.replace(guidance_start=0.6, guidance_end=0.5)) == [
        "guidance_start: 0.6 is not allowed; must be below guidance_end (0.5)"]
    assert problems_of(OK.replace(guidance_start=1.5, guidance_end=0.5)) == [
        "guidance_start: 1.5 is not allowed; must be a number from 0 to 1"]
    assert problems_of(OK.replace(guidance_start=0.5, guidance_end=-1.0)) == [
        "guidance_end: -1.0 is not allowed; must be a number from 0 to 1"]
    assert problems_of(OK.replace(guidance_sigma_min=2.0, guidance_sigma_max=2.0)) == [
        "guidance_sigma_min: 2.0 is not allowed; must be below guidance_sigma_max (2.0)"]
    assert problems_of(OK.replace(guidance_sigma_min=1, guidance_sigma_max=2)) == []
    assert problems_of(OK.replace(guidance_sigma_min=3, guidance_sigma_max=2.5)) == [
        "guidance_sigma_min: 3 is not allowed; must be below guidance_sigma_max (2.5)"]


@pytest.mark.parametrize("method, field, value, allowed", [
    ("cfg", "apg_eta", 0.5, "applies only with guidance apg (leave it at 0.0 for guidance cfg)"),
    ("gated", "apg_norm_threshold", 3.0, "applies only with guidance apg (leave it at 0.0 for guidance gated)"),
    ("posterior", "apg_momentum", -0.5, "applies only with guidance apg (leave it at 0.0 for guidance posterior)"),
    ("apg", "posterior_prior", 0.5, "applies only with guidance posterior or gated (leave it at 0.8 for guidance "
                                    "apg)"),
    ("cfg", "posterior_temperature", 2.0, "applies only with guidance posterior or gated (leave it at 1.0 for "
                                          "guidance cfg)"),
    ("dynamic", "posterior_p_max", 0.5, "applies only with guidance posterior or gated (leave it at 0.8 for "
                                        "guidance dynamic)"),
    ("apg", "negative_scale", 9.0, "must be left unset with guidance apg, which guides prompt and negatives with "
                                   "cfg_scale alone"),
    ("gated", "negative_scale", 9.0, "must be left unset with guidance gated, which weighs each negative as plain "
                                     "cfg does, by cfg_scale - 1 times its gate"),
])
def test_a_methods_own_options_are_refused_with_other_methods(method, field, value, allowed):
    defaults = GenerationRequest()
    assert problems_of(OK.replace(guidance=method, **{field: value})) == [f"{field}: {value!r} is not allowed; "
                                                                          f"{allowed}"]
    owner = {"apg_eta": "apg", "apg_norm_threshold": "apg", "apg_momentum": "apg", "negative_scale": "cfg"}.get(
        field, "posterior")
    assert problems_of(OK.replace(guidance=owner, **{field: value})) == []
    assert problems_of(OK.replace(guidance=method, **{field: getattr(defaults, field)})) == []


def test_negative_scale_equal_to_cfg_scale_is_allowed_with_one_scale_methods():
    for method in ("apg", "gated"):
        assert problems_of(OK.replace(guidance=method, cfg_scale=6.0, negative_scale=6.0)) == []
    assert problems_of(OK.replace(guidance="posterior", cfg_scale=6.0, negative_scale=9.0)) == []


def test_a_guidance_that_is_not_text_is_refused_once_by_its_field():
    (problem,) = problems_of(OK.replace(guidance=3, apg_eta=0.5))
    assert problem.startswith("guidance: 3 is not allowed; must be one of")


@pytest.mark.parametrize("value, ok", [(0.01, True), (1, True), (0.5, True), (1.0000001, False), (-1e-9, False),
                                       (float("inf"), False), (True, False), ("0.5", False), (None, False)])
def test_a_negative_window_edge_is_a_finite_number_in_range(value, ok):
    problems = problems_of(OK.replace(negatives=(Negative("a", start=0.0, end=value),)))
    assert (problems == []) is ok, problems


@pytest.mark.parametrize("changes, allowed", [
    ({"sampler": "Euler", "eta": 0.0}, "applies only with the samplers that take eta (Euler a, DPM2 a, DPM2 a Karras, "
                                       "DPM++ 2M SDE, DPM++ 2M SDE Karras, DPM++ SDE, DPM++ SDE Karras, DDIM); leave "
                                       "it unset for Euler"),
    ({"sampler": "DPM++ SDE", "eta": 1.5}, "must be a number from 0 to 1"),
    ({"sampler": "Euler a", "eta": -0.1}, "must be a number from 0 to 1"),
    ({"sampler": "Euler a", "eta": float("nan")}, "must be a number from 0 to 1"),
])
def test_eta_is_refused_with_the_reason(changes, allowed):
    with pytest.raises(ValidationError) as error:
        validate(GenerationRequest("x", **changes))
    [problem] = error.value.problems
    assert (problem.field, problem.allowed) == ("eta", allowed)
    assert problem.value == changes["eta"] or problem.value != problem.value  # the value given (nan is itself)


@pytest.mark.parametrize("changes, field", [({"sampler": ["Euler a"], "eta": 0.5}, "sampler"),
                                            ({"sampler": "Euler", "eta": "x"}, "eta")])
def test_a_bad_sampler_or_eta_is_named_once_by_its_own_rule(changes, field):
    with pytest.raises(ValidationError) as error:
        validate(GenerationRequest("x", **changes))
    assert [p.field for p in error.value.problems] == [field]


@pytest.mark.parametrize("changes", [{"sampler": "Euler a", "eta": 0.0}, {"sampler": "DDIM", "eta": 1.0},
                                     {"sampler": "DPM2 a Karras", "eta": 0.3}, {"sampler": "DPM++ 2M SDE", "eta": 1.0},
                                     {"sampler": "DPM++ 2M SDE", "eta": 1}, {"sampler": "DPM++ SDE Karras", "eta": 0.0},
                                     {"sampler": "DPM++ 2M SDE Karras", "eta": 0.4}, {"sampler": "Euler", "eta": None},
                                     {"sampler": "Nope", "eta": 0.5}])
def test_eta_is_accepted_where_the_sampler_runs_it(changes):
    try:
        validate(GenerationRequest("x", **changes))
    except ValidationError as error:  # only the unknown sampler is named, not its eta
        assert [p.field for p in error.problems] == ["sampler"]


def test_img2img_fields_need_an_init_image_and_an_init_image_must_be_one():
    from avert.init_image import InitImage

    image = InitImage(2, 2, bytes(12), "h")
    with pytest.raises(ValidationError) as error:
        validate(GenerationRequest("x", strength=0.5, resize_mode="crop and resize"))
    assert [(p.field, p.value, p.allowed) for p in error.value.problems] == [
        ("strength", 0.5, "applies only with an init image (img2img) or enable_hr (the hires fix; leave it at 0.75 "
                      "without one)"),
        ("resize_mode", "crop and resize", "applies only with an init image (img2img; leave it at just resize without "
                                           "one)")]
    with pytest.raises(ValidationError) as error:
        validate(GenerationRequest("x", strength=2.0, resize_mode="wide"))  # named once, by their own rule
    assert [p.field for p in error.value.problems] == ["strength", "resize_mode"]
    with pytest.raises(ValidationError) as error:
        validate(GenerationRequest("x", init_image=b"png"))
    assert [(p.field, p.value, p.allowed) for p in error.value.problems] == [
        ("init_image", "bytes", "must be an image (InitImage) or none")]
    assert validate(GenerationRequest("x", init_image=image, strength=0.0, resize_mode="latent upscale"))


def _inpainting(**changes):
    from avert.init_image import InitImage, Mask

    image, mask = InitImage(8, 8, bytes(192), "i"), Mask(8, 8, bytes(64), "m")
    return GenerationRequest("x", init_image=image, mask=mask, width=8, height=8).replace(**changes)


@pytest.mark.parametrize("changes, problems", [
    ({"mask": None, "mask_blur": 2}, [("mask_blur", 2, "applies only with a mask (inpainting; leave it at 4 without one)")]),
    ({"mask": None, "inpaint_full_res_padding": 0}, [("inpaint_full_res_padding", 0, "applies only with a mask "
                                                      "(inpainting; leave it at 32 without one)")]),
    ({"mask": None, "mask_round": False}, [("mask_round", False, "applies only with a mask (inpainting; leave it at "
                                            "True without one)")]),
    ({"init_image": None}, [("mask", "8x8 mask", "applies only with an init image (inpainting re-draws part of it)")]),
    ({"resize_mode": "latent upscale"}, [("resize_mode", "latent upscale", "must be a pixel mode with a mask (just "
                                          "resize, crop and resize, resize and fill)")]),
    ({"mask": "mask.png"}, [("mask", "str", "must be an image (Mask) or none")]),
    ({"init_image": b"png"}, [("init_image", "bytes", "must be an image (InitImage) or none")]),
    ({"mask_blur": 65, "mask": None}, [("mask_blur", 65, "must be an integer from 0 to 64")]),  # named once
])
def test_inpainting_fields_need_a_mask_and_the_mask_an_init_image(changes, problems):
    with pytest.raises(ValidationError) as error:
        validate(_inpainting(**changes), Limits(min_size=8))
    assert [(p.field, p.value, p.allowed) for p in error.value.problems] == problems


def test_every_inpainting_setting_is_accepted_with_a_mask():
    validate(_inpainting(mask_blur=0, inpainting_fill="latent noise", inpainting_mask_invert=True, inpaint_full_res=True,
                         inpaint_full_res_padding=0, mask_round=False, overlay_inpaint=False,
                         resize_mode="resize and fill"), Limits(min_size=8))


HIRES = GenerationRequest("x", enable_hr=True, width=64, height=64, strength=0.5)


@pytest.mark.parametrize("changes, problems", [
    ({"enable_hr": False, "strength": 0.75, "hr_resize_y": 64},
     [("hr_resize_y", 64, "applies only with enable_hr (the hires fix; leave it at 0 without one)")]),
    ({"enable_hr": False, "strength": 0.75, "hr_sampler": "DDIM"},
     [("hr_sampler", "DDIM", "applies only with enable_hr (the hires fix; leave it at None without one)")]),
    ({"enable_hr": False, "strength": 0.75, "hr_negative_prompt": "x"},
     [("hr_negative_prompt", "x", "applies only with enable_hr (the hires fix; leave it at  without one)")]),
    ({"strength": 0}, [("strength", 0, "must be above 0 with enable_hr: the second pass re-draws at this strength "
                                       "(A1111's denoising strength)")]),
    ({"init_image": InitImage(8, 8, bytes(192), "i")},
     [("enable_hr", True, "must be false with an init image: the hires fix is for text to image (A1111's img2img "
                          "has none)")]),
    ({"hr_scale": 4.0, "width": 520}, [("hr_scale", 4.0, "must keep the second pass within 2048 pixels a side "
                                                          "(520x64 enlarged to 2080x256)")]),
    ({"hr_resize_x": 4096}, [("hr_resize_x", 4096, "must be an integer from 0 to 2048")]),
])
def test_hires_fields_need_enable_hr_and_a_second_pass_within_the_limits(changes, problems):
    with pytest.raises(ValidationError) as error:
        validate(HIRES.replace(**changes))
    assert [(p.field, p.value, p.allowed) for p in error.value.problems] == problems


def test_the_hires_size_is_checked_at_the_limit_and_against_the_cover_of_both_resizes():
    validate(HIRES.replace(width=1024, height=1024))  # 2048: at the limit
    validate(HIRES.replace(hr_resize_x=2048, hr_resize_y=2048))
    with pytest.raises(ValidationError, match="enlarged to 2048x4096") as error:
        validate(HIRES.replace(height=128, hr_resize_x=2048, hr_resize_y=16))  # covering needs 2048x4096
    assert [p.field for p in error.value.problems] == ["hr_resize_x"]
    validate(HIRES.replace(width=None))  # the model's size: checked when the model gives it
    validate(HIRES.replace(height=None))
    validate(HIRES.replace(width=2048, height=2048, hr_scale=1.0), Limits(max_size=2048))
    with pytest.raises(ValidationError, match="within 1024 pixels"):
        validate(HIRES.replace(width=1024, height=64, hr_scale=1.5), Limits(max_size=1024))


def test_before_the_model_is_known_a_methods_fields_are_checked_against_the_method_named():
    with pytest.raises(ValidationError) as error:
        validate(GenerationRequest("x", guidance="cfg", apg_eta=0.5), model_guidance=None)
    assert [p.field for p in error.value.problems] == ["apg_eta"]
    validate(GenerationRequest("x", apg_eta=0.5), model_guidance=None)  # the model's method may be apg


def test_the_hires_prompts_are_held_to_the_parsers_bounds():
    assert prompt_fields(HIRES.replace(hr_prompt="a", hr_negative_prompt="b"))[-2:] == [("hr_prompt", "a"),
                                                                                     ("hr_negative_prompt", "b")]
    with pytest.raises(ValidationError) as error:
        validate(HIRES.replace(hr_negative_prompt=("[a:b:3], " * 910)[:8190]))
    assert [p.field for p in error.value.problems] == ["hr_negative_prompt"]


@pytest.mark.parametrize("fields, says", [
    ({"sampler": "Euler a", "schedule_type": "Karras"}, "EulerAncestralDiscreteScheduler, has not): Euler, LMS"),
    ({"sampler": "DPM++ 2M Karras", "schedule_type": "Uniform"}, "choose 'DPM++ 2M' and a schedule type"),
    ({"sampler": "Euler", "schedule_type": "Karras", "enable_hr": True, "hr_sampler": "DDIM"}, "'DDIM'"),
    ({"schedule_type": "Polyexponential"}, "must be one of: Automatic, Uniform, Karras, Exponential, SGM Uniform"),
])
def test_a_schedule_type_that_does_not_go_with_the_sampler_is_refused_by_name(fields, says):
    with pytest.raises(ValidationError) as error:
        validate(GenerationRequest(prompt="a", **fields))
    problem = next(p for p in error.value.problems if p.field == "schedule_type")
    assert says in str(problem)


def test_every_schedule_type_goes_with_the_samplers_whose_scheduler_has_it():
    from avert.sampling.samplers import SAMPLER_NAMES, SCHEDULE_TYPES

    for schedule in SCHEDULE_TYPES:
        for sampler in ("Euler", "DPM++ 2M", "UniPC", "LMS"):
            validate(GenerationRequest(prompt="a", sampler=sampler, schedule_type=schedule))
    for sampler in SAMPLER_NAMES:  # Automatic goes with every sampler
        validate(GenerationRequest(prompt="a", sampler=sampler))
