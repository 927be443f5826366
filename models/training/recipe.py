"""An exam recipe: what the shared training machinery needs to know about one exam.

The machinery (models.training.bundle_writer for export, audits, golden inputs, manifest and card;
models.training.ensemble for ensembles; optimize.heldout for the split redraw; `bedside train` and
`bedside export`) is written once and asks the exam's recipe for everything that differs between
exams: its data and split, input contract, trainer (with its own options and augmentation), identity
text, quality and evaluation policy, audit checks, scoring rule and card. Each exam's package under
models/training/ holds its recipe in `exam.py` as ``RECIPE``; models.training.registry finds them.
A recipe module imports its trainer, scoring and card only when they are used: the optimizer
looks recipes up on a workstation that may have no torch (the `optimize` extra).
"""

from __future__ import annotations

import argparse
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from models.bundle import AcceptanceRule, AuditGroup, DataSplit, EvaluationPolicy, InputContract, QualityPolicy
from models.training.images import Sample

if TYPE_CHECKING:  # the declarative part is read without torch (the optimizer redraws splits here)
    import numpy as np
    import torch

# Model inputs (N, C, size, size) -> logits (N, labels), as numpy: what the scoring rule judges.
Predictor = Callable[["torch.Tensor"], "np.ndarray"]


@dataclass(frozen=True)
class Identity:
    """What a bundle of this exam says about itself, in its manifest and card."""

    title: str
    dataset: str
    licence: str
    citation: str
    intended_use: str
    disclaimer: str
    label_names: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Exported:
    """What the card of a freshly exported model is written from."""

    checkpoint: dict
    results: Any  # the recipe's own results (see Recipe.results)
    checks: list  # AuditCheck, overall and on the audit group
    onnx_diff: dict[str, float]
    group_shift: list[dict]  # see bundle_writer.group_shift_folds
    group_shift_note: str = ""


class Recipe(ABC):
    """One exam. Class attributes declare it; the methods are its data, training, scoring and text."""

    exam: str  # the bundle id, the value of `bedside train --exam`
    version: str  # the bundle version `bedside train` and `export` write by default
    identity: Identity
    task: str  # binary-classification | multi-class-classification
    labels: tuple[str, ...]
    urgent: tuple[str, ...]
    split_method: str  # the name recorded in the manifest; redraw_split redraws it
    quality: QualityPolicy
    evaluation: EvaluationPolicy
    audit_checks: tuple[str, ...]
    audit_group: AuditGroup | None = None
    golden_per_class: int = 3
    acceptance: AcceptanceRule | None = None  # how a site chooses its own operating point (None: the default)
    refusal_subject: str  # "a chest X-ray": "This does not look like {subject}."
    refusal_advice: str  # what to do instead, in plain words
    # The refusal check reads only the ensemble members that see the graph's full input side (see
    # Ensemble's head_members); False: every member.
    refusal_reads_full_side_only: bool = False

    # --- data ---------------------------------------------------------------------------------
    @abstractmethod
    def default_data_dir(self) -> Path:
        """The training folder in the shared datasets."""

    @abstractmethod
    def input_contract(self, size: int, tensor_name: str = "image") -> InputContract:
        """The preprocessing that ships with a model of this side."""

    @abstractmethod
    def redraw_split(self, data_dir: Path, split: DataSplit) -> tuple[list[Sample], list[Sample]]:
        """(training, validation) samples of a bundle's recorded split, from its training folder."""

    @abstractmethod
    def validation_samples(self, checkpoint: dict, data_dir: Path | None) -> list[Sample]:
        """The validation samples of a checkpoint's run, redrawn exactly (held-out groups, limits)."""

    @abstractmethod
    def list_samples(self, data_dir: Path) -> list[Sample]:
        """Every image of a training folder (the other exam's refusal check draws negatives from them)."""

    @abstractmethod
    def refusal_inputs(self, checkpoint: dict, size: int, data_dir: Path | None, other: list) -> Any:
        """The sets the refusal check is fitted, calibrated and measured on
        (models.training.refusal_policy.RefusalInputs); `other`: the other exams' decoded images."""

    # --- training -----------------------------------------------------------------------------
    @abstractmethod
    def add_train_arguments(self, parser: argparse.ArgumentParser) -> None:
        """The trainer's options (`bedside train --exam EXAM --help`)."""

    @abstractmethod
    def train(self, args: argparse.Namespace) -> tuple[dict, Path]:
        """Train, calibrate and choose the operating point; the checkpoint and where it was saved."""

    # --- scoring ------------------------------------------------------------------------------
    @abstractmethod
    def score(self, predictors: dict[str, Predictor], checkpoint: dict, size: int,
              data_dir: Path | None) -> dict[str, dict]:
        """Score each predictor on the validation of `checkpoint`'s run at input side `size` exactly
        as training scores its model: temperature fitted, threshold by the exam's rule, every metric.
        Returns, per predictor, the checkpoint fields that follow from its scores."""

    @abstractmethod
    def summary(self, fields: dict) -> dict[str, float]:
        """A scored model's headline figures (column -> value) for the members table of a card."""

    # --- the bundle ---------------------------------------------------------------------------
    @abstractmethod
    def validation_name(self, checkpoint: dict) -> str:
        """The words for the clean validation a bundle's audits and calibration refer to."""

    @abstractmethod
    def results(self, checkpoint: dict, model: torch.nn.Module, val: list[Sample], data_dir: Path | None) -> Any:
        """The figures the manifest and card report, of the exported model itself."""

    @abstractmethod
    def manifest_fields(self, checkpoint: dict, results: Any) -> dict:
        """The manifest's exam-specific fields: policy, calibration, metrics (and class_metrics)."""

    @abstractmethod
    def plots(self, checkpoint: dict, results: Any, out: Path) -> list[str]:
        """Write the card's figures into `out`; their file names."""

    @abstractmethod
    def card(self, exported: Exported) -> str:
        """MODEL_CARD.md."""
