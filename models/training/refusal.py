"""Know when not to answer: a "may I judge this image?" check computed from the model's own features.

Two checks, each a score where higher means "less like the images the model was trained on":

- ``density``: how far the image's features lie from the training images', stage by stage. For each
  member of the ensemble and each stage of its ResNet the check reads (the stem, then one per width;
  the shipped checks read the last two, models.training.refusal_policy.HEAD_STAGES) each channel's
  L2 norm over the stage's output is pooled (models.training.tta.channel_norms); a class-conditional
  Gaussian with one shared, Ledoit-Wolf-shrunk covariance is fitted to them (Lee et al. 2018, "A simple
  unified framework for detecting out-of-distribution samples"); the squared Mahalanobis distance to
  the nearest class mean is taken in logs and standardised with its out-of-fold statistics on the
  training images, and these terms are summed over stages and members. Several depths, because the
  stage that separates an odd image best depends on what is odd about it (Anthony & Kamnitsas 2023);
  the earliest, full-resolution ones cost the most to pool.
  It needs no negative images, so it also reacts to kinds nobody thought of.
- ``domain``: a logistic regression on the standardised pooled features and the density terms,
  trained to tell the training images from generic negatives (models/training/negatives.py): a
  linear form of outlier exposure (Hendrycks et al. 2019). It learns what the negatives share, and
  is much less moved than the density by legitimate acquisition changes (exposure, contrast, noise).

Each threshold is calibrated on in-distribution images not used for fitting; together they refuse
a stated share of them (the budget split between the two checks, `density_share`). Max-softmax and
energy scores (Hendrycks & Gimpel 2017; Liu et al. 2020) were measured too and left out: on the
shipped models they refuse 0-20% of the negatives at a 1% in-distribution rate.

Fitting is numpy and scikit-learn (its Ledoit-Wolf estimator and logistic regression); `RefusalHead`
is the torch module that computes both scores inside the exported graph, from every member's
pooled features, with plain ops (ReduceL2 for the statistics; MatMul, Mul, Add, Concat, ReduceMin,
Clip, Log in the head): the whitening matrices are precomputed here, so the graph holds no linear
algebra.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import torch
from sklearn.covariance import ledoit_wolf
from sklearn.linear_model import LogisticRegression
from torch import nn

from models.training.architectures import ResNetCAM

CHECKS = ("domain", "density")
DEFAULT_RATE = 0.01
DEFAULT_DENSITY_SHARE = 0.25
DEFAULT_C = 0.1
_EPS = 1e-6

# --------------------------------------------------------------------------------------------
# Features, inside the forward pass (torch)


@dataclass(frozen=True)
class Block:
    """The columns of one stage's statistics in a member's pooled feature vector."""

    name: str
    start: int
    stop: int


def feature_blocks(model: ResNetCAM, stages: int | None = None) -> list[Block]:
    """The layout of a member's pooled features (`channel_norms` of each stage read, concatenated):
    stem, stage0, stage1, ..., or only the last `stages` of them (Ensemble's `head_stages`)."""
    names = ["stem", *(f"stage{i}" for i in range(len(model.widths)))]
    widths = [model.widths[0], *model.widths]
    first = 0 if stages is None else len(names) - stages
    if first < 0:
        raise ValueError(f"{model.__class__.__name__} has {len(names)} stages, not {stages}")
    blocks, start = [], 0
    for name, width in zip(names[first:], widths[first:]):
        blocks.append(Block(name, start, start + width))
        start += width
    return blocks


# --------------------------------------------------------------------------------------------
# Fitting (numpy, scikit-learn)


@dataclass(frozen=True)
class DensityTerm:
    """One member's one stage: z = (log min_k ||W x - c_k||^2 - loc) / scale."""

    member: int
    block: Block
    whitening: np.ndarray  # (D, D): ||W (x - mu)||^2 is the squared Mahalanobis distance
    centres: np.ndarray  # (K, D): W mu_k
    loc: float
    scale: float

    def distances(self, x: np.ndarray) -> np.ndarray:
        z = np.asarray(x, np.float64)[:, self.block.start : self.block.stop] @ self.whitening.T
        return ((z[:, None, :] - self.centres[None]) ** 2).sum(-1).min(1)

    def z(self, x: np.ndarray) -> np.ndarray:
        return (_log_distance(self.distances(x)) - self.loc) / self.scale


@dataclass(frozen=True)
class Check:
    name: str
    statistic: str
    threshold: float  # refuse when the score is above it


@dataclass(frozen=True)
class RefusalFit:
    """Everything the graph and the manifest need: density terms, the domain head, thresholds."""

    feature_dims: tuple[int, ...]  # per member
    terms: tuple[DensityTerm, ...]
    head_weights: np.ndarray  # (sum(feature_dims) + len(terms),): features then density terms
    head_bias: float
    checks: tuple[Check, ...]  # in CHECKS order, the graph's output columns
    rate: float  # the share of calibration images refused by either check
    calibration: dict  # n, refused share per check and in all

    def scores(self, features: Sequence[np.ndarray]) -> np.ndarray:
        """(N, 2): domain logit, density sum; `features` one (N, F_m) matrix per member."""
        return _scores(self.terms, self.head_weights, self.head_bias, _members(features, self.feature_dims))

    def refuse(self, features: Sequence[np.ndarray]) -> np.ndarray:
        return refused(self.scores(features), self.thresholds)

    @property
    def thresholds(self) -> np.ndarray:
        return np.array([c.threshold for c in self.checks])

    def describe(self) -> dict:
        """What the manifest declares: each check's statistic and threshold, and the calibration."""
        return {
            "checks": [{"name": c.name, "statistic": c.statistic, "threshold": c.threshold} for c in self.checks],
            "rule": "refuse when any check's score is above its threshold",
            "rate": self.rate,
            "calibration": self.calibration,
            "members": len(self.feature_dims),
        }


def _term_z(terms: Sequence[DensityTerm], features: Sequence[np.ndarray]) -> np.ndarray:
    return np.stack([t.z(features[t.member]) for t in terms], 1)


def _scores(terms: Sequence[DensityTerm], weights: np.ndarray, bias: float, features: Sequence[np.ndarray]
            ) -> np.ndarray:
    z = _term_z(terms, features)
    head_in = np.concatenate([*features, z], 1)
    return np.stack([head_in @ weights + bias, z.sum(1)], 1)


def _members(features: Sequence[np.ndarray], dims: Sequence[int] | None = None) -> list[np.ndarray]:
    if isinstance(features, np.ndarray):
        raise TypeError("features: one (N, F) matrix per ensemble member, in a list")
    out = [np.asarray(f, np.float64) for f in features]
    if len({len(f) for f in out}) != 1:
        raise ValueError(f"every member needs the same images: row counts {[len(f) for f in out]}")
    if dims is not None and tuple(f.shape[1] for f in out) != tuple(dims):
        raise ValueError(f"feature widths {[f.shape[1] for f in out]} differ from the fit's {list(dims)}")
    return out


def fit_gaussian(x: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(whitening W, whitened class means) of class-conditional Gaussians with one shared covariance.

    The covariance of the class-centred features is estimated on standardised columns with
    Ledoit-Wolf shrinkage (towards a multiple of the identity; well-conditioned even with fewer
    images than dimensions), then inverted to its symmetric square root.
    """
    x = np.asarray(x, np.float64)
    labels = np.asarray(labels)
    classes = np.unique(labels)
    means = np.stack([x[labels == k].mean(0) for k in classes])
    residual = x - means[np.searchsorted(classes, labels)]
    scale = residual.std(0) + _EPS
    covariance, _ = ledoit_wolf(residual / scale, assume_centered=True)
    values, vectors = np.linalg.eigh(covariance)
    inverse_sqrt = (vectors / np.sqrt(np.maximum(values, _EPS))) @ vectors.T
    whitening = inverse_sqrt / scale[None, :]
    return whitening, means @ whitening.T


def _out_of_fold_log_distances(x: np.ndarray, labels: np.ndarray, fold: np.ndarray) -> np.ndarray:
    out = np.empty(len(x))
    for k in np.unique(fold):
        whitening, centres = fit_gaussian(x[fold != k], labels[fold != k])
        z = x[fold == k] @ whitening.T
        out[fold == k] = _log_distance(((z[:, None, :] - centres[None]) ** 2).sum(-1).min(1))
    return out


def _log_distance(squared: np.ndarray) -> np.ndarray:
    """log of a squared distance, floored (as the graph computes it: Clip, then Log)."""
    return np.log(np.maximum(squared, _EPS))


def _per_member(blocks: Sequence[Block] | Sequence[Sequence[Block]], members: int) -> list[Sequence[Block]]:
    """One layout for every member, or one per member (an ensemble of different widths)."""
    if blocks and isinstance(blocks[0], Block):
        return [blocks] * members
    if len(blocks) != members:
        raise ValueError(f"{len(blocks)} block layouts for {members} members")
    return list(blocks)


def fit_density(train: Sequence[np.ndarray], labels: np.ndarray,
                blocks: Sequence[Block] | Sequence[Sequence[Block]], groups: np.ndarray | None = None,
                folds: int = 5, seed: int = 0) -> tuple[list[DensityTerm], np.ndarray]:
    """One term per member and stage, and the training images' out-of-fold z (N, terms).

    Each term is standardised by the out-of-fold log distances of the training images (what an
    image the Gaussian has not seen scores). `groups`: images sharing a group (augmented copies of
    one picture) fall in the same fold. `blocks`: `feature_blocks(model)`, or one such list per member.
    """
    train = _members(train)
    labels = np.asarray(labels)
    groups = np.arange(len(labels)) if groups is None else np.asarray(groups)
    _, group_index = np.unique(groups, return_inverse=True)
    fold = np.random.default_rng(seed).permutation(group_index.max() + 1)[group_index] % folds
    terms, oof = [], []
    for member, (x, layout) in enumerate(zip(train, _per_member(blocks, len(train)))):
        for block in layout:
            xb = x[:, block.start : block.stop]
            logs = _out_of_fold_log_distances(xb, labels, fold)
            whitening, centres = fit_gaussian(xb, labels)
            loc, scale = float(logs.mean()), float(logs.std() + _EPS)
            terms.append(DensityTerm(member, block, whitening, centres, loc, scale))
            oof.append((logs - loc) / scale)
    return terms, np.stack(oof, 1)


def fit_domain_head(inside: np.ndarray, negatives: np.ndarray, c: float = DEFAULT_C) -> tuple[np.ndarray, float]:
    """Logistic regression, in-distribution (0) against negatives (1), classes weighted equally, on
    columns standardised by the in-distribution images; returned folded back to raw columns."""
    x = np.concatenate([inside, negatives]).astype(np.float64)
    target = np.r_[np.zeros(len(inside)), np.ones(len(negatives))]
    mean, scale = inside.mean(0), inside.std(0) + _EPS
    model = LogisticRegression(C=c, class_weight="balanced", max_iter=5000)
    model.fit((x - mean) / scale, target)
    weights = model.coef_[0] / scale
    return weights, float(model.intercept_[0] - mean @ weights)


def refused(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Refused where any score is above its threshold (the device's rule, device/decision/refusal.py)."""
    return (np.asarray(scores) > np.asarray(thresholds)[None, :]).any(1)


def calibrate(scores: np.ndarray, rate: float, shares: Sequence[float]) -> np.ndarray:
    """Thresholds (one per column) under which `rate` of these in-distribution images are refused
    by any column, each column's own share of refusals in proportion to `shares`.

    Column j refuses the top q * shares[j] of the images on its own; q is the largest that keeps
    the union at or below `rate` (bisection: the union grows with q).
    """
    scores = np.asarray(scores, np.float64)
    shares = np.asarray(shares, np.float64) / np.sum(shares)
    if not 0 < rate < 1:
        raise ValueError(f"rate must lie in (0, 1), got {rate}")

    def thresholds(q: float) -> np.ndarray:
        return np.array([np.quantile(scores[:, j], 1 - min(1.0, q * s), method="higher") if s > 0 else np.inf
                         for j, s in enumerate(shares)])

    low, high = 0.0, 1.0
    for _ in range(60):
        q = (low + high) / 2
        if refused(scores, thresholds(q)).mean() <= rate:
            low = q
        else:
            high = q
    return thresholds(low)


def set_thresholds(scores: np.ndarray, rate: float, density_share: float, stressed: np.ndarray | None = None,
                   stress_cap: float | None = None) -> np.ndarray:
    """Both checks' thresholds from in-distribution scores (N, 2): `calibrate` at `rate`, the density's
    share `density_share`; then the density's raised until it refuses at most `stress_cap` of the
    `stressed` scores (those images' stress copies), where given."""
    thresholds = calibrate(scores, rate, [1 - density_share, density_share])
    if stressed is not None and stress_cap is not None:
        thresholds[1] = max(thresholds[1], float(np.quantile(stressed[:, 1], 1 - stress_cap, method="higher")))
    return thresholds


def cross_fitted_refusals(scores: np.ndarray, stressed: np.ndarray, stress_rows: np.ndarray, first: np.ndarray,
                          rate: float, density_share: float) -> tuple[np.ndarray, np.ndarray]:
    """Which in-distribution images (and which of their stress copies) are refused when each half's
    thresholds are set on the other half (`first`: the images of one half, by patient), at `rate`:
    the refusals of images never used to set the thresholds that judge them, for every image."""
    images, copies = np.empty(len(scores), bool), np.empty(len(stressed), bool)
    for half in (first, ~first):
        of_half = half[stress_rows]
        thresholds = set_thresholds(scores[half], rate, density_share, stressed[of_half], rate)
        images[~half] = refused(scores[~half], thresholds)
        copies[~of_half] = refused(stressed[~of_half], thresholds)
    return images, copies


def held_out_rate(scores: np.ndarray, stressed: np.ndarray, stress_rows: np.ndarray, first: np.ndarray,
                  target: float, density_share: float, steps: int = 40) -> float:
    """The calibration rate at which the cross-fitted in-distribution refusals (`cross_fitted_refusals`)
    stay at or below `target`: `target` itself where they do, else the largest of `steps` rates below it.

    A threshold set at 1% of one half of the patients refused 1.3-1.8% of the other half's images on the
    skin model: the tail of these scores differs between groups of patients more than a rate's own
    sampling error says. Choosing the rate by images that did not set the thresholds keeps the declared
    rate a promise about images the check has not seen."""
    for rate in np.linspace(target, target / 4, steps):
        if cross_fitted_refusals(scores, stressed, stress_rows, first, float(rate), density_share)[0].mean() <= target:
            return float(rate)
    return float(target / 4)


@dataclass(frozen=True)
class Density:
    """The fitted density terms and the training images' out-of-fold z (N, terms): what does not
    depend on the negatives, so a leave-one-family-out study fits it once."""

    terms: tuple[DensityTerm, ...]
    train_z: np.ndarray


def fit_density_check(train: Sequence[np.ndarray], labels: np.ndarray,
                      blocks: Sequence[Block] | Sequence[Sequence[Block]], groups: np.ndarray | None = None,
                      seed: int = 0) -> Density:
    train = _members(train)
    if len(train[0]) != len(labels):
        raise ValueError(f"{len(labels)} labels for {len(train[0])} training rows")
    terms, train_z = fit_density(train, labels, blocks, groups, seed=seed)
    return Density(tuple(terms), train_z)


def fit_refusal(train: Sequence[np.ndarray], labels: np.ndarray, calibration: Sequence[np.ndarray],
                negatives: Sequence[np.ndarray], blocks: Sequence[Block] | Sequence[Sequence[Block]],
                rate: float = DEFAULT_RATE,
                density_share: float = DEFAULT_DENSITY_SHARE, groups: np.ndarray | None = None,
                c: float = DEFAULT_C, seed: int = 0, stress: Sequence[np.ndarray] | None = None,
                stress_cap: float | None = None, density: Density | None = None) -> RefusalFit:
    """Fit both checks and calibrate their thresholds.

    train: one (N, F) matrix per member, pooled features of the training images (include their
    augmented copies - the acquisition range the model was trained for - with `groups` naming
    which picture each row is), `labels` their classes; calibration: in-distribution images not
    used for fitting (the validation split), refused at `rate` in all; negatives: images the exam
    must refuse (every family, in equal numbers). `density_share`: the density check's share of
    the refusal budget (0 leaves the decision to the domain head alone). `stress` with `stress_cap`:
    perturbed copies of the calibration images (the exam's stress validation); the density's
    threshold is raised until it refuses at most `stress_cap` of them, so a legitimate change of
    exposure or contrast is judged by the domain head, which has seen such changes as positives.
    `density`: a `fit_density_check` of these training rows, to reuse.
    """
    train = _members(train)
    negatives = _members(negatives, [f.shape[1] for f in train])
    density = density or fit_density_check(train, labels, blocks, groups, seed)
    terms = list(density.terms)
    weights, bias = fit_domain_head(np.concatenate([*train, density.train_z], 1),
                                    np.concatenate([*negatives, _term_z(terms, negatives)], 1), c)
    head = RefusalFit(tuple(f.shape[1] for f in train), tuple(terms), weights, bias, (), rate, {})
    return calibrated(head, calibration, rate, density_share, stress, stress_cap)


def calibrated(fit: RefusalFit, calibration: Sequence[np.ndarray], rate: float,
               density_share: float = DEFAULT_DENSITY_SHARE, stress: Sequence[np.ndarray] | None = None,
               stress_cap: float | None = None) -> RefusalFit:
    """`fit` with its thresholds set on `calibration` at `rate` (`set_thresholds`; `stress` and
    `stress_cap` as in `fit_refusal`): the same density terms and domain head, only the thresholds new."""
    cal_scores = fit.scores(calibration)
    stressed = None if stress is None else fit.scores(stress)
    thresholds = set_thresholds(cal_scores, rate, density_share, stressed, stress_cap)
    stages = ", ".join(dict.fromkeys(t.block.name for t in fit.terms))
    statistics = (
        f"logit of a logistic regression (in-distribution vs generic negatives) on the pooled per-stage "
        f"channel L2 norms ({stages}) and the density terms",
        f"sum over {len(fit.terms)} member-stage terms of the standardised log squared Mahalanobis distance "
        "to the nearest class mean (shared Ledoit-Wolf covariance)",
    )
    checks = tuple(Check(n, s, float(t)) for n, s, t in zip(CHECKS, statistics, thresholds))
    per_check = (cal_scores > thresholds[None, :]).mean(0)
    summary = {"n": len(cal_scores), "refused": float(refused(cal_scores, thresholds).mean()),
               **{f"refused_by_{n}": float(r) for n, r in zip(CHECKS, per_check)}}
    return replace(fit, checks=checks, rate=rate, calibration=summary)


# --------------------------------------------------------------------------------------------
# The graph (torch)


class RefusalHead(nn.Module):
    """An ensemble head (models.training.ensemble_graph): forward(pooled) -> one (N,) score per check,
    in CHECKS order, named `output_names`; `pooled`: per member, per stage, the (N, C) channel norms of
    DihedralAverage.pooled. Refuse where any score is above its threshold (`fit.checks`).

    Batched for batch-1 latency: one whitening product per term, then every term's distances to
    every class centre in one product (``[z*z, z] @ B``: block sums of z^2 and the cross terms with
    the centres), one reduction over classes, and both scores as one product of the features and the
    log distances (the terms' standardisation folded into its weights). A graph of about T + 13 nodes
    for T terms instead of about 8 T: at batch 1 the check's cost is in the number of small nodes,
    not in arithmetic (benchmarks/refusal_cost.py).
    """

    def __init__(self, fit: RefusalFit, prefix: str = "refusal_"):
        super().__init__()
        self.output_names = tuple(f"{prefix}{c.name}" for c in fit.checks)
        self.dims = tuple(fit.feature_dims)
        self.spans = [(t.member, t.block.start, t.block.stop) for t in fit.terms]
        classes = {t.centres.shape[0] for t in fit.terms}
        if len(classes) != 1:
            raise ValueError(f"every term needs the same classes, got counts {sorted(classes)}")
        self.classes = classes.pop()
        widths = [t.whitening.shape[0] for t in fit.terms]
        offsets = np.concatenate([[0], np.cumsum(widths)])
        terms, total = len(fit.terms), int(offsets[-1])
        blocks = np.zeros((2 * total, terms * self.classes))
        for i, t in enumerate(fit.terms):
            a, b, cols = offsets[i], offsets[i + 1], slice(i * self.classes, (i + 1) * self.classes)
            self.register_buffer(f"whitening_t{i}", torch.as_tensor(t.whitening.T.copy(), dtype=torch.float32))
            blocks[a:b, cols] = 1.0  # sum of z^2 over the term's block, repeated per class
            blocks[total + a : total + b, cols] = -2.0 * t.centres.T  # -2 z . c_k
        self.register_buffer("blocks", torch.as_tensor(blocks, dtype=torch.float32))
        self.register_buffer("centres_sq", torch.as_tensor(
            np.concatenate([(t.centres**2).sum(1) for t in fit.terms]), dtype=torch.float32))
        # Both scores as one product of [features, log distances]: z_i = (log d_i - loc_i) / scale_i is
        # folded into the weights and biases (the domain's term weights, the density's sum).
        loc = np.array([t.loc for t in fit.terms])
        inv_scale = 1.0 / np.array([t.scale for t in fit.terms])
        features = sum(self.dims)
        term_weights = fit.head_weights[features:] * inv_scale
        weights = np.zeros((features + terms, 2))
        weights[:features, 0] = fit.head_weights[:features]
        weights[features:, 0] = term_weights
        weights[features:, 1] = inv_scale
        bias = [fit.head_bias - float(term_weights @ loc), -float(inv_scale @ loc)]
        self.register_buffer("score_weights", torch.as_tensor(weights, dtype=torch.float32))
        self.register_buffer("score_bias", torch.tensor(bias, dtype=torch.float32))

    def _stage(self, stages: list[torch.Tensor], start: int, stop: int) -> torch.Tensor:
        """The member's columns [start, stop): one stage's tensor as it is when the span is a stage."""
        offset = 0
        for s in stages:
            if (offset, offset + s.shape[1]) == (start, stop):
                return s
            offset += s.shape[1]
        return torch.cat(stages, dim=1)[:, start:stop]

    def forward(self, pooled: list[list[torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        if len(pooled) != len(self.dims):
            raise ValueError(f"{len(pooled)} members' features for a fit of {len(self.dims)} members")
        z = torch.cat([self._stage(pooled[m], a, b) @ getattr(self, f"whitening_t{i}")
                       for i, (m, a, b) in enumerate(self.spans)], 1)
        squared = torch.cat([z * z, z], 1) @ self.blocks + self.centres_sq
        nearest = squared.reshape(-1, len(self.spans), self.classes).amin(dim=2)
        logs = torch.log(torch.clamp(nearest, min=_EPS))
        scores = torch.cat([*(s for stages in pooled for s in stages), logs], 1) @ self.score_weights + self.score_bias
        return scores[:, 0], scores[:, 1]
