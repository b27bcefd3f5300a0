"""Benchmarks: commands that print a table and write it to docs/ (never timed tests)."""

from __future__ import annotations

from pathlib import Path


def publish(table: str, path: Path) -> Path:
    """Print a Markdown table and write it to `path` (folders created)."""
    print(table)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(table + "\n")
    print(f"written to {path}")
    return path
