"""The model bundle: a directory of ONNX files plus a validated ``manifest.json``.

The bundle is the one contract between the floors: training writes it, the optimizer adds
variants to it, the device loads it. Everything the device needs to run a model correctly
(input contract, triage policy, quality policy, labels) ships inside it, so nothing in
device/ knows about a particular model.

Loading never imports torch: this module depends on pydantic, numpy and the standard library only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Literal

import numpy as np
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from models import atomic

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"


class BundleError(Exception):
    """A bundle that cannot be used: missing, malformed, or tampered with."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DicomHandling(_Strict):
    """How DICOM pixel data is turned into the image the model expects."""

    modalities: list[str] = Field(
        description="DICOM Modality values this model was trained for; others are UNGRADABLE"
    )
    body_parts: list[str] = Field(
        default=[],
        description="DICOM BodyPartExamined values this model grades; a file naming another part is "
        "UNGRADABLE (empty: any; files without the attribute are graded)",
    )
    monochrome1: Literal["invert"] = "invert"
    value_transform: Literal["modality_lut_then_voi_or_window"] = "modality_lut_then_voi_or_window"
    multiframe: Literal["middle_frame"] = "middle_frame"


class InputContract(_Strict):
    """The preprocessing that ships with the weights (cf. timm's PretrainedCfg)."""

    tensor_name: str
    layout: Literal["NCHW"] = "NCHW"
    dtype: Literal["float32"] = "float32"
    height: int = Field(gt=0, le=4096)
    width: int = Field(gt=0, le=4096)
    channels: Literal[1, 3]
    color: Literal["grayscale", "rgb"] = Field(
        description="grayscale: RGB/palette/YBR sources are converted to luma (ITU-R BT.601)"
    )
    resize: Literal["stretch"] = Field(
        description="stretch: the image is resized to height x width, aspect ratio not kept "
        "(the training images were distributed that way); see aspect_range"
    )
    aspect_range: tuple[float, float] | None = Field(
        default=None,
        description="width/height range the model was trained to be invariant to: an image inside it is "
        "stretched as it is; one outside is first centre-cropped along its longer side to the nearest "
        "bound, so no input is distorted more than training covered (None: every image is stretched)",
    )
    interpolation: Literal["area"] = Field(
        default="area",
        description="area when shrinking (no aliasing); an image smaller than the input on a side is "
        "enlarged bilinearly (such images fail the quality policy's min_side_px anyway)",
    )
    scale: Literal["unit"] = Field(
        default="unit",
        description="unit: 8-bit values / 255; deeper data is mapped to [0, 1] by its DICOM VOI LUT or "
        "window (as a viewer shows it), or min-max scaled where it has none; 16-bit rasters / 65535",
    )
    mean: list[float]
    std: list[float]
    dicom: DicomHandling

    @model_validator(mode="after")
    def _per_channel(self) -> "InputContract":
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError("mean and std need one value per channel")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be positive")
        if self.aspect_range is not None and not 0 < self.aspect_range[0] < self.aspect_range[1]:
            raise ValueError("aspect_range must be (low, high) with 0 < low < high")
        return self


class Outputs(_Strict):
    logits: str
    cam: str | None = Field(
        default=None, description="class-activation map output, shape (N, classes, h, w)"
    )


class OperatingPoint(_Strict):
    threshold: float = Field(ge=0.0, le=1.0)
    sensitivity: float = Field(ge=0.0, le=1.0)
    specificity: float = Field(ge=0.0, le=1.0)
    chosen_on: str = Field(description="which data the threshold was chosen on")
    method: str = Field(description="how the threshold was chosen, in one sentence")


class TriagePolicy(_Strict):
    """P(urgent) >= threshold -> URGENT, else ROUTINE; failed quality -> UNGRADABLE.

    P(urgent) combines the softmax probabilities of `urgent_labels` (their sum: the probability
    that the image shows any of them), so a binary exam and a multi-class one with an urgent group
    follow the same rule, stated as data.
    """

    urgent_labels: list[str] = Field(min_length=1)
    combine: Literal["sum"] = "sum"
    finding: str | None = Field(
        default=None,
        description="plain words for what URGENT means on the screen, e.g. 'pneumonia' (default: the "
        "urgent label in lower case)",
    )
    operating_point: OperatingPoint
    focus_label: str | None = Field(
        default=None,
        description="the label whose sensitivity the operating point protects (reported on its own by eval "
        "and the card), when the urgent group has several",
    )

    @model_validator(mode="before")
    @classmethod
    def _single_urgent_label(cls, data: object) -> object:
        """Bundles written before multi-class exams name one `urgent_label`; read it as a group of one."""
        if isinstance(data, dict) and "urgent_label" in data:
            data = dict(data)
            if "urgent_labels" in data:
                raise ValueError("give urgent_labels or the older urgent_label, not both")
            data["urgent_labels"] = [data.pop("urgent_label")]
        return data


class QualityPolicy(_Strict):
    """Cheap checks that make a bad image UNGRADABLE instead of confidently wrong."""

    min_side_px: int = Field(ge=1, description="smaller images are too small to grade")
    min_dynamic_range: float = Field(
        ge=0.0, le=1.0, description="p99-p1 of the unit-scaled gray image; below it the image is blank"
    )
    max_clipped_fraction: float = Field(
        ge=0.0, le=1.0, description="fraction of pixels at pure black or pure white"
    )
    max_colorfulness: float | None = Field(
        default=None,
        description="mean chroma (0..1) above which a colour photo is not the expected grayscale image",
    )
    min_aspect: float = Field(gt=0.0, description="height/width (or its inverse) below this is not the expected view")
    min_colorfulness: float | None = Field(
        default=None, description="mean chroma (0..1) below which a gray image is not the expected colour photo"
    )
    min_sharpness: float | None = Field(
        default=None,
        description="variance of the Laplacian of the unit gray image (about 256 px on the long side); below "
        "it the image is too blurred to grade",
    )
    min_lesion_fraction: float | None = Field(
        default=None,
        description="share of the central half of the image whose colour must lie farther than lesion_contrast "
        "(Euclidean, unit RGB) from the surrounding skin's (the median of the outer ring); below it no lesion is "
        "in view",
    )
    lesion_contrast: float = Field(default=0.08, ge=0.0, le=1.0)
    subject: str = Field(
        default="radiograph",
        description="what the exam expects, in the words quality messages use (e.g. 'dermoscopy image')",
    )


class RefusalCheck(_Strict):
    """One statistic the model computes in the same run, one value per image: how unlike the images
    the exam judges this one is (e.g. a Mahalanobis distance on the penultimate features, or an
    in-domain head's out-of-domain score)."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$", description="e.g. 'feature_distance', 'domain_head'")
    output: str = Field(
        min_length=1,
        description="the graph output holding the score, shape (N,) or (N, 1); higher = less like the images "
        "the exam judges",
    )
    statistic: str = Field(min_length=1, description="what it computes, in words (for Details and the model card)")
    threshold: float = Field(description="the image is refused when the output is ABOVE it")

    @field_validator("threshold")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not np.isfinite(value):
            raise ValueError("a refusal threshold must be a finite number")
        return value


class RefusalMeasure(_Strict):
    """A measured refusal rate on one set of images (for the card, the README and acceptance)."""

    data: str = Field(
        min_length=1,
        description="which images, e.g. 'validation (in-distribution), second half of patients' or "
        "'negatives: rendered documents'",
    )
    n: int = Field(ge=0)
    refused: float = Field(ge=0.0, le=1.0, description="share refused")


class RefusalPolicy(_Strict):
    """When the model says "I cannot judge this": an image that passed the quality checks is UNGRADABLE
    (not in the exam's domain) when ANY check's output is above its threshold. Decided on the device
    after the model and before the triage policy (device/decision/refusal.py); shown as "This does not
    look like {subject}. {advice}"."""

    checks: list[RefusalCheck] = Field(min_length=1)
    subject: str = Field(
        min_length=1, description="what the exam judges, with its article: 'a chest X-ray', 'a dermoscopy image'"
    )
    advice: str = Field(
        min_length=1,
        description="what to do, in plain words: 'The model only judges chest radiographs (PA/AP). Check the "
        "image or choose another exam.'",
    )
    calibrated_refusal_rate: float = Field(
        ge=0.0, le=1.0, description="the in-distribution refusal rate the thresholds were set for"
    )
    calibrated_on: str = Field(min_length=1, description="which in-distribution images the thresholds were set on")
    measured: list[RefusalMeasure] = []

    @model_validator(mode="after")
    def _distinct(self) -> "RefusalPolicy":
        for what, values in (("name", [c.name for c in self.checks]), ("output", [c.output for c in self.checks])):
            if len(set(values)) != len(values):
                raise ValueError(f"refusal checks need distinct {what}s, got {values}")
        return self


class SplitMetrics(_Strict):
    split: str
    n: int
    n_positive: int
    auc: float
    accuracy: float
    sensitivity: float
    specificity: float
    threshold: float
    brier: float | None = None
    ece: float | None = None


class ClassMetrics(_Strict):
    """Multi-class metrics on one split: one-vs-rest AUC per label, the arg-max confusion matrix
    (rows: true label, columns: likeliest label), and the urgent group at the operating point."""

    split: str
    n: int
    counts: list[int]
    balanced_accuracy: float
    accuracy: float
    per_class_auc: dict[str, float]
    confusion: list[list[int]]
    urgent_auc: float
    urgent_sensitivity: float
    urgent_specificity: float
    focus_sensitivity: float | None = Field(default=None, description="share of the focus label's images referred")
    focus_specificity: float | None = Field(default=None, description="share of the other images not referred")


class DataSplit(_Strict):
    """How validation was held out, so later stages (calibration, accuracy gate) can redraw it exactly."""

    method: str = Field(
        default="by-patient",
        min_length=1,
        description="the name of the split the exam's training code drew (e.g. by-patient, by-lesion-stratified); "
        "the training floor's exam registry knows each name and redraws it (the default: manifests written "
        "before the method was recorded are the chest X-ray patient-level split)",
    )
    val_fraction: float = Field(gt=0.0, lt=1.0)
    seed: int
    train_images: int
    val_images: int


class EnsembleMember(_Strict):
    """One member of a model whose members are averaged inside its graph."""

    config: str = Field(description="the member's recipe in words: input side, widths, seed, epochs")
    input_side: int = Field(gt=0, description="the side it was trained at; it sees the input average-pooled to it")
    training_command: str
    scores: dict[str, float] = Field(
        description="its figures as it runs in the ensemble's graph (e.g. clean, stress and held-out AUC)"
    )


class Provenance(_Strict):
    dataset: str
    dataset_licence: str
    citation: str
    training_command: str
    seed: int
    code_revision: str
    trained_at: str
    training_seconds: float
    framework: str
    split: DataSplit | None = None


class AuditCheck(_Strict):
    """One metamorphic check's result: how often the triage changed, and which way P(urgent) moved."""

    name: str
    description: str
    group: str | None = Field(default=None, description="the audit group it was scored on (None: every image)")
    n: int = Field(ge=0)
    flip_rate: float = Field(ge=0.0, le=1.0)
    flip_rate_positive: float | None = Field(default=None, description="among images of the urgent class")
    flip_rate_negative: float | None = Field(default=None, description="among the other images")
    mean_delta: float = Field(description="mean change of P(urgent) (after - before)")


class AuditGroup(_Strict):
    """The hardest acquisition group, on which some checks are also scored by themselves: a model can
    flip few images overall and many of the group a new site resembles."""

    name: str = Field(min_length=1, description="plain words, e.g. 'NORMAL2 normals'")
    file_pattern: str = Field(description="regular expression searched in each file's name")
    label: str = Field(description="the label of the group's images; files of other labels are not in it")
    checks: list[str] = Field(min_length=1, description="the checks scored on the group (each one of the policy's)")

    @field_validator("file_pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"{value!r} is not a regular expression: {exc}") from None
        return value

    def contains(self, file_name: str, label: str) -> bool:
        return label == self.label and re.search(self.file_pattern, file_name) is not None


class AuditPolicy(_Strict):
    """The shortcut audits every variant of this bundle passed (see models/audit.py), and their limit:
    every check's flip rate over all the images, and the group's checks over the group's images."""

    max_flip_rate: float = Field(ge=0.0, le=1.0)
    checks: list[str] = Field(min_length=1)
    data: str = Field(description="the images the audits ran on")
    group: AuditGroup | None = None

    @model_validator(mode="after")
    def _group_checks_are_policy_checks(self) -> "AuditPolicy":
        if self.group is not None and set(self.group.checks) - set(self.checks):
            raise ValueError(f"audit group checks {sorted(set(self.group.checks) - set(self.checks))} are not "
                             f"among the policy's checks {self.checks}")
        return self


class Subgroup(_Strict):
    name: str
    file_pattern: str = Field(description="regular expression searched in each file's name")


class EvaluationPolicy(_Strict):
    """How `bedside eval` groups a labelled folder of this exam's images (data, not code)."""

    patient_pattern: str | None = Field(
        default=None,
        description="regular expression whose first group, matched at the start of a file name, is the "
        "patient id (confidence intervals resample patients); files it does not match are their own patient",
    )
    subgroups: list[Subgroup] = []
    aspect_buckets: list[float] = Field(
        default=[], description="edges on each image's width/height as received, for per-aspect metrics"
    )

    def patient_of(self, file_name: str) -> str:
        """The patient id the pattern finds at the start of a file name; the name itself otherwise."""
        match = re.match(self.patient_pattern, file_name) if self.patient_pattern else None
        return match.group(1) if match else file_name

    def groups(self, file_names: list[str], aspects: list[float]) -> dict[str, np.ndarray]:
        """group name -> which files are in it: each declared subgroup (by file name), each aspect bucket."""
        masks = {g.name: np.array([re.search(g.file_pattern, n) is not None for n in file_names], dtype=bool)
                 for g in self.subgroups}
        edges = [0.0, *self.aspect_buckets, float("inf")]
        values = np.asarray(aspects, dtype=np.float64)
        for lo, hi in zip(edges[:-1], edges[1:]):
            name = f"aspect >= {lo:g}" if hi == float("inf") else f"aspect < {hi:g}" if lo == 0 else f"aspect {lo:g}-{hi:g}"
            masks[name] = (values >= lo) & (values < hi)
        return masks


class DriftSignal(_Strict):
    """One signal's distribution on the reference images, binned: the drift monitor compares the
    same signal over a kiosk's recent studies with it (device/site/drift.py). Counted apart for
    the images of the urgent group and the others, so that a change in how many urgent cases come
    (a pneumonia season) is told apart from a change in the images themselves."""

    name: str = Field(pattern=r"^[a-z0-9_]+(\.[a-z0-9_-]+)?$",
                      description="p_urgent, image.<statistic> (models/drift.py) or refusal.<check name>")
    edges: list[float] = Field(min_length=1, description="inner bin edges, increasing: a value v falls in bin "
                               "i where edges[i-1] <= v < edges[i] (the pooled reference's quantiles)")
    urgent: list[int] = Field(description="reference images of the urgent group per bin (len(edges) + 1)")
    other: list[int] = Field(description="the other reference images per bin")

    @model_validator(mode="after")
    def _bins(self) -> "DriftSignal":
        if any(not np.isfinite(e) for e in self.edges) or any(b <= a for a, b in zip(self.edges, self.edges[1:])):
            raise ValueError(f"{self.name}: edges must be finite and strictly increasing")
        bins = len(self.edges) + 1
        if len(self.urgent) != bins or len(self.other) != bins:
            raise ValueError(f"{self.name}: urgent and other need one count per bin ({bins})")
        if min(self.urgent + self.other) < 0 or not sum(self.urgent) or not sum(self.other):
            raise ValueError(f"{self.name}: counts must be >= 0, with images of both groups")
        return self


class MonitoringReference(_Strict):
    """What the drift monitor compares a kiosk's recent studies with until the site has accepted the
    model (then with the acceptance sample, made by the same functions): the distributions of
    P(urgent), of the refusal checks' scores where the bundle has them, and of a few image
    statistics, on the bundle's validation images through the device's preprocessing
    (models/drift.py computes them, at export and on the device alike)."""

    data: str = Field(min_length=1, description="which images, e.g. 'validation (patient-level, n=862)'")
    statistics_version: int = Field(ge=1, description="the definition of the image statistics (models/drift.py "
                                    "STATISTICS_VERSION); a device with another one leaves them out")
    template_side: int = Field(gt=0, le=64)
    template: list[float] | None = Field(
        default=None, description="the mean gray model input at template_side x template_side, row-major: "
        "image.layout is each image's correlation with it (None: no layout signal)")
    signals: list[DriftSignal] = Field(min_length=1)

    @model_validator(mode="after")
    def _shape(self) -> "MonitoringReference":
        if self.template is not None and len(self.template) != self.template_side ** 2:
            raise ValueError(f"template needs {self.template_side ** 2} values (template_side squared)")
        names = [s.name for s in self.signals]
        if len(set(names)) != len(names):
            raise ValueError(f"monitoring signals need distinct names, got {names}")
        return self

    def signal(self, name: str) -> DriftSignal | None:
        return next((s for s in self.signals if s.name == name), None)

    @property
    def n(self) -> int:
        return sum(self.signals[0].urgent) + sum(self.signals[0].other)

    def as_served(self, variant: "Variant | None") -> "MonitoringReference":
        """This reference as the variant that serves computes it: its own model-score signals
        (``Variant.monitoring``) in place of the FP32 graph's of the same name. An INT8 graph's
        refusal scores sit a little apart from FP32's over their whole range (the gate holds the
        decisions at the thresholds, not every score), and a monitor comparing one with the other
        sees a shift that is only the variant's."""
        own = {s.name: s for s in (variant.monitoring or [])} if variant is not None else {}
        if not own:
            return self
        signals = [own.get(s.name, s) for s in self.signals]
        return self.model_copy(update={"signals": signals,
                                       "data": f"{self.data}; model scores by the {variant.precision} variant"})


class AcceptanceRule(_Strict):
    """How a site's own labelled cases choose its operating point (`bedside acceptance run`): the
    highest threshold whose sensitivity on those cases is at least ``sensitivity_floor + margin``
    (the margin allows for the sample's own error: the floor is what the site must keep on the
    cases after it). Refused, with the reason, when the cases are fewer than ``min_positive`` /
    ``min_negative``, or when meeting the floor leaves a specificity below ``min_specificity``."""

    on: Literal["urgent_group", "focus_label"] = Field(
        default="urgent_group",
        description="whose sensitivity: the urgent group's (P(urgent) >= t), or the focus label's images referred")
    sensitivity_floor: float = Field(gt=0.0, lt=1.0)
    margin: float = Field(default=0.015, ge=0.0, lt=0.5)
    min_positive: int = Field(default=50, ge=1, description="fewest cases of the positive class")
    min_negative: int = Field(default=50, ge=1, description="fewest other cases")
    min_specificity: float = Field(default=0.5, ge=0.0, lt=1.0,
                                   description="below this the floor cannot be met usefully: refused")

    @model_validator(mode="after")
    def _reachable(self) -> "AcceptanceRule":
        if self.sensitivity_floor + self.margin >= 1.0:
            raise ValueError("sensitivity_floor + margin must stay below 1")
        return self


class FileEntry(_Strict):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)


Target = Literal["cpu", "gpu"]


class Variant(_Strict):
    """One runnable form of the model. Training ships fp32; optimize/ adds more.

    A precision may have one variant per target: the INT8 graph TensorRT needs (symmetric Q/DQ)
    is not necessarily the fastest one on ONNX Runtime's CPU kernels.
    """

    precision: Literal["fp32", "fp16", "int8"]
    file: str
    targets: list[Target] = ["cpu", "gpu"]
    notes: str = ""
    gate: dict[str, float | int | str | bool] | None = None
    audit: list[AuditCheck] | None = None
    monitoring: list[DriftSignal] | None = Field(
        default=None, description="the monitoring reference's model-score signals (P(urgent), refusal scores) "
        "as this variant computes them on the reference's images (MonitoringReference.as_served)")


class Manifest(_Strict):
    schema_version: Literal[1] = SCHEMA_VERSION
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    version: str = Field(pattern=r"^\d+\.\d+\.\d+$")
    title: str
    intended_use: str
    research_only: bool
    disclaimer: str | None = None
    task: Literal["binary-classification", "multi-class-classification"]
    labels: list[str] = Field(min_length=2)
    label_names: dict[str, str] = Field(default={}, description="plain words for a label on screens (e.g. mel: melanoma)")
    input: InputContract
    outputs: Outputs
    policy: TriagePolicy
    quality: QualityPolicy
    refusal: RefusalPolicy | None = Field(
        default=None,
        description="the model's own check of whether it may judge an image (None: quality checks only)",
    )
    calibration: dict[str, float | str] = Field(
        description="how logits were calibrated; the exported graph already includes it"
    )
    metrics: list[SplitMetrics]
    class_metrics: list[ClassMetrics] = Field(default=[], description="multi-class bundles: per-label metrics")
    ensemble: list[EnsembleMember] = Field(
        default=[], description="the members averaged inside the graph (empty: one model); metrics are the ensemble's"
    )
    provenance: Provenance
    audit: AuditPolicy | None = None
    evaluation: EvaluationPolicy | None = None
    monitoring: MonitoringReference | None = Field(
        default=None,
        description="the validation distributions the drift monitor compares recent studies with (None: "
        "monitored against the site's acceptance sample only, once accepted)",
    )
    acceptance: AcceptanceRule | None = Field(
        default=None,
        description="how a site's labelled cases choose its operating point (None: the default, acceptance_rule())",
    )
    golden: str | None = Field(
        default=None,
        description="an .npz in the bundle: `inputs` (N, C, H, W float16), real validation images as model "
        "inputs, and `probabilities` (N, labels), what the FP32 model gave on them; the device's self-test "
        "checks every variant against these stored outputs",
    )
    variants: list[Variant] = Field(min_length=1)
    files: dict[str, FileEntry]
    appliance: str | None = Field(
        default=None,
        description="the appliance versions this bundle runs on, as a PEP 440 specifier such as '>=0.1,<1' "
        "(None: any); an appliance outside the range refuses to install the bundle",
    )

    @field_validator("appliance")
    @classmethod
    def _specifier(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                SpecifierSet(value)
            except InvalidSpecifier:
                raise ValueError(f"{value!r} is not a version range such as '>=0.1,<1'") from None
        return value

    def runs_on(self, appliance_version: str) -> bool:
        """Whether this bundle may be installed on an appliance of that version."""
        return self.appliance is None or SpecifierSet(self.appliance).contains(appliance_version, prereleases=True)

    @model_validator(mode="after")
    def _consistent(self) -> "Manifest":
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("labels must be unique")
        unknown = [u for u in self.policy.urgent_labels if u not in self.labels]
        if unknown or len(set(self.policy.urgent_labels)) != len(self.policy.urgent_labels):
            raise ValueError(f"policy.urgent_labels {self.policy.urgent_labels} must be distinct labels of {self.labels}")
        if self.policy.focus_label is not None and self.policy.focus_label not in self.policy.urgent_labels:
            raise ValueError(f"policy.focus_label {self.policy.focus_label!r} is not one of the urgent labels")
        if len(self.policy.urgent_labels) == len(self.labels):
            raise ValueError("policy.urgent_labels cannot be every label: nothing would be ROUTINE")
        if self.task == "binary-classification" and len(self.labels) != 2:
            raise ValueError("a binary-classification bundle has exactly two labels")
        if set(self.label_names) - set(self.labels):
            raise ValueError(f"label_names names labels the bundle does not have: {sorted(set(self.label_names) - set(self.labels))}")
        if self.research_only and not self.disclaimer:
            raise ValueError("a research-only model needs a disclaimer (e.g. 'not for clinical use')")
        slots = [(v.precision, t) for v in self.variants for t in v.targets]
        if len(set(slots)) != len(slots):
            raise ValueError("at most one variant per precision and target")
        for name in self.files:
            if Path(name).is_absolute() or ".." in Path(name).parts:
                raise ValueError(f"file {name!r} must be a plain path inside the bundle")
        for v in self.variants:
            if v.file not in self.files:
                raise ValueError(f"variant {v.precision} file {v.file!r} is not listed in files")
        if self.audit is not None and self.audit.group is not None and self.audit.group.label not in self.labels:
            raise ValueError(f"audit group label {self.audit.group.label!r} is not one of the labels {self.labels}")
        if self.acceptance is not None and self.acceptance.on == "focus_label" and self.policy.focus_label is None:
            raise ValueError("acceptance.on is focus_label but the policy names no focus_label")
        if self.golden is not None and self.golden not in self.files:
            raise ValueError(f"golden file {self.golden!r} is not listed in files")
        if self.refusal is not None:
            taken = {self.outputs.logits, self.outputs.cam}
            clashing = [c.output for c in self.refusal.checks if c.output in taken]
            if clashing:
                raise ValueError(f"refusal check outputs {clashing} must differ from the logits and cam outputs")
        return self

    @property
    def output_names(self) -> tuple[str, ...]:
        """Every graph output the manifest names: logits, the CAM (if any), each refusal check's output."""
        names = (self.outputs.logits,) + ((self.outputs.cam,) if self.outputs.cam else ())
        return names + tuple(c.output for c in self.refusal.checks) if self.refusal else names

    def variant(self, precision: str, target: str = "cpu") -> Variant:
        for v in self.variants:
            if v.precision == precision and target in v.targets:
                return v
        have = ", ".join(f"{v.precision} ({'/'.join(v.targets)})" for v in self.variants)
        raise BundleError(f"bundle {self.id} has no {precision} variant for {target} (it has: {have})")

    @property
    def urgent_indices(self) -> list[int]:
        return [self.labels.index(u) for u in self.policy.urgent_labels]

    def label_name(self, label: str) -> str:
        return self.label_names.get(label, label)

    @property
    def finding(self) -> str:
        """What URGENT means, in words for the screen."""
        return self.policy.finding or self.policy.urgent_labels[0].lower()

    def acceptance_rule(self) -> AcceptanceRule:
        """The declared rule, else the default: the lowest sensitivity the bundle states at its own
        operating point (over its metrics' splits), rounded down to a hundredth, less 0.01, as the
        floor; the other fields at their defaults. The chest bundle 2.0.0 thus gets a floor of 0.95."""
        if self.acceptance is not None:
            return self.acceptance
        stated = [m.sensitivity for m in self.metrics] or [self.policy.operating_point.sensitivity]
        floor = max(0.5, np.floor(min(stated) * 100) / 100 - 0.01)
        return AcceptanceRule(on="urgent_group", sensitivity_floor=round(float(floor), 2))

    def urgent_probability(self, probabilities: np.ndarray) -> np.ndarray:
        """P(urgent) from softmax probabilities (..., labels), as the policy combines them."""
        return np.asarray(probabilities)[..., self.urgent_indices].sum(axis=-1)


class Bundle:
    """A loaded, verified bundle: its directory and its manifest."""

    def __init__(self, root: Path, manifest: Manifest):
        self.root = root
        self.manifest = manifest
        self._sha256: str | None = None

    def path_of(self, name: str) -> Path:
        return self.root / name

    def sha256_of(self, name: str) -> str:
        return self.manifest.files[name].sha256

    @property
    def sha256(self) -> str:
        """The bundle's identity: the sha256 of its manifest file, which names every file by its own
        sha256 (what a signature covers too). Read once; a loaded bundle's files do not change."""
        if self._sha256 is None:
            self._sha256 = sha256_file(self.root / MANIFEST_NAME)
        return self._sha256

    def __repr__(self) -> str:
        return f"Bundle({self.manifest.id}@{self.manifest.version}, {self.root})"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def describe_validation_error(exc: ValidationError) -> str:
    """One line naming each offending key (dotted path) and what is wrong with it."""
    return "; ".join(f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}" for err in exc.errors())


def read_manifest(root: Path) -> Manifest:
    path = Path(root) / MANIFEST_NAME
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BundleError(f"{root}: not a model bundle (no {MANIFEST_NAME})") from None
    except OSError as exc:
        raise BundleError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path}: not valid JSON: {exc}") from None
    version = data.get("schema_version") if isinstance(data, dict) else None
    if version != SCHEMA_VERSION:
        raise BundleError(
            f"{path}: schema_version {version!r} is not supported (this build reads {SCHEMA_VERSION})"
        )
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise BundleError(f"{path}: invalid manifest: {describe_validation_error(exc)}") from None


def verify_files(root: Path, manifest: Manifest) -> None:
    """Refuse a bundle whose files do not match the hashes its manifest records."""
    for name, entry in manifest.files.items():
        path = Path(root) / name
        if not path.is_file():
            raise BundleError(f"{root}: file {name} listed in the manifest is missing")
        actual = sha256_file(path)
        if actual != entry.sha256:
            raise BundleError(
                f"{root}: file {name} does not match the manifest (sha256 {actual[:12]}..., "
                f"expected {entry.sha256[:12]}...): refusing to load a modified model"
            )


def load_bundle(root: str | os.PathLike[str], verify: bool = True) -> Bundle:
    root = Path(root)
    if not root.is_dir():
        raise BundleError(f"{root}: bundle directory not found")
    manifest = read_manifest(root)
    if verify:
        verify_files(root, manifest)
    return Bundle(root, manifest)


def file_entry(path: Path) -> FileEntry:
    return FileEntry(sha256=sha256_file(path), bytes=path.stat().st_size)


def write_manifest(root: Path, manifest: Manifest) -> Path:
    """Written atomically, so a crash never leaves a half-written manifest beside good files."""
    text = json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=False) + "\n"
    return atomic.write_bytes(Path(root) / MANIFEST_NAME, text.encode("utf-8"))


def default_bundles_dir() -> Path:
    """Bundles shipped with the package (models/bundles/)."""
    return Path(__file__).resolve().parent / "bundles"


def find_bundles(directory: Path | None = None) -> list[Path]:
    directory = directory or default_bundles_dir()
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if (p / MANIFEST_NAME).is_file())
