"""`bedside train` (the chest X-ray exam): train a small ResNet on the Kermany films with the film
aspect made class-independent, then calibrate and choose the operating point (models.training.chest.
evaluation). The checkpoint (weights + everything the card needs) goes to runs/ (gitignored);
`bedside train --out` and `bedside export --checkpoint` write the bundle from it.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from models import audit
from models.datasets import REPO_ROOT
from models.training.architectures import ResNetCAM, build_model
from models.training.chest import augment as aug
from models.training.chest.data import (GROUPS, LABELS, MEAN, STD, WIDE, WIDE_ASPECT, held_out_groups, input_contract,
                                        load_split)
from models.training.chest.evaluation import NATIVE_SIDE, Rule, Validation, aspects, film_aspects, load_validation, score
from models.training.chest.identity import EXAM, VERSION
from models.training.images import load_images
from models.training.loop import (EMA, command_line, consistency_loss, predict_batched, save_checkpoint,
                                  seed_everything, step, train_config)


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
    parser.add_argument("--id", default=EXAM, help="bundle id (default: %(default)s)")
    parser.add_argument("--version", default=VERSION, help="bundle version (default: %(default)s)")
    parser.add_argument("--runs-dir", type=Path, default=REPO_ROOT / "runs", help="where checkpoints go")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (logs, CI)")


@dataclass
class Dataset:
    train_x: torch.Tensor  # native resolution (geometry is augmented before the resize)
    train_y: torch.Tensor
    train_aspect: torch.Tensor  # original film aspect (group median where unknown)
    sampler: aug.AspectSampler
    validation: Validation
    n_duplicates: int
    n_unknown_aspect: int


def load_dataset(args: argparse.Namespace) -> Dataset:
    split = load_split(args.data, args.val_fraction, args.split_seed, args.hold_out, args.limit)
    medians, sampler = film_aspects(split)
    return Dataset(
        train_x=torch.from_numpy(load_images(split.train, input_contract(NATIVE_SIDE), progress=not args.no_progress)),
        train_y=torch.tensor([s.label for s in split.train], dtype=torch.int64),
        train_aspect=aspects(split.train, medians),
        sampler=sampler,
        validation=load_validation(split, args.size, args.hold_out),
        n_duplicates=split.n_duplicates,
        n_unknown_aspect=sum(s.aspect is None for s in split.train + split.val),
    )


def class_weights(y: torch.Tensor) -> torch.Tensor:
    """Inverse-frequency weights: the loss sees a 50/50 prior, so the train set's 74% pneumonia
    does not leak into the probabilities (and from there into the threshold)."""
    counts = torch.bincount(y, minlength=len(LABELS)).float()
    return counts.sum() / (len(LABELS) * counts.clamp(min=1))


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
            step(batch_loss(model, data, idx, weights, gen, args), model, opt, sched, ema, bar, epoch)
    bar.close()
    return ema.model if ema else model.eval()


def train_model(args: argparse.Namespace) -> tuple[dict, Path]:
    """Train, score and save; the checkpoint and its path. ValueError for an unknown --hold-out group."""
    started = time.time()
    try:
        held_out_groups(args.hold_out)
    except ValueError as exc:
        raise ValueError(f"--hold-out: {exc}") from None
    seed_everything(args.seed, args.threads)
    data = load_dataset(args)
    widths = tuple(int(w) for w in args.widths.split(","))
    model = train(build_model(widths, args.blocks), data, args)
    rule = Rule(args.target_sensitivity, args.min_clean_sensitivity, args.stress_copies, args.bootstrap, args.seed)
    scored = score(lambda x: predict_batched(model, x), data.validation, rule)
    training_seconds = time.time() - started
    val = data.validation
    checkpoint = {
        "exam": EXAM,
        "widths": widths,
        "blocks": args.blocks,
        "size": args.size,
        "state_dict": model.state_dict(),
        "target_sensitivity": args.target_sensitivity,
        "min_clean_sensitivity": args.min_clean_sensitivity,
        **scored,
        "data": {"n_train": len(data.train_y), "n_val": len(val.y), "n_val_patients": val.n_patients,
                 "n_duplicates_removed": data.n_duplicates, "n_unknown_aspect": data.n_unknown_aspect,
                 "n_held_out": len(val.held_out), "held_out": args.hold_out, "limit": args.limit,
                 "split_seed": args.split_seed,
                 "n_train_positive": int(data.train_y.sum()), "val_fraction": args.val_fraction},
        "train_config": train_config(args),
        "augment": {k: str(v) for k, v in dataclasses.asdict(aug.TRAIN).items()},
        "training_command": command_line(args, EXAM),
        "seed": args.seed,
        "max_flip_rate": args.max_flip_rate,
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "training_seconds": round(training_seconds, 1),
    }
    for m in checkpoint["metrics"]:
        print(f"{m['split']}: " + "  ".join(f"{k} {m[k]:.4f}" for k in ("auc", "accuracy", "sensitivity",
                                                                       "specificity", "flagged") if k in m))
    print(f"temperature {checkpoint['temperature']:.3f}, threshold {checkpoint['threshold']:.4f}, "
          f"trained in {training_seconds:.0f} s")
    return checkpoint, save_checkpoint(checkpoint, args.runs_dir, args.id)
