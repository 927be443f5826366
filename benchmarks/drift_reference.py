"""A shipped bundle with its drift monitor's reference, for the benchmarks and the tests until the
shipped bundles are exported again (`bedside export` writes the reference now): a copy of the bundle
whose manifest gains ``monitoring``, computed from its validation images by the function the export
uses (models/training/monitoring.py). The shipped bundle itself is never changed."""

from __future__ import annotations

import shutil
from pathlib import Path

from models.bundle import Bundle, load_bundle
from models.training.monitoring import add_monitoring_reference
from models.training.registry import recipe_for_split


def validation_samples(bundle: Bundle, datasets: Path) -> list:
    """The bundle's validation images, redrawn from its recorded split in its exam's folder under ``datasets``."""
    m = bundle.manifest
    recipe = recipe_for_split(m.provenance.split.method)
    default = recipe.default_data_dir()  # <datasets>/<exam's folder>/train
    _, val = recipe.redraw_split(datasets / default.relative_to(default.parents[1]), m.provenance.split)
    return val


def with_reference(source: Path, out: Path, datasets: Path) -> Path:
    """A copy of the bundle at ``source`` in ``out``, its manifest carrying the monitoring reference."""
    m = load_bundle(source).manifest
    shutil.copytree(source, out)
    add_monitoring_reference(out, validation_samples(load_bundle(out), datasets),
                             m.metrics[0].split if m.metrics else "validation")
    return out
