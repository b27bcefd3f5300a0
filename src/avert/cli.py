"""The `avert` command: generate, compare, prompt, info, samplers, train, eval, bench, serve and batch.

Flags for request fields are built from `avert.schema.PARAMS`, so defaults, bounds and help text are
declared once. Errors print as one clear message (field, value, what is allowed), never a traceback.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Sequence

from avert.argtypes import bounded, device_arg, window_arg
from avert.errors import AvertError, FieldProblem, ValidationError
from avert.schema import PARAMS, Limits, Param

LIMITS = Limits()


USAGE, FAILURE = 2, 1  # exit statuses: what was given is wrong; the run failed (I/O, memory, a bug)


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command. Every error is one line on stderr (`AVERT_DEBUG=1` adds the traceback): exit status 2
    when an argument or a file given is wrong, 1 when the run fails, 130 when interrupted."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except ValidationError as exc:
        return _error("invalid request: " + "; ".join(str(_shown(p)) for p in exc.problems), USAGE)
    except AvertError as exc:
        return _error(str(exc), USAGE)
    except KeyboardInterrupt:
        print("avert: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        return _error(f"{where}{exc.strerror or exc}", FAILURE)
    except Exception as exc:  # noqa: BLE001 - one line, never a traceback (unless asked for)
        return _error(f"{type(exc).__name__}: {exc}", FAILURE)


def _shown(problem: FieldProblem, limit: int = 200) -> FieldProblem:
    """The problem with a long value cut (an 8192-character prompt is not worth repeating)."""
    value = problem.value
    if isinstance(value, str) and len(value) > limit:
        value = value[:limit] + f"... ({len(problem.value)} characters)"
    return FieldProblem(problem.field, value, problem.allowed)


def _error(message: str, status: int) -> int:
    import os
    import traceback

    if os.environ.get("AVERT_DEBUG"):
        traceback.print_exc()
    print(f"avert: error: {' '.join(message.split())}", file=sys.stderr)
    return status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avert", description="Text-to-image with negative prompts as a "
                                     "first-class control.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _generate_parser(sub)
    _compare_parser(sub)
    info = sub.add_parser("info", help="print the generation parameters stored in a PNG")
    info.add_argument("image", type=Path)
    info.add_argument("--json", action="store_true", help="print the structured record as JSON")
    info.set_defaults(handler=_run_info)
    _prompt_parser(sub)
    concepts = sub.add_parser("concepts", help="what a model knows: its concepts and the words of its captions (for "
                              "models that say so, as the embedded one does)")
    concepts.add_argument("--model", default=None, help="a diffusers folder (default: $AVERT_MODEL, else the embedded "
                          "model)")
    concepts.add_argument("--words", action="store_true", help="also list every word of its captions")
    concepts.set_defaults(handler=_run_concepts)
    samplers = sub.add_parser("samplers", help="list the samplers by their AUTOMATIC1111 names")
    samplers.set_defaults(handler=_run_samplers)
    _train_parser(sub)
    _serve_parser(sub)
    bench = sub.add_parser("bench", help="benchmarks that print a table and write it to docs/")
    bench.add_argument("what", choices=("engine", "startup", "sdxl", "scale", "nag", "readme", "first-run"),
                       help="engine: avert vs diffusers on tiny components; startup: the README's main command on the embedded model, as fresh "
                       "processes; sdxl: SDXL base's architecture at 1024x1024 (random weights, about 14 GB of "
                       "memory); scale: avert batch in one process and on a local Ray cluster of 1 and 2 workers "
                       "(needs avert[ray]; about 8 minutes); nag: a negative through NAG at CFG 1 against CFG's second "
                       "branch, on the embedded model; readme: every usage command of the README, timed; first-run: "
                       "git clone, the README's install line in a fresh environment and its first command")
    bench.add_argument("--requests", type=bounded("requests", int, 16, 10000), default=96,
                       help="scale: requests in the job (default: %(default)s)")
    bench.add_argument("--repeats", type=bounded("repeats", int, 1, 100), default=None,
                       help="runs of each (default 5; sdxl: 2, in the order avert, diffusers, diffusers, avert)")
    bench.add_argument("--size", type=bounded("size", int, 64, 2048), default=1024, help="sdxl: image size")
    bench.add_argument("--eval-seeds", type=bounded("eval-seeds", int, 1, 64), default=0, metavar="N",
                       help="readme: also run the README's avert eval lines, each at N seeds (default: not)")
    bench.add_argument("--docs", type=Path, default=Path("docs"), help="folder the table is written to")
    bench.set_defaults(handler=_run_bench)
    from avert.batch.cli import add_batch_parser
    from avert.evaluation.cli import add_eval_parser

    add_eval_parser(sub, handler=_run_eval)
    add_batch_parser(sub, handler=_run_batch)
    return parser


def _train_parser(sub) -> None:
    from avert.schema import GUIDANCE_METHODS
    from avert.train.config import OBJECT_MASKS, PRECISIONS, TONE_NOISE_CAPTIONS, TrainConfig

    p = sub.add_parser("train", help="train the embedded model on the procedural world (resumes a run)")
    p.add_argument("--run", dest="run_dir", type=Path, default=Path("runs/embedded"),
                   help="run folder: data cache, checkpoints, log and the exported model (default: runs/embedded); "
                   "an existing checkpoint is resumed")
    p.add_argument("--export", type=Path, default=None,
                   help="write the final model folder here instead of RUN/model (e.g. src/avert/embedded/model)")
    p.add_argument("--init-from", type=Path, default=None, metavar="MODEL",
                   help="start a new run from an exported model folder (e.g. the shipped one) and its step count")
    defaults = TrainConfig()
    bounds = {"steps": (1, 10**7), "batch_size": (1, 1024), "images": (64, 10**7), "seed": (0, 2**32 - 1),
              "checkpoint_every": (1, 10**7), "decay_from": (0, 10**7), "warmup": (1, 10**7),
              "tone_noise_below": (1, 1000)}
    helps = {"decay_from": "from this step the learning rate falls linearly to 5%% at --steps; 0: no decay",
             "warmup": "steps of linear learning-rate warm-up from the run's first step",
             "tone_noise_below": "--tone-noise swaps captions only at training timesteps below this (of 1000), "
             "late in a run, where a tone negative overshoots; 1000: at every timestep"}
    for name, (low, high) in bounds.items():
        p.add_argument("--" + name.replace("_", "-"), type=bounded(name, int, low, high),
                       default=getattr(defaults, name),
                       help=f"{helps.get(name, '')} (default: {getattr(defaults, name)})".strip())
    p.add_argument("--lr", type=bounded("lr", float, 1e-7, 1.0), default=defaults.lr,
                   help=f"learning rate (default: {defaults.lr})")
    p.add_argument("--ema-decay", type=bounded("ema-decay", float, 0.0, 0.99999), default=defaults.ema_decay,
                   help=f"decay of the exported EMA of the weights, per step (default: {defaults.ema_decay})")
    p.add_argument("--object-weight", type=bounded("object-weight", float, 0.0, 100.0), default=defaults.object_weight,
                   help="extra loss weight on the pixels where the world draws an object, so small objects (a tree) "
                   f"count for more than their area (default: {defaults.object_weight}: none)")
    p.add_argument("--tone-noise", type=bounded("tone-noise", float, 0.0, 1.0), default=defaults.tone_noise,
                   help="chance that an image without a tone grade is trained on a caption that names only a tone "
                   f"(caption noise that keeps tone negatives from overshooting) (default: {defaults.tone_noise})")
    p.add_argument("--tone-noise-captions", default=defaults.tone_noise_captions, choices=TONE_NOISE_CAPTIONS,
                   help="the captions --tone-noise draws: tone-only: every caption that names only a tone (\"a "
                   "landscape, green tones\"); bare: only a tone phrase alone (\"green tones\"), the form a "
                   f"standing negative takes, so prompts that name a scene keep their grade (default: "
                   f"{defaults.tone_noise_captions})")
    p.add_argument("--object-mask", default=defaults.object_mask, choices=OBJECT_MASKS,
                   help="which pixels --object-weight weighs: all objects in the image; named: only the objects "
                   "the caption names; named+tone: those, or the whole image when the caption names a tone grade "
                   f"(default: {defaults.object_mask})")
    p.add_argument("--precision", default=defaults.precision, choices=PRECISIONS,
                   help="bf16 autocast or fp32; auto: bf16 where the CPU has native bf16 (AVX-512 bf16, AMX), "
                   "else fp32 (default: auto)")
    p.add_argument("--default-guidance", default=defaults.default_guidance, choices=GUIDANCE_METHODS,
                   help="the guidance the exported model recommends (its avert.json), used when a request names "
                   f"none (default: {defaults.default_guidance}: a tone the image lacks, as a standing negative, "
                   "wrecks a world model's image under plain cfg)")
    p.add_argument("--threads", type=bounded("threads", int, 1, 256), default=None,
                   help="torch threads (default: all cores)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_run_train)


def _serve_parser(sub) -> None:
    from avert.server.config import DEFAULT_MAX_WORK, MIN_KEY_CHARS

    p = sub.add_parser("serve", help="HTTP server: A1111-compatible API, avert's API with every negative control, "
                       "and a web page")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1; any other needs "
                   "--api-key or --insecure)")
    p.add_argument("--port", type=bounded("port", int, 1, 65535), default=7860, help="(default: 7860)")
    p.add_argument("--model", default=None, metavar="NAME_OR_PATH", help="default model: a name in --models-dir or a "
                   "path (default: $AVERT_MODEL, else the embedded model)")
    p.add_argument("--models-dir", type=Path, default=None, metavar="DIR",
                   help="folder of models clients may choose by name (diffusers folders, .safetensors files)")
    p.add_argument("--embeddings", type=Path, default=None, metavar="DIR",
                   help="textual-inversion .safetensors files, used by name in prompts (default: $AVERT_EMBEDDINGS)")
    p.add_argument("--styles", dest="styles_file", type=Path, default=None, metavar="FILE",
                   help="prompt styles clients may name (A1111's styles.csv; GET /sdapi/v1/prompt-styles lists them) "
                   "(default: $AVERT_STYLES)")
    p.add_argument("--lora-dir", type=Path, default=None, metavar="DIR",
                   help="LoRA .safetensors files clients name in the prompt as <lora:NAME:WEIGHT> (file stem), "
                   "applied for that request only (default: $AVERT_LORA_DIR)")
    p.add_argument("--presets", dest="presets_file", type=Path, default=None, metavar="FILE",
                   help="keep the clients' saved presets of negatives in FILE, one JSON file (each API key its own "
                   "presets) (default: $AVERT_PRESETS, else in memory until the server stops)")
    p.add_argument("--api-key-file", type=Path, default=None, metavar="FILE",
                   help="require a key from FILE (one per line; each key's jobs are its own) as a bearer token or "
                   "basic-auth password (default: $AVERT_API_KEY, one key)")
    p.add_argument("--api-key", default=None, metavar="KEY", help="a key on the command line, where every user of "
                   "the machine can read it in ps: prefer $AVERT_API_KEY or --api-key-file")
    p.add_argument("--insecure-key", action="store_true", help=f"accept keys shorter than {MIN_KEY_CHARS} characters")
    p.add_argument("--insecure", action="store_true", help="allow binding beyond 127.0.0.1 without an API key")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="a Host name clients reach the server by, besides the bound address (repeat; '*': any), e.g. "
                   "the name a reverse proxy forwards; others get 400 (DNS rebinding)")
    p.add_argument("--max-work", type=bounded("max-work", float, 0.001, 1e6), default=DEFAULT_MAX_WORK,
                   metavar="MP_STEPS", help="the most a request may cost, in megapixel steps (width x height / 10^6 x "
                   "model evaluations x branches x images) (default: %(default)s, a few minutes on a 2-core CPU)")
    p.add_argument("--rate-limit", type=bounded("rate-limit", int, 0, 100000), default=120, metavar="N",
                   help="POST, PUT and DELETE requests a client may make per minute; 0: no limit (default: 120)")
    p.add_argument("--queue-size", type=bounded("queue-size", int, 1, 10000), default=16,
                   help="jobs that may wait, over all models; more get 503 with Retry-After (default: 16)")
    p.add_argument("--max-body-mb", type=bounded("max-body-mb", float, 0.01, 1024), default=16.0,
                   help="largest request body in MiB (default: 16)")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="allow cross-origin requests from ORIGIN (repeat; default: none)")
    p.add_argument("--device", default="cpu", type=device_arg, help="torch device (default: cpu)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"), help="fp32 (exact) or bf16 autocast")
    p.add_argument("--ray", action="store_true", help="serve through Ray Serve, one model per replica (needs pip "
                   "install 'avert[ray]'; docs/scale-out.md)")
    p.add_argument("--ray-address", default=None, metavar="ADDR", help="with --ray: the cluster to join (default: "
                   "a Ray instance of this machine's own, on loopback)")
    p.add_argument("--replicas", type=bounded("replicas", int, 1, 1000), default=None,
                   help="with --ray: replicas, each holding the model (default: 2)")
    p.add_argument("--cpus-per-replica", type=bounded("cpus-per-replica", float, 0.25, 512), default=None,
                   metavar="N", help="with --ray: CPUs each replica reserves (default: 1)")
    p.set_defaults(handler=_run_serve)


def _run_serve(args) -> int:
    import dataclasses

    from avert.server.app import serve
    from avert.server.config import ServerConfig

    _quiet_libraries()
    config = ServerConfig(host=args.host, port=args.port, model=args.model, models_dir=args.models_dir,
                          embeddings_dir=_embeddings_dir(args), api_keys=_api_keys(args), insecure=args.insecure,
                          insecure_key=args.insecure_key, allowed_hosts=tuple(args.allowed_host),
                          rate_limit=args.rate_limit, queue_size=args.queue_size,
                          max_body_bytes=int(args.max_body_mb * 1024 * 1024), cors_origins=tuple(args.cors_origin),
                          limits=dataclasses.replace(LIMITS, max_work=args.max_work), device=args.device,
                          precision=args.precision, styles=_styles(args), presets_file=_presets_file(args),
                          lora_dir=_lora_dir(args))
    config.check_bind()
    if args.api_key:
        print("avert serve: warning: --api-key is visible to every user of this machine (ps); prefer $AVERT_API_KEY "
              "or --api-key-file", file=sys.stderr)
    ray_only = [(f, v) for f, v in (("--ray-address", args.ray_address), ("--replicas", args.replicas),
                                    ("--cpus-per-replica", args.cpus_per_replica)) if v is not None]
    if ray_only and not args.ray:
        raise ValidationError([FieldProblem(ray_only[0][0], ray_only[0][1], "applies only with --ray")])
    if args.ray:
        from avert.server.on_ray import serve_on_ray

        serve_on_ray(config, address=args.ray_address, replicas=args.replicas or 2, cpus=args.cpus_per_replica or 1.0)
    else:
        serve(config)
    return 0


def _lora_dir(args) -> Path | None:
    import os

    return args.lora_dir or (Path(os.environ["AVERT_LORA_DIR"]) if os.environ.get("AVERT_LORA_DIR") else None)


def _presets_file(args) -> Path | None:
    """--presets, else $AVERT_PRESETS; a folder is refused by name (the file is written whole on every save)."""
    import os

    path = args.presets_file or (Path(os.environ["AVERT_PRESETS"]) if os.environ.get("AVERT_PRESETS") else None)
    if path is not None and path.is_dir():
        raise ValidationError([FieldProblem("--presets", str(path), "must be a file (it need not exist yet), not a "
                                            "folder")])
    return path


def _api_keys(args) -> tuple[str, ...]:
    """The keys: --api-key-file (one a line; blank lines and # comments skipped), --api-key, $AVERT_API_KEY."""
    import os

    keys = []
    if args.api_key_file is not None:
        path = args.api_key_file
        if not path.is_file():
            raise AvertError(f"api-key-file: {str(path)!r} is not a readable file")
        keys += [line.strip() for line in path.read_text(encoding="utf-8").splitlines()
                 if line.strip() and not line.lstrip().startswith("#")]
        if not keys:
            raise AvertError(f"api-key-file: {str(path)!r} holds no key")
    keys += [k for k in (args.api_key, os.environ.get("AVERT_API_KEY")) if k]
    return tuple(dict.fromkeys(keys))


def _run_train(args) -> int:
    import dataclasses

    import torch

    from avert.train.config import TrainConfig
    from avert.train.loop import train

    _quiet_libraries()
    if args.threads:
        torch.set_num_threads(args.threads)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    try:
        config.resolved()  # settings that are wrong together, named before any work
    except ValueError as problem:
        raise AvertError(str(problem)) from None
    model = train(args.run_dir, config, export=args.export, progress=not args.quiet, init_from=args.init_from)
    print(f"model written to {model}")
    return 0


def _prompt_parser(sub) -> None:
    p = sub.add_parser("prompt", help="show how a prompt (or negative) is parsed, scheduled, weighted and chunked")
    p.add_argument("text", help="a prompt in A1111 syntax: (x:1.2), [x], [a:b:0.5], [a|b], AND, BREAK")
    p.add_argument("--steps", type=bounded("steps", int, 1, LIMITS.max_steps), default=20)
    p.add_argument("--json", action="store_true", help="print one JSON object (keys schedule, attention, parts)")
    p.add_argument("--model", default=None, help="whose tokenizer counts the tokens (default: the embedded model)")
    p.add_argument("--embeddings", type=Path, default=None, metavar="DIR",
                   help="textual-inversion .safetensors files, used by file name (default: $AVERT_EMBEDDINGS)")
    p.set_defaults(handler=_run_prompt)


def _run_prompt(args) -> int:
    from avert.conditioning.embeddings import load_embeddings
    from avert.conditioning.report import format_report, prompt_report
    from avert.prompts.schedule import PromptTooComplex

    components = _load_plain(args.model)
    try:
        report = prompt_report(args.text, args.steps, components.tokenizer, load_embeddings(_embeddings_dir(args)))
    except PromptTooComplex as error:
        raise ValidationError([FieldProblem("prompt", args.text, str(error))]) from None
    print(json.dumps(report, ensure_ascii=False) if args.json else format_report(report))
    return 0


def _embeddings_dir(args) -> Path | None:
    import os

    given = getattr(args, "embeddings", None)
    return given if given is not None else (Path(os.environ["AVERT_EMBEDDINGS"])
                                            if os.environ.get("AVERT_EMBEDDINGS") else None)


def _generate_parser(sub) -> None:
    p = sub.add_parser("generate", help="render images from a prompt and negative prompts")
    _add_request_flags(p, skip=("negative_prompt",))
    _add_negative_flags(p)
    p.add_argument("--from", dest="from_image", type=Path, metavar="IMAGE",
                   help="re-make an image from the parameters stored in it (flags given override them; an img2img "
                   "image needs its --init-image again)")
    _add_init_image_flag(p)
    _add_style_flags(p)
    p.add_argument("-o", "--output", type=Path, default=None, metavar="FILE_OR_DIR",
                   help="a .png file, or a folder (default: ./outputs)")
    p.add_argument("--upscale", type=bounded("upscale", int, 1, 16), default=None, metavar="N",
                   help="save images enlarged N times (nearest); default: enough for 256 px (the embedded model "
                   "makes 32x32 images), 1 for images of 256 px and more")
    _add_model_flags(p)
    p.set_defaults(handler=_run_generate)


def _add_style_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--style", dest="styles", action="append", default=[], metavar="NAME",
                        help="apply a saved style to the prompt and the negative (repeat; in order), as A1111 does")
    parser.add_argument("--styles", dest="styles_file", type=Path, default=None, metavar="FILE",
                        help="the styles, in A1111's styles.csv format (default: $AVERT_STYLES)")


def _styles(args) -> tuple:
    """The styles of --styles FILE, else of $AVERT_STYLES; none without either."""
    import os

    from avert.prompts.styles import read_styles

    path = args.styles_file or (Path(os.environ["AVERT_STYLES"]) if os.environ.get("AVERT_STYLES") else None)
    return read_styles(path) if path is not None else ()


def _styled(args, request):
    """The request with the --style styles applied to its prompt and first negative (`avert.prompts.styles`)."""
    from avert.prompts.styles import apply

    if not args.styles:
        return request
    styles = _styles(args)
    if not styles:
        raise ValidationError([FieldProblem("style", args.styles[0], "needs a styles file: --styles FILE (A1111's "
                                            "styles.csv) or $AVERT_STYLES")])
    prompt, negative = apply(styles, args.styles, request.prompt, request.negative_prompt, "style")
    return request.replace(prompt=prompt, negative_prompt=negative)


def _add_init_image_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--init-image", type=Path, default=None, metavar="IMAGE",
                        help="img2img: start from this PNG, JPEG or WebP image (with --strength and --resize-mode; "
                        "width and height default to its size, rounded down to a multiple of 8)")
    parser.add_argument("--mask", type=Path, default=None, metavar="IMAGE",
                        help="inpainting, with --init-image: re-draw where this image is white (or, if it has "
                        "transparency, opaque), keep the rest (--mask-blur, --inpainting-fill, --inpaint-full-res ...)")


def _compare_parser(sub) -> None:
    p = sub.add_parser("compare", help="the same seed side by side without and with each negative")
    _add_request_flags(p, skip=("negative_prompt",))
    _add_init_image_flag(p)
    p.add_argument("-n", "--negative-prompt", dest="negatives", action="append", required=True, metavar="TEXT",
                   help="a negative prompt; repeat for one column each")
    p.add_argument("--embeddings", type=Path, default=None, metavar="DIR",
                   help="textual-inversion .safetensors files, used by file name (default: $AVERT_EMBEDDINGS)")
    p.add_argument("--map", action="store_true",
                   help="two more rows per seed: where each negative acted (its share of the guided prediction, "
                   "summed over the steps) and the pixel change it made; costs the empty prompt's branch")
    p.add_argument("-o", "--output", type=Path, default=None, metavar="FILE_OR_DIR",
                   help="the grid's .png file, or a folder (default: ./outputs)")
    _add_model_flags(p)
    p.set_defaults(handler=_run_compare)


def _add_negative_flags(parser: argparse.ArgumentParser) -> None:
    """-n TEXT, repeatable; --negative-weight and --negative-window apply to the -n before them."""
    parser.add_argument("-n", "--negative-prompt", dest="negative_entries", action=_NegativeText, default=None,
                        metavar="TEXT", help="what the image must steer away from (full prompt syntax); repeat "
                        "for several negatives")
    parser.add_argument("--negative-weight", dest="negative_entries", action=_NegativeOption, metavar="W",
                        help="weight of the -n before it, -10 .. 10 (default 1)")
    parser.add_argument("--negative-window", dest="negative_entries", action=_NegativeOption, metavar="START:END",
                        help="fractions of the run in which the -n before it acts, e.g. 0.3:1 (default 0:1)")
    parser.add_argument("--embeddings", type=Path, default=None, metavar="DIR",
                        help="textual-inversion .safetensors files, used by file name (default: $AVERT_EMBEDDINGS)")


class _NegativeText(argparse.Action):
    def __call__(self, parser, namespace, value, option_string=None):
        entries = list(getattr(namespace, self.dest, None) or [])
        setattr(namespace, self.dest, entries + [{"text": value}])


class _NegativeOption(argparse.Action):
    """Sets weight or window on the latest -n; values are checked with the schema's wording."""

    def __call__(self, parser, namespace, value, option_string=None):
        entries = list(getattr(namespace, self.dest, None) or [])
        if not entries:
            parser.error(f"{option_string} must follow the -n it applies to")
        try:
            if option_string == "--negative-weight":
                entries[-1] = {**entries[-1], "weight": float(value)}
            else:
                start, end = window_arg(value)
                entries[-1] = {**entries[-1], "start": start, "end": end}
        except ValueError:
            parser.error(str(FieldProblem("negative_weight", value, "must be a number")))
        except argparse.ArgumentTypeError as problem:
            parser.error(str(problem))
        setattr(namespace, self.dest, entries)


def negatives_from_entries(entries: list[dict]) -> dict:
    """One plain -n is the classic `negative_prompt`; anything more is the `negatives` list."""
    from avert.request import Negative

    if len(entries) == 1 and set(entries[0]) == {"text"}:
        return {"negative_prompt": entries[0]["text"], "negatives": ()}
    return {"negative_prompt": "", "negatives": tuple(Negative(**e) for e in entries)}


def _add_request_flags(parser: argparse.ArgumentParser, skip: tuple[str, ...]) -> None:
    """One flag per schema parameter; defaults stay None so that `--from` can tell what was given."""
    for param in PARAMS:
        if param.name in skip:
            continue
        help_text = f"{param.help} (default: {param.default if param.default is not None else param.unset})"
        if param.name == "prompt":
            parser.add_argument("prompt", nargs="?", default=None, type=_typed(param), help=param.help)
            continue
        if param.type is bool:
            parser.add_argument(param.flag, dest=param.name, action="store_const", const=not param.default,
                                default=None, help=param.help)  # a flag sets the other value: --no-mask-round
            continue
        names = [param.flag] + ([param.short] if param.short else [])
        parser.add_argument(*names, dest=param.name, default=None, type=_typed(param), help=help_text,
                            metavar=param.type.__name__.upper() if not param.choices else "NAME")


def _add_model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="a diffusers folder or an SD .safetensors file "
                        "(default: $AVERT_MODEL, else the embedded model)")
    parser.add_argument("--config", dest="config_dir", type=Path, default=None,
                        help="diffusers config folder for a single-file checkpoint (default: chosen from its keys)")
    parser.add_argument("--prediction-type", default=None, choices=("epsilon", "v_prediction"),
                        help="override the model's prediction type (e.g. an SD 2.x 512 base single file: epsilon)")
    parser.add_argument("--zero-terminal-snr", action="store_true",
                        help="the model was trained with a zero-terminal-SNR noise schedule (some v-prediction "
                        "fine-tunes): rescale the schedule to it, with trailing timesteps")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="allow .ckpt/.pt files, read with torch.load(weights_only=True)")
    parser.add_argument("--device", default="cpu", type=device_arg, help="torch device (default: cpu)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                        help="fp32 (exact) or bf16 autocast (faster on CPUs with AVX-512 bf16)")
    parser.add_argument("--lora", dest="lora_files", action="append", default=[], metavar="FILE[:WEIGHT]",
                        help="apply a LoRA .safetensors file (kohya/A1111 or diffusers layout) at WEIGHT (default 1): "
                        "the same as <lora:STEM:WEIGHT> in the prompt, which is how the infotext records it (repeat)")
    parser.add_argument("--lora-dir", type=Path, default=None, metavar="DIR",
                        help="LoRA files the prompt's <lora:NAME:WEIGHT> tags name, by file stem, as in A1111 "
                        "(default: $AVERT_LORA_DIR)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _loras(args, request):
    """The LoRA library (--lora-dir, else $AVERT_LORA_DIR, and the --lora files) and the request with a
    `<lora:STEM:WEIGHT>` tag for each --lora added to its prompt (where it is not there yet)."""
    from avert.models.lora import lora_uses, load_loras

    folder = _lora_dir(args)
    files, tags = [], []
    for given in args.lora_files:
        path, _, weight = given.rpartition(":") if re.search(r":-?[\d.]+$", given) else (given, "", "1")
        try:
            value = float(weight)
        except ValueError:
            raise ValidationError([FieldProblem("--lora", given, "must be FILE or FILE:WEIGHT, e.g. "
                                                "style.safetensors:0.8")]) from None
        files.append(Path(path))
        if Path(path).stem not in {u.name for u in lora_uses(request.prompt)}:
            tags.append(f"<lora:{Path(path).stem}:{value:g}>")
    library = load_loras(folder).with_files(files)
    return library, (request.replace(prompt=" ".join([request.prompt, *tags])) if tags else request)


def _typed(param: Param):
    """An argparse type that converts to the parameter's type, with the schema's wording on failure."""

    def convert(text: str):
        try:
            return param.type(text)
        except ValueError:
            raise argparse.ArgumentTypeError(str(FieldProblem(param.name, text, param.describe_allowed(LIMITS))))

    convert.__name__ = param.name
    return convert


def _request_from_args(args, base=None):
    from avert.request import GenerationRequest

    given = {p.name: getattr(args, p.name) for p in PARAMS if getattr(args, p.name, None) is not None}
    if getattr(args, "negative_entries", None):
        given.update(negatives_from_entries(args.negative_entries))
    if getattr(args, "init_image", None) is not None:
        given["init_image"] = _init_image(args.init_image)
    if getattr(args, "mask", None) is not None:
        from avert.init_image import Mask

        given["mask"] = Mask.from_file(args.mask, "--mask")
    return (base or GenerationRequest()).replace(**given)


def _init_image(path: Path):
    """The init image; an avert PNG saved enlarged for viewing (its record's `saved_scale`) at the size it was
    generated, so that an embedded-model image is re-drawn at 32x32 and not at 256x256."""
    from PIL import Image

    from avert.init_image import InitImage
    from avert.output.pnginfo import read_png_metadata

    image = InitImage.from_file(path, "--init-image")
    try:
        scale = (read_png_metadata(path).record or {}).get("saved_scale")
    except AvertError:
        return image  # not a PNG with metadata: taken as it is
    if type(scale) is not int or scale <= 1 or image.width % scale or image.height % scale:
        return image
    return InitImage.from_pil(image.to_pil().resize((image.width // scale, image.height // scale), Image.NEAREST))


def _runtime(args):
    from avert.pipeline.runtime import Runtime

    runtime = Runtime(device=args.device, precision=args.precision)
    _print_warnings(runtime.warnings())
    return runtime


def _load(args):
    from avert import api

    _quiet_libraries()
    return api.load(args.model, allow_pickle=args.allow_pickle, config_dir=args.config_dir,
                    prediction_type=args.prediction_type, zero_terminal_snr=args.zero_terminal_snr)


def _load_plain(model):
    from avert import api

    _quiet_libraries()
    return api.load(model)


def _run_generate(args) -> int:
    from avert.conditioning.embeddings import load_embeddings
    from avert.pipeline.generate import generate

    request = _styled(args, _request_from_args(args, _request_from_image(args.from_image, args.init_image, args.mask)
                                               if args.from_image else None))
    if not request.prompt and not args.from_image:
        raise ValidationError([FieldProblem("prompt", request.prompt, "give a prompt (or --from IMAGE)")])
    library, request = _loras(args, request)
    _check_before_loading(request)
    components = _load(args)
    told = _advise(request, components)
    with _progress(args, "Sampling", told) as on_step:
        result = generate(request, components, runtime=_runtime(args), limits=LIMITS, on_step=on_step,
                          embeddings=load_embeddings(_embeddings_dir(args)), loras=library)
    _print_warnings([w for w in result.warnings if w not in told])
    for generated, path in zip(result.images, _output_paths(args.output, result.seeds)):
        _save(generated, path, args.upscale)
        print(f"{path}  seed {generated.seed}")
    return 0


def _check_before_loading(request) -> None:
    """What is wrong whatever the model, said before the model is loaded (which takes seconds). The size and a
    method's own fields are checked against the model once it is loaded (its native size widens the sizes
    allowed; a request without guidance gets the model's method), with every problem then named at once."""
    import dataclasses

    from avert.validation import validate

    try:
        validate(request, dataclasses.replace(LIMITS, min_size=8), model_guidance=None)
    except ValidationError as error:
        problems = [p for p in error.problems if p.field not in ("width", "height")]
        if problems:
            raise ValidationError(problems) from None


def _save(generated, path: Path, factor: int | None) -> None:
    """Save with metadata; small images are enlarged for viewing, the factor recorded (`saved_scale`)."""
    from avert.output.grid import DISPLAY_MIN_SIDE, display_factor, upscale
    from avert.output.pnginfo import save_png

    factor = factor or display_factor(generated.image, DISPLAY_MIN_SIDE)
    record = {**generated.record, "saved_scale": factor}
    save_png(upscale(generated.image, factor), path, generated.infotext, record)


def _run_compare(args) -> int:
    from avert.conditioning.embeddings import load_embeddings
    from avert.output.pnginfo import save_png
    from avert.pipeline.compare import compare
    from avert.request import GenerationRequest

    library, request = _loras(args, _request_from_args(args, GenerationRequest()))
    _check_before_loading(request)
    components = _load(args)
    told = _advise(request.replace(negative_prompt=", ".join(args.negatives)), components)
    with _progress(args, "Comparing", told) as on_step:
        comparison = compare(request, args.negatives, components, runtime=_runtime(args), limits=LIMITS,
                             on_step=on_step, embeddings=load_embeddings(_embeddings_dir(args)), maps=args.map,
                             loras=library)
    first = comparison.columns[0]
    _print_warnings(sorted({w for c in comparison.columns for w in c.warnings if w not in told}))
    path = _output_paths(args.output, first.seeds[:1], prefix="compare-")[0]
    record = {"compare": [c.images[0].record for c in comparison.columns], "labels": comparison.labels()}
    save_png(comparison.grid(), path, first.images[0].infotext, record)
    print(f"{path}  seeds {', '.join(map(str, first.seeds))}")
    return 0


def _request_from_image(path: Path, init_image: Path | None = None, mask: Path | None = None):
    """The request stored in an image: avert's record (an img2img or inpainting record needs its images given
    again), else A1111's infotext (its "Denoising strength" and inpainting keys are read when they are given)."""
    from avert.output.pnginfo import parse_parameters, read_png_metadata
    from avert.pipeline.metadata import request_from_a1111, request_from_record

    meta = read_png_metadata(path)
    if meta.record and "request" in meta.record:
        stored = meta.record["request"] if isinstance(meta.record["request"], dict) else {}
        for name, given, flag in (("init_image", init_image, "--init-image"), ("mask", mask, "--mask")):
            made_from = stored.get(name)
            if isinstance(made_from, dict) and given is None:
                raise ValidationError([FieldProblem("--from", str(path), f"was made from a {name.replace('_', ' ')} "
                                                    f"of {made_from.get('width')}x{made_from.get('height')} pixels "
                                                    f"(sha256 {str(made_from.get('sha256'))[:16]}...): give it again "
                                                    f"with {flag}")])
        return request_from_record(meta.record)
    if meta.parameters:
        return request_from_a1111(parse_parameters(meta.parameters), img2img=init_image is not None,
                                  inpainting=mask is not None)
    raise AvertError(f"--from: {str(path)!r} holds no generation parameters")


def _run_concepts(args) -> int:
    """The model's scope (`scope.json`), read without loading any weights."""
    from avert.models.default import resolve_model_path
    from avert.models.scope import read_scope

    path = resolve_model_path(args.model)
    scope = read_scope(path) if path.is_dir() else None
    if scope is None:
        print(f"{path}: no list of what it knows (a Stable Diffusion checkpoint knows what its captions, the web's, "
              "held); every word is passed to it as given")
        return 0
    print(f"{path.name if path.name != 'model' else 'embedded'}: {scope.about}.")
    print(f"\nconcepts ({len(scope.concepts)}): {', '.join(scope.concepts)}")
    print(f"\nwords: {len(scope.vocabulary)} content words in its captions" + (
        f": {', '.join(scope.vocabulary)}" if args.words else " (--words lists them)") + "; a word of a prompt or "
          f"negative far from all of them (similarity below {scope.far_below:g}) is named in a warning")
    print("\nfor a real model: avert generate PROMPT --model FILE.safetensors (SD 1.x/2.x, SDXL), or set $AVERT_MODEL")
    return 0


def _run_info(args) -> int:
    from avert.output.pnginfo import read_png_metadata

    meta = read_png_metadata(args.image)
    if args.json:
        print(json.dumps(meta.record, indent=2, ensure_ascii=False))
    elif meta.parameters is None and meta.record is None:
        print(f"{args.image}: no generation parameters stored")
        return 1
    else:
        print(meta.parameters if meta.parameters is not None else "(no A1111 parameters chunk)")
    return 0


def _run_samplers(args) -> int:
    from avert.sampling.samplers import SAMPLERS

    for spec in SAMPLERS.values():
        options = ", ".join(f"{k}={v}" for k, v in spec.options)
        print(f"{spec.name:<22} {spec.scheduler}{f'({options})' if options else ''}")
    return 0


def _run_eval(args) -> int:
    from avert.evaluation.cli import run_eval

    _quiet_libraries()
    return run_eval(args)


def _run_batch(args) -> int:
    from avert.batch.cli import run_batch

    _quiet_libraries()
    return run_batch(args, LIMITS)


def _run_bench(args) -> int:
    from avert.bench.engine import run_engine_benchmark
    from avert.bench.startup import run_startup_benchmark

    _quiet_libraries()
    if args.what == "startup":
        run_startup_benchmark(repeats=args.repeats or 5, docs=args.docs)
    elif args.what == "sdxl":
        from avert.bench.sdxl import run_sdxl_benchmark

        run_sdxl_benchmark(size=args.size, docs=args.docs, repeats=args.repeats or 2)
    elif args.what == "first-run":
        from avert.bench.readme import run_first_run_benchmark

        run_first_run_benchmark(docs=args.docs)
    elif args.what == "readme":
        from avert.bench.readme import run_readme_benchmark

        run_readme_benchmark(docs=args.docs, eval_seeds=args.eval_seeds)
    elif args.what == "nag":
        from avert.bench.nag import run_nag_benchmark

        run_nag_benchmark(repeats=args.repeats or 5, docs=args.docs)
    elif args.what == "scale":
        from avert.batch.on_ray import import_ray
        from avert.bench.scale import run_scale_benchmark

        import_ray()
        run_scale_benchmark(requests=args.requests, docs=args.docs)
    else:
        run_engine_benchmark(repeats=args.repeats or 5, docs=args.docs)
    return 0


def _output_paths(output: Path | None, seeds: Sequence[int], prefix: str = "") -> list[Path]:
    """Where images go: the .png given (numbered for a batch), or `NNNNN-SEED.png` in a folder, A1111 style."""
    if output is not None and output.suffix.lower() == ".png":
        output.parent.mkdir(parents=True, exist_ok=True)
        if len(seeds) == 1:
            return [output]
        return [output.with_name(f"{output.stem}-{i}.png") for i in range(len(seeds))]
    folder = output or Path("outputs")
    folder.mkdir(parents=True, exist_ok=True)
    start = _next_index(folder)
    return [folder / f"{prefix}{start + i:05d}-{seed}.png" for i, seed in enumerate(seeds)]


def _next_index(folder: Path) -> int:
    """One past the highest `NNNNN-` counter among the folder's PNGs (A1111's numbering)."""
    numbers = [int(m.group(1)) for p in folder.glob("*.png") if (m := _COUNTER.search(p.name))]
    return max(numbers, default=-1) + 1


_COUNTER = re.compile(r"(\d{5})-\d+\.png$")


def _print_warnings(warnings) -> None:
    for w in warnings:
        print(f"avert: warning: {w}", file=sys.stderr)


def _advise(request, components) -> tuple[str, ...]:
    """Print, before the run, the words the model does not know and a size far from its native one; return them
    (the result repeats them, and they are not printed twice)."""
    from avert.pipeline.advice import advice

    told = advice(request, components)
    _print_warnings(told)
    return told


class _progress:
    """A tqdm progress bar fed by the sampling loop's step events (one bar per generation); where a warning
    said a run is large (`advice.size_warning`), the time of the first step and the estimate of the run's follow it."""

    def __init__(self, args, label: str, told: tuple[str, ...] = ()):
        from avert.pipeline.advice import SIZE_WARNING_START

        self.enabled = not args.quiet
        self.label = label
        self.bar = None
        self.estimate = any(SIZE_WARNING_START in w for w in told)
        self.started = time.perf_counter()

    def __enter__(self):
        return self.update if self.enabled or self.estimate else None

    def update(self, event) -> None:
        if self.estimate:
            self.estimate = False
            took = time.perf_counter() - self.started
            print(f"avert: the first of {event.total} steps took {took:.1f} s: about {took * event.total:.0f} s for "
                  "them (Ctrl+C stops the run)", file=sys.stderr)
        if not self.enabled:
            return
        from tqdm import tqdm

        if self.bar is None or self.bar.total != event.total or event.done == 1:
            if self.bar is not None:
                self.bar.close()
            self.bar = tqdm(total=event.total, desc=self.label, unit="step", file=sys.stderr, leave=False)
        self.bar.update(event.done - self.bar.n)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


def _quiet_libraries() -> None:
    """Loading progress bars and advisory warnings of diffusers/transformers are noise at the CLI."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


if __name__ == "__main__":
    sys.exit(main())
