"""The skin-lesion bundle's figures, recomputed from the exported model itself on the redrawn
validation split (so what the card and manifest say is what the graph does): the clean, stressed
and one-copy reports, the ROC and confusion plots, and the manifest's multi-class fields.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from models.bundle import ClassMetrics, OperatingPoint, SplitMetrics, TriagePolicy
from models.metrics import binary_report, multiclass_report, roc_curve, softmax
from models.training.export import INPUT_NAME
from models.training.images import Sample, load_images
from models.training.loop import predict_batched
from models.training.skin.data import FOCUS, LABELS, URGENT, input_contract
from models.training.skin.evaluation import Rule, stress_inputs, urgent_probability

ROC_FILE = "roc.png"
CONFUSION_FILE = "confusion.png"


def reports(checkpoint: dict, model: torch.nn.Module, val: list[Sample]) -> dict:
    """Clean and stressed validation of the deployable model (temperature baked in), and for a single
    model its one-copy (no dihedral averaging) validation: label -> (y, probabilities, report)."""
    contract = input_contract(int(checkpoint["size"]), INPUT_NAME)
    x = torch.from_numpy(load_images(val, contract, progress=False))
    y = np.array([s.label for s in val])
    thr = float(checkpoint["threshold"])
    rule = Rule.of(checkpoint)
    p = softmax(predict_batched(model, x, batch=128))
    ps = softmax(predict_batched(model, stress_inputs(x, rule), batch=128))
    ys = np.tile(y, rule.stress_copies)
    out = {"clean": (y, p, multiclass_report(y, p, LABELS, URGENT, thr, FOCUS)),
           "stress": (ys, ps, multiclass_report(ys, ps, LABELS, URGENT, thr, FOCUS))}
    if "members" not in checkpoint:
        single = softmax(predict_batched(model.model, x, batch=128))
        out["single"] = (y, single, multiclass_report(y, single, LABELS, URGENT, thr, FOCUS))
    return out


def plots(rep: dict, threshold: float, roc_path: Path, confusion_path: Path) -> None:
    """One-vs-rest ROC of every label and of the refer group, and the arg-max confusion matrix."""
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


def averaging(checkpoint: dict) -> str:
    """What the graph averages: dihedral copies, and for an ensemble its members."""
    if "members" not in checkpoint:
        return f"{checkpoint['tta']} dihedral copies"
    copies = ", ".join(str(m.get("tta", 1)) for m in checkpoint["members"])
    return f"{len(checkpoint['members'])} ensemble members, each averaging its own dihedral copies ({copies})"


def manifest_fields(checkpoint: dict, rep: dict) -> dict:
    """Policy, calibration and the binary and per-class metrics of the manifest."""
    thr, label = float(checkpoint["threshold"]), names(checkpoint)
    clean, stress = rep["clean"][2], rep["stress"][2]
    target = Rule.of(checkpoint).target_sensitivity
    return {
        "policy": TriagePolicy(
            urgent_labels=list(URGENT), combine="sum", finding="malignant or pre-malignant lesion", focus_label=FOCUS,
            operating_point=OperatingPoint(
                threshold=thr, sensitivity=stress["focus_sensitivity"], specificity=stress["focus_specificity"],
                chosen_on=f"{label['clean']} and {label['stress']}",
                method=(f"highest threshold on P({' + '.join(URGENT)}) that refers >= {target:.2f} of the "
                        "melanomas on both the clean and the stressed validation (sensitivity/specificity "
                        "here: melanoma vs all others, stressed)"),
            ),
        ),
        "calibration": {"method": "temperature scaling of the averaged logits, baked into the exported graph",
                        "temperature": float(checkpoint["temperature"]), "fitted_on": label["clean"],
                        "objective": "multi-class NLL", "test_time_averaging": averaging(checkpoint)},
        "metrics": [_split_metrics(label["clean"], rep["clean"][0], rep["clean"][1], thr),
                    _split_metrics(label["stress"], rep["stress"][0], rep["stress"][1], thr)],
        "class_metrics": [_class_metrics(label["clean"], clean), _class_metrics(label["stress"], stress)],
    }
