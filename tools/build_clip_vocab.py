"""Rebuild CLIP's BPE `vocab.json` + `merges.txt` offline from `bpe_simple_vocab_16e6.txt.gz`.

The gz file ships inside the `open-clip-torch` wheel (MIT licence); get it without installing the
package:

    pip download --no-deps open-clip-torch -d /tmp/oc
    python tools/build_clip_vocab.py /tmp/oc/open_clip_torch-*.whl src/avert/models/configs/sd15/tokenizer

The source may be the wheel itself or the extracted `.gz`. The vocabulary is built the way OpenAI
CLIP's `SimpleTokenizer` builds it: 256 byte characters, the same with `</w>`, the first
49152-256-2 merges joined, then `<|startoftext|>` and `<|endoftext|>` (49408 tokens in all).
"""

from __future__ import annotations

import argparse
import gzip
import json
import zipfile
from pathlib import Path

GZ_NAME = "bpe_simple_vocab_16e6.txt.gz"
N_MERGES = 49152 - 256 - 2
SPECIAL_TOKENS = ["<|startoftext|>", "<|endoftext|>"]


def bytes_to_unicode() -> dict[int, str]:
    """Map each byte to a printable unicode character, as CLIP's (and GPT-2's) BPE does."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def read_bpe_text(source: Path) -> str:
    """Return the decompressed BPE text from a `.gz` file or from an open-clip-torch wheel."""
    if source.suffix == ".whl":
        with zipfile.ZipFile(source) as wheel:
            name = next(n for n in wheel.namelist() if n.endswith("/" + GZ_NAME))
            return gzip.decompress(wheel.read(name)).decode("utf-8")
    return gzip.decompress(source.read_bytes()).decode("utf-8")


def build_vocab(bpe_text: str) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Return (token -> id, merges) exactly as CLIP's SimpleTokenizer derives them."""
    lines = bpe_text.split("\n")[1 : N_MERGES + 1]
    merges = [tuple(line.split()) for line in lines]
    tokens = list(bytes_to_unicode().values())
    tokens += [t + "</w>" for t in tokens]
    tokens += ["".join(pair) for pair in merges]
    tokens += SPECIAL_TOKENS
    return {tok: i for i, tok in enumerate(tokens)}, merges


def write_files(vocab: dict[str, int], merges: list[tuple[str, str]], out_dir: Path) -> None:
    """Write `vocab.json` and `merges.txt` (Hugging Face format) into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    body = "\n".join(" ".join(pair) for pair in merges)
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + body + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    """Command line: build the files from SOURCE into each OUT_DIR."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help=f"{GZ_NAME} or an open_clip_torch wheel")
    parser.add_argument("out_dirs", type=Path, nargs="+", help="folders to write into")
    args = parser.parse_args(argv)
    vocab, merges = build_vocab(read_bpe_text(args.source))
    if len(vocab) != 49408:
        raise SystemExit(f"expected 49408 tokens, built {len(vocab)}")
    for out_dir in args.out_dirs:
        write_files(vocab, merges, out_dir)
        print(f"wrote {out_dir}/vocab.json ({len(vocab)} tokens) and merges.txt ({len(merges)} merges)")


if __name__ == "__main__":
    main()
