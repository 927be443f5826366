"""MODEL_CARD.md of the skin-lesion bundle: what it is for, how it was made, what it scored."""

from __future__ import annotations

from models import audit
from models.bundle import QualityPolicy
from models.training.card_tables import audit_group_note, audit_table, common_grid, fmt, members_table
from models.training.recipe import Exported
from models.training.skin import augment as aug
from models.training.skin.data import FOCUS, LABELS, URGENT
from models.training.skin.identity import CITATION, DATASET, DISCLAIMER, INTENDED_USE, LABEL_NAMES, LICENCE


def _summary_table(rep: dict) -> str:
    rows = ["| split | n | balanced accuracy | melanoma AUC | refer-group AUC | melanoma referred | "
            "others not referred (vs melanoma) |", "|---|---|---|---|---|---|---|"]
    for name, key in (("validation", "clean"), ("validation, stressed", "stress"),
                      ("validation, one copy (no averaging)", "single")):
        if key not in rep:  # an ensemble has no one-copy row: its members have their own table
            continue
        r = rep[key][2]
        rows.append(f"| {name} | {r['n']} | {fmt(r['balanced_accuracy'])} | {fmt(r['per_class_auc'][FOCUS])} | "
                    f"{fmt(r['urgent_auc'])} | {fmt(r['focus_sensitivity'])} | {fmt(r['focus_specificity'])} |")
    return "\n".join(rows)


def _per_class_table(rep: dict) -> str:
    clean, stress = rep["clean"][2], rep["stress"][2]
    rows = ["| label | meaning | validation images | one-vs-rest AUC | stressed AUC | recall (arg-max) |",
            "|---|---|---|---|---|---|"]
    for i, label in enumerate(LABELS):
        conf = clean["confusion"][i]
        recall = conf[i] / sum(conf) if sum(conf) else float("nan")
        rows.append(f"| {label}{' (refer)' if label in URGENT else ''} | {LABEL_NAMES[label]} | {clean['counts'][i]} | "
                    f"{fmt(clean['per_class_auc'].get(label))} | {fmt(stress['per_class_auc'].get(label))} | {fmt(recall, '.3f')} |")
    return "\n".join(rows)


def _confusion_table(rep: dict) -> str:
    conf = rep["clean"][2]["confusion"]
    rows = ["| true \\ likeliest | " + " | ".join(LABELS) + " |", "|---" * (len(LABELS) + 1) + "|"]
    rows += [f"| {label} | " + " | ".join(str(v) for v in row) + " |" for label, row in zip(LABELS, conf)]
    return "\n".join(rows)


def _network(checkpoint: dict, diff: dict[str, float], folds: list[dict], cfg: dict) -> str:
    """The model paragraph: one network with its dihedral averaging, or the ensemble and its members."""
    member_epochs = {m.get("train_config", {}).get("epochs") for m in checkpoint.get("members", [])}
    epochs = "each member's epochs (the table above)" if len(member_epochs) > 1 else f"{cfg['epochs']} epochs"
    training = (f"AdamW with a one-cycle schedule (peak {cfg['lr']}) for\n{epochs}, batch "
                f"{cfg['batch_size']}, weight decay {cfg['weight_decay']}, label smoothing\n{cfg['label_smoothing']}, "
                f"weight EMA {cfg['ema']}, loss weights (1/class frequency)^{cfg['class_weight_power']}.")
    onnx = f"ONNX opset 18 vs torch: max |difference| logits\n{diff['logits']:.2e}, CAM {diff['cam']:.2e}."
    temperature = float(checkpoint["temperature"])
    if "members" not in checkpoint:
        size = int(checkpoint["size"])
        return f"""\
A small ResNet written in this project (plain 3x3 convolutions, one basic block per stage, widths
{', '.join(map(str, checkpoint['widths']))}), {size}x{size} RGB input (the 224x224 images area-resized, as on the
device), seven-way softmax head applied per location as a class-activation map (its mean is the
logits). Trained from scratch (no pretrained weights): {training}
**Test-time averaging inside the graph**: the exported ONNX averages the logits (and the turned-back
CAMs) of {checkpoint['tta']} rotations of the input, so every consumer (device, optimizer gate,
benchmarks) runs exactly what was validated; the temperature {temperature:.3f} (fitted on
validation, multi-class NLL) is baked in. {onnx}"""
    side = int(checkpoint["size"])
    grid = common_grid(checkpoint)
    return f"""\
{len(checkpoint['members'])} small ResNets written in this project (plain 3x3 convolutions, a seven-way head applied
per location as a class-activation map), **averaged inside one graph** that takes {side}x{side} RGB inputs (a
member trained at a smaller side that divides it sees the input average-pooled to its own side).
{_member_views(checkpoint['members'])} Each one's logits carry its own temperature; their average is divided by one temperature refitted on it
({temperature:.3f}, multi-class NLL), all baked in. The CAMs are brought to one {grid}x{grid} grid by nearest
upsampling by whole factors (each keeps its mean) and averaged. Every figure on this card is the ensemble's; the members,
as they run in this graph:

{members_table(checkpoint, folds)}

Each member was trained from scratch (no pretrained weights): {training} {onnx}"""


def _member_views(members: list[dict]) -> str:
    views = sorted({int(m.get("tta", 1)) for m in members})
    if views == [1]:
        return "Each member judges the image as it is (no test-time averaging inside the graph)."
    return (f"Each member keeps its **test-time averaging**: the logits and turned-back CAMs of its "
            f"{' or '.join(map(str, views))} dihedral copies.")


def model_card(exported: Exported, quality: QualityPolicy) -> str:
    checkpoint, rep, checks, diff = exported.checkpoint, exported.results, exported.checks, exported.onnx_diff
    members = checkpoint.get("members", [])
    cfg, data = (members[0] if members else checkpoint)["train_config"], checkpoint["data"]
    thr = float(checkpoint["threshold"])
    counts = ", ".join(f"{label} {n}" for label, n in zip(LABELS, data["train_counts"]))
    commands = [m["training_command"] for m in members] + [checkpoint["training_command"]]
    t = aug.TRAIN
    return f"""\
# Skin lesion triage from dermoscopy (research, non-commercial)

**{DISCLAIMER}** This model is a research prototype. It has not been cleared or validated for any
clinical purpose and must not be used to diagnose, rule out or treat anyone. Licence of the
training data: **{LICENCE}** - this bundle, its outputs and derived works are for non-commercial
research only.

## Intended use
{INTENDED_USE}

Input: one dermoscopy image of one lesion, centred (a dermatoscope camera frame, a JPEG/PNG, or
a DICOM VL photographic / dermoscopy image), in colour. Output: the probability of each of seven
diagnoses, the triage (**URGENT = refer** when {' + '.join(f'P({u})' for u in URGENT)} >= {thr:.4f}, else
ROUTINE), the three likeliest diagnoses, and a class-activation heatmap of the refer group.
**UNGRADABLE** (no score shown) when the image fails the quality checks: gray (an X-ray or other
non-skin image: chroma under {quality.min_colorfulness}), blurred (Laplacian variance under
{quality.min_sharpness:.5f} at 224 px), no lesion in the middle of the field, blank, badly exposed,
too small.

Not for: clinical photographs without a dermatoscope, mucosa, nails, children's lesions,
non-pigmented lesions outside these seven classes, or darker skin types (HAM10000 comes from
Austrian and Australian practices; skin types V-VI are barely represented).

## Data
{DATASET}. Citation: {CITATION}.

Split: one image per lesion here (checked at load), so a per-class seeded shuffle
({data['val_fraction']:.0%} of each class, seed {checkpoint['seed']}) is a lesion-level split:
{data['n_train']} training images ({counts}) and {data['n_val']} validation images. No test set
is used: the official ISIC 2018 Task 3 test images are evaluated separately by the project's
owners.

## Model
{_network(checkpoint, diff, exported.group_shift, cfg)}

Augmentation (seeded): any of the 8 flips/rotations, any rotation angle, zoom {t.scale[0]}-{t.scale[1]},
shift, white balance (per-channel gain), brightness, contrast, saturation, gamma, blur, noise; and the
known shortcuts of dermoscopy datasets painted on random images *of every class*, so none of them tells
the class: dark dermoscope corners (p {t.p_vignette}), hairs ({t.p_hair}), skin-marker ink ({t.p_ink}),
a ruler ({t.p_ruler}).

Reproduce: `{'`; `'.join(commands)}`
(seed {checkpoint['seed']}, {checkpoint['training_seconds']:.0f} s on this 2-core x86-64 machine, shared with
other work; one torch thread, deterministic algorithms).

## Validation
{_summary_table(rep)}

The operating point: {fmt(thr)} on {' + '.join(f'P({u})' for u in URGENT)}, the highest threshold that refers >=
{float(cfg.get('target_sensitivity', 0.92)):.2f} of the validation melanomas both as they are and under simulated
acquisition shift (white balance, exposure, saturation, blur, zoom). Melanoma is the costly miss; basal
cell carcinoma and actinic keratosis ride in the same refer group. With ~100 validation melanomas a
sensitivity carries about +-0.05 of sampling error (95%); expect less on images from other clinics.

Per class (one-vs-rest, validation; stressed = under simulated shift):

{_per_class_table(rep)}

Confusion of the likeliest label (validation counts):

{_confusion_table(rep)}

![ROC](roc.png) ![confusion](confusion.png)

## Shortcut audits
Each check changes something that must not matter and counts how often the triage changes on the
validation images (limit {float(checkpoint.get('max_flip_rate', audit.MAX_FLIP_RATE)):.0%} per check; the export refuses a model over it):

{audit_table(checks, "refer-group", "others", "P(refer)")}{audit_group_note(checks)}

## Limits
- Validation is from the same sources as training (HAM10000); the owners' ISIC 2018 test set adds
  images from other sites. Expect lower figures there.
- Dermoscopy of pigmented lesions only; the quality checks refuse gray images and images with no
  lesion in the centre, not every wrong input.
- The heatmap shows where the model looked, not the lesion's outline.
"""
