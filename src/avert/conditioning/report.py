"""What `avert prompt` shows: how a prompt is split (AND), scheduled, weighted and chunked, as plain data."""

from __future__ import annotations

from avert.conditioning.chunks import chunk_fragments, vocabulary
from avert.conditioning.embeddings import EmbeddingLibrary
from avert.prompts.attention import parse_attention
from avert.prompts.parse import parse_prompt
from avert.prompts.schedule import schedule


def prompt_report(text: str, steps: int, tokenizer=None, library: EmbeddingLibrary = EmbeddingLibrary()) -> dict:
    """`schedule` and `attention` exactly as A1111 computes them for `text` over `steps` steps, then per AND
    part its schedule with each entry's fragments and, given a tokenizer, its chunks (tokens used, padding,
    embeddings placed)."""
    whole = schedule(text, steps)
    report = {
        "text": text,
        "steps": steps,
        "schedule": [[e.end_step, e.text] for e in whole],
        "attention": [[[f.text, f.weight] for f in parse_attention(e.text)] for e in whole],
        "parts": [_part(part, steps, tokenizer, library) for part in parse_prompt(text, steps).parts],
    }
    if tokenizer is not None:
        report["chunk_size"] = vocabulary(tokenizer).size
    return report


def _part(part, steps: int, tokenizer, library: EmbeddingLibrary) -> dict:
    entries = []
    first = 0
    for entry in part.entries:
        item = {"steps": [first, min(entry.end_step, steps - 1)], "text": entry.text,
                "attention": [[f.text, f.weight] for f in entry.fragments]}
        if tokenizer is not None:
            item.update(_chunks(entry.fragments, tokenizer, library))
        entries.append(item)
        first = entry.end_step + 1
    return {"weight": part.weight, "entries": entries}


def _chunks(fragments, tokenizer, library: EmbeddingLibrary) -> dict:
    chunked = chunk_fragments(fragments, tokenizer, library)
    size = vocabulary(tokenizer).size
    return {
        "token_count": chunked.token_count,
        "chunks": [{"tokens": len(c.tokens), "padding": size - len(c.tokens),
                    "embeddings": [e.name for _, e in c.embeddings]} for c in chunked.chunks],
        "truncated": None,  # avert never truncates: a long prompt continues in further chunks
    }


def format_report(report: dict) -> str:
    """The report as text for a terminal."""
    lines = [f"{report['text']!r} over {report['steps']} steps"]
    for k, part in enumerate(report["parts"]):
        if len(report["parts"]) > 1:
            lines.append(f"AND part {k + 1}, weight {part['weight']:g}:")
        for e in part["entries"]:
            lines.append(f"  steps {e['steps'][0]}-{e['steps'][1]}: {e['text']!r}")
            weighted = [f"{t!r}x{w:.4g}" if w != 1.0 else repr(t) for t, w in e["attention"]]
            lines.append("    attention: " + " ".join(weighted))
            for i, c in enumerate(e.get("chunks", ())):
                extra = f", embeddings: {', '.join(c['embeddings'])}" if c["embeddings"] else ""
                lines.append(f"    chunk {i + 1}: {c['tokens']}/{report['chunk_size']} tokens, "
                             f"{c['padding']} padding{extra}")
    return "\n".join(lines)
