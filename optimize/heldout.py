"""Redraw a bundle's training/validation split exactly, for calibration and for the accuracy gate.

Calibration must only ever see training images and the gate only validation images; both come
from the split recorded in the bundle's provenance (method, fraction and seed), applied to the
same training folder. The split method names the training code that drew it (SPLITS).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.bundle import Bundle, DataSplit
from models.training import data as chest
from models.training.skin import data as skin
from optimize.errors import OptimizeError


def _by_patient(data_dir: Path, split: DataSplit) -> tuple[list, list]:
    samples, _ = chest.remove_duplicates(chest.list_samples(data_dir))
    train_idx, val_idx = chest.split_by_patient(samples, split.val_fraction, split.seed)
    return [samples[i] for i in train_idx], [samples[i] for i in val_idx]


def _by_lesion(data_dir: Path, split: DataSplit) -> tuple[list, list]:
    return skin.stratified_split(skin.list_samples(data_dir), split.val_fraction, split.seed)


# split method -> (labels of its training folder, default folder, how to redraw it)
SPLITS = {
    "by-patient": (chest.LABELS, chest.default_data_dir, _by_patient),
    "by-lesion-stratified": (skin.LABELS, skin.default_data_dir, _by_lesion),
}


def default_data_dir(bundle: Bundle) -> Path:
    """The development dataset a bundle was trained on (its split method says which)."""
    split = bundle.manifest.provenance.split
    return SPLITS[split.method if split else "by-patient"][1]()


@dataclass(frozen=True)
class HeldOut:
    train: list  # samples with .path and .label (the split method's own Sample type)
    val: list


def redraw_split(bundle: Bundle, data_dir: Path) -> HeldOut:
    m = bundle.manifest
    split = m.provenance.split
    if split is None:
        raise OptimizeError(f"bundle {m.id} records no data split: its validation images cannot be redrawn")
    labels, _, redraw = SPLITS[split.method]
    if tuple(m.labels) != labels:
        raise OptimizeError(f"bundle labels {m.labels} do not match the training folders {list(labels)}")
    try:
        train, val = redraw(data_dir, split)
    except (FileNotFoundError, ValueError) as exc:
        raise OptimizeError(f"{data_dir}: not the model's training data: {exc}") from None
    if (len(train), len(val)) != (split.train_images, split.val_images):
        raise OptimizeError(
            f"{data_dir} gives a {len(train)}/{len(val)} split, the bundle was trained on "
            f"{split.train_images}/{split.val_images}: not the same data"
        )
    return HeldOut(train, val)


def calibration_batch(bundle: Bundle, held: HeldOut, count: int, seed: int) -> np.ndarray:
    """`count` training images drawn reproducibly, class-balanced, as model inputs (float32)."""
    if count < 1:
        raise OptimizeError("calibration needs at least one image")
    rng = np.random.default_rng(seed)
    chosen = []
    classes = len(bundle.manifest.labels)
    for label in range(classes):
        pool = [s for s in held.train if s.label == label]
        take = min(len(pool), count // classes + (label < count % classes))
        chosen += [pool[i] for i in sorted(rng.choice(len(pool), take, replace=False))]
    return chest.load_images(chosen, bundle.manifest.input, progress=False).astype(np.float32)


def validation_batch(bundle: Bundle, held: HeldOut) -> tuple[np.ndarray, np.ndarray]:
    """Validation model inputs (float32) and labels."""
    x = chest.load_images(held.val, bundle.manifest.input, progress=False).astype(np.float32)
    return x, np.asarray([s.label for s in held.val])
