"""MODEL_CARD.md of the chest X-ray bundle, and its ROC figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models import audit
from models.metrics import roc_curve
from models.training.card_tables import audit_group_note, audit_table, common_grid, fmt, members_table
from models.training.chest import augment as aug
from models.training.chest.data import ASPECT_RANGE
from models.training.chest.identity import CITATION, DISCLAIMER, INTENDED_USE
from models.training.export import OPSET
from models.training.recipe import Exported

ROC_FILE = "roc.png"


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


def shift_note(checkpoint: dict) -> str:
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


def _model_section(checkpoint: dict, onnx_diff: dict[str, float], folds: list[dict]) -> str:
    diff = (f"ONNX opset {OPSET}, dynamic batch axis, single file, BatchNorm folded into the convolutions;\n"
            f"ONNX Runtime vs torch max abs difference: logits {onnx_diff['logits']:.2e}, cam {onnx_diff['cam']:.2e}.")
    if "members" not in checkpoint:
        size = int(checkpoint["size"])
        return SINGLE_MODEL.format(widths=", ".join(map(str, checkpoint["widths"])), blocks=checkpoint["blocks"],
                                   cam_side=size // 16, diff=diff)
    members = checkpoint["members"]
    side = int(checkpoint["size"])
    pools = sorted({side // int(m["size"]) for m in members} - {1})
    return ENSEMBLE_MODEL.format(n=len(members), side=side, table=members_table(checkpoint, folds),
                                 pools=(f"a member trained at a smaller side that divides it sees the input average-pooled to "
                                        f"its own side ({', '.join(f'exact {k}x{k} means' for k in pools)}, close to "
                                        "the area resize it was trained with)." if pools
                                        else "every member was trained at that side."),
                                 cam_side=common_grid(checkpoint), diff=diff,
                                 temperature=float(checkpoint["temperature"]))


def _commands(checkpoint: dict) -> str:
    if "members" not in checkpoint:
        return f"Exact command:\n\n    {checkpoint['training_command']}"
    lines = [f"    {m['training_command']}" for m in checkpoint["members"]]
    return ("Exact commands, one per member, then the ensemble (the members share the validation split):\n\n"
            + "\n".join(lines) + f"\n    {checkpoint['training_command']}")


def model_card(exported: Exported) -> str:
    checkpoint = exported.checkpoint
    first = checkpoint["members"][0] if "members" in checkpoint else checkpoint
    cfg, data = first["train_config"], checkpoint["data"]
    size = int(checkpoint["size"])
    t, thr = float(checkpoint["temperature"]), float(checkpoint["threshold"])
    target, floor = float(checkpoint["target_sensitivity"]), float(checkpoint["min_clean_sensitivity"])
    intervals = checkpoint.get("intervals", {})
    expected = _expected_ranges(intervals, checkpoint.get("operating_point"))
    recipe_of = "Each member (its side, widths and seed in the table above): " if "members" in checkpoint else ""
    return CARD_TEMPLATE.format(
        disclaimer=DISCLAIMER, intended_use=INTENDED_USE, citation=CITATION,
        n_duplicates_removed=data["n_duplicates_removed"], n_train=data["n_train"],
        n_train_positive=data["n_train_positive"], n_val=data["n_val"], n_val_patients=data["n_val_patients"],
        n_unknown=data.get("n_unknown_aspect", 0),
        n_train_normal=data["n_train"] - data["n_train_positive"],
        size=size, model=_model_section(checkpoint, exported.onnx_diff, exported.group_shift),
        recipe_of=recipe_of, train_side="its side" if "members" in checkpoint else size, epochs=cfg["epochs"], batch=cfg["batch_size"], lr=cfg["lr"],
        wd=cfg["weight_decay"], ls=cfg["label_smoothing"], ema=cfg["ema"], seed=first["seed"],
        copies=cfg["stress_copies"], seconds=checkpoint["training_seconds"],
        commands=_commands(checkpoint), metrics=_metrics_table(checkpoint["metrics"]),
        intervals=_intervals_table(intervals), subgroups=_subgroup_table(checkpoint.get("subgroups", [])),
        group_shift=_group_shift_table(exported.group_shift), audits=audit_table(exported.checks, "pneumonia", "normal", "P"),
        audit_group=audit_group_note(exported.checks),
        group_shift_note=f"\n\n{exported.group_shift_note}" if exported.group_shift_note else "",
        zoom_lo=aug.TRAIN.scale[0], zoom_hi=aug.TRAIN.scale[1], rotate=aug.TRAIN.rotate_deg,
        shift=aug.TRAIN.translate, p_border=aug.TRAIN.p_border, border_max=aug.TRAIN.border_max,
        max_flip=float(checkpoint.get("max_flip_rate", audit.MAX_FLIP_RATE)), low=ASPECT_RANGE[0], high=ASPECT_RANGE[1],
        expected=expected, shift_note=shift_note(checkpoint),
        op_table=_operating_point_table(checkpoint),
        temperature=t, threshold=thr, target=target, floor=floor,
        stress_sens=checkpoint["metrics"][1]["sensitivity"], stress_spec=checkpoint["metrics"][1]["specificity"],
        clean_sens=checkpoint["metrics"][0]["sensitivity"], clean_spec=checkpoint["metrics"][0]["specificity"],
    )


SINGLE_MODEL = """\
## Model
A small ResNet written for this project: 3x3 stem (stride 2), then one stage per width
({widths} channels) with {blocks} basic residual block(s) each (two 3x3 conv + BatchNorm + ReLU,
1x1 projection shortcut when the shape changes, stride 2 from the second stage on), global average
pooling and a linear layer. No depthwise convolutions (they get slower when quantised to INT8 on
the appliance CPU). The linear head is also applied at every location of the last feature map,
giving `cam` (N, 2, {cam_side}, {cam_side}); its spatial mean is exactly `logits` (cam = W.f + b).
{diff}
"""

ENSEMBLE_MODEL = """\
## Model: {n} members averaged inside one graph
Each member is a small ResNet written for this project (3x3 stem, one stage of basic residual
blocks per width, global average pooling and a linear head applied at every location as a
class-activation map; no depthwise convolutions). The graph takes {side}x{side} inputs;
{pools} Each member's logits carry its
own temperature; they are averaged and divided by one temperature refitted on the average
(T = {temperature:.4f}), all baked into the members' heads. The members' CAMs are brought to one
{cam_side}x{cam_side} grid by nearest upsampling by whole factors, which keeps each one's spatial mean, and
averaged, so the CAM's spatial mean is still exactly `logits`. Every figure on this card is the
ensemble's, recomputed on the shared validation split; the members, as they run in this graph
(same inputs, each with its own temperature and the ensemble's threshold rule):

{table}

{diff}
"""

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

{model}
## Preprocessing (identical in training and on the device)
`models.preprocess.to_model_input` with the manifest's input contract: convert to grayscale
(BT.601 luma), centre-crop into the aspect range {low}-{high} if outside it, stretch-resize to
{size}x{size} (INTER_AREA), /255, normalise with mean 0.48 and std 0.235. DICOM: modality LUT then
VOI LUT/window, MONOCHROME1 inverted, middle frame.

## Training recipe
{recipe_of}AdamW (lr {lr} one-cycle, weight decay {wd}), {epochs} epochs, batch {batch}, class-weighted
cross-entropy (inverse class frequency, i.e. a 50/50 prior, so the train set's 74% pneumonia does
not leak into the probabilities), label smoothing {ls}, EMA of the weights (decay {ema}), seed
{seed}, deterministic torch algorithms, 2 CPU threads. Augmentation (batched, in torch), at the
native 224 px before an area resize to {train_side}: the class-independent film aspect above, zoom
{zoom_lo}-{zoom_hi}, rotation +-{rotate:g} deg, shift +-{shift:.0%}, gamma/contrast/brightness jitter, blur or
unsharp masking, Gaussian noise, random black border bars (each edge with chance {p_border:.0%}, up to
{border_max:.0%} of the side) and small flat patches (so the net cannot key on film borders or
burned-in markers). No horizontal flip: the heart side is a real, constant cue in
these standard views. Wall time {seconds:.0f} s on 2 CPU cores.

{commands}

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

{audits}{audit_group}

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
