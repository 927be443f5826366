"""Training images as the device receives them: decoded to RGB, then made model inputs by the
shared `models.preprocess.to_model_input` with a bundle's own input contract. Every exam's data
module, the bundle writer and the optimizer's held-out batches read images through here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from models.bundle import InputContract
from models.preprocess import to_model_input


class Sample(Protocol):
    """What shared code needs of an exam's sample: its file and its label index."""

    @property
    def path(self) -> Path: ...

    @property
    def label(self) -> int: ...


def decode_rgb(path: Path) -> np.ndarray:
    """Decode to RGB order (the device's convention; a grayscale contract converts to luma)."""
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
