"""The refusal check of a checkpoint, as `bedside export` builds it: fitted on the exported graph's
own pooled features, calibrated, measured, and declared in the manifest (models.bundle.RefusalPolicy).

The sets, all from the exam's recipe (`Recipe.refusal_inputs`) and models.training.negatives:

- fit: the training images, clean, under the training augmentation (2 copies) and under the stress
  augmentation (1 copy): the acquisition range the model was trained for; each copy grouped with
  its picture for the density's out-of-fold statistics;
- negatives for the domain head: every family of the exam (draw 0, `per_family` images each);
- calibration: every validation image, refused at a rate chosen so that each random half of the
  patients (lesions), judged by thresholds set on the other half, is refused at most `rate`
  (models.training.refusal.held_out_rate); the density's threshold is then raised until it refuses
  at most that rate of the stress copies (the study in models/training/refusal.py: the density alone
  over-refuses legitimate exposure changes);
- measured, never used for the thresholds that judge them: each validation half and its stress copies
  under the other half's thresholds, a fresh draw (1) of every family, and each family again after a
  fit that left it out (leave-one-family-out: how the check does on a kind of image it was not shown).

Everything is seeded; the same checkpoint and data give the same check.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from models.bundle import RefusalCheck, RefusalMeasure, RefusalPolicy
from models.preprocess import to_model_input
from models.training import negatives as ng
from models.training import refusal as rf
from models.training.ensemble_graph import Ensemble
from models.training.images import decode_rgb

DEFAULT_PER_FAMILY = 300
SMOKE_PER_FAMILY = 16  # checkpoints trained on a --limit subset (tests): a quick, still real, fit
NEGATIVE_SIDE = 224  # negatives are rendered at the training images' side, then preprocessed as on the device
SOURCE_IMAGES = 600  # decoded own / other-exam images the image-based families draw from
AUGMENTED_COPIES = 2  # training-augmentation copies of each training image in the fit (plus one stress copy)
CHUNK = 512  # training images per augmentation batch
SEED = 0
BATCH = 256
# The check reads the statistics of each member's last two stages only. With every stage (stem on)
# it cost 44-70% of the served INT8 graph's p50 on a 2-core CPU: its float branch reads the
# full-resolution maps the quantized network otherwise never materialises, in about 9 graph nodes
# per stage. Measured on the 3.0.0 networks (same negatives, leave-one-family-out, 1% in-distribution
# rate): the last two stages refuse as much as every stage on skin (mean 93% against 91%) and a
# little less on chest (95% against 96%; fundus photographs left out of the fit 80% against 89%).
HEAD_STAGES = 2


@dataclass
class RefusalInputs:
    """What an exam's recipe gives the refusal fit (model inputs already preprocessed for the graph)."""

    train_batches: Callable[[], Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]]  # (x, labels, picture ids)
    val_x: np.ndarray
    val_groups: np.ndarray  # patient / lesion of each validation image
    stress_x: np.ndarray  # the exam's stress copies of the validation images
    stress_rows: np.ndarray  # the validation row each stress copy is of
    own: list[np.ndarray]  # decoded training images (uint8), for the inverted / rotated / cropped families
    other: list[np.ndarray]  # decoded images of the other exam


@dataclass(frozen=True)
class BuiltRefusal:
    fit: rf.RefusalFit
    policy: RefusalPolicy
    head: rf.RefusalHead


def decoded(samples: list, n: int = SOURCE_IMAGES, seed: int = SEED) -> list[np.ndarray]:
    """A seeded choice of `n` samples, decoded to uint8 RGB as the device receives them."""
    chosen = np.sort(np.random.default_rng(seed).permutation(len(samples))[:n])
    return [decode_rgb(samples[i].path) for i in chosen]


def other_exam_images(exam: str) -> list[np.ndarray]:
    """The other exams' training images (a seeded choice), where their data is here; none otherwise
    (the family is then left out, and the manifest's measures say so by its absence)."""
    from models.training import registry

    images: list[np.ndarray] = []
    for recipe in registry.recipes().values():
        folder = recipe.default_data_dir()
        if recipe.exam != exam and folder.is_dir():
            images += decoded(recipe.list_samples(folder))
    return images


def refusal_for(recipe, checkpoint: dict, graph: Ensemble, data_dir: Path | None, log: Callable[[str], None] = print
                ) -> BuiltRefusal:
    """The refusal check of a checkpoint's graph, from its exam's recipe (data, words) and negatives."""
    size = int(checkpoint["size"])
    inputs = recipe.refusal_inputs(checkpoint, size, data_dir, other_exam_images(recipe.exam))
    per_family = SMOKE_PER_FAMILY if int(checkpoint["data"].get("limit", 0)) else DEFAULT_PER_FAMILY
    return build(recipe.exam, graph, inputs, recipe.input_contract(size), recipe.refusal_subject,
                 recipe.refusal_advice, member_blocks(graph), per_family=per_family, log=log)


@torch.no_grad()
def graph_features(graph: Ensemble, x: np.ndarray) -> list[np.ndarray]:
    """Per member, the (N, F) pooled stage features the refusal head reads, in batches."""
    parts: list[list[np.ndarray]] = []
    for start in range(0, len(x), BATCH):
        _, members = graph.features(torch.from_numpy(np.asarray(x[start : start + BATCH], np.float32)))
        parts.append([m.numpy().astype(np.float64) for m in members])
    return [np.concatenate(column) for column in zip(*parts)]


def _stack(rows: list[list[np.ndarray]]) -> list[np.ndarray]:
    return [np.concatenate(column) for column in zip(*rows)]


def negative_inputs(family: ng.Family, seed: int, n: int, contract) -> np.ndarray:
    images = ng.generate(family, seed, n, NEGATIVE_SIDE)
    return np.stack([to_model_input(img, contract) for img in images])


def build(exam: str, graph: Ensemble, inputs: RefusalInputs, contract, subject: str, advice: str,
          blocks: list[list[rf.Block]], per_family: int = DEFAULT_PER_FAMILY, rate: float = rf.DEFAULT_RATE,
          log: Callable[[str], None] = print) -> BuiltRefusal:
    """Fit, calibrate and measure the refusal check of `graph` (no heads yet) for `exam`."""
    train_rows, labels, groups = [], [], []
    for x, y, g in inputs.train_batches():
        train_rows.append(graph_features(graph, x))
        labels.append(y)
        groups.append(g)
    train, labels, groups = _stack(train_rows), np.concatenate(labels), np.concatenate(groups)
    log(f"refusal: features of {len(labels)} training rows (clean and augmented copies)")
    val = graph_features(graph, inputs.val_x)
    stress = graph_features(graph, inputs.stress_x)
    patients = np.unique(inputs.val_groups)
    chosen = set(np.random.default_rng(SEED).permutation(patients)[: len(patients) // 2].tolist())
    first_half = np.array([g in chosen for g in inputs.val_groups])

    families = ng.families(exam, own=inputs.own, other=inputs.other)
    fit_neg = {f.name: graph_features(graph, negative_inputs(f, 0, per_family, contract)) for f in families}
    test_neg = {f.name: graph_features(graph, negative_inputs(f, 1, per_family, contract)) for f in families}
    log(f"refusal: {len(families)} negative families, {per_family} images each (draws 0 and 1)")

    density = rf.fit_density_check(train, labels, blocks, groups, seed=SEED)

    def fitted(names: list[str], at: float) -> rf.RefusalFit:
        return rf.fit_refusal(train, labels, val, _stack([fit_neg[n] for n in names]), blocks, rate=at,
                              groups=groups, stress=stress, stress_cap=at, density=density)

    names = [f.name for f in families]
    first = fitted(names, rate)
    val_scores, stress_scores = first.scores(val), first.scores(stress)
    at = rf.held_out_rate(val_scores, stress_scores, inputs.stress_rows, first_half, rate, rf.DEFAULT_DENSITY_SHARE)
    fit = rf.calibrated(first, val, at, stress=stress, stress_cap=at)
    held_val, held_stress = rf.cross_fitted_refusals(val_scores, stress_scores, inputs.stress_rows, first_half, at,
                                                     rf.DEFAULT_DENSITY_SHARE)
    measured = [
        _share(held_val, "validation (in-distribution), each half of the patients under thresholds set on the other"),
        _share(held_stress, "stress copies of the validation (simulated acquisition shift), the same way"),
        *(_measure(fit, test_neg[f.name], f"negatives: {f.description} (a fresh draw)") for f in families),
    ]
    for f in families:
        alone = fitted([n for n in names if n != f.name], at)
        measured.append(_measure(alone, test_neg[f.name], f"left out of the fit: {f.description}"))
    for m in measured:
        log(f"refusal: {m.refused:6.1%} of {m.n:5d}  {m.data}")
    head = rf.RefusalHead(fit)
    checks = [RefusalCheck(name=c.name, output=out, statistic=c.statistic, threshold=c.threshold)
              for c, out in zip(fit.checks, head.output_names)]
    policy = RefusalPolicy(
        checks=checks, subject=subject, advice=advice, calibrated_refusal_rate=rate,
        calibrated_on=(f"validation (in-distribution): all {len(inputs.val_groups)} images of the {len(patients)} "
                       f"patients or lesions, at {at:.2%}, the largest rate at which each random half of them "
                       f"(seed {SEED}) under thresholds set on the other half is refused at most {rate:.0%}; the "
                       f"density check also refuses at most {at:.2%} of their stress copies"),
        measured=measured)
    return BuiltRefusal(fit, policy, head)


def _measure(fit: rf.RefusalFit, features: list[np.ndarray], data: str) -> RefusalMeasure:
    return _share(fit.refuse(features), data)


def _share(refused: np.ndarray, data: str) -> RefusalMeasure:
    return RefusalMeasure(data=data, n=int(len(refused)), refused=round(float(refused.mean()), 4))


def _readers(graph: Ensemble) -> str:
    """Which members the scores read, where not every member (the card is otherwise silent on it)."""
    if len(graph.head_members) == len(graph.members):
        return ""
    numbers = [str(i + 1) for i in graph.head_members]
    named = numbers[0] if len(numbers) == 1 else ", ".join(numbers[:-1]) + " and " + numbers[-1]
    sides = sorted({graph.side // graph.pools[i] for i in graph.head_members})
    return (f" from the features of member{'s' if len(numbers) > 1 else ''} {named} only "
            f"({', '.join(f'{s} px' for s in sides)}: the members that see the full input side)")


def member_blocks(graph: Ensemble) -> list[list[rf.Block]]:
    """Per member the refusal head reads, the layout of its pooled stage features."""
    return [rf.feature_blocks(graph.members[i].model, graph.head_stages) for i in graph.head_members]


def card_section(policy: RefusalPolicy, graph: Ensemble) -> str:
    """The model card's refusal section: the rule, what it reads, the checks and every measured rate."""
    lines = [
        "## When the model refuses",
        "",
        f"An image that passes the quality checks is UNGRADABLE, \"This does not look like {policy.subject}. "
        f"{policy.advice}\", when any of these scores, computed in the same model run{_readers(graph)}, "
        "is above its threshold:",
        "",
        "| check | graph output | statistic | threshold |",
        "| --- | --- | --- | --- |",
        *(f"| {c.name} | `{c.output}` | {c.statistic} | {c.threshold:.4f} |" for c in policy.checks),
        "",
        f"Thresholds set for {policy.calibrated_refusal_rate:.0%} of in-distribution images, on "
        f"{policy.calibrated_on}. Refused shares, on images never used for fitting or thresholds:",
        "",
        "| images | n | refused |",
        "| --- | --- | --- |",
        *(f"| {m.data} | {m.n} | {m.refused:.1%} |" for m in policy.measured),
        "",
        "The negative families are made by models/training/negatives.py (rendered, or drawn from the shared "
        "fundus photographs, CT/MR/US DICOM frames and the other exam's images); \"left out of the fit\" is the "
        "family's refusal after a fit that never saw it: the best estimate here of a kind nobody made.",
    ]
    return "\n".join(lines)
