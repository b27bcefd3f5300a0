"""What `avert eval img2img`, `compose` and `paraphrases` run (the parser is `avert.evaluation.cli`)."""

from __future__ import annotations

from avert.evaluation.cli import common, method_from_args, options_given, validate_method


def run_img2img(args) -> int:
    import json
    from dataclasses import asdict

    from avert.evaluation import img2img as i2i
    from avert.evaluation import inpainting as inp
    from avert.evaluation import negatives as neg

    pairs = neg.pairs_from_args(args.pair)
    settings, runtime, components, info = common(args)
    method = method_from_args(args, components.default_guidance)
    validate_method(settings, method)
    rows = i2i.evaluate_img2img(pairs, components, args.seeds, args.strength, settings, method, runtime=runtime,
                                progress=not args.quiet)
    inpainted = [] if args.no_inpainting else inp.evaluate_inpainting(
        pairs, components, args.seeds, args.inpaint_strength, settings, method, runtime=runtime, progress=not args.quiet)
    if args.json:
        print(json.dumps({"img2img": [{**asdict(r.result), "rate_init": r.rate_init, "strength": r.strength}
                                      for r in rows],
                          "inpainting": [{**asdict(r), "suppression": r.suppression} for r in inpainted]},
                         indent=2, ensure_ascii=False))
        return 0
    print("\n".join(i2i.summary(rows) + inp.summary(inpainted)) + "\n")
    print(i2i.table(rows) + ("\n\n" + inp.table(inpainted) if inpainted else ""))
    if not args.pair and not options_given(args) and not args.no_inpainting:
        picture = i2i.figure(rows, components, settings, method, runtime)
        second = inp.figure(inpainted, components, settings, method, args.inpaint_strength, runtime=runtime)
        section = inp.section(inpainted, args.inpaint_strength, method, "inpainting.png")
        page = i2i.write_docs(rows, info, args.docs, picture, method, section, {"inpainting.png": second},
                              f" --inpaint-strength {args.inpaint_strength:g}")
        print(f"\nwritten to {page} and its pictures")
    return 0


def run_compose(args) -> int:
    import json
    from dataclasses import asdict

    from avert.evaluation import compose as com
    from avert.evaluation import compose_report as report
    from avert.schema import NEGATIVE_RULES

    settings, runtime, components, info = common(args)
    default = components.default_guidance
    methods = com.screen_methods(NEGATIVE_RULES) if args.screen else com.methods_for(default)
    ks = (report.TARGET_K,) if args.screen else com.KS
    rows = com.evaluate_compose(com.CASES, components, args.seeds, methods, ks, settings, runtime,
                                progress=not args.quiet)
    if args.json:
        print(json.dumps([{**asdict(r), "ratios": r.ratios} for r in rows], indent=2, ensure_ascii=False))
        return 0
    label = methods[-1].label
    print("\n".join(report.target_lines(rows, label)) + "\n" if not args.screen else "")
    print(report.table(rows))
    command = f"avert eval compose{' --screen' if args.screen else ''} --seeds {args.seeds}"
    picture = None if args.screen else report.figure(rows, methods, components, settings, runtime)
    page = report.write(rows, info, args.docs, label, command, args.screen, picture)
    print(f"\nwritten to {page}")
    return 0


def run_paraphrases(args) -> int:
    import json
    from dataclasses import asdict

    from avert.evaluation import paraphrases as par

    settings, runtime, components, info = common(args)
    rows = par.evaluate(components, args.seeds, settings, runtime, progress=not args.quiet)
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2, ensure_ascii=False))
        return 0
    print("\n".join(par.summary(rows)) + "\n")
    print(par.table_markdown(rows))
    page = par.write(rows, info, args.docs, f"avert eval paraphrases --seeds {args.seeds}")
    print(f"\nwritten to {page}")
    return 0
