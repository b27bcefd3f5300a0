"""Every validation error names the field, the value and what is allowed; all problems are listed at once."""

from __future__ import annotations

import pytest

from avert.errors import ValidationError
from avert.request import GenerationRequest
from avert.schema import Limits
from avert.validation import validate

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
    {"sampler": "DPM++ SDE Karras"}, {"negative_prompt": ""},
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
