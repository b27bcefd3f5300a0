"""The `avert eval` subcommand: its flags (added to avert's parser) and what it runs.

    avert eval negatives [--model PATH] [--seeds N] [--first-seed S] [--pair PROMPT NEGATIVE]... [--method M]
                         [guidance options] [--method-cfg-scale F] [--cfg-scale F] [--steps N]
                         [--sampler NAME] [--batch-size N] [--device D] [--threads N] [--json] [--docs DIR] [-q]
    avert eval methods   [--only LABEL]... [--first-seed S] [same flags as negatives, without --pair/--method]
    avert eval img2img   [--strength D] [--pair PROMPT NEGATIVE]... [--method M] [same flags as concepts]
    avert eval compose   [--screen] [same flags as concepts]
    avert eval paraphrases [same flags as concepts]
    avert eval pool FILE... [--json]
    avert eval concepts  [--prompt TEXT]... [--model PATH] [--seeds N] [--cfg-scale F] [--steps N]
                         [--sampler NAME] [--batch-size N] [--device D] [--threads N] [--json] [--docs DIR] [-q]

Only argparse is imported here, so building avert's parser stays fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from avert.argtypes import bounded, device_arg, window_arg
from avert.errors import FieldProblem
from avert.schema import FALLBACK_GUIDANCE

MAX_SEEDS = 1024  # == avert.evaluation.common.MAX_SEEDS (not imported: that module pulls numpy)
DEFAULT_SEEDS = 64


FIRST_SEED_MAX = 2**32 - MAX_SEEDS  # so that the last seed stays under avert.schema.SEED_MAX
seeds_type = bounded("seeds", int, 1, MAX_SEEDS)
first_seed_type = bounded("first_seed", int, 0, FIRST_SEED_MAX)


def _number(kind, name: str):
    def convert(text: str):
        try:
            return kind(text)
        except ValueError:
            wanted = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{name}: {text!r} is not allowed; must be {wanted}")

    convert.__name__ = name
    return convert


def _schema_number(field: str, name: str):
    """argparse type: a value the request schema allows for `field` (default limits), reported as `name`."""
    def convert(text: str):
        from avert.schema import PARAMS_BY_NAME, Limits
        from avert.validation import check_field

        param = PARAMS_BY_NAME[field]
        value = _number(param.type, name)(text)
        if check_field(param, value, Limits()) is not None:
            raise argparse.ArgumentTypeError(str(FieldProblem(name, text, param.describe_allowed(Limits()))))
        return value

    convert.__name__ = name
    return convert


def add_eval_parser(sub, handler) -> argparse.ArgumentParser:
    """Add `eval negatives` and `eval concepts` to avert's subparsers; both run `handler(args)`."""
    from avert.schema import PARAMS_BY_NAME

    p = sub.add_parser("eval", help="measure the model with the concept detector (negatives, concepts); "
                       "writes docs/eval/")
    what = p.add_subparsers(dest="eval_what", required=True, metavar="WHAT")
    negatives = what.add_parser("negatives", help="suppression and fidelity of negative prompts, same seeds "
                                "without and with the negative")
    chosen = negatives.add_mutually_exclusive_group()
    chosen.add_argument("--pair", nargs=2, action="append", metavar=("PROMPT", "NEGATIVE"),
                        help="evaluate this prompt and negative (repeatable); default: the built-in pairs")
    chosen.add_argument("--absent", action="store_true",
                        help="the built-in standing negatives instead: negatives whose concept the prompt does not "
                        "produce, which should cost no fidelity (writes docs/eval/negatives-absent.md)")
    _method_flags(negatives)
    methods = what.add_parser("methods", help="every negative-guidance method on the same pairs and seeds: "
                              "suppression, fidelity, UNet evaluations and seconds per image")
    methods.add_argument("--only", action="append", metavar="LABEL",
                         help="measure only this method of the table, by its label, e.g. \"cfg, rescale 0.2\" "
                         "(repeatable; default: all)")
    methods.add_argument("--set", dest="method_set", choices=("avert", "guiders"), default="avert",
                         help="which table: avert's methods (docs/eval/methods.md) or diffusers' guiders and the two "
                         "APG formulations (docs/eval/methods-guiders.md); default: avert")
    for q in (negatives, methods):
        q.add_argument("--first-seed", type=first_seed_type, default=0, metavar="S",
                       help="seeds S..S+N-1 instead of 0..N-1, to extend an earlier run with new images "
                       "(pool the JSON of both with `avert eval pool`; default: 0)")
    pool = what.add_parser("pool", help="merge the --json rows of runs over consecutive seed ranges "
                           "(--first-seed) into the rows of one run over all their seeds")
    pool.add_argument("files", nargs="+", type=Path, metavar="FILE",
                      help="JSON printed by `avert eval negatives|methods --json`")
    pool.add_argument("--json", action="store_true", help="print only the pooled rows as a JSON list")
    pool.set_defaults(handler=handler)
    concepts = what.add_parser("concepts", help="how often each concept appears when the prompt names it")
    concepts.add_argument("--prompt", action="append", metavar="TEXT",
                          help="measure this prompt for each concept it names, e.g. \"a lone tree\" (repeatable; "
                          "default: one built-in prompt per concept; docs/ is written only by the default run)")
    img2img = what.add_parser("img2img", help="negatives in img2img: each prompt's images re-drawn at --strength "
                              "without and with the negative; then inpainted where their concept is, at "
                              "--inpaint-strength (writes docs/eval/img2img.md)")
    img2img.add_argument("--pair", nargs=2, action="append", metavar=("PROMPT", "NEGATIVE"),
                         help="evaluate this prompt and negative (repeatable); default: the built-in pairs")
    img2img.add_argument("--strength", type=_schema_number("strength", "strength"), default=0.6, metavar="D",
                         help="img2img strength, A1111's denoising strength (default: 0.6)")
    img2img.add_argument("--inpaint-strength", type=_schema_number("strength", "inpaint-strength"), default=0.75,
                         metavar="D", help="strength of the inpainting half (default: 0.75, A1111's)")
    img2img.add_argument("--no-inpainting", action="store_true", help="only the img2img half")
    _method_flags(img2img)
    compose = what.add_parser("compose", help="several negatives at once: each concept's suppression against its "
                              "suppression alone, fidelity and collateral change, k = 1, 2, 4, 8 negatives (writes "
                              "docs/eval/compose.md)")
    compose.add_argument("--screen", action="store_true",
                         help="every rule for several negatives under cfg and gated, at k = 4 only (writes "
                         "docs/eval/compose-screen.md)")
    paraphrases = what.add_parser("paraphrases", help="negatives in words no caption of the world uses: each "
                                  "default pair's negative replaced by paraphrases, under cfg and the model's "
                                  "default (writes docs/eval/paraphrases.md)")
    words = what.add_parser("words", help="which words of a prompt or negative the embedded model's warning names: "
                            "everyday words outside its world and the paraphrases (writes docs/eval/words.md)")
    words.add_argument("--model", default=None, help="a diffusers folder with a scope.json (default: $AVERT_MODEL, "
                       "else the embedded model)")
    words.add_argument("--docs", type=Path, default=Path("docs"), metavar="DIR",
                       help="docs folder: the page is written to DIR/eval/ (default: docs)")
    words.set_defaults(handler=handler)
    for q in (negatives, methods, concepts, img2img, compose, paraphrases):
        q.add_argument("--model", default=None, help="a diffusers folder or an SD .safetensors file "
                       "(default: $AVERT_MODEL, else the embedded model)")
        later = ", or S..S+N-1 after --first-seed S" if q in (negatives, methods) else ""
        q.add_argument("--seeds", type=seeds_type, default=DEFAULT_SEEDS, metavar="N",
                       help=f"images per prompt, seeds 0..N-1{later} (1 to {MAX_SEEDS}; default: {DEFAULT_SEEDS})")
        q.add_argument("--cfg-scale", type=_number(float, "cfg_scale"), default=None, metavar="F",
                       help=f"guidance scale (default: {PARAMS_BY_NAME['cfg_scale'].default})")
        q.add_argument("--steps", type=_number(int, "steps"), default=20, metavar="N",
                       help="sampling steps (default: 20)")
        q.add_argument("--sampler", default=None, metavar="NAME", choices=PARAMS_BY_NAME["sampler"].choices,
                       help=f"sampler, by its A1111 name (default: {PARAMS_BY_NAME['sampler'].default})")
        q.add_argument("--batch-size", type=_number(int, "batch_size"), default=16, metavar="N",
                       help="images per forward pass (default: 16)")
        q.add_argument("--device", default="cpu", type=device_arg, help="torch device (default: cpu)")
        q.add_argument("--threads", type=_number(int, "threads"), default=None, metavar="N",
                       help="torch CPU threads (default: torch's, all cores)")
        q.add_argument("--json", action="store_true", help="print only a JSON list, one object per row")
        q.add_argument("--docs", type=Path, default=Path("docs"), metavar="DIR",
                       help="docs folder: the page is written to DIR/eval/ (default: docs)")
        q.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
        q.set_defaults(handler=handler)
    return p


METHOD_OPTIONS = ("negative_scale", "apg_eta", "apg_norm_threshold", "apg_momentum", "apg_formulation",
                  "zero_init_steps", "fdg_guidance_scales", "fdg_parallel_weights", "mambo_alpha",
                  "perturbed_guidance_scale", "perturbed_guidance_layers", "perturbed_guidance_start",
                  "perturbed_guidance_stop", "seg_blur_sigma", "posterior_prior",
                  "posterior_temperature", "posterior_p_max", "guidance_rescale",
                  "guidance_start", "guidance_end", "guidance_sigma_min", "guidance_sigma_max", "s_min_uncond",
                  "s_min_uncond_all", "guidance_reuse", "nag_scale", "nag_tau", "nag_alpha", "nag_end")


def _method_flags(parser) -> None:
    """--method and the guidance options, from the request schema (validated as a request is)."""
    from avert.schema import GUIDANCE_METHODS, PARAMS_BY_NAME

    parser.add_argument("--method", default=None, choices=GUIDANCE_METHODS,
                        help="negative guidance method for the renders with the negative (default: the model's, "
                        "as `avert generate` uses it: cfg unless the model's avert.json names another; the embedded "
                        "model's is gated)")
    for name in METHOD_OPTIONS:
        param = PARAMS_BY_NAME[name]
        if param.type is bool:
            parser.add_argument(param.flag, dest=name, action="store_const", const=True, default=None,
                                help=param.help)
        else:
            parser.add_argument(param.flag, dest=name, type=_number(param.type, name), default=None,
                                metavar="X", help=param.help)
    parser.add_argument("--negative-window", type=window_arg, default=None, metavar="START:END",
                        help="the negative acts only in this fraction of the run, e.g. 0.2:1 (before it: plain CFG "
                        "against the empty prompt)")
    parser.add_argument("--method-cfg-scale", type=_schema_number("cfg_scale", "method_cfg_scale"), default=None,
                        metavar="F",
                        help="cfg scale of the renders with the negative only; the renders without it keep "
                        "--cfg-scale, so a method at its own scale is compared with the same baseline "
                        "(default: --cfg-scale)")


def method_from_args(args, model_guidance: str = FALLBACK_GUIDANCE):
    """The `Method` the flags describe: label from the method (without --method, the model's default
    `model_guidance`) and the options given."""
    from avert.evaluation.negatives import Method

    method = args.method or model_guidance
    options = tuple((n, getattr(args, n)) for n in METHOD_OPTIONS if getattr(args, n, None) is not None)
    if method != "cfg":
        options = (("guidance", method),) + options
    if getattr(args, "negative_window", None) is not None:
        options += (("negative_window", args.negative_window),)
    if getattr(args, "method_cfg_scale", None) is not None:
        options += (("cfg_scale", args.method_cfg_scale),)
    label = ", ".join([method] + [_option_label(n, v) for n, v in options if n != "guidance"])
    return Method(label, options)


def options_given(args) -> bool:
    """Whether any flag besides --method changes the renders with the negative."""
    flags = METHOD_OPTIONS + ("negative_window", "method_cfg_scale")
    return any(getattr(args, n, None) is not None for n in flags)


def _option_label(name: str, value) -> str:
    if isinstance(value, bool):
        return name
    if isinstance(value, tuple):
        return f"{name} {value[0]:g}-{value[1]:g}"
    if isinstance(value, str):
        return f"{name} {value}"
    return f"{name} {value:g}"


def run_eval(args) -> int:
    """Run `avert eval negatives|methods|concepts` with parsed arguments; 0 on success."""
    if args.eval_what == "negatives":
        return _run_negatives(args)
    if args.eval_what == "methods":
        return _run_methods(args)
    if args.eval_what == "pool":
        return _run_pool(args)
    if args.eval_what == "words":
        from avert.evaluation.words import run_words

        return run_words(args)
    if args.eval_what in ("img2img", "compose", "paraphrases"):
        from avert.evaluation import runs

        return getattr(runs, f"run_{args.eval_what}")(args)
    return _run_concepts(args)


def common(args):
    from avert.evaluation.common import RunInfo, Settings, load_components
    from avert.pipeline.runtime import Runtime

    settings = Settings(steps=args.steps, cfg_scale=args.cfg_scale, sampler=args.sampler,
                        batch_size=args.batch_size, first_seed=getattr(args, "first_seed", 0))
    settings.validate(args.seeds)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    runtime = Runtime(device=args.device)
    components = load_components(args.model)
    return settings, runtime, components, RunInfo.collect(components, args.seeds, settings, runtime)


def _run_negatives(args) -> int:
    from avert.evaluation import negatives as neg

    pairs = neg.pairs_from_args(args.pair, args.absent)  # errors about --pair come before any loading
    settings, runtime, components, info = common(args)
    method = method_from_args(args, components.default_guidance)
    validate_method(settings, method)
    warnings: list[str] = []
    results = neg.evaluate_pairs(pairs, components, seeds=args.seeds, cfg_scale=args.cfg_scale, steps=args.steps,
                                 sampler=args.sampler, batch_size=args.batch_size, progress=not args.quiet,
                                 runtime=runtime, warnings=warnings, method=method, first_seed=settings.first_seed)
    for w in warnings:
        print(f"avert: warning: {w}", file=sys.stderr)
    if args.json:
        print(neg.results_json(results))
        return 0
    print("\n".join(neg.summary_lines(results)) + "\n")
    print(neg.markdown_table(results))
    if not args.pair and (options_given(args) or settings.first_seed):
        print("\n(docs/ is written by a run from seed 0 with --method alone or no method flag, and by `avert eval "
              "methods`)")
    elif not args.pair:
        figure = neg.negatives_figure(results, components, runtime=runtime, batch_size=args.batch_size,
                                      pairs=neg.ABSENT_FIGURE_PAIRS if args.absent else neg.FIGURE_PAIRS,
                                      method=method)
        page = neg.write_negatives_docs(results, info, args.docs, figure, absent=args.absent,
                                        model_default=components.default_guidance)
        print(f"\nwritten to {page}" + (f" and {page.with_suffix('.png')}" if figure is not None else ""))
    return 0


def validate_method(settings, method) -> None:
    from avert.validation import validate

    validate(settings.request("", "x", 0, 1, method.options))


def _run_methods(args) -> int:
    from avert.evaluation import methods as met
    from avert.evaluation import negatives as neg

    methods = chosen_methods(args.only, args.method_set)
    settings, runtime, components, info = common(args)
    for method in methods:
        validate_method(settings, method)
    table = met.evaluate_methods(methods, components, seeds=args.seeds, settings=settings,
                                 runtime=runtime, progress=not args.quiet)
    if args.json:
        print(neg.results_json([r for rows in table.values() for r in rows]))
        return 0
    print(met.methods_table(table))
    if args.only or settings.first_seed:
        print("\n(docs/ is written by the run of every method from seed 0)")
        return 0
    page = met.write_methods_docs(table, info, args.docs, args.method_set)
    print(f"\nwritten to {page}")
    return 0


def _run_pool(args) -> int:
    from avert.evaluation import methods as met
    from avert.evaluation import negatives as neg
    from avert.evaluation.pool import by_method, load_rows, pool_results

    rows = pool_results(load_rows(args.files))
    if args.json:
        print(neg.results_json(rows))
        return 0
    table = by_method(rows)
    for label, results in table.items():
        seeds = sorted({(r.first_seed, r.n_seeds) for r in results})
        ranges = ", ".join(f"{f}..{f + n - 1}" for f, n in seeds)
        print(f"## {label} (seeds {ranges})\n")
        print("\n".join(neg.summary_lines(results)) + "\n")
        print(neg.markdown_table(results) + "\n")
    same_pairs = len({tuple((r.prompt, r.negative) for r in results) for results in table.values()}) == 1
    if len(table) > 1 and same_pairs:
        print("## Methods (the first is the baseline of the targets)\n")
        print("\n".join(met.target_lines(table)) + "\n")
        print("Against the first on the same images (a p above 0.05: no difference in suppression shown):\n")
        print("\n".join(met.paired_lines(table)) + "\n")
        print(met.methods_table(table) + "\n")
        print(met.per_pair_table(table))
    return 0


def chosen_methods(only, which: str = "avert"):
    """The methods of the table `which` named by `--only` (all when none), or an error naming the labels allowed."""
    from avert.errors import AvertError
    from avert.evaluation.methods import METHOD_SETS

    table = METHOD_SETS[which]
    labels = [m.label for m in table]
    unknown = [label for label in only or () if label not in labels]
    if unknown:
        raise AvertError(f"only: {', '.join(map(repr, unknown))} is not a method of the table; allowed: "
                         + "; ".join(labels))
    return [m for m in table if not only or m.label in only]


def _run_concepts(args) -> int:
    from avert.evaluation import concepts as con

    rows = con.prompt_concepts(args.prompt) if args.prompt else None  # errors about --prompt before loading
    settings, runtime, components, info = common(args)
    results = con.evaluate_positive_concepts(components, seeds=args.seeds, cfg_scale=args.cfg_scale,
                                             steps=args.steps, sampler=args.sampler, batch_size=args.batch_size,
                                             progress=not args.quiet, rows=rows, runtime=runtime)
    if args.json:
        print(con.results_json(results))
        return 0
    print("\n".join(con.summary_lines(results)) + "\n")
    print(con.markdown_table(results))
    if args.prompt:
        print("\n(docs/ is written by the run of the built-in prompts)")
        return 0
    page = con.write_concepts_docs(results, info, args.docs)
    print(f"\nwritten to {page}")
    return 0
