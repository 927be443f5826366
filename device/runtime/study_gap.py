"""What happens on the CPU between two model runs of the served path: a study's decode and
preprocessing. Backends are timed with it in between calls (the kiosk's backend choice, `bedside
bench`'s as-served block), because that is how a kiosk runs its model, and it changes the ranking:
on this 2-core box OpenVINO INT8 was faster than ONNX Runtime INT8 when one run follows another
(0.58-0.61 against 0.69-0.73 ms), but slower after each study's decode (1.25 against 0.85 ms;
OpenVINO hands the run to its stream's thread, ONNX Runtime runs it on the caller's).

The study is synthetic and deterministic (no patient image ships with the appliance): a gray or
colour picture as the bundle takes, of a radiograph's size, JPEG-encoded once per process and
decoded at the scale the served path decodes it (models/reading.py).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import cv2
import numpy as np

from device import intake
from models.bundle import Manifest
from models.preprocess import to_model_input

STUDY_SIDE = (1600, 1300)  # (height, width): a chest radiograph's order of size
QUALITY = 90


@lru_cache(maxsize=2)
def study_jpeg(colour: bool) -> bytes:
    """A smooth gradient with fine blurred texture, as JPEG: about 210 KB, decoded at 1/8 in about
    2.2 ms here, as the shipped samples' radiographs (2.5-2.8 ms median in `bench --pipeline`)."""
    h, w = STUDY_SIDE
    rng = np.random.default_rng(0)
    ramp = np.linspace(40, 215, h * w, dtype=np.float32).reshape(h, w)
    texture = cv2.GaussianBlur(rng.normal(0, 15, (h, w)).astype(np.float32), (0, 0), 1.5)
    gray = np.clip(ramp + texture, 0, 255).astype(np.uint8)
    image = cv2.merge([gray, np.roll(gray, 7, axis=1), np.roll(gray, 7, axis=0)]) if colour else gray
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, QUALITY])
    if not ok:
        raise RuntimeError("OpenCV could not encode the synthetic study")
    return data.tobytes()


def between_studies(manifest: Manifest) -> Callable[[], None]:
    """A call that does a study's decode and preprocessing for this bundle, as the served path does."""
    data = study_jpeg(manifest.input.color != "grayscale")
    reduce = intake.ReducedDecode.for_manifest(manifest)

    def gap() -> None:
        to_model_input(intake.decode_bytes(data, "synthetic study", reduce=reduce).pixels, manifest.input)

    return gap
