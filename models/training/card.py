"""Write a bundle from a training checkpoint: model.onnx, roc.png, MODEL_CARD.md, manifest.json."""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from models import audit
from models.training import augment as aug
from models.bundle import (
    AuditCheck,
    AuditPolicy,
    DataSplit,
    EvaluationPolicy,
    Manifest,
    OperatingPoint,
    Outputs,
    Provenance,
    QualityPolicy,
    SplitMetrics,
    Subgroup,
    TriagePolicy,
    Variant,
    file_entry,
    load_bundle,
    write_manifest,
)
from models.training.data import (
    ASPECT_RANGE,
    LABELS,
    Sample,
    checkpoint_split,
    decode_rgb,
    split_seed,
    input_contract,
)
from models.datasets import REPO_ROOT
from models.training.export import INPUT_NAME, OPSET, deployable_model, export_onnx, max_abs_diff, onnx_session
from models.metrics import roc_curve, softmax
from models.preprocess import to_model_input

MODEL_FILE = "model.onnx"
GOLDEN_FILE = "golden.npz"
GOLDEN_PER_CLASS = 4
ROC_FILE = "roc.png"
CARD_FILE = "MODEL_CARD.md"
DISCLAIMER = "Research use only - not for clinical diagnosis."
DATASET = ("Kermany et al. 2018 chest X-ray images (pediatric, Guangzhou Women and Children's Medical "
           "Center), Mendeley Data v2, official TRAIN split only")
CITATION = ("Kermany D, Zhang K, Goldbaum M. Labeled Optical Coherence Tomography (OCT) and Chest X-Ray "
            "Images for Classification. Mendeley Data, v2, 2018. doi:10.17632/rscbjbr9sj.2; "
            "Kermany DS et al. Identifying Medical Diagnoses and Treatable Diseases by Image-Based Deep "
            "Learning. Cell 172(5):1122-1131, 2018. doi:10.1016/j.cell.2018.02.010")
INTENDED_USE = ("Research prototype: flags frontal pediatric chest radiographs (CR/DX) that look like "
                "pneumonia for earlier review (triage ordering). It does not diagnose and does not replace "
                "a reader.")
# Chest radiographs in the training data: p99-p1 >= 0.47 and <= 29% pure black/white pixels
# (measured on every 10th train image and the full-resolution samples); limits keep a wide margin.
# Colour: every radiograph has chroma 0.00; the dermoscopy images of the skin exam go down to
# 0.049, so 0.03 sends each exam's images away from the other.
QUALITY = QualityPolicy(
    min_side_px=128, min_dynamic_range=0.25, max_clipped_fraction=0.5, max_colorfulness=0.03, min_aspect=0.5
)
# How `bedside eval` groups a folder of these images: the Kermany file names carry the patient and
# the acquisition group (two batches of normals, bacterial and viral pneumonia).
EVALUATION = EvaluationPolicy(
    patient_pattern=r"((?:NORMAL2-)?IM-\d+|person\d+)",
    subgroups=[Subgroup(name="normal IM-", file_pattern=r"^IM-"),
               Subgroup(name="normal NORMAL2-IM-", file_pattern=r"^NORMAL2-IM-"),
               Subgroup(name="bacterial pneumonia", file_pattern=r"_bacteria_"),
               Subgroup(name="viral pneumonia", file_pattern=r"_virus_")],
    aspect_buckets=[1.2, 1.5],
)


class AuditFailed(Exception):
    """The model flips too many triages under a shortcut audit: no bundle is written."""


def code_revision() -> str:
    """git HEAD (or "uncommitted") plus a hash of the models/ sources that actually ran."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        head = "uncommitted"
    digest = hashlib.sha256()
    models = REPO_ROOT / "models"
    for path in sorted(models.rglob("*.py")):
        digest.update(path.relative_to(models).as_posix().encode() + b"\0" + path.read_bytes())
    return f"{head} (models/**/*.py sha256 {digest.hexdigest()[:16]})"


def framework_versions() -> str:
    import onnx
    import onnxruntime

    return (f"python {platform.python_version()}, torch {torch.__version__}, onnx {onnx.__version__} "
            f"(opset {OPSET}), onnxruntime {onnxruntime.__version__}")


def plot_roc(curves: dict, threshold: float, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    for name, (y, p) in curves.items():
        y, p = np.asarray(y), np.asarray(p)
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, label=f"{name} validation (n={len(y)})")
        pred = p >= threshold
        ax.plot((pred & (y == 0)).sum() / (y == 0).sum(), (pred & (y == 1)).sum() / (y == 1).sum(), "o",
                color=ax.lines[-1].get_color())
    ax.plot([0, 1], [0, 1], ":", color="gray")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01),
           title=f"ROC, dots: threshold {threshold:.3f}")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})  # no version string: same plot, same bytes
    plt.close(fig)
    return path


def build_manifest(checkpoint: dict, bundle_id: str, version: str, files: dict,
                   checks: list[AuditCheck]) -> Manifest:
    metrics = [SplitMetrics(**m) for m in checkpoint["metrics"]]
    clean, stress = metrics[0], metrics[1]
    size = int(checkpoint["size"])
    return Manifest(
        id=bundle_id,
        version=version,
        title="Pediatric chest X-ray pneumonia triage (research)",
        intended_use=INTENDED_USE,
        research_only=True,
        disclaimer=DISCLAIMER,
        task="binary-classification",
        labels=list(LABELS),
        input=input_contract(size, INPUT_NAME),
        outputs=Outputs(logits="logits", cam="cam"),
        policy=TriagePolicy(
            urgent_labels=["PNEUMONIA"],
            finding="pneumonia",
            operating_point=OperatingPoint(
                threshold=float(checkpoint["threshold"]),
                sensitivity=stress.sensitivity,
                specificity=stress.specificity,
                chosen_on=stress.split,
                method=(f"highest threshold keeping sensitivity >= {checkpoint['target_sensitivity']:.2f} "
                        "on the pooled stress validation and >= "
                        f"{checkpoint['min_clean_sensitivity']:.2f} on the clean validation, to protect "
                        "specificity under shift" + _shift_note(checkpoint)),
            ),
        ),
        quality=QUALITY,
        calibration={
            "method": "temperature scaling, baked into the exported logits and cam",
            "temperature": float(checkpoint["temperature"]),
            "fitted_on": clean.split,
            "objective": "class-balanced NLL (50/50 prior, as in training)",
        },
        metrics=metrics,
        provenance=Provenance(
            dataset=DATASET,
            dataset_licence="CC BY 4.0",
            citation=CITATION,
            training_command=checkpoint["training_command"],
            seed=int(checkpoint["seed"]),
            code_revision=code_revision(),
            trained_at=checkpoint["trained_at"],
            training_seconds=float(checkpoint["training_seconds"]),
            framework=framework_versions(),
            split=DataSplit(val_fraction=float(checkpoint["data"]["val_fraction"]), seed=split_seed(checkpoint),
                            train_images=int(checkpoint["data"]["n_train"]),
                            val_images=int(checkpoint["data"]["n_val"])),
        ),
        audit=audit_policy(checkpoint),
        evaluation=EVALUATION,
        golden=GOLDEN_FILE,
        variants=[Variant(precision="fp32", file=MODEL_FILE, targets=["cpu", "gpu"],
                          notes="BatchNorm folded; calibration temperature baked into the head", audit=checks)],
        files=files,
    )


def audit_policy(checkpoint: dict) -> AuditPolicy:
    clean = checkpoint["metrics"][0]["split"]
    return audit.policy(clean, max_flip_rate=float(checkpoint.get("max_flip_rate", audit.MAX_FLIP_RATE)))


def redraw_validation(checkpoint: dict, data_dir: Path | None) -> list[Sample]:
    """The checkpoint's validation samples, redrawn from the training folder with the split it records."""
    data = checkpoint["data"]
    split = checkpoint_split(checkpoint, data_dir)
    if len(split.val) != int(data["n_val"]):
        raise AuditFailed(f"the data gives {len(split.val)} validation images, the checkpoint had {data['n_val']}: "
                          "not the training data, so the audits and the self-test inputs cannot be made")
    return split.val


def audit_onnx(path: Path, checkpoint: dict, val: list[Sample]) -> list[AuditCheck]:
    """The shortcut audits of an exported model on its validation images, at its threshold."""
    images = [decode_rgb(s.path) for s in val]  # as the device receives them
    positive = np.array([s.label == 1 for s in val])
    session = onnx_session(path)

    def predict(x: np.ndarray) -> np.ndarray:
        return softmax(session.run(["logits"], {INPUT_NAME: x})[0])[:, 1]

    contract = input_contract(int(checkpoint["size"]), INPUT_NAME)
    return audit.run_audit(predict, images, positive, contract, float(checkpoint["threshold"]))


def write_golden(path: Path, model_path: Path, checkpoint: dict, val: list[Sample]) -> Path:
    """Real validation images (the first few of each class) as model inputs, with the FP32 model's
    probabilities on exactly those inputs: what the device's self-test reproduces."""
    chosen = [s for label in range(len(LABELS)) for s in [v for v in val if v.label == label][:GOLDEN_PER_CLASS]]
    contract = input_contract(int(checkpoint["size"]), INPUT_NAME)
    inputs = np.stack([to_model_input(decode_rgb(s.path), contract) for s in chosen]).astype(np.float16)
    logits = onnx_session(model_path).run(["logits"], {INPUT_NAME: inputs.astype(np.float32)})[0]
    with open(path, "wb") as fh:
        np.savez_compressed(fh, inputs=inputs, probabilities=softmax(logits.astype(np.float64)))
    return path


def write_bundle(checkpoint: dict, out: Path, bundle_id: str, version: str,
                 check_inputs: torch.Tensor | None = None, data_dir: Path | None = None,
                 group_shift: list[dict] | None = None, log: Callable[[str], None] = print,
                 group_shift_note: str = "") -> Path:
    """Export, check ONNX against torch, audit, plot, write card and manifest; returns the bundle dir.

    Built in a temporary folder beside `out` and moved into place only once complete, so a refused
    or interrupted export never leaves a half-replaced bundle (`out` is replaced as a whole).
    """
    return build_in_place(out, lambda work: _write_bundle_files(
        checkpoint, work, bundle_id, version, check_inputs, data_dir, group_shift or [], log, group_shift_note))


def build_in_place(out: Path, build: Callable[[Path], None]) -> Path:
    """Run `build(folder)` in a hidden temporary folder beside `out`, then replace `out` with it as
    a whole; a refused or interrupted build leaves `out` as it was. Returns `out`."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    try:
        build(work)
        if out.exists():
            shutil.rmtree(out)
        os.replace(work, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def _write_bundle_files(checkpoint: dict, out: Path, bundle_id: str, version: str, check_inputs, data_dir,
                        group_shift: list[dict], log: Callable[[str], None], group_shift_note: str) -> None:
    size = int(checkpoint["size"])
    model = deployable_model(checkpoint)
    export_onnx(model, size, out / MODEL_FILE)
    if check_inputs is None:
        check_inputs = torch.randn(4, 1, size, size, generator=torch.Generator().manual_seed(0))
    diff = max_abs_diff(model, out / MODEL_FILE, check_inputs)
    if max(diff.values()) > 1e-3:
        raise RuntimeError(f"ONNX output differs from torch: {diff}")
    val = redraw_validation(checkpoint, data_dir)
    checks = audit_onnx(out / MODEL_FILE, checkpoint, val)
    for row in audit.table(checks):
        log(row)
    limits = audit_policy(checkpoint)
    refused = audit.failures(checks, limits)
    if refused:
        raise AuditFailed("refusing to write the bundle: " + "; ".join(refused))
    write_golden(out / GOLDEN_FILE, out / MODEL_FILE, checkpoint, val)
    plot_roc(checkpoint["curves"], float(checkpoint["threshold"]), out / ROC_FILE)
    (out / CARD_FILE).write_text(model_card(checkpoint, diff, checks, group_shift, group_shift_note), encoding="utf-8")
    files = {name: file_entry(out / name) for name in (MODEL_FILE, GOLDEN_FILE, ROC_FILE, CARD_FILE)}
    write_manifest(out, build_manifest(checkpoint, bundle_id, version, files, checks))
    load_bundle(out)  # refuse to finish with a bundle the device would reject


def _span(values: list[float]) -> str:
    return f"{min(values):.3f} - {max(values):.3f}"


def _expected_ranges(intervals: dict[str, list[float]], op: dict | None) -> str:
    """The spans the card promises: the patient bootstrap, and the group-shift runs at the chosen target."""
    parts = [f"patient-bootstrap 95% intervals: sensitivity {_span(intervals['sensitivity'])}, "
             f"specificity {_span(intervals['specificity'])}"] if {"sensitivity", "specificity"} <= set(intervals) else []
    if op:
        runs = [r for r in op["runs"] if r["target"] == op["target"]]
        parts.append(f"on groups never trained on (the group-shift runs at the chosen target): sensitivity "
                     f"{_span([r['sensitivity'] for r in runs])}, specificity {_span([r['specificity'] for r in runs])}")
    return "; ".join(parts) or "not measured"


def _shift_note(checkpoint: dict) -> str:
    op = checkpoint.get("operating_point")
    if not op:
        return ""
    return (f"; the clean target {op['target']:.2f} is the lowest that kept sensitivity >= {op['required']:.2f} on "
            "groups held out of training, on average over the group-shift runs")


def _operating_point_table(checkpoint: dict) -> str:
    op = checkpoint.get("operating_point")
    if not op:
        return "(no group-shift runs: the clean target was set by hand)"
    rows = ["| clean validation target | held out | held-out sensitivity | held-out specificity |", "|---|---|---|---|"]
    rows += [f"| {r['target']:.2f}{' (chosen)' if r['target'] == op['target'] else ''} | {r['held_out']} | "
             f"{r['sensitivity']:.4f} | {r['specificity']:.4f} |" for r in op["runs"]]
    return "\n".join(rows)


def fmt(value: float | None, spec: str = ".4f") -> str:
    """A card's number; "-" where there is none (None or NaN: an AUC of a group with one class)."""
    return "-" if value is None or value != value else format(value, spec)


def _metrics_table(metrics: list[dict]) -> str:
    rows = ["| split | n | pneumonia | AUC | accuracy | sensitivity | specificity | Brier | ECE |",
            "|---|---|---|---|---|---|---|---|---|"]
    for m in metrics:
        rows.append(f"| {m['split']} | {m['n']} | {m['n_positive']} | {fmt(m.get('auc'))} | "
                    f"{fmt(m.get('accuracy'))} | {fmt(m.get('sensitivity'))} | {fmt(m.get('specificity'))} | "
                    f"{fmt(m.get('brier'))} | {fmt(m.get('ece'))} |")
    return "\n".join(rows)


def _intervals_table(intervals: dict[str, list[float]]) -> str:
    rows = ["| metric | 95% interval |", "|---|---|"]
    rows += [f"| {name} | {lo:.4f} - {hi:.4f} |" for name, (lo, hi) in intervals.items()]
    return "\n".join(rows)


def _subgroup_table(groups: list[dict]) -> str:
    rows = ["| subgroup | n | pneumonia | AUC | sensitivity | specificity | flagged URGENT |", "|---|---|---|---|---|---|---|"]
    for g in groups:
        rows.append(f"| {g['group']} | {g['n']} | {g['n_positive']} | {fmt(g.get('auc'))} | "
                    f"{fmt(g.get('sensitivity'))} | {fmt(g.get('specificity'))} | {g['flagged']:.1%} |")
    return "\n".join(rows)


def _group_shift_table(folds: list[dict]) -> str:
    if not folds:
        return "(not run for this bundle)"
    rows = ["| held out (never trained on) | n held out | in-distribution val AUC | held-out AUC | "
            "held-out sensitivity | held-out specificity |", "|---|---|---|---|---|---|"]
    for f in folds:
        val, held = f["validation"], f["held_out"]
        rows.append(f"| {f['name']} | {held['n']} | {fmt(val.get('auc'))} | {fmt(held.get('auc'))} | "
                    f"{fmt(held.get('sensitivity'))} | {fmt(held.get('specificity'))} |")
    return "\n".join(rows)


def audit_table(checks: list[AuditCheck], positive: str = "pneumonia", negative: str = "normal",
                probability: str = "P") -> str:
    """The audits as a card's table: each check's flip rate, per side of the urgent group."""
    rows = [f"| check | what changes | flip rate | {positive} flipped | {negative} flipped | mean change of {probability} |",
            "|---|---|---|---|---|---|"]
    for c in checks:
        rows.append(f"| {c.name} | {c.description} | {c.flip_rate:.2%} | {fmt(c.flip_rate_positive, '.2%')} | "
                    f"{fmt(c.flip_rate_negative, '.2%')} | {c.mean_delta:+.4f} |")
    return "\n".join(rows)


def group_shift_folds(checkpoints: list[dict]) -> list[dict]:
    """The group-shift results of held-out training runs, for the card."""
    folds = []
    for ck in checkpoints:
        held = [m for m in ck["metrics"] if m["split"].startswith("group shift")]
        if not held:
            raise ValueError("a group-shift checkpoint must come from a run with --hold-out")
        folds.append({"name": ck["data"]["held_out"], "validation": ck["metrics"][0], "held_out": held[0]})
    return folds


def model_card(checkpoint: dict, onnx_diff: dict[str, float], checks: list[AuditCheck],
               group_shift: list[dict], group_shift_note: str = "") -> str:
    cfg, data = checkpoint["train_config"], checkpoint["data"]
    size, widths = int(checkpoint["size"]), tuple(checkpoint["widths"])
    t, thr = float(checkpoint["temperature"]), float(checkpoint["threshold"])
    target, floor = float(checkpoint["target_sensitivity"]), float(checkpoint["min_clean_sensitivity"])
    intervals = checkpoint.get("intervals", {})
    expected = _expected_ranges(intervals, checkpoint.get("operating_point"))
    return CARD_TEMPLATE.format(
        disclaimer=DISCLAIMER, intended_use=INTENDED_USE, citation=CITATION,
        n_duplicates_removed=data["n_duplicates_removed"], n_train=data["n_train"],
        n_train_positive=data["n_train_positive"], n_val=data["n_val"], n_val_patients=data["n_val_patients"],
        n_unknown=data.get("n_unknown_aspect", 0),
        n_train_normal=data["n_train"] - data["n_train_positive"],
        size=size, widths=", ".join(map(str, widths)), blocks=checkpoint["blocks"],
        cam_side=size // 16, epochs=cfg["epochs"], batch=cfg["batch_size"], lr=cfg["lr"],
        wd=cfg["weight_decay"], ls=cfg["label_smoothing"], ema=cfg["ema"], seed=checkpoint["seed"],
        copies=cfg["stress_copies"], seconds=checkpoint["training_seconds"],
        command=checkpoint["training_command"], metrics=_metrics_table(checkpoint["metrics"]),
        intervals=_intervals_table(intervals), subgroups=_subgroup_table(checkpoint.get("subgroups", [])),
        group_shift=_group_shift_table(group_shift), audits=audit_table(checks),
        group_shift_note=f"\n\n{group_shift_note}" if group_shift_note else "",
        zoom_lo=aug.TRAIN.scale[0], zoom_hi=aug.TRAIN.scale[1], rotate=aug.TRAIN.rotate_deg,
        shift=aug.TRAIN.translate, p_border=aug.TRAIN.p_border, border_max=aug.TRAIN.border_max,
        max_flip=audit_policy(checkpoint).max_flip_rate, low=ASPECT_RANGE[0], high=ASPECT_RANGE[1],
        expected=expected, shift_note=_shift_note(checkpoint),
        op_table=_operating_point_table(checkpoint),
        temperature=t, threshold=thr, target=target, floor=floor,
        stress_sens=checkpoint["metrics"][1]["sensitivity"], stress_spec=checkpoint["metrics"][1]["specificity"],
        clean_sens=checkpoint["metrics"][0]["sensitivity"], clean_spec=checkpoint["metrics"][0]["specificity"],
        diff_logits=onnx_diff["logits"], diff_cam=onnx_diff["cam"], opset=OPSET,
    )


CARD_TEMPLATE = """\
# Pediatric chest X-ray pneumonia triage (research)

**{disclaimer}** This model is a research prototype. It has not been cleared or validated for any
clinical purpose and must not be used to diagnose, rule out or treat anyone.

## Intended use
{intended_use}

Inputs: one frontal chest radiograph (CR/DX DICOM, or a JPEG/PNG/video frame of one). Output:
P(PNEUMONIA) and a coarse class-activation map. `URGENT` when P(PNEUMONIA) >= the shipped
threshold, `ROUTINE` otherwise; images failing the quality policy are `UNGRADABLE`.
Out of scope: adults, lateral views, other findings (effusion, pneumothorax, lines, masses),
distinguishing bacterial from viral pneumonia, any non-chest image.

## Data
Kermany et al. 2018 (Mendeley Data v2, CC BY 4.0), pediatric patients aged 1-5 years from one
center (Guangzhou Women and Children's Medical Center), official TRAIN split only, as distributed
here (224x224 JPEG, stretched from the original size: aspect ratio not kept). {n_duplicates_removed}
byte-identical duplicate files were removed. Patient ids come from the file names (`personN_...`
for pneumonia, `[NORMAL2-]IM-xxxx` for normal) and validation was split **by patient**, stratified
by class, with a fixed seed: {n_train} training images ({n_train_positive} pneumonia,
{n_train_normal} normal) and {n_val} validation images from {n_val_patients} patients. The official
TEST split was not used in any way (not for training, model selection, calibration or the threshold).

## The aspect-ratio shortcut, and how it was removed
The upstream stretch to 224x224 hides each film's original aspect (width / height) in its anatomy:
a wide film looks squeezed. In this train set the aspect differs by class (NORMAL median 1.21,
PNEUMONIA 1.48), so a model can tell the classes apart by the squeeze instead of the lungs; model
1.0.0 did, and flagged wide-film normals of a new site as URGENT. This model is trained so that the
squeeze carries no class information:

* each training film's original aspect comes from `train_aspect.csv` (measured on originals or
  matched against MedMNIST's centre crops; where unknown, {n_unknown} films, mostly normal, the
  median of its acquisition group stands in);
* every time a film is drawn, it is shown as if taken on a film of another aspect, **drawn
  independently of its class** (half log-uniform over the declared range {low}-{high}, half from
  the class-balanced distribution of real films), by a centred crop of the restored film, then
  stretched to the square as the device does;
* on the device an image whose aspect lies in {low}-{high} is stretched as it is (training covered
  that distortion), one outside is centre-cropped into the range first (`input.aspect_range`).

## Model
A small ResNet written for this project: 3x3 stem (stride 2), then one stage per width
({widths} channels) with {blocks} basic residual block(s) each (two 3x3 conv + BatchNorm + ReLU,
1x1 projection shortcut when the shape changes, stride 2 from the second stage on), global average
pooling and a linear layer. No depthwise convolutions (they get slower when quantised to INT8 on
the appliance CPU). The linear head is also applied at every location of the last feature map,
giving `cam` (N, 2, {cam_side}, {cam_side}); its spatial mean is exactly `logits` (cam = W.f + b).
ONNX opset {opset}, dynamic batch axis, single file, BatchNorm folded into the convolutions;
ONNX Runtime vs torch max abs difference: logits {diff_logits:.2e}, cam {diff_cam:.2e}.

## Preprocessing (identical in training and on the device)
`models.preprocess.to_model_input` with the manifest's input contract: convert to grayscale
(BT.601 luma), centre-crop into the aspect range {low}-{high} if outside it, stretch-resize to
{size}x{size} (INTER_AREA), /255, normalise with mean 0.48 and std 0.235. DICOM: modality LUT then
VOI LUT/window, MONOCHROME1 inverted, middle frame.

## Training recipe
AdamW (lr {lr} one-cycle, weight decay {wd}), {epochs} epochs, batch {batch}, class-weighted
cross-entropy (inverse class frequency, i.e. a 50/50 prior, so the train set's 74% pneumonia does
not leak into the probabilities), label smoothing {ls}, EMA of the weights (decay {ema}), seed
{seed}, deterministic torch algorithms, 2 CPU threads. Augmentation (batched, in torch), at the
native 224 px before an area resize to {size}: the class-independent film aspect above, zoom
{zoom_lo}-{zoom_hi}, rotation +-{rotate:g} deg, shift +-{shift:.0%}, gamma/contrast/brightness jitter, blur or
unsharp masking, Gaussian noise, random black border bars (each edge with chance {p_border:.0%}, up to
{border_max:.0%} of the side) and small flat patches (so the net cannot key on film borders or
burned-in markers). No horizontal flip: the heart side is a real, constant cue in
these standard views. Wall time {seconds:.0f} s on 2 CPU cores.

Exact command:

    {command}

## Metrics
Validation is patient-level and from the same center as training; it is optimistic. The
temperature and the threshold were also chosen on these images, so sensitivity >= the target
holds there by construction: these are not independent test results. The stress validation shows
each validation film at an aspect drawn log-uniformly over {low}-{high} (whatever its class) and
through {copies} random simulated acquisition changes (zoom 0.8-1.2, rotation +-12 deg, shift,
gamma 0.61-1.65, contrast 0.65-1.4, brightness, blur up to sigma 1.5 px or strong unsharp masking,
noise), pooled. All at the shipped threshold {threshold:.4f}:

{metrics}

95% confidence intervals on the clean validation (1,000 bootstrap resamples of whole patients):

{intervals}

![ROC on clean and stress validation](roc.png)

### Subgroups (clean validation, by acquisition group and by the film's original aspect)

{subgroups}

### Group-shift validation
The same recipe trained with whole acquisition groups held out of training and validation, then
scored on them: how much a validation from the training groups overstates a new group.

{group_shift}{group_shift_note}

## Shortcut audits
Metamorphic checks on the validation images through the device's preprocessing: the share of
images whose triage changes, and the mean change of P(PNEUMONIA). The manifest's `audit` declares
the limit (every flip rate <= {max_flip:.0%}); export and `bedside optimize` refuse a model or
variant over it, and `bedside eval --audit` measures any labelled folder.

{audits}

## Operating point
The threshold ({threshold:.4f} on the calibrated P(PNEUMONIA)) is the **highest** threshold that
still keeps sensitivity >= {target:.2f} on the pooled stress validation, where films appear at every
aspect in the declared range whatever their class, and >= {floor:.2f} on the clean validation{shift_note}.
How the same rule held up on groups the model never saw, for each clean target (each group-shift
run applies it to its own validation):

{op_table}

With sensitivity pinned with margin, every remaining bit of threshold buys specificity, the figure
that collapses on a new site when a model keys on acquisition. The class-balanced loss and
calibration make the probabilities refer to a 50/50 prior, so the threshold does not depend on
the 74% (train) or ~62.5% (test) prevalence.

Clean validation at this threshold: sensitivity {clean_sens:.4f}, specificity {clean_spec:.4f};
stress validation: sensitivity {stress_sens:.4f}, specificity {stress_spec:.4f}. **Expected on new
patients**: {expected}. The group-shift runs hold out up to 60% of one class and train on the rest
only, a harsher shift than a new site of the same population; their low specificities say that
normals of an acquisition batch the model never saw can be flagged far more often. Re-check the
operating point on local, labelled data before relying on it.

## Calibration
Temperature scaling, T = {temperature:.4f}, fitted on the clean validation logits by minimising
the class-balanced negative log-likelihood. The exported graph already divides the head by T
(FC weights and bias scaled), so `softmax(logits)` is the calibrated probability and `cam` is on
the same scale. Calibration holds for a 50/50 prior; for other prevalences the probabilities are
relative scores, not post-test probabilities.

## Limitations
* Pediatric patients (1-5 years) from a single center: not valid for adults or other sites
  without local validation.
* Distribution shift: other scanners, exposure, processing, positioning, portable films and
  burned-in annotations can change scores; the stress validation and the audits only simulate part
  of this.
* The original aspect of {n_unknown} training films is unknown (group medians stand in), and the
  matched aspects carry a small error (median 0.013): a faint residue of the shortcut may remain.
  Films outside {low}-{high} are cropped, so their edges are not seen.
* Images were downscaled to 224x224 before training; fine detail is not used, and the model works
  at {size}x{size}.
* Labels are image-level (from the original study's graders), with no localisation: the CAM is a
  coarse attention hint, not a lesion segmentation.
* Binary only: other abnormalities may be called NORMAL or PNEUMONIA arbitrarily.

## Citation
{citation}
"""
