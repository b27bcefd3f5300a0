"""Write a `DetectorReport` as the markdown page docs/detector.md."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from avert.detect import pixelstats

if TYPE_CHECKING:
    from avert.detect.train import DetectorReport


# A property of the world's colours, not of this run: why the house colours score lowest.
HOUSE_NOTE = [
    "Red and blue houses are the hardest concepts by construction: their wall colours, red (205, 40, 35) "
    "and blue (45, 85, 205), have almost the same luminance (89 and 87 of 255), so under the black and white "
    "and sepia grades, which keep only luminance, the two look alike. Nearly all of their errors are in "
    "those two grades.",
]


def concept_table(report: DetectorReport) -> list[str]:
    """Markdown rows: one per concept, held-out scores on clean and degraded renders."""
    rows = [
        "| concept | base rate | held-out accuracy | precision | recall | n | threshold | accuracy, degraded |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in report.scores:
        rows.append(
            f"| {s.concept} | {s.base_rate:.3f} | {s.accuracy:.4f} | {s.precision:.4f} | {s.recall:.4f} "
            f"| {s.n} | {s.threshold:.2f} | {s.degraded_accuracy:.4f} |"
        )
    return rows


def tone_table(report: DetectorReport) -> list[str]:
    """Markdown rows: pixel-statistic tone checks against ground truth on the test set."""
    stat = {
        "green tones": f"green excess G-(R+B)/2, {pixelstats.TINT_QUANTILE:.0%} pixel quantile",
        "warm tones": f"warm excess R-B, {pixelstats.TINT_QUANTILE:.0%} pixel quantile, and not sepia",
        "blue tones": f"blue excess B-(R+G)/2, {pixelstats.TINT_QUANTILE:.0%} pixel quantile",
        "black and white": "greyness 1 - mean saturation",
        "sepia": "sepia-likeness exp(-mean distance to the sepia curve / 4)",
    }
    rows = ["| tone | statistic | threshold | accuracy | precision | recall |", "|---|---|---|---|---|---|"]
    for tone in pixelstats.TONE_NAMES:
        a = report.tone_agreement[tone]
        rows.append(
            f"| {tone} | {stat[tone]} | {report.pixel_thresholds[tone]:.3f} | {a['accuracy']:.4f} "
            f"| {a['precision']:.4f} | {a['recall']:.4f} |"
        )
    return rows


def render_report(report: DetectorReport) -> str:
    """The whole markdown page."""
    below = report.below()
    verdict = (
        f"Every concept reaches {0.95:.0%} held-out accuracy (lowest {report.min_accuracy:.4f})."
        if not below
        else "Below 95%: " + ", ".join(f"{s.concept} ({s.accuracy:.4f})" for s in below) + "."
    )
    lines = [
        "# Concept detector",
        "",
        f"Measured {report.date} by `python -m avert.detect.train` on {report.machine}.",
        f"Trained on {report.n_train} world renders for {report.epochs} epochs in {report.train_seconds:.0f} s "
        f"({report.total_seconds:.0f} s in all, data and scoring included); thresholds chosen on {report.n_val} "
        f"validation renders; scored on {report.n_test} held-out renders (world seeds {report.seeds}). "
        f"Weights: `{report.weights.name}`, {report.size_bytes / 1e6:.2f} MB.",
        "",
        "`avert.detect.ConceptDetector.load().predict(images)` gives one bool per concept of `avert.world.CONCEPTS`; "
        "it is the yardstick for whether a negative prompt removed a concept from generated images.",
        "",
        verdict,
        "",
        "## Per concept, held-out test set",
        "",
        "Accuracy, precision and recall on clean renders; *accuracy, degraded* is on the same images after "
        "a light random blur (sigma 0.3-0.9 px on 60% of them), a one-pixel shift, brightness/contrast "
        "jitter and gaussian noise (sigma up to 6/255), closer to what a diffusion model produces.",
        "",
        *concept_table(report),
        "",
        *HOUSE_NOTE,
        "",
        "## Tone grades from pixel statistics (no network)",
        "",
        "Each tone grade is also checked by one pixel statistic with a threshold calibrated on the validation "
        "renders (`avert.detect.pixelstats`, `ConceptDetector.tone_check`). A grade tints every pixel, so the "
        "tint statistics use a low quantile over the pixels rather than the mean. Agreement with ground truth "
        "on the held-out set:",
        "",
        *tone_table(report),
        "",
    ]
    return "\n".join(lines)


def write_report(report: DetectorReport, path: str | Path) -> Path:
    """Write the markdown page to `path` (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(report))
    return path
