"""The live view's picture: a judged frame, scaled for the screen, with its own triage drawn on it
(category as a word and colour, probability, the quality problem, frame number, latency, frames per
second, model, and the source's state when it is not streaming), encoded as one JPEG.

Text is sized for the screen, not the frame: the picture is shown at about 0.6 of its size at
1024x600 (some 430 px high), so a line must be drawn about 24 px tall to read at 14 px there. Small frames are scaled up first, so their text is not drawn at a few pixels. Long
text is wrapped or cut, never shrunk."""

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
MIN_WIDTH = 640  # smaller frames are scaled up to this before the text is drawn
HEADLINE_PER_PX = 1 / 480  # font scale per pixel of picture width (HERSHEY_DUPLEX: ~22 px tall at scale 1)
LINE_PER_PX = 1 / 700


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
    if w < MIN_WIDTH:
        return cv2.resize(pixels, (MIN_WIDTH, max(1, round(h * MIN_WIDTH / w))), interpolation=cv2.INTER_LINEAR)
    # Never draw on the captured frame itself: a capture stores it.
    return pixels.copy() if frame.jpeg is None else pixels


def _wrapped(text: str, scale: float, thick: int, width: int, most: int = 2) -> list[str]:
    """``text`` in lines that fit ``width`` at ``scale`` (words kept whole), at most ``most``; what
    does not fit is cut with '...'. The font is never shrunk to fit: small text cannot be read."""
    def fits(line: str) -> bool:
        return cv2.getTextSize(line, _FONT, scale, thick)[0][0] <= width

    lines: list[str] = []
    for word in text.split():
        if lines and fits(f"{lines[-1]} {word}"):
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    if len(lines) > most or not all(fits(line) for line in lines):
        lines = lines[:most]
        while len(lines[-1]) > 1 and not fits(lines[-1] + "..."):
            lines[-1] = lines[-1][:-1]
        lines[-1] = lines[-1].rstrip() + "..."
    return lines


def draw(pixels: np.ndarray, info: OverlayInfo) -> np.ndarray:
    h, w = pixels.shape[:2]
    big, small = w * HEADLINE_PER_PX, w * LINE_PER_PX
    thick, thin = max(1, round(big * 1.4)), max(1, round(small * 1.5))
    margin = round(w * 0.015)
    bar = round(big * 22 * 1.6)
    live = info.live
    if live is None:
        headline, colour = "WAITING FOR A RESULT", _PENDING
    else:
        colour = _BANNER.get(live.display_triage, _PENDING)
        # A frame the model cannot assess has no score (the result holds none) to draw.
        p = live.display_probability
        headline = live.display_triage + ("" if p is None else f"  p={p:.2f}")
    cv2.rectangle(pixels, (0, 0), (w, bar), colour, thickness=-1)
    text = _wrapped(headline, big, thick, w - 2 * margin, 1)[0]
    cv2.putText(pixels, text, (margin, round(bar * 0.74)), _FONT, big, (255, 255, 255), thick, cv2.LINE_AA)

    lines = []
    if live is not None and live.smoothed is not None:
        lines.append(f"smoothed over {live.smoothed.frames}/{live.smoothed.window} frames")
    if live is not None and live.result.triage == UNGRADABLE:
        lines += _wrapped("; ".join(i.message for i in live.result.reasons), small, thin, w - 2 * margin)
    if live is not None:
        lines.append(f"frame {live.seq} - {live.latency_ms:.0f} ms - {info.fps:.1f} fps")
    lines += _wrapped(info.model, small, thin, w - 2 * margin, 1)
    line_h = round(small * 22 * 1.7)
    top = h - line_h * len(lines) - margin
    cv2.rectangle(pixels, (0, top), (w, h), (0, 0, 0), thickness=-1)
    for i, text in enumerate(lines):
        baseline = top + line_h * (i + 1) - round(line_h * 0.25)
        cv2.putText(pixels, text, (margin, baseline), _FONT, small, (255, 255, 255), thin, cv2.LINE_AA)

    if info.state != "streaming":
        state = _wrapped(info.state.upper() + (f": {info.reason}" if info.reason else ""), small, thin, w - 2 * margin)
        cv2.rectangle(pixels, (0, h // 2 - bar), (w, h // 2 - bar + line_h * len(state) + margin), (0, 0, 0), -1)
        for i, text in enumerate(state):
            baseline = h // 2 - bar + line_h * (i + 1) - round(line_h * 0.25)
            cv2.putText(pixels, text, (margin, baseline), _FONT, small, (0, 200, 255), thin, cv2.LINE_AA)
    return pixels


def render(frame: Frame | None, info: OverlayInfo, max_width: int, quality: int = 80) -> bytes:
    pixels = draw(view_pixels(frame, max_width), info)
    ok, buf = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("cannot encode the live view frame")
    return buf.tobytes()
