"""From a captured frame to the image the model and the quality checks see, decoded as cheaply as
the model allows.

A 128x128 model does not need a full 1280x720 decode: libjpeg can decode at 1/2, 1/4 or 1/8 scale
by skipping most of the inverse DCT (cv2.IMREAD_REDUCED_*), which is both faster and a proper
low-pass (no aliasing). We pick the largest reduction that keeps the short side at or above what
the bundle needs (its input size and its quality gate's minimum side), so the model's own resize
still only shrinks and the quality gate sees the same geometry class as the full frame. Measured
here on a 1280x720 frame: full colour decode 1.8 ms, 1/4 scale 0.7 ms.

Colour is kept unless the bundle neither takes colour input nor checks for it: its quality policy
may refuse colour photos (max_colorfulness), and a grayscale decode would hide that (the gray-only
decode would save about 0.1 ms). The stored captured frame is always the full-resolution original.
"""

from __future__ import annotations

import time

import cv2
import numpy as np

from device.capture.frames import Frame
from device.intake import DecodedImage
from models.reading import ReducedDecode, reduction

# Decode flags by scale-down factor (the live view's picture uses the colour ones too).
REDUCED_COLOR = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}
_GRAY = {
    1: cv2.IMREAD_GRAYSCALE,
    2: cv2.IMREAD_REDUCED_GRAYSCALE_2,
    4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
    8: cv2.IMREAD_REDUCED_GRAYSCALE_8,
}
# Start-of-frame markers (baseline, extended, progressive, lossless, arithmetic); not C4/C8/CC.
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


class FrameDecodeError(ValueError):
    """The frame's bytes are not a decodable image (a corrupt part from a flaky camera)."""


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) from the JPEG's start-of-frame header, without decoding; None if not found."""
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if marker in _SOF and i + 9 <= n:
            return int.from_bytes(data[i + 5 : i + 7], "big"), int.from_bytes(data[i + 7 : i + 9], "big")
        if marker == 0xDA or length < 2:  # scan data follows: no SOF before it means a broken file
            return None
        i += 2 + length
    return None


def analysis_image(frame: Frame, plan: ReducedDecode) -> tuple[DecodedImage, float]:
    """The frame reduced for the model (RGB or gray, uint8) and the decode time in ms.

    Raises FrameDecodeError for a frame that cannot be decoded.
    """
    t0 = time.perf_counter()
    if frame.jpeg is not None:
        size = jpeg_size(frame.jpeg)
        if size is None:
            raise FrameDecodeError("frame is not a readable JPEG")
        factor = reduction(*size, plan.min_side)
        flags = (_GRAY if plan.gray else REDUCED_COLOR)[factor]
        pixels = cv2.imdecode(np.frombuffer(frame.jpeg, np.uint8), flags)
        if pixels is None:
            raise FrameDecodeError("frame JPEG is corrupt")
        source_format = "jpeg"
    else:
        size = frame.bgr.shape[:2]
        factor = reduction(*size, plan.min_side)
        pixels = frame.bgr
        if factor > 1:
            h, w = size
            pixels = cv2.resize(pixels, (-(-w // factor), -(-h // factor)), interpolation=cv2.INTER_AREA)
        source_format = "raw"
    if pixels.ndim == 3:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_BGR2GRAY if plan.gray else cv2.COLOR_BGR2RGB)
    notes = (f"video frame analysed at 1/{factor} scale ({pixels.shape[1]}x{pixels.shape[0]})",) if factor > 1 else ()
    img = DecodedImage(pixels=pixels, source_format=source_format, original_size=size, bits_stored=8, notes=notes)
    return img, (time.perf_counter() - t0) * 1e3
