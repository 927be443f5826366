"""The live view's picture: the newest frame, scaled down for the screen, with the triage drawn on it
(category as a word and colour, probability, model, frames per second, latency, and the source's
state when it is not streaming), encoded as one JPEG of the MJPEG view stream."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from device.capture.analysis import REDUCED_COLOR, jpeg_size
from device.capture.frames import Frame
from device.capture.live import LiveResult
from device.decision.triage import ROUTINE, UNGRADABLE, URGENT

# BGR. The category is always written out too: colour alone is not enough.
_BANNER = {URGENT: (40, 40, 200), ROUTINE: (60, 140, 40), UNGRADABLE: (0, 150, 220)}
_PENDING = (90, 90, 90)
_FONT = cv2.FONT_HERSHEY_DUPLEX
PLACEHOLDER_SIZE = (640, 360)


@dataclass(frozen=True)
class OverlayInfo:
    state: str
    reason: str
    model: str  # "chest-xray-pneumonia 1.0.0 int8"
    fps: float
    live: LiveResult | None


def view_pixels(frame: Frame | None, max_width: int) -> np.ndarray:
    """The frame as BGR at most max_width wide (JPEGs decoded directly at a reduced scale)."""
    if frame is None:
        return np.zeros((PLACEHOLDER_SIZE[1], PLACEHOLDER_SIZE[0], 3), np.uint8)
    if frame.jpeg is not None:
        size = jpeg_size(frame.jpeg)
        width = size[1] if size else max_width
        factor = next((f for f in (1, 2, 4, 8) if -(-width // f) <= max_width), 8)
        pixels = cv2.imdecode(np.frombuffer(frame.jpeg, np.uint8), REDUCED_COLOR[factor])
        if pixels is None:
            return np.zeros((PLACEHOLDER_SIZE[1], PLACEHOLDER_SIZE[0], 3), np.uint8)
    else:
        pixels = frame.bgr
    h, w = pixels.shape[:2]
    if w > max_width:
        return cv2.resize(pixels, (max_width, max(1, round(h * max_width / w))), interpolation=cv2.INTER_AREA)
    # Never draw on the captured frame itself: a capture stores it.
    return pixels.copy() if frame.jpeg is None else pixels


def draw(pixels: np.ndarray, info: OverlayInfo) -> np.ndarray:
    h, w = pixels.shape[:2]
    scale = max(0.4, w / 900)
    thick = max(1, round(scale * 1.5))
    bar = round(44 * scale)
    live = info.live
    if live is None:
        headline, colour = "WAITING FOR A RESULT", _PENDING
    else:
        colour = _BANNER.get(live.display_triage, _PENDING)
        # A frame the model cannot assess has no score (the result holds none) to draw.
        p = live.display_probability
        prob = "" if p is None else f"  p={p:.2f}"
        headline = f"{live.display_triage}{prob}"
        if live.smoothed is not None:
            headline += f"  (smoothed over {live.smoothed.frames}/{live.smoothed.window} frames)"
    cv2.rectangle(pixels, (0, 0), (w, bar), colour, thickness=-1)
    cv2.putText(pixels, headline, (round(10 * scale), round(31 * scale)), _FONT, scale, (255, 255, 255), thick, cv2.LINE_AA)

    lines = []
    if live is not None and live.result.triage == UNGRADABLE:
        lines.append("; ".join(i.message for i in live.result.reasons)[:120])
    latency = f"{live.latency_ms:.0f} ms" if live is not None else "-"
    lines.append(f"{info.model} | {info.fps:.1f} fps | latency {latency}")
    small = scale * 0.6
    line_h = round(26 * scale)
    top = h - line_h * len(lines) - round(8 * scale)
    cv2.rectangle(pixels, (0, top), (w, h), (0, 0, 0), thickness=-1)
    for i, text in enumerate(lines):
        y = top + line_h * (i + 1) - round(6 * scale)
        cv2.putText(pixels, text, (round(10 * scale), y), _FONT, small, (255, 255, 255), max(1, thick - 1), cv2.LINE_AA)

    if info.state != "streaming":
        cv2.rectangle(pixels, (0, h // 2 - bar), (w, h // 2 + bar // 2), (0, 0, 0), thickness=-1)
        text = info.state.upper() + (f": {info.reason}" if info.reason else "")
        cv2.putText(pixels, text[:70], (round(10 * scale), h // 2), _FONT, small, (0, 200, 255), thick, cv2.LINE_AA)
    return pixels


def render(frame: Frame | None, info: OverlayInfo, max_width: int, quality: int = 80) -> bytes:
    pixels = draw(view_pixels(frame, max_width), info)
    ok, buf = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("cannot encode the live view frame")
    return buf.tobytes()
