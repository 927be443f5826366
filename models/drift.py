"""What the drift monitor watches, defined once for the export floor and the device: the signals of
one image (its P(urgent), its refusal scores where the bundle has refusal checks, and a few image
statistics of the model's own input), and the binned reference distributions a bundle ships
(``Manifest.monitoring``) or a site's acceptance sample makes.

The image statistics are computed on the model input (after the device's preprocessing, un-normalised
back to [0, 1]), so a change the model cannot see (a file's size, its JPEG quality) is not counted as
drift, and what it does see (a new detector's processing curve, inverted films, a new camera's
colour) is. `bedside export` computes the reference from the validation images through this module,
the device computes each study's signals through it; same numbers, same definitions
(STATISTICS_VERSION names them).

numpy and OpenCV only: no torch, no onnx.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import cv2
import numpy as np

from models.bundle import DriftSignal, InputContract, MonitoringReference

STATISTICS_VERSION = 1
TEMPLATE_SIDE = 16
BINS = 10  # reference bins: the pooled reference's deciles
P_URGENT = "p_urgent"
IMAGE = "image."
REFUSAL = "refusal."

# name -> what it measures, in words (the technician's monitoring table shows them)
GRAY_STATISTICS = {
    "brightness": "mean gray level of the model's input",
    "contrast": "spread of gray levels (standard deviation)",
    "dark_tail": "5th percentile of gray levels",
    "bright_tail": "95th percentile of gray levels",
    "edges": "local contrast: mean absolute Laplacian",
    "layout": "correlation with the reference's mean image (inverted or rotated films fall)",
}
COLOUR_STATISTICS = {
    "chroma": "mean colourfulness (max - min channel)",
    "warmth": "mean red minus mean blue (white balance)",
}
SIGNAL_WORDS = {P_URGENT: "P(urgent), the model's score",
                **{IMAGE + k: v for k, v in {**GRAY_STATISTICS, **COLOUR_STATISTICS}.items()}}


def describe(name: str) -> str:
    """A signal's name in words."""
    if name.startswith(REFUSAL):
        return f"refusal score '{name[len(REFUSAL):]}'"
    return SIGNAL_WORDS.get(name, name)


def unit_input(model_input: np.ndarray, contract: InputContract) -> np.ndarray:
    """A (C, H, W) normalised model input back in [0, 1] (channels as the contract has them)."""
    mean = np.asarray(contract.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(contract.std, dtype=np.float32)[:, None, None]
    return np.clip(np.asarray(model_input, dtype=np.float32) * std + mean, 0.0, 1.0)


def image_statistics(model_input: np.ndarray, contract: InputContract) -> tuple[dict[str, float], np.ndarray]:
    """The statistics of one model input, without layout, and its gray image at TEMPLATE_SIDE (for
    layout and the reference's template). About 0.1 ms at 128 x 128."""
    unit = unit_input(model_input, contract)
    gray = np.ascontiguousarray(unit.mean(axis=0) if unit.shape[0] > 1 else unit[0])
    mean, std = (float(v[0][0]) for v in cv2.meanStdDev(gray))
    low, high = _percentiles(gray, (0.05, 0.95))
    stats = {
        "brightness": mean,
        "contrast": std,
        "dark_tail": low,
        "bright_tail": high,
        "edges": float(cv2.mean(np.abs(cv2.Laplacian(gray, cv2.CV_32F)))[0]),
    }
    if unit.shape[0] == 3:
        stats["chroma"] = float((unit.max(axis=0) - unit.min(axis=0)).mean())
        stats["warmth"] = float(unit[0].mean() - unit[2].mean())
    small = cv2.resize(np.ascontiguousarray(gray), (TEMPLATE_SIDE, TEMPLATE_SIDE), interpolation=cv2.INTER_AREA)
    return stats, small.reshape(-1)


HISTOGRAM_BINS = 256


def _percentiles(gray: np.ndarray, quantiles: tuple[float, ...]) -> list[float]:
    """Quantiles of a [0, 1] image from its histogram of 8-bit levels (the level where the cumulative
    share reaches each): 1/255 resolution at a small part of np.percentile's cost."""
    codes = cv2.convertScaleAbs(gray, alpha=HISTOGRAM_BINS - 1)  # rounded to 0..255
    cumulative = np.cumsum(cv2.calcHist([codes], [0], None, [HISTOGRAM_BINS], [0, HISTOGRAM_BINS]).reshape(-1))
    total = float(cumulative[-1]) or 1.0
    return [float(np.searchsorted(cumulative, q * total)) / (HISTOGRAM_BINS - 1) for q in quantiles]


def layout(small: np.ndarray, template: np.ndarray) -> float:
    """Pearson correlation of an image's small gray image with the template (0 for a flat image)."""
    a = small - small.mean()
    b = template - template.mean()
    denominator = float(np.dot(a, a)) * float(np.dot(b, b))
    return float(np.dot(a, b)) / denominator ** 0.5 if denominator > 0 else 0.0


def statistics_of(model_input: np.ndarray, contract: InputContract, template: np.ndarray | None) -> dict[str, float]:
    """Every image statistic of one model input (its signal is ``image.<name>``); layout only with a template."""
    stats, small = image_statistics(model_input, contract)
    if template is not None:
        stats["layout"] = layout(small, template)
    return stats


def template_of(reference: MonitoringReference | None) -> np.ndarray | None:
    """The reference's template as an array, where its statistics are this module's."""
    if reference is None or reference.statistics_version != STATISTICS_VERSION or reference.template is None:
        return None
    return np.asarray(reference.template, dtype=np.float32)


def bin_of(signal: DriftSignal, value: float) -> int:
    """The bin of ``value`` (edges[i-1] <= value < edges[i])."""
    return int(np.searchsorted(signal.edges, value, side="right"))


def drift_signal(name: str, values: np.ndarray, urgent: np.ndarray, bins: int = BINS) -> DriftSignal | None:
    """The binned reference of one signal; None where its values do not spread (nothing to compare)."""
    values = np.asarray(values, dtype=np.float64)
    urgent = np.asarray(urgent, dtype=bool)
    finite = np.isfinite(values)
    values, urgent = values[finite], urgent[finite]
    edges = np.unique(np.quantile(values, np.arange(1, bins) / bins))
    if len(edges) < 1 or urgent.all() or not urgent.any():
        return None
    index = np.searchsorted(edges, values, side="right")
    count = lambda mask: np.bincount(index[mask], minlength=len(edges) + 1).tolist()  # noqa: E731
    return DriftSignal(name=name, edges=[float(e) for e in edges], urgent=count(urgent), other=count(~urgent))


def build_reference(values: Mapping[str, np.ndarray], urgent: np.ndarray, template: np.ndarray | None,
                    data: str) -> MonitoringReference | None:
    """The reference from every image's signals (name -> one value per image) and whether each image
    is of the urgent group (its label, not the model's call); None where no signal spreads."""
    signals = [s for name, v in values.items() if (s := drift_signal(name, v, urgent)) is not None]
    if not signals:
        return None
    kept = None if template is None else [round(float(t), 6) for t in np.asarray(template).reshape(-1)]
    return MonitoringReference(data=data, statistics_version=STATISTICS_VERSION, template_side=TEMPLATE_SIDE,
                               template=kept, signals=signals)


# A batch of model inputs (N, C, H, W) -> (P(urgent) per image, {refusal check name: score per image}).
ModelScores = Callable[[np.ndarray], tuple[np.ndarray, Mapping[str, np.ndarray]]]


def score_signals(inputs: Iterable[np.ndarray], urgent: np.ndarray, scores: ModelScores,
                  batch: int = 32) -> list[DriftSignal]:
    """Only the model-score signals (P(urgent), refusal.<check>) of a labelled image set, binned as
    `reference_from_inputs` bins them: one variant's own (``Variant.monitoring``)."""
    values = _model_values(inputs, scores, batch, lambda x: None)
    return [s for name, v in values.items() if (s := drift_signal(name, v, urgent)) is not None]


def _model_values(inputs: Iterable[np.ndarray], scores: ModelScores, batch: int,
                  each: Callable[[np.ndarray], None]) -> dict[str, np.ndarray]:
    """P(urgent) and every refusal score of ``inputs`` (name -> one value per image), run in batches;
    ``each`` sees every input on the way."""
    model: dict[str, list[np.ndarray]] = {P_URGENT: []}
    pending: list[np.ndarray] = []

    def run() -> None:
        p, refusal = scores(np.stack(pending))
        model[P_URGENT].append(np.asarray(p, dtype=np.float64).reshape(-1))
        for name, s in refusal.items():
            model.setdefault(REFUSAL + name, []).append(np.asarray(s, dtype=np.float64).reshape(-1))
        pending.clear()

    for x in inputs:
        each(x)
        pending.append(x)
        if len(pending) == batch:
            run()
    if pending:
        run()
    return {name: np.concatenate(parts) for name, parts in model.items()}


def reference_from_inputs(inputs: Iterable[np.ndarray], urgent: np.ndarray, scores: ModelScores,
                          contract: InputContract, data: str, batch: int = 32) -> MonitoringReference:
    """The reference of a labelled image set: ``inputs`` are the images as model inputs (through
    models.preprocess.to_model_input, as the device prepares them), ``urgent`` whether each is of the
    urgent group, ``scores`` the model run on a batch. One pass; the template is the mean of the
    images' small gray images, and layout each image's correlation with it."""
    stats: dict[str, list[float]] = {}
    smalls: list[np.ndarray] = []

    def each(x: np.ndarray) -> None:
        one, small = image_statistics(x, contract)
        for k, v in one.items():
            stats.setdefault(IMAGE + k, []).append(v)
        smalls.append(small)

    values = _model_values(inputs, scores, batch, each)
    template = np.mean(smalls, axis=0)
    values.update({name: np.asarray(v) for name, v in stats.items()})
    values[IMAGE + "layout"] = np.array([layout(s, template) for s in smalls])
    return build_reference(values, urgent, template, data)
