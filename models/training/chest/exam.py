"""The chest X-ray exam's recipe: pediatric frontal radiographs, pneumonia vs normal.

Its trainer, scoring and card (torch, matplotlib) are imported where a method needs them: the
optimizer reads this recipe's split without torch.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from models import audit
from models.bundle import (AcceptanceRule, AuditGroup, DataSplit, EvaluationPolicy, OperatingPoint, QualityPolicy,
                           SplitMetrics, Subgroup, TriagePolicy)
from models.training.chest import data
from models.training.chest.identity import EXAM, IDENTITY, VERSION
from models.training.recipe import Exported, Predictor, Recipe

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
# The NORMAL2 normals are the acquisition batch whose geometry the owners' test set resembles: a
# 0.8 squeeze flipped 8.1% of the test normals where validation said 2.2%. The geometry checks
# are scored on them alone too, and held to the same limit.
AUDIT_GROUP = AuditGroup(name="NORMAL2 normals", file_pattern=r"^NORMAL2-IM-", label="NORMAL",
                         checks=["squeeze_0.8", "widen_1.25", "border_crop"])

# A site's own operating point (`bedside acceptance run`): keep sensitivity >= 0.95 on its cases after
# acceptance, choosing on a sample at 0.965. On the owners' test set a point chosen this way on a 30%
# sample gave 0.95-0.96 on the other 70% (issue 25).
ACCEPTANCE = AcceptanceRule(on="urgent_group", sensitivity_floor=0.95, margin=0.015, min_positive=50,
                            min_negative=50, min_specificity=0.5)


class ChestRecipe(Recipe):
    exam, version, identity = EXAM, VERSION, IDENTITY
    task = "binary-classification"
    labels = data.LABELS
    urgent = ("PNEUMONIA",)
    split_method = "by-patient"
    quality, evaluation = QUALITY, EVALUATION
    audit_checks = audit.RADIOGRAPH_CHECKS
    audit_group = AUDIT_GROUP
    golden_per_class = 4
    acceptance = ACCEPTANCE
    refusal_subject = "a chest X-ray"
    refusal_advice = ("The model only judges frontal chest radiographs (PA/AP) of children. Check the image, "
                      "or choose another exam.")

    def default_data_dir(self) -> Path:
        return data.default_data_dir()

    def input_contract(self, size: int, tensor_name: str = "image"):
        return data.input_contract(size, tensor_name)

    def redraw_split(self, data_dir: Path, split: DataSplit):
        samples, _ = data.remove_duplicates(data.list_samples(data_dir))
        train_idx, val_idx = data.split_by_patient(samples, split.val_fraction, split.seed)
        return [samples[i] for i in train_idx], [samples[i] for i in val_idx]

    def validation_samples(self, checkpoint: dict, data_dir: Path | None):
        return data.checkpoint_split(checkpoint, data_dir).val

    def list_samples(self, data_dir: Path):
        return data.list_samples(data_dir)

    def refusal_inputs(self, checkpoint: dict, size: int, data_dir: Path | None, other: list):
        from models.training.chest.refusal_data import refusal_inputs

        return refusal_inputs(checkpoint, size, data_dir, other)

    def add_train_arguments(self, parser: argparse.ArgumentParser) -> None:
        from models.training.chest import train as trainer

        trainer.add_arguments(parser)

    def train(self, args: argparse.Namespace):
        from models.training.chest import train as trainer

        return trainer.train_model(args)

    def score(self, predictors: dict[str, Predictor], checkpoint: dict, size: int, data_dir: Path | None):
        from models.training.chest import evaluation

        val = evaluation.load_validation(data.checkpoint_split(checkpoint, data_dir), size,
                                         checkpoint["data"].get("held_out", ""))
        rule = evaluation.Rule.of(checkpoint)
        return {name: evaluation.score(predict, val, rule) for name, predict in predictors.items()}

    def summary(self, fields: dict) -> dict[str, float]:
        names = ("clean AUC", "stress AUC", "held-out AUC")
        return {name: float(m["auc"]) for name, m in zip(names, fields["metrics"]) if "auc" in m}

    def validation_name(self, checkpoint: dict) -> str:
        return checkpoint["metrics"][0]["split"]

    def results(self, checkpoint, model, val, data_dir):
        """The checkpoint's own figures: training (or the ensemble command) scored this very graph."""
        return None

    def manifest_fields(self, checkpoint: dict, results) -> dict:
        from models.training.chest.card import shift_note

        metrics = [SplitMetrics(**m) for m in checkpoint["metrics"]]
        clean, stress = metrics[0], metrics[1]
        return {
            "policy": TriagePolicy(
                urgent_labels=list(self.urgent), finding="pneumonia",
                operating_point=OperatingPoint(
                    threshold=float(checkpoint["threshold"]), sensitivity=stress.sensitivity,
                    specificity=stress.specificity, chosen_on=stress.split,
                    method=(f"highest threshold keeping sensitivity >= {checkpoint['target_sensitivity']:.2f} "
                            "on the pooled stress validation and >= "
                            f"{checkpoint['min_clean_sensitivity']:.2f} on the clean validation, to protect "
                            "specificity under shift" + shift_note(checkpoint)),
                ),
            ),
            "calibration": {
                "method": "temperature scaling, baked into the exported logits and cam",
                "temperature": float(checkpoint["temperature"]),
                "fitted_on": clean.split,
                "objective": "class-balanced NLL (50/50 prior, as in training)",
            },
            "metrics": metrics,
        }

    def plots(self, checkpoint: dict, results, out: Path) -> list[str]:
        from models.training.chest import card as card_text

        card_text.plot_roc(checkpoint["curves"], float(checkpoint["threshold"]), out / card_text.ROC_FILE)
        return [card_text.ROC_FILE]

    def card(self, exported: Exported) -> str:
        from models.training.chest.card import model_card

        return model_card(exported)


RECIPE = ChestRecipe()
