"""The drift monitor's signals and comparison on real films: the reference a bundle ships is computed
by the same function as each study's signals on the device; unchanged films read ok, the same films
after a new processing curve or inverted read drift (kind: images), and a change in prevalence alone
reads watch (kind: prevalence), never drift. The replayed-stream rates are benchmarks/drift.py's."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from device import intake
from device.runtime.triager import Triager
from device.site.drift import DRIFT, OK, WATCH
from device.site.signals import signals_of
from device.site.window import Tracker, Window
from models import drift
from models.bundle import DriftSignal, MonitoringReference, load_bundle
from models.preprocess import to_model_input
from models.reading import read_as_served

FILMS = 240


@pytest.fixture(scope="module")
def films(monitored_chest, chest_cases):
    """Signals of validation films as the kiosk computes them (its INT8 graph, decode and
    preprocessing), unchanged, inverted and under a gamma curve; and whether each is pneumonia."""
    bundle = load_bundle(monitored_chest)
    triager = Triager(bundle, "onnxruntime", "int8", threads=1)
    samples = chest_cases["samples"][::3][:FILMS]
    gray = [intake.decode_file(s.path, reduce=triager.reduced_decode).pixels for s in samples]

    def signals(images):
        out = []
        for start in range(0, len(images), 16):
            prepared = [triager.prepare(intake.DecodedImage(pixels=g, source_format="png", original_size=g.shape,
                                                            bits_stored=8), "test") for g in images[start:start + 16]]
            out += [signals_of(r) for r in triager.triage_prepared(prepared)]
        return out

    result = {"unchanged": signals(gray), "inverted": signals([255 - g for g in gray]),
              "gamma": signals([np.clip(255 * (g / 255.0) ** 1.33, 0, 255).astype(np.uint8) for g in gray]),
              "urgent": np.array([s.label in bundle.manifest.urgent_indices for s in samples]),
              "reference": bundle.manifest.monitoring.as_served(bundle.manifest.variant("int8", "cpu")),
              "samples": samples, "triager": triager}
    yield result
    triager.close()


def replay(reference, stream):
    window, tracker = Window(100), Tracker(min_studies=50, confirm=5)
    window.use(reference)
    states = []
    for s in stream:
        window.add(s)
        tracker.update(len(window), window.verdict())
        states.append((tracker.state, tracker.verdict.kind))
    return states


def test_the_reference_is_made_by_the_function_the_device_uses(monitored_chest, films):
    """The bundle's reference counts each validation film in the bin of the value the device computes
    for it (the export's decode and the kiosk's agree on these films)."""
    m = load_bundle(monitored_chest).manifest
    reference = m.monitoring
    assert reference is not None and reference.statistics_version == drift.STATISTICS_VERSION
    assert {s.name for s in reference.signals} >= {drift.P_URGENT, *(drift.IMAGE + k for k in drift.GRAY_STATISTICS)}
    assert reference.n == m.provenance.split.val_images
    template = drift.template_of(reference)
    sample = films["samples"][0]
    export_side = drift.statistics_of(to_model_input(read_as_served(sample.path, m), m.input), m.input, template)
    device_side = {k[len(drift.IMAGE):]: v for k, v in films["unchanged"][0].items() if k.startswith(drift.IMAGE)}
    assert export_side.keys() == device_side.keys()
    assert all(abs(export_side[k] - device_side[k]) < 1e-4 for k in export_side)
    inverted = {k: v for k, v in films["inverted"][0].items()}
    assert inverted[drift.IMAGE + "layout"] < -0.5 < 0.5 < device_side["layout"]


def test_the_reference_takes_the_served_variants_own_model_scores(monitored_chest, films):
    """The INT8 graph the kiosk serves computes refusal scores a little apart from the FP32 graph's over
    their whole range (its gate holds the decisions at the thresholds, not every score): the bundle's
    FP32 reference would see a shift that is only the variant's. Each variant ships its own
    model-score signals on the same images, and the monitor compares the kiosk with those."""
    m = load_bundle(monitored_chest).manifest
    served = m.variant("int8", "cpu")
    assert m.variant("fp32").monitoring is None and {s.name for s in served.monitoring} == {
        drift.P_URGENT, *(drift.REFUSAL + c.name for c in m.refusal.checks)}
    own = films["reference"]
    assert own.data.endswith("model scores by the int8 variant") and own.signal("image.edges") == m.monitoring.signal(
        "image.edges")
    name = drift.REFUSAL + "density"
    values = np.array([f[name] for f in films["unchanged"]])

    def shares(signal: DriftSignal) -> np.ndarray:
        return np.bincount([drift.bin_of(signal, v) for v in values], minlength=len(signal.edges) + 1) / len(values)

    assert shares(own.signal(name)).min() > 0.04 and shares(own.signal(name)).max() < 0.17  # deciles, as on validation
    assert shares(m.monitoring.signal(name))[0] < 0.05  # the FP32 graph's lowest decile: the INT8 scores sit higher


def test_unchanged_films_keep_ok_and_processed_or_inverted_ones_drift(films):
    rng = np.random.default_rng(1)
    unchanged = [films["unchanged"][i] for i in rng.integers(0, FILMS, 400)]
    states = replay(films["reference"], unchanged)
    assert {s for s, _ in states[60:]} <= {OK, WATCH} and [s for s, _ in states[60:]].count(OK) > 300
    for kind in ("inverted", "gamma"):
        changed = unchanged[:150] + [films[kind][i] for i in rng.integers(0, FILMS, 120)]
        states = replay(films["reference"], changed)
        assert states[149][0] == OK, kind
        first = next(i for i, (s, _) in enumerate(states) if s == DRIFT)
        assert first - 150 <= 120 and states[first][1] == "images", (kind, first, states[first])


@pytest.mark.parametrize("share", [0.97, 0.4])
def test_a_season_of_pneumonia_is_told_apart_from_a_change_in_the_images(films, share):
    rng = np.random.default_rng(2)
    urgent, other = np.flatnonzero(films["urgent"]), np.flatnonzero(~films["urgent"])
    picks = np.where(rng.random(1200) < share, rng.choice(urgent, 1200), rng.choice(other, 1200))
    states = replay(films["reference"], [films["unchanged"][i] for i in picks])
    assert DRIFT not in {s for s, _ in states}
    assert (WATCH, "prevalence") in states[100:]


def test_the_monitor_needs_studies_and_says_what_differs(films):
    window, tracker = Window(100), Tracker(min_studies=50, confirm=5)
    window.use(films["reference"])
    for s in films["inverted"][:49]:
        window.add(s)
        assert not tracker.update(len(window), window.verdict())
    window.add(films["inverted"][49])
    assert tracker.update(50, window.verdict()) and tracker.state == DRIFT  # leaving collecting needs no confirmation
    words = " ".join(tracker.verdict.words())
    assert "correlation with the reference's mean image" in words and "MONOCHROME1" in words


def test_a_reference_is_refused_when_its_bins_do_not_add_up():
    good = {"name": "p_urgent", "edges": [0.2, 0.5], "urgent": [1, 2, 3], "other": [3, 2, 1]}
    DriftSignal.model_validate(good)
    for bad in ({"edges": [0.5, 0.2]}, {"urgent": [1, 2]}, {"other": [0, 0, 0]}, {"name": "P urgent"}):
        with pytest.raises(ValidationError):
            DriftSignal.model_validate({**good, **bad})
    with pytest.raises(ValidationError, match="template needs 4 values"):
        MonitoringReference(data="x", statistics_version=1, template_side=2, template=[0.0] * 3,
                            signals=[DriftSignal.model_validate(good)])


def test_refusal_scores_are_signals_in_the_reference_and_on_the_device(tmp_path, chest_cases):
    """A bundle with a refusal check ships that check's validation scores in its reference (the one
    function export calls), and the device watches the same score of every study, live or rebuilt from
    the store's saved result."""
    from tiny_bundle import make_tiny_bundle

    from device.site.signals import signals_of_document
    from models.training.monitoring import add_monitoring_reference

    root = make_tiny_bundle(tmp_path / "tiny", refusal=True)
    samples = [s for s in chest_cases["samples"] if s.label == 0][:40] + \
        [s for s in chest_cases["samples"] if s.label == 1][:40]
    reference = add_monitoring_reference(root, samples, "validation (test)")
    bundle = load_bundle(root)
    assert bundle.manifest.monitoring == reference and reference.n == 80
    name = drift.REFUSAL + bundle.manifest.refusal.checks[0].name
    assert reference.signal(name) is not None and drift.describe(name) == "refusal score 'brightness_distance'"
    triager = Triager(bundle, "onnxruntime", "fp32", threads=1)
    try:
        result, _ = triager.triage_file(samples[0].path)
    finally:
        triager.close()
    live = signals_of(result)
    assert live[name] == result.refusal.checks[0].value
    saved = signals_of_document(result.as_json())
    assert saved.keys() == live.keys() and all(abs(saved[k] - live[k]) < 1e-5 for k in live)
