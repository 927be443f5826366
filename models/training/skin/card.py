"""Write the skin-lesion bundle from a training checkpoint: model.onnx (with its test-time
averaging), golden inputs, ROC and confusion plots, MODEL_CARD.md, manifest.json.

The metrics are recomputed here from the checkpoint's weights on the redrawn validation split, so
what the card and manifest say is what the exported graph does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from models import audit
from models.bundle import (
    AuditCheck,
    ClassMetrics,
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
from models.metrics import binary_report, multiclass_report, roc_curve, softmax
from models.preprocess import to_model_input
from models.training.card import (AuditFailed, CARD_FILE, GOLDEN_FILE, MODEL_FILE, ROC_FILE, build_in_place,
                                  code_revision, framework_versions)
from models.training.data import decode_rgb
from models.training.export import INPUT_NAME, OPSET, deployable_model, export_onnx, max_abs_diff, onnx_session
from models.training.skin import augment as aug
from models.training.skin.data import FOCUS, LABELS, URGENT, Sample, checkpoint_split, input_contract, load_images
from models.training.skin.identity import CITATION, DATASET, DISCLAIMER, INTENDED_USE, LABEL_NAMES, LICENCE
from models.training.skin.model_card import model_card
from models.training.skin.train import predict, stress_inputs, urgent_probability
from models.training.skin.tta import DihedralAverage
from models.training.train import command_line

CONFUSION_FILE = "confusion.png"
GOLDEN_PER_CLASS = 3
# Measured on the training images (every 2nd or 6th): chroma >= 0.049 (chest radiographs: 0.00);
# p99-p1 of the gray image >= 0.09 (0.1% under 0.147); Laplacian variance >= 0.00012 at 224 px (a
# Gaussian blur of sigma 2 px brings 99% of them under 0.00005); >= 2% of the centre farther than
# 0.1 from the skin's colour for 99.97% of them (close-ups of the image corners, plain skin or a
# part of the lesion: 60% under).
QUALITY = QualityPolicy(
    min_side_px=128, min_dynamic_range=0.06, max_clipped_fraction=0.6, min_aspect=0.5, min_colorfulness=0.02,
    min_sharpness=0.00008, min_lesion_fraction=0.02, lesion_contrast=0.1, subject="dermoscopy image",
)
EVALUATION = EvaluationPolicy(subgroups=[Subgroup(name="ISIC images", file_pattern=r"^ISIC_")])


def redraw_validation(checkpoint: dict, data_dir: Path | None) -> list[Sample]:
    _, val = checkpoint_split(checkpoint, data_dir)
    if len(val) != int(checkpoint["data"]["n_val"]):
        raise AuditFailed(f"the data gives {len(val)} validation images, the checkpoint had "
                          f"{checkpoint['data']['n_val']}: not the training data")
    return val


def deployable(checkpoint: dict) -> DihedralAverage:
    return DihedralAverage(deployable_model(checkpoint), int(checkpoint["tta"])).eval()


def reports(checkpoint: dict, model: DihedralAverage, val: list[Sample], data_dir: Path | None) -> dict:
    """Clean and stressed validation, recomputed from the deployable model (temperature baked in)."""
    contract = input_contract(int(checkpoint["size"]), INPUT_NAME)
    x = torch.from_numpy(load_images(val, contract, progress=False))
    y = np.array([s.label for s in val])
    thr = float(checkpoint["threshold"])
    p = softmax(predict(model.model, x, model.copies))
    copies = int(checkpoint["train_config"].get("stress_copies", 2))
    ps = softmax(predict(model.model, stress_inputs(x, copies, int(checkpoint["seed"])), model.copies))
    ys = np.tile(y, copies)
    single = softmax(predict(model.model, x, 1))
    return {
        "clean": (y, p, multiclass_report(y, p, LABELS, URGENT, thr, FOCUS)),
        "stress": (ys, ps, multiclass_report(ys, ps, LABELS, URGENT, thr, FOCUS)),
        "single": (y, single, multiclass_report(y, single, LABELS, URGENT, thr, FOCUS)),
    }


def audit_onnx(path: Path, checkpoint: dict, val: list[Sample]) -> list[AuditCheck]:
    images = [decode_rgb(s.path) for s in val]
    positive = np.array([LABELS[s.label] in URGENT for s in val])
    session = onnx_session(path)

    def p_urgent(x: np.ndarray) -> np.ndarray:
        return urgent_probability(softmax(session.run(["logits"], {INPUT_NAME: x})[0].astype(np.float64)))

    contract = input_contract(int(checkpoint["size"]), INPUT_NAME)
    return audit.run_audit(p_urgent, images, positive, contract, float(checkpoint["threshold"]),
                           audit.DERMOSCOPY_CHECKS)


def write_golden(path: Path, model_path: Path, checkpoint: dict, val: list[Sample]) -> Path:
    chosen = [s for label in range(len(LABELS)) for s in [v for v in val if v.label == label][:GOLDEN_PER_CLASS]]
    contract = input_contract(int(checkpoint["size"]), INPUT_NAME)
    inputs = np.stack([to_model_input(decode_rgb(s.path), contract) for s in chosen]).astype(np.float16)
    logits = onnx_session(model_path).run(["logits"], {INPUT_NAME: inputs.astype(np.float32)})[0]
    with open(path, "wb") as fh:
        np.savez_compressed(fh, inputs=inputs, probabilities=softmax(logits.astype(np.float64)))
    return path


def _plots(rep: dict, threshold: float, roc_path: Path, confusion_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y, p, r = rep["clean"]
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    for i, label in enumerate(LABELS):
        fpr, tpr, _ = roc_curve(y == i, p[:, i])
        ax.plot(fpr, tpr, lw=1.2, label=f"{label} vs rest, AUC {r['per_class_auc'][label]:.3f}")
    urgent = np.isin(y, [LABELS.index(u) for u in URGENT])
    fpr, tpr, _ = roc_curve(urgent, urgent_probability(p))
    ax.plot(fpr, tpr, "k", lw=2, label=f"refer ({'+'.join(URGENT)}), AUC {r['urgent_auc']:.3f}")
    ax.plot([0, 1], [0, 1], ":", color="gray")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01),
           title=f"One-vs-rest ROC, validation (n={len(y)})")
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(roc_path, metadata={"Software": None})
    plt.close(fig)

    conf = np.array(r["confusion"], dtype=float)
    share = conf / conf.sum(1, keepdims=True).clip(min=1)
    fig, ax = plt.subplots(figsize=(5, 4.4), dpi=100)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(LABELS)):
        for j in range(len(LABELS)):
            ax.text(j, i, int(conf[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(LABELS)), LABELS)
    ax.set_yticks(range(len(LABELS)), LABELS)
    ax.set(xlabel="likeliest label", ylabel="true label", title="Validation confusion (counts; colour: row share)")
    fig.tight_layout()
    fig.savefig(confusion_path, metadata={"Software": None})
    plt.close(fig)


def _class_metrics(name: str, r: dict) -> ClassMetrics:
    return ClassMetrics(split=name, n=r["n"], counts=r["counts"], balanced_accuracy=r["balanced_accuracy"],
                        accuracy=r["accuracy"], per_class_auc=r["per_class_auc"], confusion=r["confusion"],
                        urgent_auc=r["urgent_auc"], urgent_sensitivity=r["urgent_sensitivity"],
                        urgent_specificity=r["urgent_specificity"], focus_sensitivity=r["focus_sensitivity"],
                        focus_specificity=r["focus_specificity"])


def _split_metrics(name: str, y: np.ndarray, p: np.ndarray, threshold: float) -> SplitMetrics:
    """The urgent group as a binary problem (what the triage does), in the shape every bundle has."""
    r = binary_report(np.isin(y, [LABELS.index(u) for u in URGENT]), urgent_probability(p), threshold)
    return SplitMetrics(split=name, n=r.n, n_positive=r.n_positive, auc=r.auc, accuracy=r.accuracy,
                        sensitivity=r.sensitivity, specificity=r.specificity, threshold=r.threshold,
                        brier=r.brier, ece=r.ece)


def names(checkpoint: dict) -> dict[str, str]:
    n_val, copies = int(checkpoint["data"]["n_val"]), int(checkpoint["train_config"].get("stress_copies", 2))
    return {"clean": f"validation (one image per lesion, stratified by class, n={n_val})",
            "stress": f"validation under simulated acquisition shift ({copies} perturbed copies, n={n_val * copies})"}


def build_manifest(checkpoint: dict, bundle_id: str, version: str, files: dict, checks: list[AuditCheck],
                   rep: dict) -> Manifest:
    thr, label = float(checkpoint["threshold"]), names(checkpoint)
    clean, stress = rep["clean"][2], rep["stress"][2]
    target = float(checkpoint["train_config"].get("target_sensitivity", 0.92))
    return Manifest(
        id=bundle_id, version=version, title="Skin lesion triage from dermoscopy (research, non-commercial)",
        intended_use=INTENDED_USE, research_only=True, disclaimer=DISCLAIMER, task="multi-class-classification",
        labels=list(LABELS), label_names=LABEL_NAMES, input=input_contract(int(checkpoint["size"]), INPUT_NAME),
        outputs=Outputs(logits="logits", cam="cam"),
        policy=TriagePolicy(
            urgent_labels=list(URGENT), combine="sum", finding="malignant or pre-malignant lesion", focus_label=FOCUS,
            operating_point=OperatingPoint(
                threshold=thr, sensitivity=stress["focus_sensitivity"], specificity=stress["focus_specificity"],
                chosen_on=f"{label['clean']} and {label['stress']}",
                method=(f"highest threshold on P({' + '.join(URGENT)}) that refers >= {target:.2f} of the "
                        "melanomas on both the clean and the stressed validation (sensitivity/specificity "
                        "here: melanoma vs all others, stressed)"),
            ),
        ),
        quality=QUALITY,
        calibration={"method": "temperature scaling of the averaged logits, baked into the exported graph",
                     "temperature": float(checkpoint["temperature"]), "fitted_on": label["clean"],
                     "objective": "multi-class NLL", "test_time_averaging": f"{checkpoint['tta']} dihedral copies"},
        metrics=[_split_metrics(label["clean"], rep["clean"][0], rep["clean"][1], thr),
                 _split_metrics(label["stress"], rep["stress"][0], rep["stress"][1], thr)],
        class_metrics=[_class_metrics(label["clean"], clean), _class_metrics(label["stress"], stress)],
        provenance=Provenance(
            dataset=DATASET, dataset_licence=LICENCE, citation=CITATION,
            training_command=command_line(checkpoint["train_config"], checkpoint["exam"]), seed=int(checkpoint["seed"]),
            code_revision=code_revision(), trained_at=checkpoint["trained_at"],
            training_seconds=float(checkpoint["training_seconds"]), framework=framework_versions(),
            split=DataSplit(method="by-lesion-stratified", val_fraction=float(checkpoint["data"]["val_fraction"]),
                            seed=int(checkpoint["data"].get("split_seed", checkpoint["seed"])), train_images=int(checkpoint["data"]["n_train"]),
                            val_images=int(checkpoint["data"]["n_val"])),
        ),
        audit=audit.policy(label["clean"], audit.DERMOSCOPY_CHECKS,
                           float(checkpoint.get("max_flip_rate", audit.MAX_FLIP_RATE))),
        evaluation=EVALUATION, golden=GOLDEN_FILE,
        variants=[Variant(precision="fp32", file=MODEL_FILE, targets=["cpu", "gpu"], audit=checks,
                          notes=f"BatchNorm folded; temperature baked in; {checkpoint['tta']} dihedral copies "
                                "averaged inside the graph")],
        files=files,
    )


def write_bundle(checkpoint: dict, out: Path, bundle_id: str, version: str, data_dir: Path | None = None,
                 log: Callable[[str], None] = print) -> Path:
    """Like models.training.card.write_bundle: built beside `out`, moved into place when complete."""
    return build_in_place(out, lambda work: _write_files(checkpoint, work, bundle_id, version, data_dir, log))


def _write_files(checkpoint: dict, out: Path, bundle_id: str, version: str, data_dir: Path | None,
                 log: Callable[[str], None]) -> None:
    size = int(checkpoint["size"])
    model = deployable(checkpoint)
    export_onnx(model, size, out / MODEL_FILE, channels=3)
    val = redraw_validation(checkpoint, data_dir)
    check = torch.from_numpy(load_images(val[:8], input_contract(size, INPUT_NAME), progress=False))
    diff = max_abs_diff(model, out / MODEL_FILE, check)
    if max(diff.values()) > 1e-3:
        raise RuntimeError(f"ONNX output differs from torch: {diff}")
    checks = audit_onnx(out / MODEL_FILE, checkpoint, val)
    for row in audit.table(checks):
        log(row)
    limits = audit.policy("validation", audit.DERMOSCOPY_CHECKS,
                          float(checkpoint.get("max_flip_rate", audit.MAX_FLIP_RATE)))
    refused = audit.failures(checks, limits)
    if refused:
        raise AuditFailed("refusing to write the bundle: " + "; ".join(refused))
    rep = reports(checkpoint, model, val, data_dir)
    write_golden(out / GOLDEN_FILE, out / MODEL_FILE, checkpoint, val)
    _plots(rep, float(checkpoint["threshold"]), out / ROC_FILE, out / CONFUSION_FILE)
    (out / CARD_FILE).write_text(model_card(checkpoint, rep, checks, diff, QUALITY), encoding="utf-8")
    files = {name: file_entry(out / name) for name in (MODEL_FILE, GOLDEN_FILE, ROC_FILE, CONFUSION_FILE, CARD_FILE)}
    write_manifest(out, build_manifest(checkpoint, bundle_id, version, files, checks, rep))
    load_bundle(out)
