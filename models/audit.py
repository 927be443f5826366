"""Metamorphic shortcut audits: change what must not matter, count how often the triage changes.

Each check applies one transformation that leaves the finding as it is but changes something a
model could have learned instead of it (a film's aspect, its borders, a burned-in marker; a
dermoscope's dark corners, hairs, ink marks, a ruler; the exposure, white balance, compression),
then compares the triage (P(urgent) >= threshold) before and after. A model that reads the
finding flips few images; one that learned the shortcut flips many. Each bundle names the checks
that apply to its exam in its manifest (`audit.checks`).

Runs on decoded images (uint8 or float in [0, 1], gray or RGB) through the bundle's own input
contract, so training, `bedside optimize` and `bedside eval` audit exactly what the device sees.
numpy + OpenCV only: no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import cv2
import numpy as np

from models.bundle import AuditCheck, AuditGroup, AuditPolicy, InputContract
from models.preprocess import to_model_input

MAX_FLIP_RATE = 0.02
BATCH = 64
BORDER = 0.08  # fraction of each side cut or padded by the border checks


@dataclass(frozen=True)
class Check:
    name: str
    description: str
    apply: Callable[[np.ndarray], np.ndarray]


def _as_uint8(pixels: np.ndarray) -> np.ndarray:
    if pixels.dtype == np.uint8:
        return pixels
    return np.clip(pixels.astype(np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _resize(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    return cv2.resize(np.ascontiguousarray(pixels), (max(1, width), max(1, height)), interpolation=cv2.INTER_AREA)


def squeeze(pixels: np.ndarray, factor: float = 0.8) -> np.ndarray:
    """Content resized to `factor` of its width and centred on the same canvas, black at the sides:
    what a film `1 / factor` times wider looks like after the upstream stretch to a square."""
    h, w = pixels.shape[:2]
    narrow = _resize(pixels, int(round(w * factor)), h)
    out = np.zeros_like(pixels)
    left = (w - narrow.shape[1]) // 2
    out[:, left : left + narrow.shape[1]] = narrow
    return out


def widen(pixels: np.ndarray, factor: float = 1.25) -> np.ndarray:
    """Content stretched to `factor` of its width, the sides that no longer fit cut off."""
    h, w = pixels.shape[:2]
    wide = cv2.resize(np.ascontiguousarray(pixels), (int(round(w * factor)), h), interpolation=cv2.INTER_LINEAR)
    left = (wide.shape[1] - w) // 2
    return np.ascontiguousarray(wide[:, left : left + w])


def crop_border(pixels: np.ndarray, fraction: float = BORDER) -> np.ndarray:
    h, w = pixels.shape[:2]
    dy, dx = int(round(h * fraction)), int(round(w * fraction))
    return np.ascontiguousarray(pixels[dy : h - dy, dx : w - dx])


def pad_border(pixels: np.ndarray, fraction: float = BORDER) -> np.ndarray:
    h, w = pixels.shape[:2]
    dy, dx = int(round(h * fraction)), int(round(w * fraction))
    return cv2.copyMakeBorder(np.ascontiguousarray(pixels), dy, dy, dx, dx, cv2.BORDER_CONSTANT, value=0)


def burn_marker(pixels: np.ndarray) -> np.ndarray:
    """White burned-in annotations as films carry them: a side letter and a 'PORTABLE' label."""
    out = _as_uint8(pixels).copy()
    h, w = out.shape[:2]
    scale = max(h, w) / 400.0
    white = (255,) * (3 if out.ndim == 3 else 1)
    thick = max(1, int(round(2 * scale)))
    cv2.putText(out, "R", (int(0.04 * w), int(0.12 * h)), cv2.FONT_HERSHEY_SIMPLEX, 1.6 * scale, white, thick)
    cv2.putText(out, "PORTABLE", (int(0.55 * w), int(0.08 * h)), cv2.FONT_HERSHEY_SIMPLEX, 0.7 * scale, white, thick)
    return out


def gamma(pixels: np.ndarray, value: float) -> np.ndarray:
    unit = pixels.astype(np.float32) / 255.0 if pixels.dtype == np.uint8 else pixels.astype(np.float32)
    return np.clip(unit, 0.0, 1.0) ** value


def jpeg(pixels: np.ndarray, quality: int = 60) -> np.ndarray:
    u8 = _as_uint8(pixels)
    bgr = cv2.cvtColor(u8, cv2.COLOR_RGB2BGR) if u8.ndim == 3 else u8
    ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    decoded = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB) if decoded.ndim == 3 else decoded


def _stroke(pixels: np.ndarray, draw: Callable[[np.ndarray, int, int], None]) -> np.ndarray:
    """Draw on an RGB copy (gray images get three channels) with OpenCV; `draw(img, h, w)`."""
    u8 = _as_uint8(pixels)
    img = np.ascontiguousarray(np.repeat(u8[:, :, None], 3, axis=2) if u8.ndim == 2 else u8.copy())
    draw(img, img.shape[0], img.shape[1])
    return img


def vignette(pixels: np.ndarray) -> np.ndarray:
    """Black outside the circle inscribed in the image: a dermoscope's circular field."""
    u8 = _as_uint8(pixels)
    h, w = u8.shape[:2]
    mask = np.zeros((h, w), np.uint8)
    cv2.circle(mask, (w // 2, h // 2), int(0.55 * min(h, w)), 255, -1, cv2.LINE_AA)
    keep = (mask.astype(np.float32) / 255.0)
    out = u8.astype(np.float32) * (keep[:, :, None] if u8.ndim == 3 else keep)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def hairs(pixels: np.ndarray) -> np.ndarray:
    """Eight thin dark hairs across the image, at the same places for every image."""
    rng = np.random.default_rng(7)
    lines = rng.uniform(0.0, 1.0, size=(8, 4))

    def draw(img: np.ndarray, h: int, w: int) -> None:
        for x0, y0, x1, y1 in lines:
            cv2.line(img, (int(x0 * w), int(y0 * h)), (int(x1 * w), int(y1 * h)), (40, 30, 25),
                     max(1, round(min(h, w) / 224)), cv2.LINE_AA)
    return _stroke(pixels, draw)


def ink(pixels: np.ndarray) -> np.ndarray:
    """A purple surgical-marker stroke near the left edge."""
    def draw(img: np.ndarray, h: int, w: int) -> None:
        cv2.line(img, (int(0.1 * w), int(0.3 * h)), (int(0.14 * w), int(0.6 * h)), (110, 50, 140),
                 max(2, round(min(h, w) / 40)), cv2.LINE_AA)
    return _stroke(pixels, draw)


def ruler(pixels: np.ndarray) -> np.ndarray:
    """A light ruler along the bottom edge with dark millimetre ticks."""
    def draw(img: np.ndarray, h: int, w: int) -> None:
        top = int(0.88 * h)
        img[top:] = (225, 225, 215)
        step = max(3, w // 40)
        for i, x in enumerate(range(step // 2, w, step)):
            cv2.line(img, (x, top), (x, top + int((0.07 if i % 5 == 0 else 0.04) * h)), (20, 20, 20), 1)
    return _stroke(pixels, draw)


def mirror(pixels: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(pixels[:, ::-1])


def white_balance(pixels: np.ndarray, gains: tuple[float, float, float] = (1.08, 1.0, 0.9)) -> np.ndarray:
    """Warmer light (red up, blue down), as under a different lamp or camera."""
    u8 = _as_uint8(pixels)
    if u8.ndim == 2:
        return u8
    return np.clip(u8.astype(np.float32) * np.array(gains, np.float32) + 0.5, 0, 255).astype(np.uint8)


CHECKS: dict[str, Check] = {c.name: c for c in (
    Check("squeeze_0.8", "content squeezed horizontally to 0.8 (a wider film after the stretch), black sides",
          squeeze),
    Check("widen_1.25", "content widened by 1.25 (a narrower film), sides cut", widen),
    Check("border_crop", f"{BORDER:.0%} cut from every edge", crop_border),
    Check("border_pad", f"black border of {BORDER:.0%} of the side on every edge", pad_border),
    Check("marker", "burned-in white text: side letter 'R' and 'PORTABLE'", burn_marker),
    Check("vignette", "black outside the inscribed circle (a dermoscope's dark corners)", vignette),
    Check("hair", "eight thin dark hairs drawn across the image", hairs),
    Check("ink", "a purple skin-marker stroke near the edge", ink),
    Check("ruler", "a ruler with millimetre ticks along the bottom edge", ruler),
    Check("mirror", "left-right mirror image", mirror),
    Check("white_balance", "warmer light: red x1.08, blue x0.9", white_balance),
    Check("gamma_0.75", "exposure: gamma 0.75 (brighter mid-tones)", lambda p: gamma(p, 0.75)),
    Check("gamma_1.33", "exposure: gamma 1.33 (darker mid-tones)", lambda p: gamma(p, 1.33)),
    Check("jpeg_q60", "JPEG re-compression at quality 60", jpeg),
)}
RADIOGRAPH_CHECKS = ("squeeze_0.8", "widen_1.25", "border_crop", "border_pad", "marker", "gamma_0.75", "gamma_1.33",
                     "jpeg_q60")
DERMOSCOPY_CHECKS = ("vignette", "hair", "ink", "ruler", "mirror", "white_balance", "border_crop", "gamma_0.75",
                     "gamma_1.33", "jpeg_q60")


def policy(data: str, checks: Iterable[str] = RADIOGRAPH_CHECKS, max_flip_rate: float = MAX_FLIP_RATE,
           group: AuditGroup | None = None) -> AuditPolicy:
    """The limits a bundle declares: each named check's flip rate at most `max_flip_rate` on `data`,
    and on the group's images for the group's checks."""
    names = list(checks)
    unknown = [n for n in names + (group.checks if group else []) if n not in CHECKS]
    if unknown:
        raise ValueError(f"unknown audit checks {unknown} (known: {', '.join(CHECKS)})")
    return AuditPolicy(max_flip_rate=max_flip_rate, checks=names, data=data, group=group)


def group_members(group: AuditGroup | None, file_names: list[str], labels: list[str]) -> np.ndarray | None:
    """Which images (by file name and label name) are in the audit group; None without a group."""
    if group is None:
        return None
    return np.array([group.contains(name, label) for name, label in zip(file_names, labels)], dtype=bool)


def run_audit(predict: Callable[[np.ndarray], np.ndarray], images: Iterable[np.ndarray], positive: np.ndarray,
              contract: InputContract, threshold: float, names: Iterable[str] = RADIOGRAPH_CHECKS,
              group: AuditGroup | None = None, in_group: np.ndarray | None = None) -> list[AuditCheck]:
    """The named checks on every image; `predict` maps model inputs (N, C, H, W) to P(urgent) (N,).

    With a `group` and its members (`in_group`, one flag per image), the group's checks are also
    scored on its images alone, from the same predictions (no image is run twice); a group with no
    image here gets no rows.
    """
    positive = np.asarray(positive, dtype=bool)
    names = list(names)
    checks = [CHECKS[n] for n in dict.fromkeys(names + (group.checks if group else []))]
    base: list[np.ndarray] = []
    changed: dict[str, list[np.ndarray]] = {c.name: [] for c in checks}
    batch: list[np.ndarray] = []

    def flush() -> None:
        if not batch:
            return
        base.append(predict(np.stack([to_model_input(img, contract) for img in batch])))
        for c in checks:
            changed[c.name].append(predict(np.stack([to_model_input(c.apply(img), contract) for img in batch])))
        batch.clear()

    for img in images:
        batch.append(img)
        if len(batch) == BATCH:
            flush()
    flush()
    p0 = np.concatenate(base)
    if len(p0) != len(positive):
        raise ValueError(f"{len(p0)} images but {len(positive)} labels")
    p1 = {name: np.concatenate(parts) for name, parts in changed.items()}
    results = [_summary(CHECKS[n], p0, p1[n], positive, threshold) for n in names]
    if group is not None and in_group is not None and in_group.any():
        results += [_summary(CHECKS[n], p0[in_group], p1[n][in_group], positive[in_group], threshold, group.name)
                    for n in group.checks]
    return results


def _summary(check: Check, p0: np.ndarray, p1: np.ndarray, positive: np.ndarray, threshold: float,
             group: str | None = None) -> AuditCheck:
    flipped = (p0 >= threshold) != (p1 >= threshold)
    return AuditCheck(
        name=check.name,
        description=check.description,
        group=group,
        n=int(len(p0)),
        flip_rate=float(flipped.mean()),
        flip_rate_positive=float(flipped[positive].mean()) if positive.any() else None,
        flip_rate_negative=float(flipped[~positive].mean()) if (~positive).any() else None,
        mean_delta=float(np.mean(p1 - p0)),
    )


def failures(checks: list[AuditCheck], limits: AuditPolicy) -> list[str]:
    """Plain-word reasons for every check over its limit, overall or on the audit group (empty: passed)."""
    return [f"{c.name} flips {c.flip_rate:.1%} of {'images' if c.group is None else c.group} "
            f"(allowed {limits.max_flip_rate:.1%})"
            for c in checks if c.flip_rate > limits.max_flip_rate]


def table(checks: list[AuditCheck]) -> list[str]:
    """The audit as aligned text rows, for the terminal; a group's rows name the group."""
    rows = [f"{'check':<12} {'flips':>7} {'urgent':>7} {'other':>7} {'mean dP':>8}  what"]
    for c in checks:
        pos = "-" if c.flip_rate_positive is None else f"{c.flip_rate_positive:.1%}"
        neg = "-" if c.flip_rate_negative is None else f"{c.flip_rate_negative:.1%}"
        what = c.description if c.group is None else f"{c.group} only (n={c.n}): {c.description}"
        rows.append(f"{c.name:<12} {c.flip_rate:>7.1%} {pos:>7} {neg:>7} {c.mean_delta:>+8.4f}  {what}")
    return rows
