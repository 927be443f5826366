"""Redraw a bundle's training/validation split exactly, for calibration and for the accuracy gate.

Calibration must only ever see training images and the gate only validation images; both come
from the split recorded in the bundle's provenance (method, fraction and seed), applied to the
same training folder. The split method names the exam whose recipe drew it (models.training.registry).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.bundle import Bundle, DataSplit
from models.training import registry
from models.training.images import load_images
from models.training.recipe import Recipe
from optimize.errors import OptimizeError


def split_recipe(split: DataSplit | None) -> Recipe:
    """The recipe that drew a recorded split (a bundle recording none is the chest exam's, the
    only one written before splits were recorded)."""
    try:
        return registry.recipe_for_split(split.method if split else DataSplit.model_fields["method"].default)
    except registry.UnknownExam as exc:
        raise OptimizeError(f"the bundle's validation split cannot be redrawn: {exc}") from None


def default_data_dir(bundle: Bundle) -> Path:
    """The development dataset a bundle was trained on (its split method says which)."""
    return split_recipe(bundle.manifest.provenance.split).default_data_dir()


@dataclass(frozen=True)
class HeldOut:
    train: list  # samples with .path and .label (the exam's own Sample type)
    val: list


def redraw_split(bundle: Bundle, data_dir: Path) -> HeldOut:
    m = bundle.manifest
    split = m.provenance.split
    if split is None:
        raise OptimizeError(f"bundle {m.id} records no data split: its validation images cannot be redrawn")
    recipe = split_recipe(split)
    if tuple(m.labels) != recipe.labels:
        raise OptimizeError(f"bundle labels {m.labels} do not match the training folders {list(recipe.labels)}")
    try:
        train, val = recipe.redraw_split(data_dir, split)
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
    return load_images(chosen, bundle.manifest.input, progress=False).astype(np.float32)


def validation_batch(bundle: Bundle, held: HeldOut) -> tuple[np.ndarray, np.ndarray]:
    """Validation model inputs (float32) and labels."""
    x = load_images(held.val, bundle.manifest.input, progress=False).astype(np.float32)
    return x, np.asarray([s.label for s in held.val])


def negative_batch(bundle: Bundle, held: HeldOut, per_family: int, seed: int = 7) -> np.ndarray:
    """Images the bundle's exam must refuse, as model inputs (float32): `per_family` of every negative
    family (models.training.negatives; the image-based ones drawn from validation images, never
    from what calibration saw), from a seed the export's own fit did not use."""
    from models.preprocess import to_model_input
    from models.training import negatives
    from models.training.images import decode_rgb

    exam = split_recipe(bundle.manifest.provenance.split).exam
    own = [decode_rgb(s.path) for s in held.val[:200]]
    images = [negatives.generate(f, seed, per_family, 224) for f in negatives.families(exam, own=own)]
    return np.stack([to_model_input(img, bundle.manifest.input) for batch in images for img in batch]).astype(np.float32)
