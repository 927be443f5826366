"""The Kermany chest X-ray TRAIN split: listing, patient ids, de-duplication, patient-level split, cache.

Images go through `models.preprocess.to_model_input` with the bundle's own InputContract, exactly
as on the device, and are held in memory as float16 (C, H, W) arrays (decoding all 5,190 takes a few seconds,
so no cache file is needed).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from models.bundle import DicomHandling, InputContract, sha256_file
from models.datasets import datasets_dir
from models.preprocess import to_model_input

LABELS = ("NORMAL", "PNEUMONIA")
# Pixel statistics of the training images after /255 (measured once, rounded; fixed so that the
# contract does not depend on which images were drawn).
MEAN, STD = 0.48, 0.235

_NORMAL_ID = re.compile(r"^((?:NORMAL2-)?IM-\d+)-")
_PNEUMONIA_ID = re.compile(r"^(person\d+)_(?:bacteria|virus)_")


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int  # index into LABELS
    patient: str


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


def list_samples(root: Path) -> list[Sample]:
    samples = []
    for label_index, label in enumerate(LABELS):
        folder = Path(root) / label
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: missing class folder")
        for path in sorted(folder.glob("*.jpeg")):
            samples.append(Sample(path, label_index, patient_id(path.name, label)))
    return samples


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


def decode_rgb(path: Path) -> np.ndarray:
    """Decode to RGB order (the device's convention; the contract converts to luma)."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"{path}: cannot decode")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def load_images(samples: list[Sample], contract: InputContract, progress: bool = True) -> np.ndarray:
    """(N, C, H, W) float16 model inputs, made by the shared `to_model_input`."""
    from tqdm import tqdm

    out = np.empty((len(samples), contract.channels, contract.height, contract.width), np.float16)
    for i, s in enumerate(tqdm(samples, desc="decode", unit="img", disable=not progress)):
        out[i] = to_model_input(decode_rgb(s.path), contract)
    return out

