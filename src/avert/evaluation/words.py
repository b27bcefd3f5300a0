"""`avert eval words`: which words the far-word warning names (`avert.models.scope`), on words whose fate is known.

Three sets: everyday words outside the embedded model's world (`OUTSIDE`: things, people, and the words of common
Stable Diffusion negatives), which the warning should name; the paraphrases of `avert eval paraphrases`, which it
should not name where they work as negatives (their suppression read from docs/eval/paraphrases.md, under the
model's default method, gated); and the captions' own words, which it never names (they are known). A word is named
when its similarity to every caption word is below the scope's `far_below`.
"""

from __future__ import annotations

from pathlib import Path

from avert.evaluation.paraphrases import PARAPHRASES
from avert.models.scope import far_words, nearest_known, unknown_words

OUTSIDE = ("cat dog horse bird car bicycle train airplane robot spaceship guitar piano computer phone book chair table "
           "bottle cup pizza castle church city street woman man child face portrait ugly deformed blurry lowres "
           "watermark text signature cropped jpeg artifacts mutated disfigured extra limbs anatomy nsfw").split()
WORKS = 0.5  # a paraphrase whose suppression reaches this works as a negative
PARAPHRASE_TABLE = Path("docs/eval/paraphrases.md")


def paraphrase_suppression(path: Path = PARAPHRASE_TABLE, method: str = "gated") -> dict[str, float]:
    """{paraphrase: suppression} under `method`, from the table `avert eval paraphrases` writes."""
    found: dict[str, float] = {}
    if not path.is_file():
        return found
    for line in path.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 8 and cells[0] == method:
            try:
                found[cells[5]] = float(cells[6])
            except ValueError:
                continue
    return found


def measure(components) -> dict:
    """Rows (set, word, similarity, nearest known word, named, paraphrase, its suppression) and the summary."""
    scope = components.scope
    if scope is None:
        raise ValueError("model: it has no scope.json, so no word is ever named (only models that list their "
                         "captions' words have the warning)")
    suppression = paraphrase_suppression()
    rows = []

    def add(kind: str, text: str, paraphrase=None):
        named = {w for w, _, _ in far_words([text], scope, components.tokenizer, components.text_encoder)}
        for word, s, near in nearest_known(unknown_words([text], scope), scope, components.tokenizer,
                                           components.text_encoder):
            rows.append({"set": kind, "word": word, "similarity": s, "nearest": near, "named": word in named,
                         "paraphrase": paraphrase, "suppression": suppression.get(paraphrase)})

    for word in OUTSIDE:
        add("outside", word)
    for texts in PARAPHRASES.values():
        for text in texts:
            add("paraphrase", text, text)
    return {"rows": rows, "far_below": scope.far_below}


def summary(result: dict) -> list[tuple[str, int, int]]:
    """(what, named, of) for the outside words and for the paraphrases that work, and do not, as negatives (a
    paraphrase is named when any of its words is)."""
    rows = result["rows"]
    outside = [r for r in rows if r["set"] == "outside"]
    named: dict[str, bool] = {}
    score: dict[str, float | None] = {}
    for r in rows:
        if r["set"] == "paraphrase":
            named[r["paraphrase"]] = named.get(r["paraphrase"], False) or r["named"]
            score[r["paraphrase"]] = r["suppression"]
    working = [p for p, s in score.items() if s is not None and s >= WORKS]
    failing = [p for p, s in score.items() if s is not None and s < WORKS]
    return [("everyday words outside the world", sum(r["named"] for r in outside), len(outside)),
            (f"paraphrases that work (suppression >= {WORKS})", sum(named[p] for p in working), len(working)),
            (f"paraphrases that do not (below {WORKS})", sum(named[p] for p in failing), len(failing))]


def report(result: dict, header: str) -> str:
    lines = ["# Words the embedded model does not know", "", header, "",
             f"A word of a prompt or negative that no caption uses is *named* in a warning when the cosine similarity "
             f"of its text-encoder embedding to every caption word's is below {result['far_below']:g}, alone and "
             "with the other content words of its comma-separated phrase (`avert.models.scope`; *similarity* below "
             "is the word's alone); caption words are known and never named. A paraphrase counts as named when any of "
             "its words is; its suppression is the gated row of [paraphrases.md](paraphrases.md).", "",
             "| words | named | of |", "|---|---|---|"]
    lines += [f"| {what} | {n} | {total} |" for what, n, total in summary(result)]
    lines += ["", "| set | word | similarity | nearest caption word | named | paraphrase | its suppression |",
              "|---|---|---|---|---|---|---|"]
    for r in sorted(result["rows"], key=lambda r: (r["set"], r["similarity"])):
        s = "n/a" if r["suppression"] is None else f"{r['suppression']:.2f}"
        lines.append(f"| {r['set']} | {r['word']} | {r['similarity']:.2f} | {r['nearest']} | "
                     f"{'yes' if r['named'] else 'no'} | {r['paraphrase'] or ''} | {s} |")
    return "\n".join(lines) + "\n"


def run_words(args) -> int:
    """`avert eval words`: print the table and write DOCS/eval/words.md."""
    import datetime

    from avert.evaluation.common import load_components, machine

    components = load_components(args.model)
    header = (f"Measured {datetime.date.today().isoformat()} by `avert eval words` on {machine()}; model "
              f"`{components.source.name}` (hash `{components.source.hash}`).")
    text = report(measure(components), header)
    print(text)
    out = Path(args.docs) / "eval" / "words.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(f"written to {out}")
    return 0
