"""How a dermoscopy model is scored: calibration, the operating point and the validation reports.

One rule for a freshly trained model and for an ensemble of them: the temperature minimises the
multi-class NLL of the (averaged) logits on validation; the threshold on P(refer group) is the
highest that refers at least the target share of the melanomas both on the clean validation and
under simulated acquisition shift.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models.metrics import multiclass_report
from models.training.loop import threshold_for_sensitivity
from models.training.recipe import Predictor
from models.training.skin import augment as aug
from models.training.skin.data import FOCUS, LABELS, MEAN, MELANOMA, STD, URGENT


@dataclass(frozen=True)
class Rule:
    """The scoring settings a run was trained with (its checkpoint records them)."""

    target_sensitivity: float  # share of melanomas referred, clean and stressed
    stress_copies: int
    seed: int  # seeds the stress copies (seed + 1)

    @classmethod
    def of(cls, checkpoint: dict) -> "Rule":
        cfg = checkpoint["train_config"]
        return cls(float(cfg.get("target_sensitivity", 0.92)), int(cfg.get("stress_copies", 2)), int(checkpoint["seed"]))


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """Temperature minimising the multi-class NLL on validation (1-D grid over log T)."""
    z = logits.astype(np.float64)
    best, best_t = np.inf, 1.0
    for t in np.exp(np.linspace(np.log(0.2), np.log(5.0), 401)):
        s = z / t
        nll = np.mean(np.log(np.exp(s - s.max(1, keepdims=True)).sum(1)) + s.max(1) - s[np.arange(len(y)), y])
        if nll < best:
            best, best_t = nll, float(t)
    return best_t


def softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    s = logits.astype(np.float64) / temperature
    e = np.exp(s - s.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def urgent_probability(p: np.ndarray) -> np.ndarray:
    return p[:, [LABELS.index(u) for u in URGENT]].sum(1)


def melanoma_threshold(y: np.ndarray, urgent: np.ndarray, sensitivity: float) -> float:
    """Highest threshold on P(urgent group) that still refers >= `sensitivity` of the melanomas."""
    return threshold_for_sensitivity((y == MELANOMA).astype(int), urgent, sensitivity)


def stress_inputs(x: torch.Tensor, rule: Rule) -> torch.Tensor:
    """`rule.stress_copies` perturbed copies of each validation input (fixed seed)."""
    gen = torch.Generator().manual_seed(rule.seed + 1)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return torch.cat([aug.augment(x, mean, std, aug.STRESS, gen) for _ in range(rule.stress_copies)])


def score(predict: Predictor, x: torch.Tensor, y: np.ndarray, stress_x: torch.Tensor, rule: Rule) -> dict:
    """Temperature, threshold and the clean and stressed reports of a model (`predict`: raw logits)."""
    logits = predict(x)
    temperature = fit_temperature(logits, y)
    p = softmax(logits, temperature)
    stress_y = np.tile(y, rule.stress_copies)
    stress_p = softmax(predict(stress_x), temperature)
    threshold = min(melanoma_threshold(y, urgent_probability(p), rule.target_sensitivity),
                    melanoma_threshold(stress_y, urgent_probability(stress_p), rule.target_sensitivity))
    return {"temperature": temperature, "threshold": threshold,
            "reports": {"clean": multiclass_report(y, p, LABELS, URGENT, threshold, FOCUS),
                        "stress": multiclass_report(stress_y, stress_p, LABELS, URGENT, threshold, FOCUS)}}
