"""Decoding no larger than the model needs: what a bundle needs of an image (the smallest short
side its input and its quality gate accept, and whether colour matters) and the JPEG scale-down
that keeps it.

libjpeg can decode at 1/2, 1/4 or 1/8 scale by skipping most of the inverse DCT (OpenCV's
IMREAD_REDUCED_* flags): faster, and a proper low-pass (each output pixel is its block's average,
no aliasing). The largest reduction that keeps the short side at or above ``min_side`` is used, so
the model's own resize still only shrinks, and the quality gate sees the same geometry class as the
full image (too small stays too small; the aspect is kept). The quality checks then run on the
reduced image. The stored study is always the original file, at full resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

from models.bundle import Manifest

FACTORS = (8, 4, 2)
# The long side at which device/decision/quality.py judges sharpness (area-resized there): an image decoded
# for a bundle with a sharpness check keeps at least this much, so the figure is the full image's.
SHARPNESS_SIDE = 224


@dataclass(frozen=True)
class ReducedDecode:
    """The smallest short side a bundle needs, and whether its checks can do without colour."""

    min_side: int
    gray: bool

    @classmethod
    def for_manifest(cls, manifest: Manifest) -> "ReducedDecode":
        contract = manifest.input
        min_side = max(contract.height, contract.width, manifest.quality.min_side_px,
                       SHARPNESS_SIDE if manifest.quality.min_sharpness is not None else 0)
        # A colour photo is refused by max_colorfulness: a grayscale decode would hide the colour.
        gray = contract.color == "grayscale" and manifest.quality.max_colorfulness is None
        return cls(min_side, gray)


def reduction(height: int, width: int, min_side: int) -> int:
    """The largest JPEG scale-down factor (8, 4, 2) keeping the short side >= min_side, else 1."""
    for factor in FACTORS:
        if min(height, width) // factor >= min_side:
            return factor
    return 1


def reduced_size(height: int, width: int, factor: int) -> tuple[int, int]:
    """What libjpeg produces at 1/factor: each side rounded up."""
    return -(-height // factor), -(-width // factor)
