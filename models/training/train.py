"""`bedside train`: train, calibrate, choose the operating point, export and write the bundle.

    python -m models.training.train --out models/bundles/chest-xray-pneumonia

One command does everything; the checkpoint (weights + everything the card needs) goes to
runs/ (gitignored) and `bedside export --checkpoint` can rebuild the bundle from it.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import random
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from models import audit
from models.training import augment as aug
from models.training.architectures import ResNetCAM, build_model
from models.training.data import (
    ASPECT_RANGE,
    GROUPS,
    LABELS,
    MEAN,
    STD,
    Sample,
    group_median_aspects,
    input_contract,
    load_images,
    load_split,
    WIDE,
    WIDE_ASPECT,
    held_out_groups,
)
from models.datasets import REPO_ROOT
from models.metrics import binary_report, bootstrap_intervals, subgroup_report

DEFAULT_ID = "chest-xray-pneumonia"
DEFAULT_VERSION = "2.0.0"
NATIVE_SIDE = 224  # the training images as distributed; geometry is augmented at this resolution


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=None,
                        help="folder with NORMAL/ and PNEUMONIA/ (default: $BEDSIDE_DATASETS/chest-xray/train)")
    parser.add_argument("--out", type=Path, default=None,
                        help="bundle directory to write (default: only the checkpoint in --runs-dir)")
    parser.add_argument("--epochs", type=int, default=36, help="passes over the training images (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seeds the initialisation and the augmentation (default: %(default)s)")
    parser.add_argument("--split-seed", type=int, default=0,
                        help="seeds the patient-level validation split; ensemble members share it "
                             "(default: %(default)s)")
    parser.add_argument("--size", type=int, default=128, help="square input side in pixels")
    parser.add_argument("--widths", default="16,32,64,128", help="channels per stage (multiples of 16)")
    parser.add_argument("--blocks", type=int, default=1, help="residual blocks per stage")
    parser.add_argument("--batch-size", type=int, default=64, help="images per step (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak one-cycle learning rate (AdamW)")
    parser.add_argument("--weight-decay", type=float, default=5e-4, help="AdamW weight decay (default: %(default)s)")
    parser.add_argument("--label-smoothing", type=float, default=0.05,
                        help="cross-entropy label smoothing (default: %(default)s)")
    parser.add_argument("--ema", type=float, default=0.995, help="EMA decay of the weights (0: off)")
    parser.add_argument("--consistency", type=float, default=0.0,
                        help="weight of the consistency loss between two independently augmented views of each "
                             "film (other aspect, crop, exposure): 0 trains on one view (default: %(default)s)")
    parser.add_argument("--val-fraction", type=float, default=0.17, help="share of patients held out")
    parser.add_argument("--stress-copies", type=int, default=4,
                        help="perturbed copies of each validation image for the stress validation")
    parser.add_argument("--target-sensitivity", type=float, default=0.97,
                        help="sensitivity the threshold must keep on the stress validation")
    parser.add_argument("--min-clean-sensitivity", type=float, default=0.95,
                        help="sensitivity the threshold must keep on the clean validation")
    parser.add_argument("--limit", type=int, default=0, help="use only N images (half per class; smoke tests)")
    parser.add_argument("--hold-out", default="",
                        help=f"group-shift validation: comma list of groups kept out of training and validation "
                             f"and reported on their own ({', '.join(GROUPS)}, {WIDE}: films wider than "
                             f"{WIDE_ASPECT})")
    parser.add_argument("--max-flip-rate", type=float, default=audit.MAX_FLIP_RATE,
                        help="the audit limit the bundle declares; export refuses a model over it")
    parser.add_argument("--bootstrap", type=int, default=1000, help="patient bootstrap resamples for the intervals")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads; results depend on it, so it is recorded (default: %(default)s)")
    parser.add_argument("--id", default=DEFAULT_ID, help="bundle id (default: %(default)s)")
    parser.add_argument("--version", default=DEFAULT_VERSION, help="bundle version (default: %(default)s)")
    parser.add_argument("--runs-dir", type=Path, default=REPO_ROOT / "runs", help="where checkpoints go")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (logs, CI)")


@dataclass
class Dataset:
    train_x: torch.Tensor  # native resolution (geometry is augmented before the resize)
    train_y: torch.Tensor
    train_aspect: torch.Tensor  # original film aspect (group median where unknown)
    val: list[Sample]
    val_x: torch.Tensor  # model inputs made exactly as on the device
    val_native: torch.Tensor
    val_aspect: torch.Tensor
    val_y: np.ndarray
    sampler: aug.AspectSampler
    n_duplicates: int
    n_patients_val: int
    held_out: list[Sample]
    held_out_x: torch.Tensor | None
    n_unknown_aspect: int


def seed_everything(seed: int, threads: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)


def load_dataset(args: argparse.Namespace) -> Dataset:
    split = load_split(args.data, args.val_fraction, args.split_seed, args.hold_out, args.limit)
    medians = group_median_aspects(split.train + split.val)

    def aspects(part: list[Sample]) -> torch.Tensor:
        return torch.tensor([s.aspect or medians[s.group] for s in part], dtype=torch.float32)

    def known(label: int) -> torch.Tensor:
        return torch.tensor([s.aspect for s in split.train if s.label == label and s.aspect is not None] or [1.0])

    contract, native = input_contract(args.size), input_contract(NATIVE_SIDE)
    progress = not args.no_progress
    return Dataset(
        train_x=torch.from_numpy(load_images(split.train, native, progress=progress)),
        train_y=torch.tensor([s.label for s in split.train], dtype=torch.int64),
        train_aspect=aspects(split.train),
        val=split.val,
        val_x=torch.from_numpy(load_images(split.val, contract, progress=False)),
        val_native=torch.from_numpy(load_images(split.val, native, progress=False)),
        val_aspect=aspects(split.val),
        val_y=np.array([s.label for s in split.val], dtype=np.int64),
        sampler=aug.AspectSampler(normal=known(0), pneumonia=known(1), low=ASPECT_RANGE[0], high=ASPECT_RANGE[1]),
        n_duplicates=split.n_duplicates,
        n_patients_val=len({s.patient for s in split.val}),
        held_out=split.held_out,
        held_out_x=torch.from_numpy(load_images(split.held_out, contract, progress=False)) if split.held_out else None,
        n_unknown_aspect=sum(s.aspect is None for s in split.train + split.val),
    )


class EMA:
    """Exponential moving average of the weights (BN statistics copied), with a short warm-up."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.model = copy.deepcopy(model).eval()
        self.decay, self.steps = decay, 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.steps += 1
        d = min(self.decay, (1 + self.steps) / (10 + self.steps))
        for ema_p, p in zip(self.model.parameters(), model.parameters()):
            ema_p.lerp_(p, 1 - d)
        for ema_b, b in zip(self.model.buffers(), model.buffers()):
            ema_b.copy_(b)


def class_weights(y: torch.Tensor) -> torch.Tensor:
    """Inverse-frequency weights: the loss sees a 50/50 prior, so the train set's 74% pneumonia
    does not leak into the probabilities (and from there into the threshold)."""
    counts = torch.bincount(y, minlength=len(LABELS)).float()
    return counts.sum() / (len(LABELS) * counts.clamp(min=1))


def consistency_loss(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence between the class distributions of two views of the same films."""
    p, q = F.softmax(first, dim=1), F.softmax(second, dim=1)
    mean = ((p + q) / 2).clamp_min(1e-7).log()
    return (F.kl_div(mean, p, reduction="batchmean") + F.kl_div(mean, q, reduction="batchmean")) / 2


def batch_loss(model: ResNetCAM, data: Dataset, idx: torch.Tensor, weights: torch.Tensor, gen: torch.Generator,
               args: argparse.Namespace) -> torch.Tensor:
    """Cross-entropy on an augmented view of each film; with --consistency, on two independent views
    (each at its own drawn aspect, crop and exposure) plus the divergence between their answers, so the
    net is taught directly that a film re-aspected or cropped is the same film."""
    views = 2 if args.consistency > 0 else 1
    x = torch.cat([aug.augment(data.train_x[idx], MEAN, STD, aug.TRAIN, gen, data.train_aspect[idx], data.sampler,
                               args.size) for _ in range(views)])
    logits, _ = model(x)
    y = data.train_y[idx].repeat(views)
    loss = F.cross_entropy(logits, y, weight=weights, label_smoothing=args.label_smoothing)
    if views == 2:
        loss = loss + args.consistency * consistency_loss(*logits.chunk(2))
    return loss


def train(model: ResNetCAM, data: Dataset, args: argparse.Namespace) -> ResNetCAM:
    """One-cycle AdamW on augmented batches; returns the EMA model (or the model if EMA is off)."""
    gen = torch.Generator().manual_seed(args.seed)
    n = len(data.train_y)
    steps_per_epoch = math.ceil(n / args.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch, pct_start=0.2
    )
    weights = class_weights(data.train_y)
    ema = EMA(model, args.ema) if args.ema > 0 else None
    bar = tqdm(total=args.epochs * steps_per_epoch, desc="train", unit="step", disable=args.no_progress)
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, args.batch_size):
            idx = order[start : start + args.batch_size]
            loss = batch_loss(model, data, idx, weights, gen, args)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if ema:
                ema.update(model)
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
    bar.close()
    return ema.model if ema else model.eval()


@torch.no_grad()
def predict_logits(model: ResNetCAM, x: torch.Tensor, batch: int = 256) -> np.ndarray:
    model.eval()
    return np.concatenate([model(x[i : i + batch].float())[0].numpy() for i in range(0, len(x), batch)])


def stress_inputs(data: Dataset, copies: int, seed: int, size: int) -> torch.Tensor:
    """`copies` versions of each validation image under simulated acquisition shift (fixed seed),
    each film shown at an aspect drawn log-uniformly over the declared range, whatever its class."""
    gen = torch.Generator().manual_seed(seed + 1)
    return torch.cat([aug.augment(data.val_native, MEAN, STD, aug.STRESS, gen, data.val_aspect, data.sampler, size)
                      for _ in range(copies)])


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


def threshold_for_sensitivity(y: np.ndarray, p: np.ndarray, sensitivity: float) -> float:
    """The highest threshold that still calls at least `sensitivity` of the positives positive."""
    pos = np.sort(p[y == 1])
    allowed_misses = int(math.floor((1.0 - sensitivity) * len(pos)))
    return float(pos[allowed_misses])


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


def command_line(args: argparse.Namespace | dict, exam: str = DEFAULT_ID) -> str:
    """The full `bedside train` command with every option spelled out, so the record does not
    depend on defaults (the same whether the run was started as `bedside train` or `python -m`)."""
    values = dict(vars(args) if isinstance(args, argparse.Namespace) else args)
    values["exam"] = exam
    options: list[str] = []
    for action_name, value in sorted(values.items()):
        if action_name in ("func", "command", "no_progress") or action_name.startswith("_") or value in (None, "None"):
            continue
        flag = "--" + action_name.replace("_", "-")
        options += [flag, str(value)]
    return shlex.join(["bedside", "train", *options])


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


def held_out_metrics(model: ResNetCAM, data: Dataset, args: argparse.Namespace, temperature: float,
                     threshold: float) -> list[dict]:
    """The group-shift result: the held-out groups, never seen in training or validation."""
    if data.held_out_x is None:
        return []
    y = np.array([s.label for s in data.held_out])
    p = probability(predict_logits(model, data.held_out_x), temperature)
    name = f"group shift: held out {args.hold_out} (n={len(y)}, never trained on)"
    if y.all() or not y.any():
        return [dict(split=name, **subgroup_report(y == 1, p, threshold, {"all": np.ones(len(y), bool)})[0])]
    return [split_metrics(name, y, p, threshold)]


def run(args: argparse.Namespace) -> int:
    from models.training.card import AuditFailed, write_bundle  # matplotlib side; imported late to keep --help fast

    started = time.time()
    try:
        held_out_groups(args.hold_out)
    except ValueError as exc:
        print(f"bedside train: --hold-out: {exc}", file=sys.stderr)
        return 2
    seed_everything(args.seed, args.threads)
    data = load_dataset(args)
    widths = tuple(int(w) for w in args.widths.split(","))
    model = build_model(widths, args.blocks)
    model = train(model, data, args)

    val_logits = predict_logits(model, data.val_x)
    temperature = fit_temperature(val_logits, data.val_y)
    stress_y = np.tile(data.val_y, args.stress_copies)
    stress_x = stress_inputs(data, args.stress_copies, args.seed, args.size)
    stress_p = probability(predict_logits(model, stress_x), temperature)
    val_p = probability(val_logits, temperature)
    threshold = choose_threshold((data.val_y, val_p), (stress_y, stress_p),
                                 args.target_sensitivity, args.min_clean_sensitivity)
    training_seconds = time.time() - started

    n_val, n_pat = len(data.val_y), data.n_patients_val
    patients = [s.patient for s in data.val]
    checkpoint = {
        "widths": widths,
        "blocks": args.blocks,
        "size": args.size,
        "state_dict": model.state_dict(),
        "temperature": temperature,
        "threshold": threshold,
        "target_sensitivity": args.target_sensitivity,
        "min_clean_sensitivity": args.min_clean_sensitivity,
        "metrics": [
            split_metrics(f"validation (patient-level, n={n_val}, {n_pat} patients)", data.val_y, val_p, threshold),
            split_metrics(
                f"validation under simulated acquisition and aspect shift ({args.stress_copies} perturbed copies, "
                f"n={len(stress_y)})", stress_y, stress_p, threshold),
            *held_out_metrics(model, data, args, temperature, threshold),
        ],
        "intervals": bootstrap_intervals(data.val_y == 1, val_p, threshold, patients, args.bootstrap, args.seed),
        "subgroups": subgroups(data.val, data.val_y, val_p, threshold),
        "curves": {name: (torch.from_numpy(y), torch.from_numpy(p))
                   for name, y, p in (("clean", data.val_y, val_p), ("stress", stress_y, stress_p))},
        "data": {"n_train": len(data.train_y), "n_val": n_val, "n_val_patients": n_pat,
                 "n_duplicates_removed": data.n_duplicates, "n_unknown_aspect": data.n_unknown_aspect,
                 "n_held_out": len(data.held_out), "held_out": args.hold_out, "limit": args.limit,
                 "split_seed": args.split_seed,
                 "n_train_positive": int(data.train_y.sum()), "val_fraction": args.val_fraction},
        "train_config": {k: str(v) for k, v in sorted(vars(args).items()) if k != "func" and not k.startswith("_")},
        "augment": {k: str(v) for k, v in dataclasses.asdict(aug.TRAIN).items()},
        "training_command": command_line(args),
        "seed": args.seed,
        "max_flip_rate": args.max_flip_rate,
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "training_seconds": round(training_seconds, 1),
    }
    run_dir = Path(args.runs_dir) / f"{args.id}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, run_dir / "checkpoint.pt")
    for m in checkpoint["metrics"]:
        print(f"{m['split']}: " + "  ".join(f"{k} {m[k]:.4f}" for k in ("auc", "accuracy", "sensitivity",
                                                                       "specificity", "flagged") if k in m))
    print(f"temperature {temperature:.3f}, threshold {threshold:.4f}, trained in {training_seconds:.0f} s")
    print(f"checkpoint {run_dir / 'checkpoint.pt'}")
    if args.out is not None:
        try:
            bundle = write_bundle(checkpoint, Path(args.out), args.id, args.version,
                                  check_inputs=data.val_x[:8].float(), data_dir=args.data)
        except AuditFailed as exc:
            print(f"bedside train: {exc} (the checkpoint is kept)", file=sys.stderr)
            return 1
        print(f"bundle {bundle}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.training.train", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
