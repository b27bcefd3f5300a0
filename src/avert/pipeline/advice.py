"""What a user should hear before a run: words the model does not know, and a size far from its native one.

Both are warnings, never refusals: a word far from the model's captions likely means nothing to it (in a prompt
it is mostly ignored; as a negative it may push elsewhere than meant, docs/eval/paraphrases.md; how well the bound
tells such words apart: docs/eval/words.md), and a size far above the
native one costs in proportion to the pixels (more, with attention) and, on a model trained at one size, gives
a poorer image. The time a run will take is measured from its first step (`avert.cli` prints it), not guessed.
"""

from __future__ import annotations

from avert.models.components import Components
from avert.models.scope import far_words
from avert.request import GenerationRequest
from avert.validation import prompt_fields

FAR_FROM_NATIVE = 4.0  # a size with more than this many times the native pixels is warned about
SIZE_WARNING_START = "times the pixels of this model's native"  # how a caller tells the size warning apart


def native_size(components: Components) -> int:
    sample_size = components.unet.config.sample_size
    sample_size = sample_size if isinstance(sample_size, int) else sample_size[0]
    return int(sample_size) * components.vae_scale_factor


def size_ratio(request: GenerationRequest, components: Components) -> float:
    """The request's pixels over the model's native square's (width, height None: the native size)."""
    native = native_size(components)
    return (request.width or native) * (request.height or native) / (native * native)


def size_warning(request: GenerationRequest, components: Components) -> str | None:
    ratio = size_ratio(request, components)
    if ratio <= FAR_FROM_NATIVE:
        return None
    native = native_size(components)
    trained = " and was trained at that size: expect a poorer image" if components.scope is not None else ""
    return (f"{request.width or native}x{request.height or native} has {ratio:.0f} times the pixels of this model's "
            f"native {native}x{native}{trained}; each step costs at least {ratio:.0f} times as much (the time is "
            "estimated from the first step)")


def scope_warning(request: GenerationRequest, components: Components) -> str | None:
    """The words of the prompt and negatives the model never saw nor anything near them (models with a scope)."""
    scope = components.scope
    if scope is None:
        return None
    far = far_words([text for _, text in prompt_fields(request)], scope, components.tokenizer, components.text_encoder)
    if not far:
        return None
    words = ", ".join(f"{word!r} (nearest it knows: {near}, similarity {s:.2f})" for word, s, near in far)
    return (f"this model knows only its own world ({scope.about.split(':')[0]}); these words are far from "
            f"everything it was trained on, so it likely ignores them in a prompt, and as a negative they may push "
            f"elsewhere than meant: {words}. `avert concepts` lists what it knows")


def advice(request: GenerationRequest, components: Components) -> tuple[str, ...]:
    return tuple(w for w in (scope_warning(request, components), size_warning(request, components)) if w)
