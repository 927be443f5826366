"""Two skin bundles side by side on the same validation images and the same stress copies: melanoma
and refer-group AUC, clean and under simulated acquisition shift, each new-minus-old difference with
a 95% paired bootstrap interval (1,000 resamples of images, a stress copy going with its image), so
a README row says whether validation can tell two versions apart, not only that one reads higher.

The images are the split each bundle's manifest records (refused if the two differ), decoded as the
trainer decodes them; the stress copies are the skin recipe's, seeded as the training run seeded
them (`provenance.seed` + 1); probabilities are each FP32 graph's own (temperature baked in).

    python benchmarks/skin_compare.py OLD_BUNDLE NEW_BUNDLE
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from models.bundle import Manifest, load_bundle
from models.metrics import percentile_interval, roc_auc, softmax, weighted_auc
from models.training.images import load_images
from models.training.registry import recipes
from models.training.skin.data import LABELS, MELANOMA, URGENT
from models.training.skin.evaluation import Rule, stress_inputs, urgent_probability

RESAMPLES = 1000
BATCH = 64


def _split(m: Manifest) -> tuple[float, int, int]:
    split = m.provenance.split
    return float(split.val_fraction), int(split.seed), int(m.provenance.seed)


def _probabilities(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    batches = (x[i : i + BATCH].astype(np.float32) for i in range(0, len(x), BATCH))
    logits = np.concatenate([session.run(["logits"], {name: b})[0] for b in batches])
    return softmax(logits)


def _scores(p: np.ndarray) -> dict[str, np.ndarray]:
    return {"melanoma": p[:, MELANOMA], "refer group": urgent_probability(p)}


def _positives(y: np.ndarray) -> dict[str, np.ndarray]:
    return {"melanoma": y == MELANOMA, "refer group": np.isin(y, [LABELS.index(u) for u in URGENT])}


def compare(old_dir: Path, new_dir: Path, limit: int = 0) -> list[str]:
    """The table's rows; `limit`: only that many images, evenly spaced through the split (which lists
    each class in turn: a quick look, for the tests)."""
    old, new = load_bundle(old_dir), load_bundle(new_dir)
    if _split(old.manifest) != _split(new.manifest) or old.manifest.input != new.manifest.input:
        raise ValueError("the two bundles were validated on different splits or inputs: no paired comparison")
    val_fraction, split_seed, seed = _split(old.manifest)
    recipe = recipes()[new.manifest.id]
    run = {"data": {"val_fraction": val_fraction, "split_seed": split_seed}, "seed": seed}
    samples = recipe.validation_samples(run, None)
    if limit:
        spaced = np.linspace(0, len(samples) - 1, min(limit, len(samples))).round().astype(int)
        samples = [samples[i] for i in spaced]
    y = np.array([s.label for s in samples])
    x = torch.from_numpy(load_images(samples, new.manifest.input, progress=False))
    rule = Rule(target_sensitivity=0.0, stress_copies=2, seed=seed)
    stressed = stress_inputs(x, rule).numpy()
    copies, n = rule.stress_copies, len(y)
    draws = np.random.default_rng(0).integers(0, n, (RESAMPLES, n))
    weights = np.stack([np.bincount(r, minlength=n) for r in draws]).astype(float)
    sets = {"clean": (x.numpy(), y, weights),
            "stressed": (stressed, np.tile(y, copies), np.tile(weights, (1, copies)))}
    rows = [f"old {old.manifest.version}, new {new.manifest.version}: {n} validation images, {copies} stress copies "
            f"each (seed {seed + 1}), {RESAMPLES} paired resamples", "",
            "| AUC | old | new | new - old [95% interval] |", "| --- | --- | --- | --- |"]
    for where, (images, labels, w) in sets.items():
        before = _scores(_probabilities(old.path_of("model.onnx"), images))
        after = _scores(_probabilities(new.path_of("model.onnx"), images))
        for what, positive in _positives(labels).items():
            a, b = roc_auc(positive, before[what]), roc_auc(positive, after[what])
            lo, hi = percentile_interval(weighted_auc(positive, after[what], w) - weighted_auc(positive, before[what], w))
            rows.append(f"| {what}, {where} | {a:.4f} | {b:.4f} | {b - a:+.4f} [{lo:+.4f}, {hi:+.4f}] |")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--limit", type=int, default=0, help="only N validation images, evenly spaced (default all)")
    args = parser.parse_args(argv)
    try:
        print("\n".join(compare(args.old, args.new, args.limit)))
    except ValueError as exc:
        print(f"skin_compare: {exc}")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
