"""Images an exam must refuse: generic negatives, in families, for fitting and checking its refusal.

Each family makes `n` uint8 RGB images of `size` x `size` from a seeded numpy Generator, so the
same seed gives the same images. The synthetic families are rendered here with OpenCV (documents
and forms, procedural textures, dead-leaves images, microscopy-like cells, photo-like scenes); the others are drawn from
real images: the shared fundus photographs and CT/MR/ultrasound DICOM files, the other exam's
images, photographs of chest films (for the skin exam) and strong transformations of the exam's
own images (inversion, quarter turns for the chest exam only - a lesion has no "up" -, tiny
crops).

Which families an exam gets (`families(exam, ...)`):

| family          | chest-xray-pneumonia               | skin-lesion-triage            |
| --------------- | ---------------------------------- | ----------------------------- |
| documents       | yes (gray)                         | yes                           |
| textures        | yes (gray)                         | yes                           |
| dead_leaves     | yes (gray)                         | yes                           |
| scenes          | yes (gray)                         | yes                           |
| cells           | yes (gray)                         | yes                           |
| fundus          | yes (gray)                         | yes                           |
| dicom           | CT, MR, US frames (gray)           | CT, MR, US frames             |
| other_exam      | dermoscopy images, gray            | chest films                   |
| film_photos     | no (a photographed chest film may be a real use) | chest films photographed on a lightbox |
| inverted        | own films inverted                 | own images inverted           |
| rotated         | own films turned 90/180/270 deg    | no (the skin model is rotation-averaged) |
| tiny_crops      | 20-30% of the side of own films    | 20-30% of the side of own images |

A grayscale exam's negatives are made gray (luma, in three equal channels): the device's colour
gate already refuses anything coloured before the model runs, so only gray negatives test, and
teach, the model's own check.

Never add images from sample collections shipped inside third-party packages (library demo
photographs, desktop backgrounds): the owners test refusal on such images, so they must stay
unseen. numpy, OpenCV and pydicom only: no torch.
"""

from __future__ import annotations

import csv
import functools
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

from models.datasets import datasets_dir

CHEST_EXAM = "chest-xray-pneumonia"
SKIN_EXAM = "skin-lesion-triage"
GRAY_EXAMS = (CHEST_EXAM,)
FUNDUS_FILE = Path("ood-dev") / "retinamnist_train_val.npz"
DICOM_DIR = Path("dicom")
DICOM_NEGATIVE_CATEGORIES = ("ct_mr_other", "us")

Make = Callable[[np.random.Generator, int, int], np.ndarray]


@dataclass(frozen=True)
class Family:
    """A kind of image an exam must refuse; make(rng, n, size) -> (n, size, size, 3) uint8 RGB."""

    name: str
    description: str
    make: Make


# --------------------------------------------------------------------------------------------
# Shared helpers


def _u8(unit: np.ndarray) -> np.ndarray:
    return np.clip(unit * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _rgb(img: np.ndarray) -> np.ndarray:
    if img.ndim == 2:
        return np.repeat(img[:, :, None], 3, axis=2)
    if img.shape[2] == 1:
        return np.repeat(img, 3, axis=2)
    return img[:, :, :3]


def to_gray_rgb(images: np.ndarray) -> np.ndarray:
    """(n, h, w, 3) RGB -> the same with luma in all three channels (BT.601, as the device)."""
    out = np.empty_like(images)
    for i, img in enumerate(images):
        out[i] = _rgb(cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY))
    return out


def _jpeg(rng: np.random.Generator, img: np.ndarray, low: int = 45, high: int = 95) -> np.ndarray:
    ok, data = cv2.imencode(".jpg", img[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(low, high))])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return np.ascontiguousarray(cv2.imdecode(data, cv2.IMREAD_COLOR)[:, :, ::-1])


def _camera(rng: np.random.Generator, unit: np.ndarray, blur: float = 1.2, noise: float = 0.025) -> np.ndarray:
    """What a camera adds to a unit-float RGB picture: defocus, sensor noise, JPEG."""
    sigma = rng.uniform(0.0, blur)
    if sigma > 0.3:
        unit = cv2.GaussianBlur(unit, (0, 0), sigma)
    unit = unit + rng.uniform(0.0, noise) * rng.standard_normal(unit.shape).astype(np.float32)
    return _jpeg(rng, _u8(unit))


def _light_field(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth (h, w, 3) multiplier: a linear shading gradient, a vignette and a light colour."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    ys, xs = ys / h - 0.5, xs / w - 0.5
    angle = rng.uniform(0, 2 * np.pi)
    gradient = 1.0 + rng.uniform(0.0, 0.45) * (np.cos(angle) * xs + np.sin(angle) * ys)
    vignette = 1.0 - rng.uniform(0.0, 0.6) * (xs**2 + ys**2) * 2.0
    kind = rng.integers(3)  # warm lamp, daylight/neutral, cool fluorescent
    if kind == 0:
        colour = np.array([1.0, rng.uniform(0.8, 0.95), rng.uniform(0.55, 0.8)], np.float32)
    elif kind == 1:
        colour = np.ones(3, np.float32) * rng.uniform(0.9, 1.05)
    else:
        colour = np.array([rng.uniform(0.8, 0.95), rng.uniform(0.92, 1.0), 1.0], np.float32)
    return (gradient * vignette)[:, :, None] * colour[None, None, :] * rng.uniform(0.75, 1.15)


def _surface(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A table, desk or wall behind a photographed object, unit RGB."""
    base = rng.uniform(0.1, 0.85, 3).astype(np.float32)
    noise = _spectral_noise(rng, h, w, rng.uniform(1.5, 3.0))
    if rng.random() < 0.5:  # wood-like grain: noise stretched along one axis
        noise = cv2.resize(_spectral_noise(rng, h, max(8, w // 8), 2.0), (w, h), interpolation=cv2.INTER_LINEAR)
    return np.clip(base[None, None, :] * (0.8 + 0.4 * noise[:, :, None]), 0, 1)


def photograph(rng: np.random.Generator, flat: np.ndarray, size: int, background: np.ndarray | None = None,
               coverage: tuple[float, float] = (0.55, 1.15)) -> np.ndarray:
    """A phone photograph of a flat print or film: tilted in perspective on a background, shaded,
    under a lamp of some colour, with a glare spot sometimes, defocus, noise and JPEG."""
    flat = _rgb(flat).astype(np.float32) / 255.0
    h, w = flat.shape[:2]
    back = _surface(rng, size, size) if background is None else background
    scale = rng.uniform(*coverage) * size / max(h, w)
    angle = np.deg2rad(rng.uniform(-20, 20))
    centre = size / 2 + rng.uniform(-0.12, 0.12, 2) * size
    corners = np.array([[-w / 2, -h / 2], [w / 2, -h / 2], [w / 2, h / 2], [-w / 2, h / 2]], np.float32) * scale
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]], np.float32)
    target = corners @ rot.T + centre + rng.uniform(-0.1, 0.1, (4, 2)) * size  # perspective: corners move
    source = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)
    matrix = cv2.getPerspectiveTransform(source, target.astype(np.float32))
    warped = cv2.warpPerspective(flat, matrix, (size, size), flags=cv2.INTER_AREA)
    mask = cv2.warpPerspective(np.ones((h, w), np.float32), matrix, (size, size), flags=cv2.INTER_LINEAR)
    unit = warped * mask[:, :, None] + back * (1 - mask[:, :, None])
    unit = unit * _light_field(rng, size, size)
    if rng.random() < 0.35:  # glare of the lamp on the glossy surface
        ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size
        cy, cx, r = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.05, 0.25)
        unit = unit + rng.uniform(0.3, 0.9) * np.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * r * r))[:, :, None]
    return _camera(rng, np.clip(unit, 0, 1).astype(np.float32))


# --------------------------------------------------------------------------------------------
# Documents and forms

_FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_PLAIN, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX,
          cv2.FONT_HERSHEY_TRIPLEX, cv2.FONT_HERSHEY_COMPLEX_SMALL)
_LETTERS = string.ascii_letters + "      " + string.digits + ".,:/-()"


def _words(rng: np.random.Generator, length: int) -> str:
    return "".join(rng.choice(list(_LETTERS), length)).strip() or "Form"


def _ink(rng: np.random.Generator) -> tuple[int, int, int]:
    """An 8-bit RGB ink: black, blue, red or gray (OpenCV draws text on 8-bit images only)."""
    kinds = ((12, 12, 12), (25, 30, 115), (115, 12, 12), (76, 76, 76))
    base = np.array(kinds[rng.integers(len(kinds))]) + rng.integers(-12, 13, 3)
    return tuple(int(c) for c in np.clip(base, 0, 255))


def _text_lines(rng: np.random.Generator, page: np.ndarray, top: int, bottom: int, left: int, right: int) -> None:
    font = int(_FONTS[rng.integers(len(_FONTS))]) | (cv2.FONT_ITALIC if rng.random() < 0.15 else 0)
    scale = rng.uniform(0.35, 1.0) * page.shape[1] / 500
    thick = max(1, int(round(scale * rng.uniform(0.8, 2.2))))
    step = int(cv2.getTextSize("Ag", font, scale, thick)[0][1] * rng.uniform(1.6, 2.4)) + 2
    colour = _ink(rng)
    y = top + step
    while y < bottom:
        width_chars = max(3, int((right - left) / max(4.0, 18 * scale) * rng.uniform(0.4, 1.1)))
        cv2.putText(page, _words(rng, width_chars), (left, y), font, scale, colour, thick, cv2.LINE_AA)
        y += step * (2 if rng.random() < 0.12 else 1)  # a blank line between paragraphs


def _table(rng: np.random.Generator, page: np.ndarray, top: int, bottom: int, left: int, right: int) -> None:
    rows, cols = int(rng.integers(3, 12)), int(rng.integers(2, 6))
    colour, thick = _ink(rng), int(rng.integers(1, 3))
    ys = np.linspace(top, bottom, rows + 1).astype(int)
    xs = np.linspace(left, right, cols + 1).astype(int)
    if rng.random() < 0.5:  # shaded header row
        page[ys[0] : ys[1], xs[0] : xs[-1]] = (page[ys[0] : ys[1], xs[0] : xs[-1]] * 0.85).astype(np.uint8)
    for y in ys:
        cv2.line(page, (xs[0], int(y)), (xs[-1], int(y)), colour, thick, cv2.LINE_AA)
    for x in xs:
        cv2.line(page, (int(x), ys[0]), (int(x), ys[-1]), colour, thick, cv2.LINE_AA)
    scale = 0.6 * (ys[1] - ys[0]) / 30
    for r in range(rows):
        for c in range(cols):
            if rng.random() < 0.8:
                cv2.putText(page, _words(rng, int(rng.integers(2, 9))), (int(xs[c]) + 4, int(ys[r + 1]) - 6),
                            cv2.FONT_HERSHEY_SIMPLEX, max(0.25, scale), colour, 1, cv2.LINE_AA)


def _form_fields(rng: np.random.Generator, page: np.ndarray, top: int, bottom: int, left: int, right: int) -> None:
    colour = _ink(rng)
    y = top
    while y < bottom - 20:
        height = int(rng.integers(18, 45))
        label_w = int((right - left) * rng.uniform(0.15, 0.4))
        cv2.putText(page, _words(rng, int(rng.integers(4, 14))), (left, y + height - 6), cv2.FONT_HERSHEY_SIMPLEX,
                    height / 60, colour, 1, cv2.LINE_AA)
        if rng.random() < 0.3:  # a row of check boxes
            for x in range(left + label_w, right - height, height * 3):
                cv2.rectangle(page, (x, y + 4), (x + height - 8, y + height - 4), colour, 1)
                if rng.random() < 0.4:
                    cv2.line(page, (x + 2, y + height // 2), (x + height // 3, y + height - 6), (25, 25, 128), 2)
        else:
            cv2.rectangle(page, (left + label_w, y), (right, y + height), colour, 1)
        y += height + int(rng.integers(6, 20))


def _handwriting(rng: np.random.Generator, page: np.ndarray, top: int, bottom: int, left: int, right: int) -> None:
    """Cursive-like strokes: a slanted, looping pen path along each line (no real glyphs needed)."""
    colour = (25, 38, int(rng.integers(76, 153))) if rng.random() < 0.6 else (12, 12, 12)
    step = int(rng.integers(22, 50))
    for y in range(top + step, bottom, step):
        t = np.linspace(0, 1, 400)
        x = left + (right - left) * rng.uniform(0.4, 1.0) * t
        freq = rng.uniform(25, 60)
        loops = np.sin(2 * np.pi * freq * t + rng.uniform(0, 6)) * step * 0.3 * rng.uniform(0.5, 1.2)
        drift = np.cumsum(rng.normal(0, 0.4, 400))
        pts = np.stack([x + 0.3 * loops, y + loops * 0.8 + drift], 1).astype(np.int32)
        cv2.polylines(page, [pts], False, colour, int(rng.integers(1, 3)), cv2.LINE_AA)


def _page(rng: np.random.Generator, side: int) -> np.ndarray:
    """A printed page (portrait or landscape), uint8 RGB: blocks of text, tables, form fields, pen."""
    h, w = (side, int(side * rng.uniform(0.7, 0.8))) if rng.random() < 0.7 else (int(side * 0.75), side)
    page = np.empty((h, w, 3), np.uint8)
    page[:] = rng.integers((230, 230, 217), 256)
    margin = int(w * rng.uniform(0.05, 0.12))
    y = margin
    if rng.random() < 0.6:  # letterhead: a logo block and a bold title
        cv2.rectangle(page, (margin, y), (margin + h // 12, y + h // 12), _ink(rng), -1)
        cv2.putText(page, _words(rng, int(rng.integers(6, 18))).upper(), (margin + h // 10, y + h // 15),
                    cv2.FONT_HERSHEY_DUPLEX, w / 700, _ink(rng), 2, cv2.LINE_AA)
        y += h // 8
    blocks = (_text_lines, _table, _form_fields, _handwriting)
    while y < h - margin - 30:
        block_h = int(rng.uniform(0.15, 0.45) * h)
        block = blocks[rng.choice(4, p=(0.4, 0.2, 0.25, 0.15))]
        block(rng, page, y, min(h - margin, y + block_h), margin, w - margin)
        y += block_h + int(rng.integers(5, 25))
    if rng.random() < 0.25:  # a barcode
        x0, y0 = int(w * rng.uniform(0.5, 0.7)), h - margin - 40
        for x in range(x0, min(w - margin, x0 + 160)):
            if rng.random() < 0.45:
                page[y0 : y0 + 35, x] = 12
    if rng.random() < 0.2:  # a round stamp
        cv2.circle(page, (int(w * 0.7), int(h * 0.8)), w // 10, (153, 25, 38), 3, cv2.LINE_AA)
    return page


def documents(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Printed pages, forms, tables and handwritten notes: scanned flat or photographed with a phone."""
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        page = _page(rng, 2 * size)
        if rng.random() < 0.35:  # a scan: the page (or a part of it) flat, filling the frame
            side = int(min(page.shape[:2]) * rng.uniform(0.5, 1.0))
            top = int(rng.integers(0, page.shape[0] - side + 1))
            left = int(rng.integers(0, page.shape[1] - side + 1))
            flat = cv2.resize(page[top : top + side, left : left + side], (size, size), interpolation=cv2.INTER_AREA)
            out[i] = _camera(rng, flat.astype(np.float32) / 255.0, blur=0.6, noise=0.01)
        else:
            out[i] = photograph(rng, page, size, coverage=(0.6, 1.4))
    return out


# --------------------------------------------------------------------------------------------
# Procedural textures


def _spectral_noise(rng: np.random.Generator, h: int, w: int, alpha: float) -> np.ndarray:
    """Gaussian noise with power spectrum 1/f^alpha, rescaled to [0, 1] (0: white, 2: natural-image-like)."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fx**2 + fy**2)
    f[0, 0] = 1.0
    spectrum = (rng.standard_normal(f.shape) + 1j * rng.standard_normal(f.shape)) / f ** (alpha / 2)
    spectrum[0, 0] = 0
    field = np.fft.irfft2(spectrum, s=(h, w)).astype(np.float32)
    lo, hi = np.percentile(field, (1, 99))
    return np.clip((field - lo) / max(hi - lo, 1e-6), 0, 1)


def _palette(rng: np.random.Generator, field: np.ndarray) -> np.ndarray:
    """A scalar field in [0, 1] -> RGB: gray, a random two- or three-colour ramp, or per-channel fields."""
    kind = rng.integers(3)
    if kind == 0:
        return np.repeat(field[:, :, None], 3, axis=2)
    if kind == 1:
        stops = rng.uniform(0, 1, (int(rng.integers(2, 4)), 3)).astype(np.float32)
        pos = field * (len(stops) - 1)
        i = np.minimum(pos.astype(int), len(stops) - 2)
        t = (pos - i)[:, :, None]
        return stops[i] * (1 - t) + stops[i + 1] * t
    shifted = [np.roll(field, int(rng.integers(0, field.shape[0])), axis=int(rng.integers(2))) for _ in range(3)]
    return np.stack(shifted, axis=2)


def _grating(rng: np.random.Generator, size: int) -> np.ndarray:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = rng.uniform(0, np.pi)
    freq = rng.uniform(2, 40)
    phase = (np.cos(angle) * xs + np.sin(angle) * ys) * freq * 2 * np.pi
    wave = 0.5 + 0.5 * np.sin(phase)
    if rng.random() < 0.5:  # square wave: stripes
        wave = (wave > rng.uniform(0.3, 0.7)).astype(np.float32)
    if rng.random() < 0.3:  # a woven / plaid look: a second grating across the first
        other = 0.5 + 0.5 * np.sin((np.cos(angle + np.pi / 2) * xs + np.sin(angle + np.pi / 2) * ys) * freq * 2 * np.pi)
        wave = 0.5 * (wave + other)
    return wave


def _checkers(rng: np.random.Generator, size: int) -> np.ndarray:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) - size / 2
    angle = rng.uniform(0, np.pi / 2)
    cell = rng.uniform(4, size / 3)
    u = np.cos(angle) * xs + np.sin(angle) * ys
    v = -np.sin(angle) * xs + np.cos(angle) * ys
    return ((np.floor(u / cell) + np.floor(v / cell)) % 2).astype(np.float32)


def _gabor_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    """Sparse impulses convolved with a Gabor kernel: an oriented, band-limited texture."""
    impulses = np.zeros((size, size), np.float32)
    count = int(size * size * rng.uniform(0.002, 0.02))
    impulses[rng.integers(0, size, count), rng.integers(0, size, count)] = rng.choice([-1.0, 1.0], count)
    wavelength = rng.uniform(4, 24)
    kernel = cv2.getGaborKernel((0, 0), wavelength * rng.uniform(0.4, 0.9), rng.uniform(0, np.pi), wavelength,
                                rng.uniform(0.3, 1.0), 0, ktype=cv2.CV_32F)
    field = cv2.filter2D(impulses, -1, kernel)
    lo, hi = np.percentile(field, (1, 99))
    return np.clip((field - lo) / max(hi - lo, 1e-6), 0, 1)


def _blobs(rng: np.random.Generator, size: int) -> np.ndarray:
    """Thresholded smooth noise: spots, cells, camouflage."""
    field = _spectral_noise(rng, size, size, rng.uniform(2.5, 4.0))
    return (field > rng.uniform(0.35, 0.65)).astype(np.float32) * 0.8 + 0.2 * field


def textures(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Procedural textures: noise of several spectra, gratings and stripes, checkers, Gabor noise, blobs."""
    makers = (
        lambda: _spectral_noise(rng, size, size, rng.uniform(0.0, 3.5)),
        lambda: _grating(rng, size),
        lambda: _checkers(rng, size),
        lambda: _gabor_noise(rng, size),
        lambda: _blobs(rng, size),
    )
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        unit = _palette(rng, makers[rng.integers(len(makers))]()).astype(np.float32)
        if rng.random() < 0.4:
            unit = unit * _light_field(rng, size, size)
        out[i] = _camera(rng, np.clip(unit, 0, 1), blur=1.0, noise=0.03)
    return out


def dead_leaves(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """"Dead leaves" images: opaque discs and boxes of power-law sizes (density ~ r^-3) laid one on
    another; they share the occlusion and scale statistics of natural photographs."""
    out = np.empty((n, size, size, 3), np.uint8)
    r_min, r_max = size / 120, size / rng.uniform(2, 6)
    for i in range(n):
        canvas = np.empty((size, size, 3), np.float32)
        canvas[:] = rng.uniform(0, 1, 3)
        muted = rng.random() < 0.5  # natural colours are rarely saturated
        for _ in range(int(rng.integers(300, 1500))):
            u = rng.random()
            r = (r_min**-2 - u * (r_min**-2 - r_max**-2)) ** -0.5
            colour = rng.uniform(0, 1, 3)
            if muted:
                colour = 0.5 * colour + 0.5 * colour.mean()
            c = (int(rng.integers(0, size)), int(rng.integers(0, size)))
            if rng.random() < 0.7:
                cv2.circle(canvas, c, max(1, int(r)), tuple(float(v) for v in colour), -1, cv2.LINE_AA)
            else:
                box = cv2.boxPoints((c, (2 * r, 2 * r * rng.uniform(0.3, 1.0)), rng.uniform(0, 180)))
                cv2.fillConvexPoly(canvas, box.astype(np.int32), tuple(float(v) for v in colour), cv2.LINE_AA)
        out[i] = _camera(rng, canvas, blur=1.5, noise=0.03)
    return out


def cells(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Microscopy-like fields: cells with a membrane and a nucleus, stained on a bright field (pink
    and purple, as H&E) or glowing on black (fluorescence), crowded or sparse, in and out of focus."""
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        fluorescent = rng.random() < 0.35
        if fluorescent:
            canvas = np.zeros((size, size, 3), np.float32) + rng.uniform(0.0, 0.08)
            body, nucleus = rng.uniform(0.1, 0.9, 3), np.array([0.2, 0.3, 1.0]) * rng.uniform(0.6, 1.0)
        else:
            canvas = np.ones((size, size, 3), np.float32) * np.array([rng.uniform(0.85, 1.0), rng.uniform(0.75, 0.95),
                                                                      rng.uniform(0.8, 1.0)], np.float32)
            body = np.array([rng.uniform(0.75, 0.95), rng.uniform(0.4, 0.7), rng.uniform(0.6, 0.85)])
            nucleus = np.array([rng.uniform(0.25, 0.45), rng.uniform(0.1, 0.25), rng.uniform(0.4, 0.6)])
        radius = size * rng.uniform(0.03, 0.12)
        for _ in range(int(rng.integers(5, int(1.2 * (size / radius) ** 2) + 6))):
            c = (int(rng.integers(0, size)), int(rng.integers(0, size)))
            axes = (max(2, int(radius * rng.uniform(0.6, 1.3))), max(2, int(radius * rng.uniform(0.6, 1.3))))
            angle = float(rng.uniform(0, 180))
            tint = tuple(float(v) for v in np.clip(body + rng.normal(0, 0.05, 3), 0, 1))
            cv2.ellipse(canvas, c, axes, angle, 0, 360, tint, -1, cv2.LINE_AA)
            cv2.ellipse(canvas, c, axes, angle, 0, 360, tuple(float(v) * 0.7 for v in tint), 1, cv2.LINE_AA)
            inner = (max(1, int(axes[0] * rng.uniform(0.3, 0.55))), max(1, int(axes[1] * rng.uniform(0.3, 0.55))))
            cv2.ellipse(canvas, c, inner, angle, 0, 360, tuple(float(v) for v in nucleus), -1, cv2.LINE_AA)
        grain = _spectral_noise(rng, size, size, 1.0)[:, :, None]
        out[i] = _camera(rng, np.clip(canvas * (0.9 + 0.2 * grain), 0, 1).astype(np.float32), blur=2.0, noise=0.02)
    return out


# --------------------------------------------------------------------------------------------
# Photo-like scenes


def _shaded_object(rng: np.random.Generator, canvas: np.ndarray, light: np.ndarray, centre: tuple[float, float],
                   radii: tuple[float, float]) -> None:
    """Paint an ellipsoid, cylinder or box with Lambertian shading and a highlight into `canvas`."""
    size = canvas.shape[0]
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    dx, dy = (xs - centre[0]) / radii[0], (ys - centre[1]) / radii[1]
    kind = rng.integers(3)
    if kind == 0:  # ellipsoid: fruit, ball, head
        inside = dx**2 + dy**2 < 1
        nz = np.sqrt(np.clip(1 - dx**2 - dy**2, 0, 1))
        normal = np.stack([dx, dy, nz], 2)
    elif kind == 1:  # upright cylinder: cup, bottle, can
        inside = (np.abs(dx) < 1) & (np.abs(dy) < 1)
        nz = np.sqrt(np.clip(1 - dx**2, 0, 1))
        normal = np.stack([dx, np.zeros_like(dx), nz], 2)
    else:  # box: two visible faces
        inside = (np.abs(dx) < 1) & (np.abs(dy) < 1)
        side = np.where(dx > rng.uniform(-0.3, 0.5), 1.0, 0.0).astype(np.float32)
        normal = np.stack([side * 0.8, np.zeros_like(dx), 1 - 0.4 * side], 2)
    normal /= np.linalg.norm(normal, axis=2, keepdims=True) + 1e-6
    diffuse = np.clip(normal @ light, 0, 1)
    half = light + np.array([0, 0, 1], np.float32)
    half /= np.linalg.norm(half)
    specular = np.clip(normal @ half, 0, 1) ** rng.uniform(10, 60) * rng.uniform(0, 0.8)
    colour = rng.uniform(0, 1, 3).astype(np.float32)
    if rng.random() < 0.3:  # printed or patterned surface
        colour = colour[None, None, :] * (0.7 + 0.3 * _palette(rng, _grating(rng, size)))
    shade = colour * (0.2 + 0.8 * diffuse)[:, :, None] + specular[:, :, None]
    canvas[inside] = shade[inside]


def _scene(rng: np.random.Generator, size: int) -> np.ndarray:
    horizon = rng.uniform(0.25, 0.8) * size
    canvas = _surface(rng, size, size)
    table = _surface(rng, size, size)
    canvas[int(horizon) :] = table[int(horizon) :]
    light = np.array([rng.uniform(-1, 1), rng.uniform(-1, 0.2), rng.uniform(0.4, 1.2)], np.float32)
    light /= np.linalg.norm(light)
    close_up = rng.random() < 0.3
    count = 1 if close_up else int(rng.integers(1, 5))
    for _ in range(count):
        if close_up:
            centre = (size * rng.uniform(0.35, 0.65), size * rng.uniform(0.35, 0.65))
            radii = (size * rng.uniform(0.2, 0.45), size * rng.uniform(0.2, 0.45))
        else:
            centre = (size * rng.uniform(0.1, 0.9), horizon + size * rng.uniform(-0.05, 0.2))
            radii = (size * rng.uniform(0.06, 0.25), size * rng.uniform(0.06, 0.3))
        shadow = np.zeros((size, size), np.float32)
        offset = (int(centre[0] - light[0] * radii[0] * 0.6), int(centre[1] + radii[1] * 0.8))
        cv2.ellipse(shadow, offset, (int(radii[0]), max(1, int(radii[1] * 0.3))), 0, 0, 360, 1.0, -1)
        shadow = cv2.GaussianBlur(shadow, (0, 0), size / 40)
        canvas *= (1 - 0.5 * shadow)[:, :, None]
        _shaded_object(rng, canvas, light, centre, radii)
    canvas = canvas * _light_field(rng, size, size)
    return _camera(rng, np.clip(canvas, 0, 1).astype(np.float32), blur=1.2, noise=0.03)


def scenes(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Photo-like scenes: smooth shaded objects (fruit, cups, boxes) on tables and walls, under lamps
    and daylight of several colours; a third are close-ups of one object filling the frame."""
    return np.stack([_scene(rng, size) for _ in range(n)]) if n else np.empty((0, size, size, 3), np.uint8)


# --------------------------------------------------------------------------------------------
# Real images: shared fundus photographs and DICOM frames, the other exam's, the exam's own


def _views(rng: np.random.Generator, sources: Sequence[np.ndarray], n: int, size: int,
           crop: tuple[float, float] = (0.6, 1.0)) -> np.ndarray:
    """n square views of randomly chosen sources: a random crop (a share of the shorter side),
    a random flip and quarter turn, resized to size (a variety of views from few originals)."""
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        img = _rgb(sources[int(rng.integers(len(sources)))])
        h, w = img.shape[:2]
        side = max(2, int(min(h, w) * rng.uniform(*crop)))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        view = img[top : top + side, left : left + side]
        view = np.rot90(view[:, ::-1] if rng.random() < 0.5 else view, int(rng.integers(4)))
        interp = cv2.INTER_AREA if side >= size else cv2.INTER_CUBIC
        out[i] = cv2.resize(np.ascontiguousarray(view), (size, size), interpolation=interp)
    return out


@functools.lru_cache(maxsize=2)
def _fundus_images(path: Path) -> np.ndarray:
    with np.load(path) as data:
        return np.concatenate([data["train_images"], data["val_images"]])


def fundus(rng: np.random.Generator, n: int, size: int, root: Path | None = None) -> np.ndarray:
    """Colour fundus photographs (RetinaMNIST, 28x28, upscaled): ood-dev in the shared datasets."""
    images = _fundus_images((root or datasets_dir()) / FUNDUS_FILE)
    return _views(rng, images, n, size, crop=(0.85, 1.0))


def _unit_frame(frame: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(frame, (0.5, 99.5))
    return _u8((frame.astype(np.float32) - lo) / max(float(hi - lo), 1e-6))


def _window(values: np.ndarray, ds) -> np.ndarray | None:
    """The first VOI window the file names (DICOM's linear function), or None."""
    from pydicom.multival import MultiValue

    centre, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if centre is None or width is None:
        return None
    centre = float(centre[0] if isinstance(centre, MultiValue) else centre)
    width = max(float(width[0] if isinstance(width, MultiValue) else width), 2.0)
    return _u8(np.clip((values - (centre - 0.5)) / (width - 1) + 0.5, 0, 1))


def read_dicom_frames(path: Path) -> list[np.ndarray]:
    """The frames of a DICOM image as uint8 RGB: palette colour through its LUT, colour as is,
    monochrome from its modality values both stretched to their 0.5-99.5 percentiles and through
    the file's own window where it names one (MONOCHROME1 inverted)."""
    import pydicom
    from pydicom.pixels import apply_color_lut, apply_modality_lut

    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array
    frames = list(pixels) if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1 else [pixels]
    photometric = str(ds.PhotometricInterpretation)
    out = []
    for frame in frames:
        if photometric == "PALETTE COLOR":
            out.append(_unit_frame(apply_color_lut(frame, ds)))
        elif frame.ndim == 3:
            out.append(_unit_frame(frame))
        else:
            values = apply_modality_lut(frame, ds).astype(np.float32)
            for gray in (_unit_frame(values), _window(values, ds)):
                if gray is not None:
                    out.append(_rgb(255 - gray if photometric == "MONOCHROME1" else gray))
    return out


@functools.lru_cache(maxsize=4)
def _dicom_images(root: Path, categories: tuple[str, ...]) -> tuple[np.ndarray, ...]:
    """The decodable frames of the catalogued files in `categories`, each distinct image once (the
    same picture is stored in several transfer syntaxes)."""
    frames, seen = [], set()
    with open(root / "catalog.csv", newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["category"] in categories and r["decode_pydicom3_pylibjpeg"].startswith("OK")]
    for row in rows:
        for frame in read_dicom_frames(root / row["file"]):
            key = cv2.resize(frame, (16, 16), interpolation=cv2.INTER_AREA).astype(np.int16) // 16
            if key.tobytes() not in seen:
                seen.add(key.tobytes())
                frames.append(frame)
    return tuple(frames)


def dicom_frames(rng: np.random.Generator, n: int, size: int, root: Path | None = None,
                 categories: tuple[str, ...] = DICOM_NEGATIVE_CATEGORIES) -> np.ndarray:
    """Views of the CT, MR and ultrasound frames of the shared DICOM files (catalog.csv says which)."""
    images = _dicom_images((root or datasets_dir()) / DICOM_DIR, tuple(categories))
    if not images:
        raise FileNotFoundError(f"no decodable DICOM frames of {categories} under {root or datasets_dir()}")
    return _views(rng, images, n, size, crop=(0.55, 1.0))


def film_photos(rng: np.random.Generator, films: Sequence[np.ndarray], n: int, size: int) -> np.ndarray:
    """Phone photographs of chest films: on a lightbox or held against a window, the film's dark
    edge and a label, warm or cool light, perspective, vignetting and glare."""
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        film = cv2.cvtColor(_rgb(films[int(rng.integers(len(films)))]), cv2.COLOR_RGB2GRAY)
        film = cv2.resize(film, (2 * size, 2 * size), interpolation=cv2.INTER_LINEAR)
        edge = int(film.shape[0] * rng.uniform(0.0, 0.08))
        framed = cv2.copyMakeBorder(film, edge, edge, edge, edge, cv2.BORDER_CONSTANT, value=int(rng.integers(0, 40)))
        if rng.random() < 0.4:  # the film's printed label
            y = int(framed.shape[0] * rng.uniform(0.02, 0.1))
            cv2.putText(framed, _words(rng, 10), (edge + 10, y + 20), cv2.FONT_HERSHEY_SIMPLEX, 0.8, 230, 2)
        glow = np.array([rng.uniform(0.9, 1.0), rng.uniform(0.9, 1.0), rng.uniform(0.85, 1.0)], np.float32)
        lightbox = np.ones((size, size, 3), np.float32) * glow * rng.uniform(0.75, 1.0)
        out[i] = photograph(rng, framed, size, background=lightbox, coverage=(0.7, 1.3))
    return out


def inverted(images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Negatives in the photographic sense: 255 - value (a radiograph read with the wrong polarity)."""
    return [255 - _rgb(img) for img in images]


def rotated(rng: np.random.Generator, images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Each image turned by 90, 180 or 270 degrees (for the chest exam only: a lesion has no "up")."""
    return [np.ascontiguousarray(np.rot90(_rgb(img), int(rng.integers(1, 4)))) for img in images]


def tiny_crops(rng: np.random.Generator, images: Sequence[np.ndarray], size: int) -> np.ndarray:
    """A square of 20-30% of each image's side at a random place, enlarged to size."""
    return _views(rng, images, len(images), size, crop=(0.2, 0.3))


def _drawn(images: Sequence[np.ndarray], transform: Callable[[np.random.Generator, np.ndarray, int], np.ndarray]
           ) -> Make:
    """A Make drawing n of `images` (with replacement) and transforming them."""
    def make(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
        chosen = [images[int(i)] for i in rng.integers(0, len(images), n)]
        return transform(rng, chosen, size)
    return make


def _resized(images: Sequence[np.ndarray], size: int) -> np.ndarray:
    return np.stack([cv2.resize(np.ascontiguousarray(_rgb(img)), (size, size), interpolation=cv2.INTER_AREA)
                     for img in images]) if len(images) else np.empty((0, size, size, 3), np.uint8)


def families(exam: str, own: Sequence[np.ndarray] = (), other: Sequence[np.ndarray] = (),
             root: Path | None = None) -> list[Family]:
    """The negative families for `exam` (CHEST_EXAM or SKIN_EXAM), as in the module's table.

    `own`: decoded images of the exam itself (uint8, gray or RGB, any size; the training images)
    for inversion, rotation and tiny crops; `other`: the other exam's images. Families that need
    images not given are left out. A grayscale exam's families make gray images.
    """
    if exam not in (CHEST_EXAM, SKIN_EXAM):
        raise ValueError(f"no negative families for exam {exam!r} (known: {CHEST_EXAM}, {SKIN_EXAM})")
    chest = exam == CHEST_EXAM
    out = [
        Family("documents", "printed pages, forms, tables, handwriting; scanned or photographed", documents),
        Family("textures", "noise of several spectra, gratings, checkers, Gabor noise, blobs", textures),
        Family("dead_leaves", "occluding discs and boxes of power-law sizes", dead_leaves),
        Family("scenes", "shaded objects on tables and walls under varied light", scenes),
        Family("cells", "microscopy-like fields: stained or fluorescent cells", cells),
        Family("fundus", "colour fundus photographs (RetinaMNIST)", functools.partial(fundus, root=root)),
        Family("dicom", "CT, MR and ultrasound frames", functools.partial(dicom_frames, root=root)),
    ]
    if other:
        what = "dermoscopy images" if chest else "chest films"
        out.append(Family("other_exam", f"the other exam's images ({what})",
                          _drawn(other, lambda rng, imgs, size: _resized(imgs, size))))
    if other and not chest:
        out.append(Family("film_photos", "phone photographs of chest films on a lightbox",
                          lambda rng, n, size: film_photos(rng, other, n, size)))
    if own:
        out.append(Family("inverted", "the exam's own images, inverted",
                          _drawn(own, lambda rng, imgs, size: _resized(inverted(imgs), size))))
        out.append(Family("tiny_crops", "20-30% of the side of the exam's own images, enlarged",
                          _drawn(own, lambda rng, imgs, size: tiny_crops(rng, imgs, size))))
    if own and chest:
        out.append(Family("rotated", "the exam's own films turned 90, 180 or 270 degrees",
                          _drawn(own, lambda rng, imgs, size: _resized(rotated(rng, imgs), size))))
    if chest:
        out = [Family(f.name, f.description + " (gray)", _grayed(f.make)) for f in out]
    return out


def _grayed(make: Make) -> Make:
    return lambda rng, n, size: to_gray_rgb(make(rng, n, size))


def generate(family: Family, seed: int, n: int, size: int) -> np.ndarray:
    """n images of a family from its own seeded stream (the same seed, the same images)."""
    return family.make(np.random.default_rng([seed, *family.name.encode()]), n, size)
