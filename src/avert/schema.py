"""One declared schema per generation parameter.

Each `Param` states its default, its allowed range and its help text once; the CLI flags, the request
validation (and later the HTTP API) are all derived from this table, so they cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from avert.sampling.samplers import AUTOMATIC, ETA_SAMPLERS, SAMPLER_NAMES, SCHEDULE_TYPES

SEED_MAX = 2**32 - 1


@dataclass(frozen=True)
class Limits:
    """Bounds that a deployment may tighten or widen (image size, batch, prompt length)."""

    min_size: int = 64
    max_size: int = 2048
    max_batch_size: int = 16
    max_steps: int = 150
    max_cfg_scale: float = 30.0
    max_prompt_chars: int = 8192
    max_negatives: int = 8
    max_prompt_parts: int = 32  # AND parts of the prompt and all negatives: each is a branch of every evaluation
    max_encoded_chars: int = 65536  # distinct texts to encode over the run (schedules make several), all fields
    max_work: float | None = None  # megapixel steps a request may cost (see `avert.pipeline.work`); None: no cap


@dataclass(frozen=True)
class Param:
    """A request field: type, default, bounds (taken from `Limits` where they are configurable), help."""

    name: str
    type: type
    default: object
    help: str
    flag: str
    short: str | None = None
    low: Callable[[Limits], float] | None = None
    high: Callable[[Limits], float] | None = None
    choices: tuple[str, ...] = field(default=())
    multiple_of: int | None = None
    allow: tuple[object, ...] = field(default=())  # special values allowed outside the range (seed -1)
    unset: str = ""  # what a default of None stands for, in help texts
    pattern: tuple[str, str] | None = None  # text: (regular expression it must match whole, how to say so)

    def describe_allowed(self, limits: Limits) -> str:
        """Human text for what this field accepts, used in every error about it."""
        if self.choices:
            return "must be one of: " + ", ".join(self.choices)
        if self.pattern is not None:
            return "must be " + self.pattern[1]
        parts = []
        if self.low is not None and self.high is not None:
            parts.append(f"from {_num(self.low(limits))} to {_num(self.high(limits))}")
        if self.multiple_of:
            parts.append(f"a multiple of {self.multiple_of}")
        if self.type is str and self.high is not None:
            parts = [f"at most {self.high(limits)} characters"]
        if self.type is bool:
            return "must be true or false"
        text = {int: "an integer", float: "a number"}.get(self.type, "text")
        text += (" " + ", ".join(parts)) if parts else ""
        if self.allow:
            text += " (or " + ", ".join(str(a) for a in self.allow) + ")"
        return "must be " + text


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _size_param(name: str, short: str) -> Param:
    return Param(
        name, int, None, f"image {name} in pixels, a multiple of 8", f"--{name}", short,
        low=lambda l: l.min_size, high=lambda l: l.max_size, multiple_of=8, unset="the model's native size",
    )


# avert's methods, then diffusers' guiders (`avert.guidance.guiders.GUIDERS`)
GUIDANCE_METHODS = ("cfg", "apg", "perp-neg", "dynamic", "posterior", "gated", "cfg-zero-star", "tangential",
                    "frequency-decoupled", "magnitude-aware", "pag", "seg", "slg")
LAYERS_PATTERN = (r"(mid|down\.[0-9]|up\.[0-9])(,(mid|down\.[0-9]|up\.[0-9])){0,15}",
                  "UNet blocks by name, comma-separated: mid, down.N, up.N, e.g. mid or up.0,mid")
APG_FORMULATIONS = ("paper", "diffusers")
FDG_SCALES_PATTERN = (r"[0-9]{1,2}(\.[0-9]{1,4})?(,[0-9]{1,2}(\.[0-9]{1,4})?){1,3}",
                      "2 to 4 scales, one per frequency level, highest frequencies first, e.g. 10,5 (each at most "
                      "the cfg_scale limit)")
# `avert.guidance.compose.RULES` and joined
NEGATIVE_RULES = ("sum", "mean", "cap", "orthogonal", "strongest", "protect", "strongest-protect", "joined")
FALLBACK_GUIDANCE = "cfg"  # A1111's: the method of a model whose folder names none (`avert.models.defaults`)
EMPHASIS_MODES = ("Original", "No norm")
LATENT_UPSCALERS = {"Latent": ("bilinear", False), "Latent (antialiased)": ("bilinear", True),  # A1111's latent modes
                    "Latent (bicubic)": ("bicubic", False), "Latent (bicubic antialiased)": ("bicubic", True),
                    "Latent (nearest)": ("nearest", False), "Latent (nearest-exact)": ("nearest-exact", False)}
HR_UPSCALERS = (*LATENT_UPSCALERS, "Lanczos", "Nearest")
INPAINTING_FILLS = ("fill", "original", "latent noise", "latent nothing")  # A1111's inpainting_fill 0..3
RESIZE_MODES = ("just resize", "crop and resize", "resize and fill", "latent upscale")  # A1111's 0..3
SIGMA_MAX = 1000.0
EMPTY_NEGATIVES = ("zeros", "encoded")  # avert.conditioning.sdxl
SIZE_PATTERN = (r"[1-9][0-9]{0,4}x[1-9][0-9]{0,4}", "WIDTHxHEIGHT, e.g. 1024x1024 (1 to 99999 each)")
CROP_PATTERN = (r"[0-9]{1,5},[0-9]{1,5}", "TOP,LEFT, e.g. 0,0 (0 to 99999 each)")
SDXL_ONLY = ("prompt_2", "negative_prompt_2", "empty_negative", "original_size", "crop_top_left", "target_size",
             "negative_original_size", "negative_crop_top_left", "negative_target_size")

PARAMS: tuple[Param, ...] = (
    Param("prompt", str, "", "what the image should show", "prompt", high=lambda l: l.max_prompt_chars),
    Param("negative_prompt", str, "", "what the image must steer away from", "--negative-prompt", "-n",
          high=lambda l: l.max_prompt_chars),
    Param("seed", int, -1, "seed of image 1 (image i uses seed + i - 1); -1 draws a random seed", "--seed",
          low=lambda l: 0, high=lambda l: SEED_MAX, allow=(-1,)),
    Param("steps", int, 20, "number of sampling steps", "--steps", low=lambda l: 1, high=lambda l: l.max_steps),
    Param("cfg_scale", float, 7.0, "classifier-free guidance scale: how strongly the prompt, and away from the "
          "negative, the image is pulled", "--cfg-scale", low=lambda l: 0.0, high=lambda l: l.max_cfg_scale),
    _size_param("width", "-W"),
    _size_param("height", "-H"),
    Param("sampler", str, "Euler a", "sampler, by its AUTOMATIC1111 name", "--sampler", choices=SAMPLER_NAMES),
    Param("schedule_type", str, AUTOMATIC, "the noise schedule's spacing, A1111's schedule type: Automatic (the "
          "sampler's own), Uniform (timesteps evenly spaced: diffusers' linspace), Karras (Karras et al. 2022 sigmas), "
          "Exponential (sigmas evenly spaced in log), SGM Uniform (diffusers' trailing spacing); a sampler whose name "
          "says Karras takes Automatic only", "--schedule-type", choices=SCHEDULE_TYPES),
    Param("eta", float, None, "noise of each step of the samplers that take eta, as A1111 (k-diffusion) runs them: "
          f"{', '.join(ETA_SAMPLERS)}; 0 adds none (deterministic), 1 is the full ancestral step", "--eta",
          low=lambda l: 0.0, high=lambda l: 1.0, unset="the sampler's own: 1 for ancestral and SDE samplers "
          "(A1111's eta_ancestral), 0 for DDIM (eta_ddim)"),
    Param("batch_size", int, 1, "number of images, seeds seed .. seed + n - 1", "--batch-size", "-b",
          low=lambda l: 1, high=lambda l: l.max_batch_size),
    Param("negative_scale", float, None, "strength of the negatives apart from the prompt's; when it differs "
          "from cfg_scale: e = e_0 + w (e_c - e_0) - w_n P, P the negatives' push (one negative: l (e_n - e_0); several: "
          "see negatives_rule)",
          "--negative-scale", low=lambda l: 0.0, high=lambda l: l.max_cfg_scale, unset="the same as cfg_scale"),
    Param("guidance", str, None, "how the negatives steer: cfg, apg (adaptive projected guidance, Sadat et al. "
          "2025, on denoised predictions), perp-neg (Armandpour et al. 2023), dynamic (strength follows the "
          "estimated presence of each negative concept), posterior (strength follows the posterior of each negative "
          "concept tracked along the run, Koulischer et al. 2025: a negative whose concept the image lacks switches "
          "itself off), gated (plain cfg where the prompt's own image holds each negative's concept, the posterior "
          "tracked along the prompt's branch; off where it does not: a standing negative leaves the image alone), "
          "or one of diffusers' guiders, with the negatives as the unconditional branch: cfg-zero-star (CFG-Zero*, "
          "Fan et al. 2025), tangential (TCFG, Kwon et al. 2025), frequency-decoupled (FDG, Sadat et al. 2025), "
          "magnitude-aware (MAMBO-G, 2025); or cfg plus a perturbed copy of the prompt's branch to guide away from: "
          "pag (perturbed attention, Ahn et al. 2024), seg (smoothed energy, Hong 2024), slg (skip layer)",
          "--guidance", choices=GUIDANCE_METHODS, unset="the model's own: cfg, unless its folder's avert.json "
          "names another; the embedded model names gated"),
    Param("negatives_rule", str, None, "how several negatives add up: sum (A1111's and diffusers' arithmetic: the "
          "push grows with their number), mean, cap (the sum no longer than its longest part), orthogonal (each "
          "adds only what the longer ones do not share, Gram-Schmidt), strongest (element-wise, the largest "
          "negative wins), protect and strongest-protect (the sum or strongest, pushing against the prompt no "
          "harder than the strongest negative alone), or joined (their texts as one comma-joined negative, "
          "A1111's single field); one negative is the same under every rule", "--negatives", choices=NEGATIVE_RULES,
          unset="the method's own: strongest-protect for every method (avert.guidance.compose.DEFAULT_RULES)"),
    Param("apg_eta", float, 0.0, "apg: weight of the guidance update's part parallel to the prompt's denoised "
          "prediction (0 drops it, 1 keeps it as CFG does)", "--apg-eta", low=lambda l: -10.0, high=lambda l: 10.0),
    Param("apg_norm_threshold", float, 0.0, "apg: cap on the norm of the update D_c - D_u per image, in pixel or "
          "latent units (0: no cap)", "--apg-norm-threshold", low=lambda l: 0.0, high=lambda l: 1000.0),
    Param("apg_momentum", float, 0.0, "apg: momentum beta of the running update m <- d + beta m (0: off; the "
          "paper uses negative values)", "--apg-momentum", low=lambda l: -5.0, high=lambda l: 1.0),
    Param("apg_formulation", str, "paper", "apg: paper (Sadat et al.'s Algorithm 1 on denoised predictions: D_c + "
          "(w - 1) u) or diffusers (diffusers' AdaptiveProjectedGuidance on the model's outputs: e_u + w u); they "
          "agree at apg_eta 1 without a norm threshold", "--apg-formulation", choices=APG_FORMULATIONS),
    Param("zero_init_steps", int, 1, "cfg-zero-star: the first steps whose prediction is zero (diffusers' "
          "zero_init_steps; 0: none)", "--zero-init-steps", low=lambda l: 0, high=lambda l: l.max_steps),
    Param("fdg_guidance_scales", str, None, "frequency-decoupled: the guidance scale of each level of the Laplacian "
          "pyramid, highest frequencies first (diffusers' guidance_scales)", "--fdg-guidance-scales",
          pattern=FDG_SCALES_PATTERN, unset="cfg_scale for the high frequencies, cfg_scale / 2 (at least 1) for the "
          "low ones"),
    Param("fdg_parallel_weights", float, 1.0, "frequency-decoupled: weight of the update's part parallel to the "
          "prompt's prediction at every level (diffusers' parallel_weights; 1: plain CFG's update)",
          "--fdg-parallel-weights", low=lambda l: 0.0, high=lambda l: 2.0),
    Param("mambo_alpha", float, 8.0, "magnitude-aware: how fast the scale falls as the update grows against the "
          "unconditional prediction, w' = 1 + (w - 1) exp(-alpha |e_c - e_u| / |e_u|) (diffusers' alpha)",
          "--mambo-alpha", low=lambda l: 0.0, high=lambda l: 100.0),
    Param("perturbed_guidance_scale", float, None, "pag, seg, slg: scale s of the guidance away from the perturbed "
          "branch, e + s (e_c - e_p) (diffusers' perturbed_guidance_scale, seg_guidance_scale, "
          "skip_layer_guidance_scale)", "--perturbed-guidance-scale", low=lambda l: 0.0, high=lambda l: 30.0,
          unset="diffusers' 2.8"),
    Param("perturbed_guidance_layers", str, None, "pag, seg, slg: the UNet blocks whose transformer blocks are "
          "perturbed", "--perturbed-guidance-layers", pattern=LAYERS_PATTERN, unset="mid"),
    Param("perturbed_guidance_start", float, None, "pag, seg, slg: the perturbed branch acts on the steps after "
          "step int(start * steps) (diffusers' range, which leaves out that step itself, also at 0)",
          "--perturbed-guidance-start", low=lambda l: 0.0, high=lambda l: 1.0,
          unset="diffusers' 0.01 for pag and slg, 0 for seg"),
    Param("perturbed_guidance_stop", float, None, "pag, seg, slg: ... and before step int(stop * steps)",
          "--perturbed-guidance-stop", low=lambda l: 0.0, high=lambda l: 1.0,
          unset="diffusers' 0.2 for pag and slg, 1 for seg"),
    Param("seg_blur_sigma", float, 9999999.0, "seg: sigma of the Gaussian blur of self-attention's queries, in "
          "tokens; above 9999 infinite: every query their mean", "--seg-blur-sigma", low=lambda l: 0.1,
          high=lambda l: 1e7),
    Param("posterior_prior", float, 0.8, "posterior, gated: prior p(c) of each negative's concept; the negative "
          "acts at min(prior, p_max) / p_max of its strength at the first guided step", "--posterior-prior",
          low=lambda l: 0.001, high=lambda l: 0.999),
    Param("posterior_temperature", float, 1.0, "posterior, gated: temperature T of the Bayes update of each concept's "
          "log-odds (1: Bayes; higher: the evidence counts more, a negative switches off sooner where its concept "
          "is absent)", "--posterior-temperature", low=lambda l: 0.0, high=lambda l: 100.0),
    Param("posterior_p_max", float, 0.8, "posterior, gated: the posterior at which a negative acts at full strength",
          "--posterior-p-max", low=lambda l: 0.01, high=lambda l: 1.0),
    Param("guidance_rescale", float, 0.0, "guidance rescale phi (Lin et al. 2023): 0 off, 0.7 typical",
          "--guidance-rescale", low=lambda l: 0.0, high=lambda l: 1.0),
    Param("guidance_start", float, 0.0, "guidance applies from this fraction of the run on", "--guidance-start",
          low=lambda l: 0.0, high=lambda l: 1.0),
    Param("guidance_end", float, 1.0, "guidance applies up to this fraction of the run; outside, the prompt "
          "alone is evaluated (one UNet branch)", "--guidance-end", low=lambda l: 0.0, high=lambda l: 1.0),
    Param("guidance_sigma_min", float, None, "guidance applies only where sigma > this (Kynkaanniemi et al. "
          "2024 interval, lower end)", "--guidance-sigma-min", low=lambda l: 0.0, high=lambda l: SIGMA_MAX,
          unset="no lower end"),
    Param("guidance_sigma_max", float, None, "guidance applies only where sigma <= this (interval, upper end)",
          "--guidance-sigma-max", low=lambda l: 0.0, high=lambda l: SIGMA_MAX,
          unset="no upper end"),
    Param("s_min_uncond", float, 0.0, "A1111's s_min_uncond: below this sigma, skip the negative on every "
          "other step (0: off)", "--s-min-uncond", low=lambda l: 0.0, high=lambda l: SIGMA_MAX),
    Param("s_min_uncond_all", bool, False, "apply s_min_uncond on every step, not every other one",
          "--s-min-uncond-all"),
    Param("guidance_reuse", bool, False, "on steps where the interval or s_min_uncond skips the negative, add the "
          "last guided step's correction (e - e_c) instead of none; the negative's forward is still skipped",
          "--guidance-reuse"),
    Param("nag_scale", float, 1.0, "Normalized Attention Guidance: how far every cross-attention layer's output "
          "moves away from the negatives' (1: off); acts at any cfg_scale, also 1, where CFG cannot",
          "--nag-scale", low=lambda l: 1.0, high=lambda l: 20.0),
    Param("nag_tau", float, 2.5, "NAG: the most the moved features' L1 norm may grow, as a ratio", "--nag-tau",
          low=lambda l: 1.0, high=lambda l: 10.0),
    Param("nag_alpha", float, 0.5, "NAG: the share of the guided features blended with the prompt's (1: guided "
          "only)", "--nag-alpha", low=lambda l: 0.0, high=lambda l: 1.0),
    Param("nag_end", float, 1.0, "NAG: the fraction of the run after which it stops", "--nag-end",
          low=lambda l: 0.0, high=lambda l: 1.0),
    Param("strength", float, 0.75, "img2img (and the hires fix's second pass): how much of the init image is re-drawn (A1111's denoising strength: "
          "int(min(strength, 0.999) * steps) + 1 of the steps run, from the matching noise level)", "--strength",
          low=lambda l: 0.0, high=lambda l: 1.0),
    Param("resize_mode", str, "just resize", "img2img: how the init image is brought to width x height: stretched, "
          "cropped to cover, fitted with its edges stretched into the bands, or encoded at its own size and the "
          "latent interpolated (A1111's resize modes 0..3)", "--resize-mode", choices=RESIZE_MODES),
    Param("initial_noise_multiplier", float, 1.0, "img2img: the noise that re-draws the init image, scaled (A1111's "
          "noise multiplier for img2img; below 1 keeps more of the image at the same strength)", "--noise-multiplier",
          low=lambda l: 0.0, high=lambda l: 1.5),
    Param("mask_blur", int, 4, "inpainting: Gaussian blur sigma of the mask's edge, in pixels (A1111's mask blur; "
          "0: a hard edge); horizontally only when mask_blur_y is set", "--mask-blur", low=lambda l: 0, high=lambda l: 64),
    Param("mask_blur_y", int, None, "inpainting: the blur's sigma vertically, when it differs from the horizontal "
          "mask_blur (A1111's mask_blur_x and mask_blur_y)", "--mask-blur-y", low=lambda l: 0, high=lambda l: 64,
          unset="mask_blur"),
    Param("inpainting_fill", str, "original", "inpainting: what the masked area starts from: the init image "
          "(original), its surroundings blurred into it (fill), noise (latent noise) or nothing (latent nothing), "
          "A1111's masked content", "--inpainting-fill", choices=INPAINTING_FILLS),
    Param("inpainting_mask_invert", bool, False, "inpainting: re-draw what the mask leaves black instead of what it "
          "paints white (A1111's inpaint not masked)", "--inpainting-mask-invert"),
    Param("inpaint_full_res", bool, False, "inpainting: render only the mask's bounding box (grown by the padding, "
          "to the width:height ratio) at width x height and paste it back (A1111's only masked)",
          "--inpaint-full-res"),
    Param("inpaint_full_res_padding", int, 32, "inpainting, only masked: pixels added around the mask's bounding box",
          "--inpaint-full-res-padding", low=lambda l: 0, high=lambda l: 1024),
    Param("mask_round", bool, True, "inpainting: round the latent mask to 0 or 1 (and a mask from transparency at 128) "
          "as A1111's mask_round does; off, the blurred edge blends the latents", "--no-mask-round"),
    Param("overlay_inpaint", bool, True, "inpainting: paste the init image back over everything outside the (blurred) "
          "mask, so those pixels come back unchanged (A1111's overlay_inpaint); off, the whole image is the decoded "
          "latents, as diffusers' pipeline returns it", "--no-overlay-inpaint"),
    Param("enable_hr", bool, False, "hires fix: render at width x height, upscale, then re-draw at the larger size "
          "with strength as A1111's denoising strength (A1111's enable_hr)", "--enable-hr"),
    Param("hr_scale", float, 2.0, "hires fix: the second pass's size over the first's (when hr_resize_x and "
          "hr_resize_y are 0)", "--hr-scale", low=lambda l: 1.0, high=lambda l: 4.0),
    Param("hr_resize_x", int, 0, "hires fix: the second pass's width (0: from hr_scale, or from hr_resize_y and the "
          "ratio); with hr_resize_y, the image is upscaled to cover both and cropped", "--hr-resize-x",
          low=lambda l: 0, high=lambda l: l.max_size),
    Param("hr_resize_y", int, 0, "hires fix: the second pass's height (0: from hr_scale, or from hr_resize_x)",
          "--hr-resize-y", low=lambda l: 0, high=lambda l: l.max_size),
    Param("hr_upscaler", str, "Latent", "hires fix: how the first pass is enlarged: in latent space (A1111's latent "
          "modes: interpolated) or as pixels (Lanczos, Nearest: decoded, resized, encoded again)", "--hr-upscaler",
          choices=HR_UPSCALERS),
    Param("hr_second_pass_steps", int, 0, "hires fix: steps the second pass runs (0: steps), from the end of a "
          "schedule of int(n / min(strength, 0.999)) steps, as A1111 runs it", "--hr-second-pass-steps",
          low=lambda l: 0, high=lambda l: l.max_steps),
    Param("hr_sampler", str, None, "hires fix: the second pass's sampler", "--hr-sampler", choices=SAMPLER_NAMES,
          unset="the first pass's"),
    Param("hr_prompt", str, "", "hires fix: the second pass's prompt (empty: the prompt)", "--hr-prompt",
          high=lambda l: l.max_prompt_chars),
    Param("hr_negative_prompt", str, "", "hires fix: the second pass's negative prompt, in place of negative_prompt "
          "(empty: the same negatives)", "--hr-negative-prompt", high=lambda l: l.max_prompt_chars),
    Param("tiling", bool, False, "seamless image: circular padding in every convolution of the UNet and the VAE "
          "(A1111's tiling), so the image continues across its left and right, top and bottom edges", "--tiling"),
    Param("clip_skip", int, 1, "use the text encoder's hidden states this many layers from the end (A1111 "
          "clip skip; 1 = last layer)", "--clip-skip", low=lambda l: 1, high=lambda l: 12),
    Param("emphasis", str, "Original", "how (word:1.2) weights apply: Original (rescaled to the chunk's mean, "
          "A1111's default) or No norm", "--emphasis", choices=EMPHASIS_MODES),
    Param("prompt_2", str, "", "SDXL: the prompt's text for the second text encoder (OpenCLIP bigG) in every part "
          "and schedule of the prompt (empty: the prompt; diffusers' prompt_2)", "--prompt-2",
          high=lambda l: l.max_prompt_chars),
    Param("negative_prompt_2", str, "", "SDXL: negative_prompt's text for the second text encoder (empty: "
          "negative_prompt; diffusers' negative_prompt_2)", "--negative-prompt-2", high=lambda l: l.max_prompt_chars),
    Param("empty_negative", str, None, "SDXL: an empty negative is the zero tensor (zeros, as A1111 and the "
          "model's force_zeros_for_empty_prompt) or the encoding of \"\" (encoded)", "--empty-negative",
          choices=EMPTY_NEGATIVES, unset="the model's force_zeros_for_empty_prompt"),
    *[Param(f"{side}{name}", str, None, f"SDXL: the {what} the {branch} is conditioned on ({kind})",
            f"--{side.replace('_', '-')}{name.replace('_', '-')}", pattern=pattern, unset=unset)
      for side, branch, unset_side in (("", "prompt", "width x height"), ("negative_", "negative", "the prompt's"))
      for name, what, kind, pattern, unset in (
          ("original_size", "original image size", "WIDTHxHEIGHT; SDXL's micro-conditioning", SIZE_PATTERN,
           unset_side),
          ("crop_top_left", "crop's top-left corner", "TOP,LEFT in pixels", CROP_PATTERN,
           "0,0" if not side else "the prompt's"),
          ("target_size", "target size", "WIDTHxHEIGHT", SIZE_PATTERN, unset_side))],
)

PARAMS_BY_NAME = {p.name: p for p in PARAMS}
