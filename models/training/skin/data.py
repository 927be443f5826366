"""HAM10000 (ISIC 2018 Task 3 training set) as shipped in the shared datasets: listing, split and
the input contract.

One image per lesion here, so a stratified split by class is a split by lesion (checked: a lesion
id appearing twice is refused). Images are read by models.training.images, through the bundle's
own InputContract exactly as on the device.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.bundle import DicomHandling, InputContract
from models.datasets import datasets_dir

LABELS = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
URGENT = ("akiec", "bcc", "mel")  # refer: malignant or pre-malignant
FOCUS = "mel"  # the operating point protects melanoma sensitivity
MELANOMA = LABELS.index(FOCUS)
# Per-channel statistics of the training images after /255 (measured once on every 5th training
# image, rounded; fixed so the contract does not depend on which images were drawn).
MEAN = (0.779, 0.525, 0.545)
STD = (0.132, 0.157, 0.173)


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int  # index into LABELS
    lesion: str
    dx_type: str
    localization: str


def default_data_dir() -> Path:
    return datasets_dir() / "dermatology" / "train"


def input_contract(size: int, tensor_name: str = "image") -> InputContract:
    return InputContract(
        tensor_name=tensor_name, height=size, width=size, channels=3, color="rgb", resize="stretch",
        mean=list(MEAN), std=list(STD),
        # VL Photographic / external camera images and the newer dermoscopy modality.
        dicom=DicomHandling(modalities=["XC", "DMS"], body_parts=[]),
    )


def list_samples(root: Path) -> list[Sample]:
    labels_csv = root.parent / "labels.csv"
    meta: dict[str, dict[str, str]] = {}
    with open(labels_csv, newline="") as f:
        for row in csv.DictReader(f):
            meta[row["image_id"]] = row
    samples, lesions = [], set()
    for index, label in enumerate(LABELS):
        for path in sorted((root / label).glob("*.jpg")):
            row = meta.get(path.stem)
            if row is None or row["dx"] != label:
                raise ValueError(f"{path}: not listed as {label} in {labels_csv}")
            if row["lesion_id"] in lesions:
                raise ValueError(f"{path}: lesion {row['lesion_id']} appears twice; the split is by lesion")
            lesions.add(row["lesion_id"])
            samples.append(Sample(path, index, row["lesion_id"], row["dx_type"], row["localization"]))
    if not samples:
        raise ValueError(f"{root}: no images in {', '.join(LABELS)} subfolders")
    return samples


def stratified_split(samples: list[Sample], val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Per class, a seeded shuffle; the first round(fraction * n) go to validation."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for index in range(len(LABELS)):
        members = [s for s in samples if s.label == index]
        order = rng.permutation(len(members))
        n_val = int(round(val_fraction * len(members)))
        val += [members[i] for i in order[:n_val]]
        train += [members[i] for i in order[n_val:]]
    return train, val


def load_split(data_dir: Path | None, val_fraction: float, seed: int, limit: int = 0
               ) -> tuple[list[Sample], list[Sample]]:
    samples = list_samples(data_dir or default_data_dir())
    if limit:
        rng = np.random.default_rng(seed)
        samples = [samples[i] for i in sorted(rng.permutation(len(samples))[:limit])]
    return stratified_split(samples, val_fraction, seed)


def checkpoint_split(checkpoint: dict, data_dir: Path | None) -> tuple[list[Sample], list[Sample]]:
    data = checkpoint["data"]
    return load_split(data_dir, float(data["val_fraction"]), int(data.get("split_seed", checkpoint["seed"])),
                      int(data.get("limit", 0)))
