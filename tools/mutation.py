"""Mutation testing with mutmut: how many small wrong changes to the core modules the tests catch.

    python tools/mutation.py [--group prompts] [--group guidance] ... [--children 2] [--workdir DIR]

For each group, a fresh copy of the committed tree is made in a temporary folder (mutmut 3 rewrites the files it
mutates and copies the rest of src/ and tests/ beside them, so the package's data files are there and the tests
import the mutated copy: the copy's `mutants/src` comes before the editable install on the path), mutmut runs the
group's tests against every mutant, and docs/quality/mutation.md gets the group's counts and its surviving
mutants (each to be killed by a new test or explained as equivalent). Groups not run keep their last section;
each group's section is written as soon as the group ends.

With --workdir the copies are kept there (DIR/GROUP) and a second run resumes from mutmut's own record; without
it they go to a temporary folder. Each child runs torch on one thread (OMP_NUM_THREADS=1), since mutmut's limit is
in CPU seconds: (its tests' time + 3 s) x 6. A mutant that turns a loop endless is caught either way, and a more
generous limit only costs hours. The Hypothesis property runs 200 examples a mutant (AVERT_HYPOTHESIS_EXAMPLES)
instead of the suite's 1500.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "quality" / "mutation.md"
GROUPS = {  # group -> (paths to mutate, the tests that cover them)
    "prompts": (["src/avert/prompts/"], ["tests/test_prompt_language.py"]),
    "guidance": (["src/avert/guidance/"], ["tests/test_guidance.py", "tests/test_apg.py", "tests/test_references.py",
                                           "tests/test_guidance_units.py", "tests/test_compose.py",
                                           "tests/test_attribution.py"]),
    "validation": (["src/avert/validation.py"], ["tests/test_validation.py"]),
    "pnginfo": (["src/avert/output/pnginfo.py"], ["tests/test_pnginfo.py"]),
    "sampling": (["src/avert/sampling/"], ["tests/test_references.py", "tests/test_sampling_units.py"]),
    "conditioning": (["src/avert/conditioning/"], ["tests/test_prompt_language.py", "tests/test_guidance.py",
                                                   "tests/test_conditioning_units.py"]),
}
# Survivors examined and found equivalent: (mutant name prefix, text of its changed line, why no test can tell).
# Matched on the changed line rather than mutmut's number, which shifts when a function changes.
EQUIVALENT = [
    ('avert.guidance.compose.x_compose', 'if groups is not None and rule != "XXsumXX":',
     "under the sum, adding each negative's AND parts first and then the negatives is the same sum"),
    ('avert.guidance.compose.x_compose', 'if groups is not None and rule != "SUM":',
     "under the sum, adding each negative's AND parts first and then the negatives is the same sum"),
    ('avert.guidance.compose.x_orthogonal', 'stable=None).indices',
     "torch's CPU sort of a handful of lengths returns ties in input order whether or not it is asked to be "
     "stable (the tie test passes either way here); stable=True keeps that promise on other devices"),
    ('avert.guidance.compose.x_orthogonal', 'descending=True, ).indices',
     "torch's CPU sort of a handful of lengths returns ties in input order whether or not it is asked to be "
     "stable (the tie test passes either way here); stable=True keeps that promise on other devices"),
    ('avert.guidance.compose.x_orthogonal', 'stable=False).indices',
     "torch's CPU sort of a handful of lengths returns ties in input order whether or not it is asked to be "
     "stable (the tie test passes either way here); stable=True keeps that promise on other devices"),
    ('avert.guidance.attribution.xǁNegativeMapsǁmaps', 'if sigma > 0 else 1.0',
     "at sigma 0 the denoised estimate has no output term (b = 0), so every change recorded there is 0 and any "
     "finite weight adds nothing; the branch only avoids dividing by 0"),
    ('avert.guidance.compose.x_capped', 'torch.where(length >= longest, longest / length',
     "where the sum is exactly as long as the longest part the factor longest / length is 1, as in the other branch"),
    ('avert.sampling.eta.xǁKDPM2AncestralEtaǁset_timesteps', 't_interpol.to(self.timesteps.device, dtype=None)',
     "diffusers' _sigma_to_t returns float32 values, the timesteps' own dtype"),
    ('avert.sampling.eta.xǁKDPM2AncestralEtaǁset_timesteps', 't_interpol.to(self.timesteps.device, )',
     "diffusers' _sigma_to_t returns float32 values, the timesteps' own dtype"),
    ('avert.sampling.eta.xǁEulerAncestralEtaǁstep', 'if self.eta == 2.0:',
     "at eta 1 the eta path is diffusers' step: the same operations in the same order on the same noise draw"),
    ('avert.sampling.eta.xǁEulerAncestralEtaǁstep', 'return_dict=None)',
     'None is falsy: diffusers returns the tuple, as for False'),
    ('avert.sampling.eta.xǁEulerAncestralEtaǁstep', 'x = sample.to(None)',
     "the loop's latents and the denoiser's predictions are float32 on the CPU (the denoiser casts the UNet's output to its input's dtype), so None is the same dtype and device"),
    ('avert.sampling.eta.xǁEulerAncestralEtaǁstep', 'dtype=None, device=model_output.device',
     "the loop's latents and the denoiser's predictions are float32 on the CPU (the denoiser casts the UNet's output to its input's dtype), so None is the same dtype and device"),
    ('avert.sampling.eta.xǁEulerAncestralEtaǁstep', 'dtype=model_output.dtype, device=None,',
     "the loop's latents and the denoiser's predictions are float32 on the CPU (the denoiser casts the UNet's output to its input's dtype), so None is the same dtype and device"),
    ('avert.sampling.eta.xǁEulerAncestralEtaǁstep', 'randn_tensor(model_output.shape, device=model_output.device,',
     "the loop's latents and the denoiser's predictions are float32 on the CPU (the denoiser casts the UNet's output to its input's dtype), so None is the same dtype and device"),
    ('avert.sampling.eta.xǁEulerAncestralEtaǁstep', 'dtype=model_output.dtype, generator=generator)',
     "the loop's latents and the denoiser's predictions are float32 on the CPU (the denoiser casts the UNet's output to its input's dtype), so None is the same dtype and device"),
    ('avert.sampling.eta.xǁEulerAncestralEtaǁstep', '(prev + noise * sigma_up).to(None)',
     "the loop's latents and the denoiser's predictions are float32 on the CPU (the denoiser casts the UNet's output to its input's dtype), so None is the same dtype and device"),
    ('avert.sampling.eta.xǁKDPM2AncestralEtaǁset_timesteps', 'set_timesteps(num_inference_steps, device=None, num_train_timesteps=num_train_timesteps)',
     "on the CPU, diffusers' default device and an explicit one are the same"),
    ('avert.sampling.eta.xǁKDPM2AncestralEtaǁset_timesteps', 'set_timesteps(num_inference_steps, num_train_timesteps=num_train_timesteps)',
     "on the CPU, diffusers' default device and an explicit one are the same"),
    ('avert.sampling.eta.xǁKDPM2AncestralEtaǁset_timesteps', 'self.sigmas[::2].to(None)',
     'diffusers keeps its sigmas as float32 on the CPU already'),
    ('avert.sampling.eta.xǁKDPM2AncestralEtaǁset_timesteps', 't_interpol.to(None, dtype=self.timesteps.dtype)',
     "on the CPU, diffusers' default device and an explicit one are the same"),
    ('avert.sampling.eta.xǁKDPM2AncestralEtaǁset_timesteps', 't_interpol.to(dtype=self.timesteps.dtype)',
     "on the CPU, diffusers' default device and an explicit one are the same"),
    ('avert.sampling.eta.xǁKDPM2AncestralEtaǁset_timesteps', 'dim=+1).flatten()',
     'stacking two [n, 1] columns on dim 1 (or -2) instead of -1 flattens to the same interleaving'),
    ('avert.sampling.eta.xǁKDPM2AncestralEtaǁset_timesteps', 'dim=-2).flatten()',
     'stacking two [n, 1] columns on dim 1 (or -2) instead of -1 flattens to the same interleaving'),
    ("avert.validation.x__img2img_problems", "getattr(request, name), None) is None]",
     "the bounds of strength and resize_mode are constants: check_field never reads the limits for them"),
    ("avert.output.pnginfo.x__quote", "ensure_ascii=None", "None is falsy: json.dumps treats it as False"),
    ("avert.output.pnginfo.x__png_info", "ensure_ascii=None", "None is falsy: json.dumps treats it as False"),
    ("avert.output.pnginfo.x_png_bytes", 'format="png"', "Pillow upper-cases the format name"),
    ("avert.output.pnginfo.x_save_png", "hex[:9]", "the temporary file's random part is one character longer"),
    ("avert.output.pnginfo.x__unquote", "isinstance(value, str)) or True",
     "a text that starts and ends with a double quote and parses as JSON is a JSON string"),
    ("avert.guidance.strategy.x_prompt_branch", "Branch(", "a branch's role is a label that no code reads: branches "
     "are told apart by (role, index), and any labels that keep prompts, negatives and the empty prompt apart do"),
    ("avert.guidance.strategy.x_negative_branch", "Branch(", "a branch's role is a label that no code reads: branches "
     "are told apart by (role, index), and any labels that keep prompts, negatives and the empty prompt apart do"),
    ("avert.guidance.strategy.xǁGuidanceǁ_posterior", "device=None", "a tensor made without a device is on the CPU, "
     "where the sample is in every test"),
    ("avert.guidance.strategy.xǁGuidanceǁ_posterior", "dtype=x.dtype, )", "a tensor made without a device is on the "
     "CPU, where the sample is in every test"),
    ("avert.guidance.strategy.xǁGuidanceǁ_apg", "single", "composable_cfg at scale 1 of one part of weight 1 is that "
     "part up to one rounding (e_u + (e_c - e_u)); the shortcut only keeps the bits"),
    ("avert.guidance.cfg.x_apg", "p=None", "Tensor.norm with p None is the 2-norm"),
    ("avert.guidance.cfg.x_perpendicular", "torch.where(norm >= 0", "where |c|^2 is 0 (or underflows) the division "
     "removes (<d, c> / tiny) c, whose size is below |c|^2 / tiny < 1 times d's: under d's last bit"),
    ("avert.sampling.loop.x_sample", "return_dict=None", "diffusers' schedulers test `not return_dict`: None is False"),
    ("avert.sampling.noise.x_initial_noise", "torch.Generator(None)", "a generator made without a device is a CPU "
     "generator"),
    ("avert.conditioning.encode.xǁ_LRUǁput", "last=None", "OrderedDict.popitem tests `last` for truth: None is "
     "False, the oldest item"),
    ("avert.conditioning.encode.xǁTextEncodingǁ__init__", "self.device = None", "tensors made on device None are "
     "on the CPU, the only device the tests have"),
    ("avert.conditioning.encode.xǁTextEncodingǁ_key", "str(None)", "the cache key's device part matters only when "
     "one text encoder is used on two devices; the tests have one"),
    ("avert.conditioning.encode.xǁTextEncodingǁ_encode_chunks", "device=None", "tensors made on device None are on "
     "the CPU, the only device the tests have"),
    ("avert.conditioning.encode.xǁTextEncodingǁ_encode_chunks", "gone:device=self.device", "tensors made without a "
     "device are on the CPU, the only device the tests have"),
    ("avert.output.pnginfo.x_read_png_metadata", 'getattr(source, "filename", None)', "a missing file name and an "
     "empty one both fall back to 'the image'"),
    ("avert.validation.x_check_relations", "_in_range(request.guidance_end, 0, 2)", "guidance_start is at most 1, so "
     "an end above 1 is never at or below it: the widened range adds no problem"),
    ("avert.conditioning.encode.xǁTextEncodingǁ_encode_chunks", '"use_attention_mask", None', "None is false, as "
     "the default False is"),
    ("avert.conditioning.encode.xǁTextEncodingǁ_forward", "output_hidden_states=skip >= 1", "at clip skip 1 the "
     "hidden states are made but not read: slower, the same result"),
    ("avert.conditioning.text.x__truncations", "truncation=None", "a tokenizer does not truncate unless asked"),
    ("avert.conditioning.text.x__truncations", "gone:truncation=False", "a tokenizer does not truncate unless asked"),
    ("avert.conditioning.chunks.x__read_vocabulary", 'tokenizer("XXXX")', "only the first and the last id of the "
     "encoded text are read, BOS and EOS, whatever the text"),
    ("avert.conditioning.chunks.x__read_vocabulary", "ends[+1]", "the empty text encodes as [BOS, EOS]: its id 1 is "
     "its last"),
    ("avert.conditioning.chunks.x_chunk_with", "verbose", "verbose only says whether the tokenizer logs warnings"),
    ("avert.conditioning.chunks.x_chunk_with", "gone:verbose=False", "verbose only says whether the tokenizer logs "
     "warnings"),
    ("avert.conditioning.chunks.x_chunk_with", "(fragment.text) or True", "an empty text tokenises to no ids"),
    ("avert.output.pnginfo.x_parse_parameters", "(value.startswith('\"')) or True",
     "_unquote returns a value that does not start with a double quote unchanged"),
]
# The four wrong changes issue 36 planted by hand, and the test files that must each catch theirs.
PLANTED = [
    ('"DPM++ 2M Karras" without Karras sigmas', "src/avert/sampling/samplers.py",
     'SamplerSpec("DPM++ 2M Karras", "DPMSolverMultistepScheduler", _KARRAS)',
     'SamplerSpec("DPM++ 2M Karras", "DPMSolverMultistepScheduler")', ["tests/test_references.py"]),
    ("guidance rescale mixing in the prompt's prediction", "src/avert/guidance/cfg.py",
     "return phi * (guided * ratio) + (1 - phi) * guided", "return phi * (guided * ratio) + (1 - phi) * positive",
     ["tests/test_references.py"]),
    ("an unclosed [ left at weight 1", "src/avert/prompts/attention.py", "_multiply(parts, start, SQUARE)",
     "_multiply(parts, start, 1.0)", ["tests/test_prompt_language.py"]),
    ("the posterior's evidence point without its noise-scale conversion", "src/avert/guidance/strategy.py",
     "point = x * math.sqrt(1.0 + sigma * sigma)", "point = x", ["tests/test_references.py"]),
]
COUNTS = re.compile(r"(\d+)/(\d+)\s+🎉 (\d+) 🫥 (\d+)\s+⏰ (\d+)\s+🤔 (\d+)\s+🙁 (\d+)\s+🔇 (\d+)")


def prepare(name: str, copy: Path) -> None:
    """A clone of the committed tree whose pyproject.toml tells mutmut what to mutate and which tests to run."""
    paths, tests = GROUPS[name]
    subprocess.run(["git", "clone", "-q", str(ROOT), str(copy)], check=True)
    config = (f"\n[tool.mutmut]\nsource_paths = {paths!r}\npytest_add_cli_args_test_selection = {tests!r}\n"
              "also_copy = ['src/avert/', 'tests/', 'docs/']\n"
              "pytest_add_cli_args = ['-x', '-q', '-p', 'no:warnings']\n"
              "timeout_multiplier = 3.0\ntimeout_constant = 3.0\n")
    with open(copy / "pyproject.toml", "a") as f:
        f.write(config.replace("'", '"'))


def run_group(name: str, children: int, workdir: Path | None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        copy = (workdir or Path(tmp)) / name
        if not (copy / "pyproject.toml").exists():
            prepare(name, copy)
        env = {**os.environ, "AVERT_HYPOTHESIS_EXAMPLES": "200", "OMP_NUM_THREADS": "1"}
        run = subprocess.run(["mutmut", "run", "--max-children", str(children)], cwd=copy, capture_output=True,
                             text=True, env=env)
        found = COUNTS.findall(run.stdout.replace("\r", "\n"))
        if not found:
            raise RuntimeError(f"mutmut printed no counts for {name}: {run.stdout[-2000:]} {run.stderr[-2000:]}")
        done, total, killed, no_tests, timeout, suspicious, survived, skipped = map(int, found[-1])
        results = subprocess.run(["mutmut", "results"], cwd=copy, capture_output=True, text=True).stdout
        survivors = [line.split(":")[0].strip() for line in results.splitlines() if ": survived" in line]
        shown = {s: subprocess.run(["mutmut", "show", s], cwd=copy, capture_output=True, text=True).stdout
                 for s in survivors}
    return {"name": name, "total": total, "killed": killed, "no_tests": no_tests, "timeout": timeout,
            "suspicious": suspicious, "survived": survived, "skipped": skipped, "survivors": shown,
            "equivalent": {s: why for s, diff in shown.items() if (why := equivalent(s, diff))}}


def equivalent(mutant: str, diff: str) -> str | None:
    """The reason a survivor is equivalent, when it is listed in EQUIVALENT. A text starting with "gone:" matches
    a mutant that removed it (in a removed line, in no added one); any other text, one that added it."""
    added = [line[1:] for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")]
    removed = [line[1:] for line in diff.splitlines() if line.startswith("-") and not line.startswith("---")]

    def matches(text: str) -> bool:
        if text.startswith("gone:"):
            text = text[5:]
            return any(text in line for line in removed) and not any(text in line for line in added)
        return any(text in line for line in added)

    return next((why for prefix, text, why in EQUIVALENT
                 if mutant.startswith(prefix + "__mutmut_") and matches(text)), None)


def section(r: dict) -> str:
    caught = r["killed"] + r["timeout"]
    judged = r["total"] - r["skipped"] - len(r["equivalent"])
    lines = [f"<!-- group:{r['name']} -->", f"## {r['name']}", "",
             f"Measured {datetime.now(timezone.utc):%Y-%m-%d} by `python tools/mutation.py --group {r['name']}` "
             f"(mutmut, Python {platform.python_version()}); tests: {', '.join(GROUPS[r['name']][1])}.", "",
             f"- mutants: {r['total']}; caught {caught} (killed {r['killed']}, timed out {r['timeout']}); survived "
             f"{r['survived']} ({len(r['equivalent'])} of them equivalent); no test reaches them {r['no_tests']}; "
             f"suspicious {r['suspicious']}; skipped {r['skipped']}",
             f"- **score {caught / judged:.1%}** (caught / all but the skipped and the equivalent; a mutant no test "
             "reaches counts as not caught)", ""]
    if r["equivalent"]:
        lines += ["Equivalent survivors (no test can tell them from the original):", ""]
        lines += [f"- `{name}`: {why}" for name, why in r["equivalent"].items()] + [""]
    open_ = {name: diff for name, diff in r["survivors"].items() if name not in r["equivalent"]}
    if open_:
        lines += ["Other survivors (each to be killed by a test or explained as equivalent):", ""]
        for name, diff in open_.items():
            lines += [f"- `{name}`", "", "```diff", diff.strip()[-1500:], "```", ""]
    return "\n".join(lines) + f"<!-- /group:{r['name']} -->\n"


def planted() -> str:
    """Each change of PLANTED applied alone to a clone; whether its test files fail (they must)."""
    rows = []
    for label, path, old, new, tests in PLANTED:
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / "avert"
            subprocess.run(["git", "clone", "-q", str(ROOT), str(copy)], check=True)
            source = (copy / path).read_text()
            if source.count(old) != 1:
                raise RuntimeError(f"planted change {label!r}: {old!r} is not once in {path}")
            (copy / path).write_text(source.replace(old, new))
            env = {**os.environ, "PYTHONPATH": str(copy / "src"), "AVERT_HYPOTHESIS_EXAMPLES": "200"}
            run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:warnings", "-p",
                                  "no:cacheprovider", *tests], cwd=copy, env=env, capture_output=True, text=True)
            failed = re.search(r"^FAILED (.+?)(?: - .*)?$", run.stdout, re.M)
            rows.append(f"| {label} | `{path}` | {', '.join(tests)} | "
                        f"{'caught by `' + failed.group(1) + '`' if failed else '**not caught**'} |")
    return "\n".join([
        "<!-- planted -->", "## The four changes issue 36 planted", "",
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d} by `python tools/mutation.py --planted`: each change alone "
        "in a clone, against the test files named (not the whole suite).", "",
        "| change | file | tests run | result |", "|---|---|---|---|", *rows, "<!-- /planted -->", ""])


HEADER = """# Mutation testing

How many small wrong changes to each core module its tests catch. Made by `python tools/mutation.py` (all groups,
or `--group NAME`); one section a group, re-made when its group is run, and the table below re-made from the
sections. mutmut changes one operator, constant, string, argument or condition at a time and runs the group's
tests against each change: a change the tests fail on is *caught* (killed, or stopped at the time limit), one they
pass is a *survivor*. A survivor is either a gap in the tests (then a test is added) or *equivalent*: no input can
tell it from the original (then `EQUIVALENT` in tools/mutation.py says why, and it leaves the score). The score is
caught / (all mutants - equivalent); a mutant no test reaches counts against it. Issue 36's target: 90% a group.

"""


def summary(text: str) -> str:
    """The table of every group's score, read from the sections on the page."""
    rows = re.findall(r"<!-- group:(\w+) -->.*?- mutants: (\d+);.*?survived (\d+) \((\d+) of them equivalent\)"
                      r".*?\*\*score ([\d.]+%)\*\*", text, re.S)
    return "\n".join(["<!-- summary -->", "| group | mutants | survived | of them equivalent | score |",
                      "|---|---|---|---|---|", *[f"| {g} | {m} | {s} | {e} | **{score}** |" for g, m, s, e, score in rows],
                      "<!-- /summary -->", ""])


def write(results: list[dict]) -> None:
    text = PAGE.read_text() if PAGE.exists() else HEADER
    for r in results:
        pattern = re.compile(rf"<!-- group:{r['name']} -->.*?<!-- /group:{r['name']} -->\n", re.S)
        text = pattern.sub(lambda _: section(r), text) if pattern.search(text) else text + "\n" + section(r)
    table = re.compile(r"<!-- summary -->.*?<!-- /summary -->\n", re.S)
    text = table.sub("", text)
    head, _, rest = text.partition("<!-- group:")
    text = head.rstrip("\n") + "\n\n" + summary(text) + "\n<!-- group:" + rest
    PAGE.parent.mkdir(parents=True, exist_ok=True)
    PAGE.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group", action="append", choices=sorted(GROUPS), help="(repeat; default: all)")
    parser.add_argument("--children", type=int, default=2)
    parser.add_argument("--workdir", type=Path, help="keep the copies here and resume from them")
    parser.add_argument("--planted", action="store_true", help="run only the four changes issue 36 planted")
    args = parser.parse_args()
    if args.planted:
        text = planted()
        print(text)
        page = PAGE.read_text()
        pattern = re.compile(r"<!-- planted -->.*?<!-- /planted -->\n", re.S)
        PAGE.write_text(pattern.sub(lambda _: text, page) if pattern.search(page) else page + "\n" + text)
        return 0
    if shutil.which("mutmut") is None:
        print("mutation: mutmut is not installed: pip install mutmut", file=sys.stderr)
        return 2
    for name in args.group or GROUPS:
        result = run_group(name, args.children, args.workdir)
        print(section(result), flush=True)
        write([result])
    return 0


if __name__ == "__main__":
    sys.exit(main())
