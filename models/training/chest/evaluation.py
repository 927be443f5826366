"""How a chest X-ray model is scored: calibration, the operating point and every validation figure.

One rule for a freshly trained model and for an ensemble of them: the temperature minimises the
class-balanced NLL on the clean validation; the threshold is the highest that keeps the target
sensitivity on the pooled stress validation (films at every aspect, simulated acquisition shift)
and the floor on the clean one; metrics, patient-bootstrap intervals, subgroups and the held-out
groups of a group-shift run all at that threshold.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from models.metrics import binary_report, bootstrap_intervals, subgroup_report
from models.training.chest import augment as aug
from models.training.chest.data import (
    ASPECT_RANGE,
    GROUPS,
    MEAN,
    STD,
    WIDE_ASPECT,
    Sample,
    Split,
    group_median_aspects,
    input_contract,
)
from models.training.images import load_images
from models.training.loop import threshold_for_sensitivity
from models.training.recipe import Predictor

NATIVE_SIDE = 224  # the training images as distributed; geometry is augmented at this resolution


@dataclass(frozen=True)
class Rule:
    """The scoring settings a run was trained with (its checkpoint records them)."""

    target_sensitivity: float  # kept on the pooled stress validation
    min_clean_sensitivity: float  # kept on the clean validation
    stress_copies: int
    bootstrap: int
    seed: int  # seeds the stress copies (seed + 1) and the bootstrap

    @classmethod
    def of(cls, checkpoint: dict) -> "Rule":
        cfg = checkpoint["train_config"]
        return cls(float(checkpoint["target_sensitivity"]), float(checkpoint["min_clean_sensitivity"]),
                   int(cfg["stress_copies"]), int(cfg.get("bootstrap", 1000)), int(checkpoint["seed"]))


@dataclass
class Validation:
    """A run's validation (and held-out) films, as model inputs of one side."""

    samples: list[Sample]
    x: torch.Tensor  # model inputs made exactly as on the device
    y: np.ndarray
    native: torch.Tensor  # at the native side, for the stress copies
    aspect: torch.Tensor  # original film aspect (group median where unknown)
    sampler: aug.AspectSampler
    size: int
    hold_out: str
    held_out: list[Sample]
    held_out_x: torch.Tensor | None
    _stress: dict = field(default_factory=dict)

    @property
    def n_patients(self) -> int:
        return len({s.patient for s in self.samples})

    def stress(self, copies: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
        """`copies` versions of each validation film under simulated acquisition shift (fixed seed),
        each shown at an aspect drawn log-uniformly over the declared range, whatever its class."""
        if (copies, seed) not in self._stress:
            gen = torch.Generator().manual_seed(seed + 1)
            x = torch.cat([aug.augment(self.native, MEAN, STD, aug.STRESS, gen, self.aspect, self.sampler, self.size)
                           for _ in range(copies)])
            self._stress[(copies, seed)] = (x, np.tile(self.y, copies))
        return self._stress[(copies, seed)]


def film_aspects(split: Split) -> tuple[dict[str, float], aug.AspectSampler]:
    """Each acquisition group's median known aspect (the stand-in where a film's is unknown), and the
    sampler of film aspects drawn from the training films' known ones."""
    medians = group_median_aspects(split.train + split.val)

    def known(label: int) -> torch.Tensor:
        return torch.tensor([s.aspect for s in split.train if s.label == label and s.aspect is not None] or [1.0])

    return medians, aug.AspectSampler(normal=known(0), pneumonia=known(1), low=ASPECT_RANGE[0], high=ASPECT_RANGE[1])


def aspects(samples: list[Sample], medians: dict[str, float]) -> torch.Tensor:
    return torch.tensor([s.aspect or medians[s.group] for s in samples], dtype=torch.float32)


def load_validation(split: Split, size: int, hold_out: str) -> Validation:
    medians, sampler = film_aspects(split)
    contract = input_contract(size)
    return Validation(
        samples=split.val,
        x=torch.from_numpy(load_images(split.val, contract, progress=False)),
        y=np.array([s.label for s in split.val], dtype=np.int64),
        native=torch.from_numpy(load_images(split.val, input_contract(NATIVE_SIDE), progress=False)),
        aspect=aspects(split.val, medians),
        sampler=sampler,
        size=size,
        hold_out=hold_out,
        held_out=split.held_out,
        held_out_x=torch.from_numpy(load_images(split.held_out, contract, progress=False)) if split.held_out else None,
    )


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """Temperature minimising the class-balanced NLL (the same prior the loss used).

    A 1-D grid search over log T: exact enough, no optimiser to tune, cannot diverge.
    """
    margin = (logits[:, 1] - logits[:, 0]).astype(np.float64)
    w = np.where(y == 1, 0.5 / max((y == 1).mean(), 1e-9), 0.5 / max((y == 0).mean(), 1e-9))
    sign = np.where(y == 1, 1.0, -1.0)
    temps = np.exp(np.linspace(np.log(0.05), np.log(20.0), 2001))
    nll = [np.mean(w * np.logaddexp(0.0, -sign * margin / t)) for t in temps]
    return float(temps[int(np.argmin(nll))])


def probability(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """P(PNEUMONIA) from two-class logits: softmax == sigmoid of the logit margin."""
    margin = (logits[:, 1] - logits[:, 0]).astype(np.float64) / temperature
    return 1.0 / (1.0 + np.exp(-margin))


def choose_threshold(clean: tuple[np.ndarray, np.ndarray], stress: tuple[np.ndarray, np.ndarray],
                     stress_sensitivity: float, clean_sensitivity: float) -> float:
    """Highest threshold meeting both sensitivity constraints (margin under shift, floor on clean).

    Highest, because the known failure on the official test split is NORMALs scoring high
    (specificity collapses); with sensitivity pinned, every bit of threshold buys specificity.
    """
    return min(threshold_for_sensitivity(*stress, stress_sensitivity),
               threshold_for_sensitivity(*clean, clean_sensitivity))


def split_metrics(name: str, y: np.ndarray, p: np.ndarray, threshold: float) -> dict:
    r = binary_report(y, p, threshold)
    return dict(split=name, n=r.n, n_positive=r.n_positive, auc=r.auc, accuracy=r.accuracy,
                sensitivity=r.sensitivity, specificity=r.specificity, threshold=r.threshold,
                brier=r.brier, ece=r.ece)


def aspect_bucket(aspect: float | None) -> str:
    if aspect is None:
        return "aspect unknown"
    if aspect < 1.2:
        return "aspect < 1.2"
    return "aspect 1.2-1.5" if aspect < WIDE_ASPECT else f"aspect >= {WIDE_ASPECT}"


def subgroups(samples: list[Sample], y: np.ndarray, p: np.ndarray, threshold: float) -> list[dict]:
    """Validation metrics by acquisition group and by the film's original aspect."""
    masks = {f"group {g}": np.array([s.group == g for s in samples]) for g in GROUPS}
    for bucket in ("aspect < 1.2", "aspect 1.2-1.5", f"aspect >= {WIDE_ASPECT}", "aspect unknown"):
        masks[bucket] = np.array([aspect_bucket(s.aspect) == bucket for s in samples])
    return subgroup_report(y == 1, p, threshold, masks)


def held_out_metrics(predict: Predictor, val: Validation, temperature: float, threshold: float) -> list[dict]:
    """The group-shift result: the held-out groups, never seen in training or validation."""
    if val.held_out_x is None:
        return []
    y = np.array([s.label for s in val.held_out])
    p = probability(predict(val.held_out_x), temperature)
    name = f"group shift: held out {val.hold_out} (n={len(y)}, never trained on)"
    if y.all() or not y.any():
        return [dict(split=name, **subgroup_report(y == 1, p, threshold, {"all": np.ones(len(y), bool)})[0])]
    return [split_metrics(name, y, p, threshold)]


def score(predict: Predictor, val: Validation, rule: Rule) -> dict:
    """The checkpoint fields that follow from a model's validation logits (`predict`: raw logits)."""
    val_logits = predict(val.x)
    temperature = fit_temperature(val_logits, val.y)
    stress_x, stress_y = val.stress(rule.stress_copies, rule.seed)
    stress_p = probability(predict(stress_x), temperature)
    val_p = probability(val_logits, temperature)
    threshold = choose_threshold((val.y, val_p), (stress_y, stress_p), rule.target_sensitivity,
                                 rule.min_clean_sensitivity)
    n_val = len(val.y)
    return {
        "temperature": temperature,
        "threshold": threshold,
        "metrics": [
            split_metrics(f"validation (patient-level, n={n_val}, {val.n_patients} patients)", val.y, val_p, threshold),
            split_metrics(f"validation under simulated acquisition and aspect shift ({rule.stress_copies} perturbed "
                          f"copies, n={len(stress_y)})", stress_y, stress_p, threshold),
            *held_out_metrics(predict, val, temperature, threshold),
        ],
        "intervals": bootstrap_intervals(val.y == 1, val_p, threshold, [s.patient for s in val.samples],
                                         rule.bootstrap, rule.seed),
        "subgroups": subgroups(val.samples, val.y, val_p, threshold),
        "curves": {name: (torch.from_numpy(y), torch.from_numpy(p))
                   for name, y, p in (("clean", val.y, val_p), ("stress", stress_y, stress_p))},
    }
