"""The decoded image handed to quality checks and preprocessing, and the size limits intake enforces."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from device.intake.errors import TOO_LARGE, UNDECODABLE, IntakeError

# Refused before reading / before decoding, so a hostile file cannot exhaust the device's memory.
MAX_FILE_BYTES = 512 * 1024 * 1024
MAX_PIXELS = 100_000_000
MAX_SIDE = 30_000


@dataclass(frozen=True)
class DecodedImage:
    """HxW (gray) or HxWx3 (RGB order); uint8 for 8-bit sources, float32 in [0, 1] for deeper data."""

    pixels: np.ndarray
    source_format: str
    original_size: tuple[int, int]
    bits_stored: int
    modality: str | None = None
    body_part: str | None = None
    photometric: str | None = None
    frame: int | None = None
    frames: int = 1
    notes: tuple[str, ...] = ()


def check_dimensions(source: str, height: int, width: int) -> None:
    """Refuse absurd or empty geometry read from a header, before any pixel is decoded."""
    if height < 1 or width < 1:
        raise IntakeError(source, f"image has no pixels ({height}x{width} declared)", UNDECODABLE)
    if height > MAX_SIDE or width > MAX_SIDE or height * width > MAX_PIXELS:
        raise IntakeError(
            source,
            f"image is {width}x{height} px; the limit is {MAX_SIDE} px per side and "
            f"{MAX_PIXELS // 1_000_000} megapixels",
            TOO_LARGE,
        )
