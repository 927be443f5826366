"""Cheap image-quality gates: a bad image becomes UNGRADABLE with a reason, instead of a confident guess.

Each issue says in plain words what is wrong (``message``, the headline a clinician reads) and what to
do (``action``); the figures behind it (``detail``: the measured value and the limit) are shown only
behind "Details". Every threshold comes from the bundle's QualityPolicy. The statistics are computed on a strided
subsample (about 256 px on the long side), so a 3000x2500 radiograph costs a few milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from device.intake import DecodedImage
from models.reading import SHARPNESS_SIDE
from models.bundle import DicomHandling, QualityPolicy

_SAMPLE_SIDE = 256
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601, as models/preprocess.py
# A pixel within half an 8-bit step of the end of the range counts as clipped.
_CLIP_EPS = 0.5 / 255.0


# The issues that say the image is not of the kind the exam reads at all (another modality, body
# part, a colour photo for a gray exam or the reverse), as against a bad image of the right kind:
# another exam may judge it (device/decision/refusal.py adds the model's own check to these).
WRONG_KIND = frozenset({"wrong_modality", "wrong_body_part", "colour_photo", "not_colour"})
# DICOM Modality codes in words, for the headline (the code itself stays in the detail).
MODALITY_WORDS = {
    "CR": "X-ray", "DX": "X-ray", "CT": "CT", "MR": "MRI", "US": "ultrasound", "NM": "nuclear medicine",
    "PT": "PET", "MG": "mammography", "XA": "angiography", "RF": "fluoroscopy", "XC": "photograph",
    "DMS": "dermoscopy", "OP": "eye photograph", "ES": "endoscopy", "SM": "microscopy", "OT": "other",
}


@dataclass(frozen=True)
class QualityIssue:
    code: str
    message: str  # what is wrong, in plain words, no figures
    action: str  # what to do
    detail: str = ""  # the figures behind it (measured value, limit), for Details

    def as_dict(self) -> dict:
        return {"code": self.code, "message": self.message, "action": self.action, "detail": self.detail}


@dataclass(frozen=True)
class QualityReport:
    ok: bool
    issues: tuple[QualityIssue, ...]

    def as_dict(self) -> dict:
        return {
            "ok": self.ok,
            "issues": [i.as_dict() for i in self.issues],
        }


def assess(img: DecodedImage, policy: QualityPolicy, dicom: DicomHandling) -> QualityReport:
    # An 8-bit gray image needs no float sample unless a lesion is looked for: it has no colour,
    # and its exposure comes from a histogram.
    needs_sample = not _is_gray_u8(img.pixels) or policy.min_lesion_fraction is not None
    sample = _unit_sample(img.pixels) if needs_sample else None
    issues = [
        *_modality_issues(img, dicom.modalities),
        *_body_part_issues(img, dicom.body_parts),
        *_geometry_issues(img.pixels.shape[0], img.pixels.shape[1], policy),
        *_colour_issues(sample, policy),
        *_exposure_issues(_exposure_stats(img.pixels, sample), policy),
        *_sharpness_issues(img.pixels, policy),
        *_lesion_issues(sample, policy),
    ]
    return QualityReport(ok=not issues, issues=tuple(issues))


def _unit_sample(pixels: np.ndarray) -> np.ndarray:
    """Strided subsample scaled to float32 [0, 1]; striding (not resizing) keeps clipped pixels clipped."""
    sample = _strided(pixels)
    if sample.dtype == np.uint8:
        return sample.astype(np.float32) * np.float32(1.0 / 255.0)
    return np.clip(sample, 0.0, 1.0).astype(np.float32, copy=False)


def _gray(sample: np.ndarray) -> np.ndarray:
    return sample[..., :3] @ _LUMA if sample.ndim == 3 else sample


def _modality_issues(img: DecodedImage, expected: list[str]) -> list[QualityIssue]:
    if img.modality is None or not expected or img.modality in expected:
        return []
    kind = MODALITY_WORDS.get(img.modality, img.modality)
    wanted = sorted({MODALITY_WORDS.get(m, m) for m in expected})
    return [
        QualityIssue(
            "wrong_modality",
            f"This is {_article(kind)} {kind} image; this exam reads {' or '.join(wanted)} images only",
            "Send the right image, or choose the exam for this kind of image",
            f"DICOM Modality {img.modality}; the exam takes {', '.join(expected)}",
        )
    ]


def _body_part_issues(img: DecodedImage, expected: list[str]) -> list[QualityIssue]:
    if img.body_part is None or not expected or img.body_part in expected:
        return []
    wanted = " or ".join(p.lower() for p in expected)
    return [
        QualityIssue(
            "wrong_body_part",
            f"This image is of the {img.body_part.lower()}; this exam reads the {wanted} only",
            "Send the right image, or choose the exam for this kind of image",
            f"DICOM BodyPartExamined {img.body_part}; the exam takes {', '.join(expected)}",
        )
    ]


def _article(word: str) -> str:
    """'a' or 'an' as the word is said: an MRI, an X-ray, a CT, an ultrasound, a photograph."""
    spelled = word[:2].isupper() or word[1:2] == "-"  # an acronym, or X-ray: its first letter is spelled
    return "an" if word[:1] in ("AEFHILMNORSX" if spelled else "aeiouAEIOU") else "a"


def _geometry_issues(height: int, width: int, policy: QualityPolicy) -> list[QualityIssue]:
    issues = []
    if min(height, width) < policy.min_side_px:
        issues.append(
            QualityIssue(
                "too_small",
                "The image is too small to judge",
                "Retake or import the original full-resolution image",
                f"{width}x{height} px; at least {policy.min_side_px} px per side is needed",
            )
        )
    aspect = min(height, width) / max(height, width)
    if aspect < policy.min_aspect:
        issues.append(
            QualityIssue(
                "aspect",
                f"The image is a narrow strip, not the whole {policy.subject}",
                f"Capture the whole {policy.subject}, not a strip or a crop",
                f"{width}x{height} px (aspect {aspect:.2f}); below {policy.min_aspect:.2f} it is not the expected view",
            )
        )
    return issues


def _chroma(sample: np.ndarray | None) -> float:
    """Mean chroma (max - min channel): 0 for any gray image, however it is stored (None: an
    8-bit gray image, which was given no sample)."""
    if sample is None or sample.ndim != 3:
        return 0.0
    # Per-channel maximum/minimum of three planes: numpy's max(axis=2) over a length-3 axis is
    # ~40x slower and made this check the costliest part of triage.
    r, g, b = sample[..., 0], sample[..., 1], sample[..., 2]
    return float((np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)).mean())


def _colour_issues(sample: np.ndarray | None, policy: QualityPolicy) -> list[QualityIssue]:
    if policy.max_colorfulness is None and policy.min_colorfulness is None:
        return []
    chroma = _chroma(sample)
    if policy.max_colorfulness is not None and chroma > policy.max_colorfulness:
        return [
            QualityIssue(
                "colour_photo",
                f"This is a colour picture, not a {policy.subject}",
                f"Use the {policy.subject} itself, not a colour photo or screenshot, or choose the exam for this "
                "kind of image",
                f"mean chroma {chroma:.2f}, limit {policy.max_colorfulness:.2f}",
            )
        ]
    if policy.min_colorfulness is not None and chroma < policy.min_colorfulness:
        return [
            QualityIssue(
                "not_colour",
                f"This is a gray image, not a colour {policy.subject}",
                f"Use a colour {policy.subject}; an X-ray or other gray image goes to its own exam",
                f"mean chroma {chroma:.2f}, at least {policy.min_colorfulness:.2f} is needed",
            )
        ]
    return []


def _sharpness_issues(pixels: np.ndarray, policy: QualityPolicy) -> list[QualityIssue]:
    """Variance of the 4-neighbour Laplacian at SHARPNESS_SIDE px on the long side (area-resized, so
    the figure does not depend on the camera's resolution): low when out of focus or shaken."""
    if policy.min_sharpness is None:
        return []
    h, w = pixels.shape[:2]
    scale = SHARPNESS_SIDE / max(h, w)
    small = pixels if scale >= 1 else cv2.resize(np.ascontiguousarray(pixels), (max(3, round(w * scale)),
                                                 max(3, round(h * scale))), interpolation=cv2.INTER_AREA)
    g = _gray(_unit_sample(small)).astype(np.float32, copy=False)
    lap = g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1] - 4.0 * g[1:-1, 1:-1]
    sharpness = float(lap.var())
    if sharpness >= policy.min_sharpness:
        return []
    return [
        QualityIssue(
            "blurred",
            "The image is out of focus",
            "Hold the camera still, focus on the lesion and take the picture again",
            f"sharpness {sharpness:.5f}, at least {policy.min_sharpness:.5f} is needed",
        )
    ]


def _lesion_issues(sample: np.ndarray, policy: QualityPolicy) -> list[QualityIssue]:
    """Whether something that differs from the surrounding skin lies in the middle of the picture.

    The skin's colour is the per-channel median of the outer ring (the outer eighth on each side);
    a lesion pixel lies farther than `lesion_contrast` from it (Euclidean, unit RGB: darker,
    lighter or of another hue - some keratoses are paler than the skin). Dermoscopy centres the
    lesion, so the central half must hold at least `min_lesion_fraction` of such pixels.
    """
    if policy.min_lesion_fraction is None:
        return []
    pixels = sample if sample.ndim == 3 else sample[:, :, None]
    h, w = pixels.shape[:2]
    ring = np.ones((h, w), bool)
    ring[h // 8 : h - h // 8, w // 8 : w - w // 8] = False
    skin = np.median(pixels[ring], axis=0)
    centre = pixels[h // 4 : h - h // 4, w // 4 : w - w // 4]
    distance = np.sqrt(np.sum((centre - skin) ** 2, axis=-1))
    fraction = float(np.count_nonzero(distance > policy.lesion_contrast)) / max(1, distance.size)
    if fraction >= policy.min_lesion_fraction:
        return []
    return [
        QualityIssue(
            "no_lesion",
            "No lesion in the middle of the picture",
            "Centre the lesion in the dermoscope's field and take the picture again",
            f"{fraction:.0%} of the centre differs from the surrounding skin; at least "
            f"{policy.min_lesion_fraction:.0%} is expected",
        )
    ]


@dataclass(frozen=True)
class _Exposure:
    low: float  # 1st and 99th percentiles of the gray values, in [0, 1]
    high: float
    black: float  # fractions of pixels clipped to pure black and pure white
    white: float


def _exposure_stats(pixels: np.ndarray, sample: np.ndarray | None) -> _Exposure:
    """On an 8-bit gray image (a JPEG or PNG radiograph, the common case) from a 256-bin histogram:
    the same figures as ``np.percentile`` (linear interpolation between order statistics) at a
    fraction of its cost (OpenCV's histogram, without the GIL), since sorting was the costliest
    quality check. Colour and DICOM images (float after windowing) use the strided float sample."""
    if _is_gray_u8(pixels):
        strided = np.ascontiguousarray(_strided(pixels))
        return _exposure_of_histogram(cv2.calcHist([strided], [0], None, [256], [0, 256]).ravel())
    gray = _gray(sample)
    low, high = np.percentile(gray, [1, 99])
    return _Exposure(float(low), float(high), float(np.count_nonzero(gray <= _CLIP_EPS)) / gray.size,
                     float(np.count_nonzero(gray >= 1.0 - _CLIP_EPS)) / gray.size)


def _is_gray_u8(pixels: np.ndarray) -> bool:
    return pixels.dtype == np.uint8 and pixels.ndim == 2


def _strided(pixels: np.ndarray) -> np.ndarray:
    """Every n-th pixel of every n-th row (about _SAMPLE_SIDE on the long side), in its own dtype."""
    step = max(1, max(pixels.shape[:2]) // _SAMPLE_SIDE)
    return pixels[::step, ::step]


def _exposure_of_histogram(hist: np.ndarray) -> _Exposure:
    n = int(hist.sum())
    cumulative = np.cumsum(hist)
    positions = (n - 1) * np.array([0.01, 0.99])
    below = np.floor(positions).astype(np.int64)
    # the k-th smallest values (0-based) at and just above each position, in [0, 1]
    ranks = np.concatenate([below, np.minimum(n - 1, below + 1)])
    lo, hi = np.searchsorted(cumulative, ranks, side="right").reshape(2, 2) / 255.0
    low, high = lo + (hi - lo) * (positions - below)
    return _Exposure(float(low), float(high), float(hist[0]) / n, float(hist[255]) / n)


def _exposure_issues(stats: _Exposure, policy: QualityPolicy) -> list[QualityIssue]:
    low, high, black, white = stats.low, stats.high, stats.black, stats.white
    if high - low < policy.min_dynamic_range:
        return [
            QualityIssue(
                "blank",
                "The image is blank or almost uniform",
                "Check the capture and take or send the image again",
                f"contrast range {high - low:.2f}, at least {policy.min_dynamic_range:.2f} is needed",
            )
        ]
    if black + white <= policy.max_clipped_fraction:
        return []
    code, words = ("overexposed", "burned out to white") if white >= black else ("underexposed", "black")
    return [
        QualityIssue(
            code,
            f"Too much of the image is {words}",
            "Recapture with correct exposure, or re-export without burning out the image",
            f"{(black + white):.0%} of the image is clipped ({white:.0%} pure white, {black:.0%} pure black); at "
            f"most {policy.max_clipped_fraction:.0%} is allowed",
        )
    ]
