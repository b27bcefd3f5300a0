"""`avert batch JOBS.jsonl --out DIR`: the command's flags and its run (local, or on Ray with --ray-address)."""

from __future__ import annotations

import sys
from pathlib import Path

from avert.argtypes import bounded, device_arg
from avert.batch import DEFAULT_BATCH_IMAGES


def add_batch_parser(sub, handler) -> None:
    p = sub.add_parser("batch", help="render a JSON Lines file of requests (one /v1/generate body per line) to PNGs "
                       "and a manifest; resumable; locally or on a Ray cluster",
                       description="Each line of JOBS is a request as the body of POST /v1/generate (prompt, "
                       "negatives with weights and windows, guidance, seed, model, size, sampler ...). Every line is "
                       "validated first; bad lines are listed with their numbers and nothing is made. Images go to "
                       "OUT/images/, one row per request to OUT/manifest.jsonl (hash, line, files, seeds, seconds, "
                       "status); a second run skips what the manifest records as done.")
    p.add_argument("jobs", type=Path, metavar="JOBS.jsonl", help="the requests, one JSON object per line")
    p.add_argument("--out", required=True, metavar="DIR_OR_URI",
                   help="folder (or pyarrow filesystem URI, e.g. s3://bucket/run, with --ray-address) for the images "
                   "and the manifest")
    p.add_argument("--model", default=None, metavar="NAME_OR_PATH", help="the model of lines without \"model\": a "
                   "name in --models-dir or a path (default: $AVERT_MODEL, else the embedded model)")
    p.add_argument("--models-dir", type=Path, default=None, metavar="DIR",
                   help="folder of models lines may name in \"model\" (diffusers folders, .safetensors files)")
    p.add_argument("--embeddings", type=Path, default=None, metavar="DIR",
                   help="textual-inversion .safetensors files, used by name in prompts (default: $AVERT_EMBEDDINGS)")
    p.add_argument("--batch-images", type=bounded("batch-images", int, 1, 256), default=DEFAULT_BATCH_IMAGES,
                   metavar="N", help="images per UNet batch: requests of one model, size, sampler and steps share "
                   "a sampling loop (default: %(default)s)")
    p.add_argument("--threads", type=bounded("threads", int, 1, 512), default=None, metavar="N",
                   help="torch threads per worker (default: torch's; on Ray: --cpus-per-worker)")
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="run on a Ray cluster: its address (host:port) or 'auto' (needs "
                   "pip install 'avert[ray]')")
    p.add_argument("--workers", type=bounded("workers", int, 1, 10000), default=None, metavar="N",
                   help="with --ray-address: model-holding actors (default: the cluster's CPUs / --cpus-per-worker)")
    p.add_argument("--cpus-per-worker", type=bounded("cpus-per-worker", float, 0.25, 512), default=1.0,
                   metavar="N", help="with --ray-address: CPUs each actor reserves (default: 1)")
    p.add_argument("--gpus-per-worker", type=bounded("gpus-per-worker", float, 0, 64), default=0.0, metavar="N",
                   help="with --ray-address: GPUs each actor reserves (default: 0; use with --device cuda)")
    p.add_argument("--device", default="cpu", type=device_arg, help="torch device (default: cpu)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"), help="fp32 (exact) or bf16 autocast")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=handler)


def settings_of(args):
    """The job's `avert.batch.render.Settings` from the flags."""
    import os

    from avert.batch.render import Settings

    embeddings = args.embeddings or os.environ.get("AVERT_EMBEDDINGS")
    threads = args.threads or (max(1, int(args.cpus_per_worker)) if args.ray_address else None)
    return Settings(model=args.model, models_dir=str(args.models_dir.resolve()) if args.models_dir else None,
                    embeddings_dir=str(Path(embeddings).resolve()) if embeddings else None,
                    batch_images=args.batch_images, threads=threads, device=args.device, precision=args.precision)


def run_batch(args, limits) -> int:
    """Run the job; exit status 0 when every request is done, 1 when some failed (each recorded with its error)."""
    from avert.batch.jobs import BatchFileError

    try:
        summary = _run(args, limits)
    except BatchFileError as error:  # a line per bad line (the CLI's one-line errors would run them together)
        print(f"avert: error: {error}", file=sys.stderr)
        return 2
    print(f"avert batch: {summary.line()}; manifest: {args.out.rstrip('/')}/manifest.jsonl")
    if summary.failed:
        print(f"avert batch: {summary.failed} request{'s' if summary.failed != 1 else ''} failed; their errors are "
              "in the manifest (status \"failed\"); run again to retry them", file=sys.stderr)
        return 1
    return 0


def _run(args, limits):
    """The job's summary, from this process or from the Ray cluster."""
    from avert.errors import AvertError

    settings = settings_of(args)
    _check_flags(args)
    if args.ray_address:
        from avert.batch.on_ray import run_on_ray

        return run_on_ray(args.jobs, args.out, settings, address=args.ray_address, workers=args.workers,
                          cpus=args.cpus_per_worker, gpus=args.gpus_per_worker, limits=limits,
                          progress=not args.quiet)
    from avert.batch.local import run_local

    if "://" in args.out:
        raise AvertError(f"out: {args.out!r} is a URI; a local run writes to a folder (URIs are for "
                         "--ray-address runs, whose actors write to shared storage)")
    return run_local(args.jobs, args.out, settings, limits=limits, progress=not args.quiet)


def _check_flags(args) -> None:
    from avert.errors import FieldProblem, ValidationError

    ray_only = [f"--{name.replace('_', '-')}" for name, default in
                (("workers", None), ("cpus_per_worker", 1.0), ("gpus_per_worker", 0.0))
                if getattr(args, name) != default]
    if ray_only and not args.ray_address:
        raise ValidationError([FieldProblem(ray_only[0], getattr(args, ray_only[0][2:].replace("-", "_")),
                                            "applies only with --ray-address (a local run is one process)")])
