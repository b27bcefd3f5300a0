"""Train the concept detector on freshly rendered world data.

    python -m avert.detect.train --out src/avert/detect        # ships weights + docs/detector.md

Three datasets come from `avert.world.make_dataset` with seeds derived from one base seed
(`split_seeds`): training images (augmented on the fly with flips, one-pixel shifts,
slight blur, brightness/contrast jitter and gaussian noise, because generated images are
less crisp than renders), a validation set that fixes one decision threshold per concept,
and a held-out test set that gives the reported scores. The test set is also scored after
the same kind of degradation, to show how the detector holds up on softer images.
"""

from __future__ import annotations

import argparse
import datetime
import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from avert.detect import pixelstats
from avert.detect.detector import META_NAME, save_detector
from avert.detect.model import WIDTHS, ConceptNet
from avert.world import CONCEPT_INDEX, CONCEPTS, WorldDataset, make_dataset

TARGET_ACCURACY = 0.95


@dataclass(frozen=True)
class ConceptScore:
    """Held-out scores of one concept (test set, clean renders and degraded ones)."""

    concept: str
    base_rate: float
    accuracy: float
    precision: float
    recall: float
    n: int
    threshold: float
    degraded_accuracy: float


@dataclass
class DetectorReport:
    """What `train_detector` measured and wrote."""

    scores: list[ConceptScore]
    tone_agreement: dict[str, dict[str, float]]
    pixel_thresholds: dict[str, float]
    seeds: dict[str, int]
    n_train: int
    n_val: int
    n_test: int
    epochs: int
    train_seconds: float
    total_seconds: float
    weights: Path
    size_bytes: int
    machine: str = field(default_factory=lambda: machine_description())
    date: str = field(default_factory=lambda: datetime.date.today().isoformat())

    @property
    def min_accuracy(self) -> float:
        return min(s.accuracy for s in self.scores)

    def below(self, target: float = TARGET_ACCURACY) -> list[ConceptScore]:
        """Concepts whose held-out accuracy misses `target`."""
        return [s for s in self.scores if s.accuracy < target]


def machine_description() -> str:
    """CPU architecture, torch thread count and version, in words."""
    return f"{platform.machine()}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}, CPU"


def split_seeds(seed: int) -> dict[str, int]:
    """World seeds of the training, validation and test sets for a base seed."""
    return {"train": 1000 * seed + 101, "val": 1000 * seed + 202, "test": 1000 * seed + 303}


# --- augmentation -----------------------------------------------------------------------


def _gaussian_kernels(sigmas: torch.Tensor, radius: int = 2) -> torch.Tensor:
    """[N, 2*radius+1] normalised 1-D gaussian kernels (sigma 0: identity)."""
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(offsets[None, :] ** 2) / (2 * sigmas[:, None].clamp_min(1e-3) ** 2))
    return k / k.sum(dim=1, keepdim=True)


def blur(x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Separable gaussian blur of float NCHW images, one sigma (pixels) per image."""
    n, c, h, w = x.shape
    k = _gaussian_kernels(sigmas).repeat_interleave(c, dim=0)  # [N*C, K]
    r = k.shape[1] // 2
    y = F.pad(x.reshape(1, n * c, h, w), (r, r, r, r), mode="replicate")
    y = F.conv2d(y, k[:, None, None, :], groups=n * c)
    y = F.conv2d(y, k[:, None, :, None], groups=n * c)
    return y.reshape(n, c, h, w)


def shift(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, pad: int = 1) -> torch.Tensor:
    """Translate each NCHW image by (dy, dx) whole pixels (|d| <= pad), edges replicated."""
    n, c, h, w = x.shape
    p = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    rows = (torch.arange(h)[None, :] + pad - dy[:, None])[:, None, :, None].expand(n, c, h, w + 2 * pad)
    p = torch.gather(p, 2, rows)
    cols = (torch.arange(w)[None, :] + pad - dx[:, None])[:, None, None, :].expand(n, c, h, w)
    return torch.gather(p, 3, cols)


def degrade(x: torch.Tensor, g: torch.Generator, flip: bool = True) -> torch.Tensor:
    """Random light degradation of float NCHW images on the 0-255 scale (see module doc)."""
    n = x.shape[0]
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(n, generator=g)  # noqa: E731
    if flip:
        mirrored = torch.rand(n, generator=g) < 0.5
        x = torch.where(mirrored[:, None, None, None], x.flip(3), x)
    x = shift(x, torch.randint(-1, 2, (n,), generator=g), torch.randint(-1, 2, (n,), generator=g))
    sig = torch.where(torch.rand(n, generator=g) < 0.6, u(0.3, 0.9), torch.zeros(n))
    x = blur(x, sig)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * u(0.9, 1.1).view(n, 1, 1, 1) + mean * u(0.93, 1.07).view(n, 1, 1, 1)
    x = x + torch.randn(x.shape, generator=g) * u(0.0, 6.0).view(n, 1, 1, 1)
    return x.clamp(0.0, 255.0)


def to_nchw(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float32 [N, 3, H, W] on the 0-255 scale."""
    return torch.from_numpy(np.array(images, dtype=np.uint8)).permute(0, 3, 1, 2).float()


# --- training and scoring -----------------------------------------------------------------


def fit(
    data: WorldDataset, epochs: int, seed: int, batch_size: int = 128, lr: float = 3e-3, progress: bool = True
) -> ConceptNet:
    """Train a fresh `ConceptNet` on augmented world images with BCE, AdamW and one-cycle LR."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = ConceptNet()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    steps = epochs * math.ceil(len(data) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    x, y = to_nchw(data.images), torch.from_numpy(data.concepts.astype(np.float32))
    bar = tqdm(total=steps, desc="detector", unit="batch", disable=not progress)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch_size):
            idx = order[i : i + batch_size]
            loss = F.binary_cross_entropy_with_logits(model(degrade(x[idx], g)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.4f}")
    bar.close()
    return model.eval()


def probabilities(model: ConceptNet, x: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    """Sigmoid outputs [N, len(CONCEPTS)] for float NCHW images (model in eval mode)."""
    model.eval()
    with torch.inference_mode():
        return np.concatenate([torch.sigmoid(model(x[i : i + batch_size])).numpy() for i in range(0, len(x), batch_size)])


def choose_thresholds(probs: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per concept, the threshold on a 0.01 grid with the best accuracy (ties: nearest 0.5)."""
    grid = np.round(np.arange(0.02, 0.99, 0.01), 2)
    order = grid[np.argsort(np.abs(grid - 0.5), kind="stable")]
    out = np.empty(probs.shape[1], dtype=np.float32)
    for j in range(probs.shape[1]):
        acc = ((probs[:, j][None, :] >= order[:, None]) == truth[:, j][None, :]).mean(axis=1)
        out[j] = order[int(np.argmax(acc))]
    return out


def score(pred: np.ndarray, degraded_pred: np.ndarray, truth: np.ndarray, thresholds: np.ndarray) -> list[ConceptScore]:
    """Per-concept held-out scores."""
    scores = []
    for j, name in enumerate(CONCEPTS):
        p, t = pred[:, j], truth[:, j]
        tp = int((p & t).sum())
        scores.append(
            ConceptScore(
                concept=name,
                base_rate=float(t.mean()),
                accuracy=float((p == t).mean()),
                precision=tp / max(int(p.sum()), 1),
                recall=tp / max(int(t.sum()), 1),
                n=len(t),
                threshold=float(thresholds[j]),
                degraded_accuracy=float((degraded_pred[:, j] == t).mean()),
            )
        )
    return scores


def tone_truth(data: WorldDataset) -> dict[str, np.ndarray]:
    """Ground truth of each tone grade: tone -> bool [N]."""
    return {tone: data.concepts[:, CONCEPT_INDEX[tone]] for tone in pixelstats.TONE_NAMES}


def train_detector(
    out: Path,
    n_train: int = 40_000,
    n_val: int = 5_000,
    n_test: int = 10_000,
    seed: int = 0,
    epochs: int = 8,
    progress: bool = True,
) -> DetectorReport:
    """Render data, train, pick thresholds on validation, score on the test set, save to `out`."""
    start = time.perf_counter()
    seeds = split_seeds(seed)
    train, val, test = (make_dataset(n, seeds[k]) for n, k in ((n_train, "train"), (n_val, "val"), (n_test, "test")))
    t0 = time.perf_counter()
    model = fit(train, epochs, seed, progress=progress)
    train_seconds = time.perf_counter() - t0

    thresholds = choose_thresholds(probabilities(model, to_nchw(val.images)), val.concepts)
    x_test = to_nchw(test.images)
    g = torch.Generator().manual_seed(seed + 7)
    pred = probabilities(model, x_test) >= thresholds
    degraded = probabilities(model, degrade(x_test, g, flip=False)) >= thresholds
    scores = score(pred, degraded, test.concepts, thresholds)

    pixel_thresholds = pixelstats.calibrate_thresholds(val.images, tone_truth(val))
    agreement = pixelstats.tone_agreement(test.images, tone_truth(test), pixel_thresholds)
    meta = {
        "concepts": list(CONCEPTS),
        "widths": list(WIDTHS),
        "thresholds": {s.concept: s.threshold for s in scores},
        "heldout_accuracy": {s.concept: round(s.accuracy, 5) for s in scores},
        "pixel_thresholds": pixel_thresholds,
        "pixel_agreement": {t: round(a["accuracy"], 5) for t, a in agreement.items()},
        "seeds": seeds,
        "n_train": n_train,
        "n_val": n_val,
        "n_test": n_test,
        "epochs": epochs,
    }
    weights = save_detector(model, meta, out)
    return DetectorReport(
        scores=scores,
        tone_agreement=agreement,
        pixel_thresholds=pixel_thresholds,
        seeds=seeds,
        n_train=n_train,
        n_val=n_val,
        n_test=n_test,
        epochs=epochs,
        train_seconds=train_seconds,
        total_seconds=time.perf_counter() - start,
        weights=weights,
        size_bytes=weights.stat().st_size,
    )


def main(argv: list[str] | None = None) -> int:
    """Command line: train, save the detector into --out and write the markdown report."""
    from avert.detect.report import write_report

    ap = argparse.ArgumentParser(prog="python -m avert.detect.train", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True, help=f"folder for detector.safetensors and {META_NAME}")
    ap.add_argument("--docs", type=Path, default=Path("docs/detector.md"), help="markdown report path ('' to skip)")
    ap.add_argument("--n-train", type=int, default=40_000)
    ap.add_argument("--n-val", type=int, default=5_000)
    ap.add_argument("--n-test", type=int, default=10_000)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    report = train_detector(
        args.out, args.n_train, args.n_val, args.n_test, args.seed, args.epochs, progress=not args.quiet
    )
    if str(args.docs):
        write_report(report, args.docs)
    print(f"weights {report.weights} ({report.size_bytes / 1e6:.2f} MB); training {report.train_seconds:.0f} s")
    print(f"held-out accuracy: min {report.min_accuracy:.4f}")
    for s in report.below():
        print(f"  below {TARGET_ACCURACY:.0%}: {s.concept} {s.accuracy:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
