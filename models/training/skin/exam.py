"""The skin-lesion exam's recipe: dermoscopy images, seven diagnoses, refer the (pre-)malignant ones.

Its trainer, scoring, figures and card (torch, matplotlib) are imported where a method needs them:
the optimizer reads this recipe's split without torch.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from models import audit
from models.bundle import AcceptanceRule, DataSplit, EvaluationPolicy, QualityPolicy, Subgroup
from models.training.images import load_images
from models.training.recipe import Exported, Predictor, Recipe
from models.training.skin import data
from models.training.skin.identity import EXAM, IDENTITY, VERSION

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
# A site's own operating point protects melanoma referral, as the bundle's does (>= 0.92 of the
# validation melanomas): >= 0.90 after acceptance, 0.92 on the sample. Specificity is this model's
# weak side (0.57 at its own point), so the refusal bar is lower than the chest exam's.
ACCEPTANCE = AcceptanceRule(on="focus_label", sensitivity_floor=0.90, margin=0.02, min_positive=50,
                            min_negative=50, min_specificity=0.35)


class SkinRecipe(Recipe):
    exam, version, identity = EXAM, VERSION, IDENTITY
    task = "multi-class-classification"
    labels = data.LABELS
    urgent = data.URGENT
    split_method = "by-lesion-stratified"
    quality, evaluation = QUALITY, EVALUATION
    audit_checks = audit.DERMOSCOPY_CHECKS
    golden_per_class = 3
    acceptance = ACCEPTANCE
    refusal_subject = "a dermoscopy image"
    refusal_advice = ("The model only judges dermoscopy images of a single skin lesion. Check the image, "
                      "or choose another exam.")
    refusal_reads_full_side_only = True  # fitted on the 56 px members too, it refused fewer unseen kinds of image

    def default_data_dir(self) -> Path:
        return data.default_data_dir()

    def input_contract(self, size: int, tensor_name: str = "image"):
        return data.input_contract(size, tensor_name)

    def redraw_split(self, data_dir: Path, split: DataSplit):
        return data.stratified_split(data.list_samples(data_dir), split.val_fraction, split.seed)

    def validation_samples(self, checkpoint: dict, data_dir: Path | None):
        return data.checkpoint_split(checkpoint, data_dir)[1]

    def list_samples(self, data_dir: Path):
        return data.list_samples(data_dir)

    def refusal_inputs(self, checkpoint: dict, size: int, data_dir: Path | None, other: list):
        from models.training.skin.refusal_data import refusal_inputs

        return refusal_inputs(checkpoint, size, data_dir, other)

    def add_train_arguments(self, parser: argparse.ArgumentParser) -> None:
        from models.training.skin import train as trainer

        trainer.add_arguments(parser)

    def train(self, args: argparse.Namespace):
        from models.training.skin import train as trainer

        return trainer.train_model(args)

    def score(self, predictors: dict[str, Predictor], checkpoint: dict, size: int, data_dir: Path | None):
        import torch

        from models.training.skin import evaluation

        val = self.validation_samples(checkpoint, data_dir)
        x = torch.from_numpy(load_images(val, data.input_contract(size), progress=False))
        y = np.array([s.label for s in val])
        rule = evaluation.Rule.of(checkpoint)
        stress_x = evaluation.stress_inputs(x, rule)
        return {name: evaluation.score(predict, x, y, stress_x, rule) for name, predict in predictors.items()}

    def summary(self, fields: dict) -> dict[str, float]:
        clean, stress = fields["reports"]["clean"], fields["reports"]["stress"]
        return {"melanoma AUC": float(clean["per_class_auc"][data.FOCUS]),
                "melanoma AUC, stressed": float(stress["per_class_auc"][data.FOCUS]),
                "refer-group AUC": float(clean["urgent_auc"])}

    def validation_name(self, checkpoint: dict) -> str:
        from models.training.skin import results as reporting

        return reporting.names(checkpoint)["clean"]

    def results(self, checkpoint, model, val, data_dir):
        from models.training.skin import results as reporting

        return reporting.reports(checkpoint, model, val)

    def manifest_fields(self, checkpoint: dict, reports) -> dict:
        from models.training.skin import results as reporting

        return reporting.manifest_fields(checkpoint, reports)

    def plots(self, checkpoint: dict, reports, out: Path) -> list[str]:
        from models.training.skin import results as reporting

        reporting.plots(reports, float(checkpoint["threshold"]), out / reporting.ROC_FILE, out / reporting.CONFUSION_FILE)
        return [reporting.ROC_FILE, reporting.CONFUSION_FILE]

    def card(self, exported: Exported) -> str:
        from models.training.skin.card import model_card

        return model_card(exported, QUALITY)


RECIPE = SkinRecipe()
