"""Quality gate for camera frames, on top of the bundle's own checks: a frame with no picture, a badly
exposed frame or a blurred one reads UNGRADABLE with the reason, never as a confident triage.

All statistics are computed on the frame in gray at most 320 px on its long side (the 1/4-scale
decode of a 720p frame is already that size), so the thresholds do not depend on the camera's
resolution and the check costs well under a millisecond.

Sharpness is the variance of the Laplacian, the usual focus measure. On the sample chest X-rays
as 1280x720 camera frames it is 115-360 when sharp, 7-37 after a Gaussian blur of sigma 4 px (a
camera clearly out of focus) and 4-13 at 6 px; the default limit of 40 sits in between. It grows
with contrast and noise, so imagers with very soft pictures may need a lower limit
(``capture.quality.min_sharpness``).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from device.decision.quality import QualityIssue, QualityReport
from device.decision.triage import TriageResult
from device.intake import DecodedImage

WORK_SIDE = 320


@dataclass(frozen=True)
class FrameQualityPolicy:
    min_sharpness: float = 40.0  # variance of the Laplacian (8-bit gray, 320 px long side)
    min_range: float = 0.06  # p99 - p1 below this (of full scale): no picture at all
    min_mean: float = 0.10  # mean brightness below: too dark
    max_mean: float = 0.90  # above: too bright


@dataclass(frozen=True)
class FrameStats:
    mean: float
    range: float
    sharpness: float


def frame_stats(img: DecodedImage) -> FrameStats:
    gray = img.pixels
    if gray.ndim == 3:
        gray = cv2.cvtColor(gray, cv2.COLOR_RGB2GRAY)
    h, w = gray.shape
    scale = WORK_SIDE / max(h, w)
    if scale < 1:
        gray = cv2.resize(gray, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    low, high = np.percentile(gray[::2, ::2], [1, 99])
    sharpness = float(cv2.Laplacian(gray, cv2.CV_32F).var())
    return FrameStats(mean=float(gray.mean()) / 255.0, range=float(high - low) / 255.0, sharpness=sharpness)


def frame_issues(stats: FrameStats, policy: FrameQualityPolicy) -> list[QualityIssue]:
    if stats.range < policy.min_range:
        if stats.mean < policy.min_mean:
            what = "The camera shows nothing: the picture is black"
        else:
            what = "The camera shows no picture: the frame is uniform"
        return [QualityIssue("no_image", what, "Remove the lens cap; check the camera, its cable and the imager's output",
                             f"mean brightness {stats.mean:.0%}, contrast range {stats.range:.0%}")]
    issues = []
    if stats.mean < policy.min_mean:
        issues.append(
            QualityIssue(
                "too_dark",
                "The picture is too dark",
                "Add light or raise the camera's exposure",
                f"mean brightness {stats.mean:.0%}, at least {policy.min_mean:.0%}",
            )
        )
    elif stats.mean > policy.max_mean:
        issues.append(
            QualityIssue(
                "too_bright",
                "The picture is too bright",
                "Reduce the light or the camera's exposure",
                f"mean brightness {stats.mean:.0%}, at most {policy.max_mean:.0%}",
            )
        )
    # Sharpness only on a well-exposed frame: the Laplacian's variance falls with the square of the
    # contrast, so every dark or washed-out frame would also read as blurred.
    if not issues and stats.sharpness < policy.min_sharpness:
        issues.append(
            QualityIssue(
                "blurred",
                "The picture is blurred",
                "Hold the camera still and focus",
                f"sharpness {stats.sharpness:.0f}, at least {policy.min_sharpness:.0f}",
            )
        )
    return issues


def gate(result: TriageResult, issues: list[QualityIssue]) -> TriageResult:
    """The result with the frame's issues added; any issue makes it UNGRADABLE."""
    if not issues:
        return result
    return result.withheld(QualityReport(ok=False, issues=result.quality.issues + tuple(issues)))
