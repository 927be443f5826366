"""The exams, by name: the one place that knows which exams exist.

An exam is a package under models/training/ whose `exam.py` defines ``RECIPE`` (a
models.training.recipe.Recipe); the registry finds every such package, so adding an exam adds no
line anywhere else. `bedside train --exam`, `bedside export`, the ensemble command and the
optimizer's split redraw all look exams up here, and refuse an unknown one by name.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from pathlib import Path

from models.training.recipe import Recipe

# The exam `bedside train` trains without --exam, and that of checkpoints which name none (written
# before checkpoints recorded their exam).
DEFAULT_EXAM = "chest-xray-pneumonia"
_PACKAGE = "models.training"


class UnknownExam(LookupError):
    """An exam or split method that no recipe declares; the message names the known ones."""


@cache
def recipes() -> dict[str, Recipe]:
    """exam -> its recipe, for every package here with an `exam` module."""
    found: dict[str, Recipe] = {}
    folder = Path(__file__).resolve().parent
    for info in pkgutil.iter_modules([str(folder)]):
        if not info.ispkg or not (folder / info.name / "exam.py").is_file():
            continue
        recipe = importlib.import_module(f"{_PACKAGE}.{info.name}.exam").RECIPE
        if not isinstance(recipe, Recipe):
            raise TypeError(f"{_PACKAGE}.{info.name}.exam.RECIPE is not a Recipe")
        if recipe.exam in found:
            raise ValueError(f"two recipes declare the exam {recipe.exam!r}")
        found[recipe.exam] = recipe
    return dict(sorted(found.items()))


def recipe(exam: str) -> Recipe:
    try:
        return recipes()[exam]
    except KeyError:
        raise UnknownExam(f"unknown exam {exam!r} (known: {', '.join(recipes())})") from None


def recipe_of(checkpoint: dict) -> Recipe:
    """The recipe of a training or ensemble checkpoint."""
    return recipe(checkpoint.get("exam", DEFAULT_EXAM))


def recipe_for_split(method: str) -> Recipe:
    """The recipe whose split a bundle records (DataSplit.method): the one that can redraw it."""
    for r in recipes().values():
        if r.split_method == method:
            return r
    known = ", ".join(f"{r.split_method} ({r.exam})" for r in recipes().values())
    raise UnknownExam(f"unknown split method {method!r}: no exam draws it (known: {known})")
