"""The Kermany chest X-ray TRAIN split: listing, patient ids, acquisition groups, film aspects,
de-duplication, the patient-level split, and the input contract.

Images are read by models.training.images (the device's preprocessing with the bundle's own
InputContract) and held in memory as float16 (C, H, W) arrays (decoding all 5,190 takes a few
seconds, so no cache file is needed).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.bundle import DicomHandling, InputContract, sha256_file
from models.datasets import datasets_dir

LABELS = ("NORMAL", "PNEUMONIA")
# Pixel statistics of the training images after /255 (measured once, rounded; fixed so that the
# contract does not depend on which images were drawn).
MEAN, STD = 0.48, 0.235

# The width/height range of the films the model is made invariant to: the pooled train films span
# 1.00-2.22 (1st-99th percentile of train_aspect.csv), the test normals are wider than the train
# normals (median 1.33 against 1.21), portrait films go down to 0.82.
ASPECT_RANGE = (0.8, 2.3)
ASPECTS_FILE = "train_aspect.csv"

_NORMAL_ID = re.compile(r"^((?:NORMAL2-)?IM-\d+)-")
_PNEUMONIA_ID = re.compile(r"^(person\d+)_(?:bacteria|virus)_")
# Acquisition groups, from the file names: two batches of normals and the two pneumonia kinds.
GROUPS = ("normal-im", "normal2", "bacteria", "virus")
WIDE = "wide"  # pseudo-group for held-out validation: films with a known original aspect >= WIDE_ASPECT
WIDE_ASPECT = 1.5


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int  # index into LABELS
    patient: str
    group: str = ""  # one of GROUPS
    aspect: float | None = None  # the film's original width/height, None where unknown


def default_data_dir() -> Path:
    return datasets_dir() / "chest-xray" / "train"


def input_contract(size: int, tensor_name: str = "image") -> InputContract:
    return InputContract(
        tensor_name=tensor_name,
        height=size,
        width=size,
        channels=1,
        color="grayscale",
        resize="stretch",
        aspect_range=ASPECT_RANGE,
        mean=[MEAN],
        std=[STD],
        dicom=DicomHandling(modalities=["CR", "DX"], body_parts=["CHEST"]),
    )


def patient_id(filename: str, label: str) -> str:
    """personN_{bacteria,virus}_M -> personN; [NORMAL2-]IM-xxxx-yyyy[-zzzz] -> [NORMAL2-]IM-xxxx."""
    pattern = _PNEUMONIA_ID if label == "PNEUMONIA" else _NORMAL_ID
    match = pattern.match(filename)
    if not match:
        raise ValueError(f"cannot derive a patient id from {label}/{filename}")
    # Namespaced by class: the two naming schemes are separate id spaces.
    return f"{label}:{match.group(1)}"


def acquisition_group(filename: str, label: str) -> str:
    if label == "NORMAL":
        return "normal2" if filename.startswith("NORMAL2-") else "normal-im"
    return "virus" if "_virus_" in filename else "bacteria"


def read_aspects(root: Path) -> dict[str, float]:
    """`LABEL/file` -> original width/height from train_aspect.csv beside the train folder (empty if absent).

    The file's README explains the estimate (measured on originals, or matched against the MedMNIST
    centre crops); rows marked unknown have no value and are left out.
    """
    path = Path(root).parent / ASPECTS_FILE
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as fh:
        rows = csv.DictReader(fh)
        return {r["file"]: float(r["original_aspect_w_over_h"]) for r in rows if r["original_aspect_w_over_h"]}


def list_samples(root: Path) -> list[Sample]:
    aspects = read_aspects(root)
    samples = []
    for label_index, label in enumerate(LABELS):
        folder = Path(root) / label
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: missing class folder")
        for path in sorted(folder.glob("*.jpeg")):
            samples.append(Sample(path, label_index, patient_id(path.name, label), acquisition_group(path.name, label),
                                  aspects.get(f"{label}/{path.name}")))
    return samples


def group_median_aspects(samples: list[Sample]) -> dict[str, float]:
    """Median known aspect per acquisition group: the stand-in for a film whose aspect is unknown."""
    medians = {}
    for group in GROUPS:
        known = [s.aspect for s in samples if s.group == group and s.aspect is not None]
        medians[group] = float(np.median(known)) if known else 1.0
    return medians


def remove_duplicates(samples: list[Sample]) -> tuple[list[Sample], int]:
    """Keep the first of each group of byte-identical files; drop groups whose labels disagree."""
    groups: dict[str, list[Sample]] = {}
    for s in samples:
        groups.setdefault(sha256_file(s.path), []).append(s)
    kept = []
    for group in groups.values():
        if len({s.label for s in group}) == 1:
            kept.append(group[0])
    kept.sort(key=lambda s: (s.label, s.path.name))
    return kept, len(samples) - len(kept)


def split_by_patient(samples: list[Sample], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, val); every patient's images fall on one side; stratified by class."""
    rng = np.random.default_rng(seed)
    val_patients: set[str] = set()
    for label in range(len(LABELS)):
        patients = sorted({s.patient for s in samples if s.label == label})
        order = rng.permutation(len(patients))
        n_val = int(round(val_fraction * len(patients)))
        val_patients.update(patients[i] for i in order[:n_val])
    train = [i for i, s in enumerate(samples) if s.patient not in val_patients]
    val = [i for i, s in enumerate(samples) if s.patient in val_patients]
    return train, val


def limit_samples(samples: list[Sample], limit: int, seed: int) -> list[Sample]:
    """At most `limit` samples, half per class, drawn with `seed` (smoke runs); 0 keeps all."""
    if not limit:
        return samples
    rng = np.random.default_rng(seed)
    per_class = [[s for s in samples if s.label == c] for c in range(len(LABELS))]
    return [s for group in per_class for s in rng.permutation(group)[: limit // 2]]


def held_out_groups(spec: str) -> set[str]:
    """`normal2,virus` -> {"normal2", "virus"}; ValueError naming any unknown group."""
    groups = {g.strip() for g in spec.split(",") if g.strip()}
    unknown = groups - set(GROUPS) - {WIDE}
    if unknown:
        raise ValueError(f"unknown group(s) {', '.join(sorted(unknown))} (choose from {', '.join(GROUPS)}, {WIDE})")
    return groups


def is_held_out(s: Sample, groups: set[str]) -> bool:
    return s.group in groups or (WIDE in groups and s.aspect is not None and s.aspect >= WIDE_ASPECT)


@dataclass(frozen=True)
class Split:
    train: list[Sample]
    val: list[Sample]
    held_out: list[Sample]  # whole groups kept out of both, for the group-shift validation
    n_duplicates: int


def split_samples(samples: list[Sample], val_fraction: float, seed: int, hold_out: str = "",
                  n_duplicates: int = 0) -> Split:
    """Held-out groups first, then the patient-level split of the rest (the same split every time)."""
    groups = held_out_groups(hold_out)
    held_out = [s for s in samples if is_held_out(s, groups)]
    rest = [s for s in samples if not is_held_out(s, groups)]
    train_idx, val_idx = split_by_patient(rest, val_fraction, seed)
    return Split([rest[i] for i in train_idx], [rest[i] for i in val_idx], held_out, n_duplicates)


def load_split(data_dir: Path | None, val_fraction: float, seed: int, hold_out: str = "", limit: int = 0) -> Split:
    """The training folder's samples, de-duplicated, limited and split (the same split every time)."""
    samples, n_dup = remove_duplicates(list_samples(data_dir or default_data_dir()))
    return split_samples(limit_samples(samples, limit, seed), val_fraction, seed, hold_out, n_dup)


def checkpoint_split(checkpoint: dict, data_dir: Path | None) -> Split:
    """The split a training checkpoint records, redrawn exactly from the training folder."""
    data = checkpoint["data"]
    return load_split(data_dir, float(data["val_fraction"]), split_seed(checkpoint), data.get("held_out", ""),
                      int(data.get("limit", 0)))


def split_seed(checkpoint: dict) -> int:
    """The seed of a checkpoint's validation split (runs before --split-seed used --seed for both)."""
    return int(checkpoint["data"].get("split_seed", checkpoint["seed"]))
