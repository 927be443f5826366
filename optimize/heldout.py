"""Redraw a bundle's training/validation split exactly, for calibration and for the accuracy gate.

Calibration must only ever see training images and the gate only validation images; both come
from the patient-level split recorded in the bundle's provenance (fraction and seed), applied to
the same training folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.bundle import Bundle
from models.training.data import LABELS, Sample, list_samples, load_images, remove_duplicates, split_by_patient
from optimize.errors import OptimizeError


@dataclass(frozen=True)
class HeldOut:
    train: list[Sample]
    val: list[Sample]


def redraw_split(bundle: Bundle, data_dir: Path) -> HeldOut:
    m = bundle.manifest
    split = m.provenance.split
    if split is None:
        raise OptimizeError(f"bundle {m.id} records no data split: its validation images cannot be redrawn")
    if tuple(m.labels) != LABELS:
        raise OptimizeError(f"bundle labels {m.labels} do not match the training folders {list(LABELS)}")
    try:
        samples, _ = remove_duplicates(list_samples(data_dir))
    except (FileNotFoundError, ValueError) as exc:
        raise OptimizeError(f"{data_dir}: not the model's training data: {exc}") from None
    train_idx, val_idx = split_by_patient(samples, split.val_fraction, split.seed)
    if (len(train_idx), len(val_idx)) != (split.train_images, split.val_images):
        raise OptimizeError(
            f"{data_dir} gives a {len(train_idx)}/{len(val_idx)} split, the bundle was trained on "
            f"{split.train_images}/{split.val_images}: not the same data"
        )
    return HeldOut([samples[i] for i in train_idx], [samples[i] for i in val_idx])


def calibration_batch(bundle: Bundle, held: HeldOut, count: int, seed: int) -> np.ndarray:
    """`count` training images drawn reproducibly, class-balanced, as model inputs (float32)."""
    if count < 1:
        raise OptimizeError("calibration needs at least one image")
    rng = np.random.default_rng(seed)
    chosen: list[Sample] = []
    for label in range(len(LABELS)):
        pool = [s for s in held.train if s.label == label]
        take = min(len(pool), count // len(LABELS) + (label < count % len(LABELS)))
        chosen += [pool[i] for i in sorted(rng.choice(len(pool), take, replace=False))]
    return load_images(chosen, bundle.manifest.input, progress=False).astype(np.float32)


def validation_batch(bundle: Bundle, held: HeldOut) -> tuple[np.ndarray, np.ndarray]:
    """Validation model inputs (float32) and labels."""
    x = load_images(held.val, bundle.manifest.input, progress=False).astype(np.float32)
    return x, np.asarray([s.label for s in held.val])
