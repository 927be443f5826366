"""`bedside train --exam skin-lesion-triage`: train the seven-class dermoscopy model from scratch.

    bedside train --exam skin-lesion-triage --out models/bundles/skin-lesion-triage

Seeded and deterministic (one thread by default); the checkpoint goes to runs/ and
`bedside export --checkpoint` rebuilds the bundle from it. Calibration and the operating point:
models.training.skin.evaluation.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from models import audit
from models.datasets import REPO_ROOT
from models.metrics import multiclass_report
from models.training.architectures import build_model
from models.training.images import load_images
from models.training.loop import (EMA, command_line, consistency_loss, predict_batched, save_checkpoint,
                                  seed_everything, step, train_config)
from models.training.skin import augment as aug
from models.training.skin.data import FOCUS, LABELS, MEAN, STD, URGENT, input_contract, load_split
from models.training.skin.evaluation import Rule, fit_temperature, score, softmax, stress_inputs
from models.training.skin.identity import EXAM, VERSION
from models.training.tta import DihedralAverage


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=None,
                        help="folder with one subfolder per diagnosis (default: $BEDSIDE_DATASETS/dermatology/train)")
    parser.add_argument("--out", type=Path, default=None, help="bundle directory to write")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0, help="seeds the initialisation and the augmentation")
    parser.add_argument("--split-seed", type=int, default=0,
                        help="seeds the by-lesion validation split; ensemble members share it (default: %(default)s)")
    parser.add_argument("--size", type=int, default=112, help="square input side in pixels")
    parser.add_argument("--widths", default="16,32,64,128", help="channels per stage (multiples of 16)")
    parser.add_argument("--blocks", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--label-smoothing", type=float, default=0.05)
    parser.add_argument("--ema", type=float, default=0.995)
    parser.add_argument("--class-weight-power", type=float, default=0.5,
                        help="loss weight of a class = (1 / its frequency) ** power (0: none, 1: balanced)")
    parser.add_argument("--sample-power", type=float, default=0.0,
                        help="draw each training image with weight (1 / its class frequency) ** power, with "
                             "replacement (0: every image once per epoch; 1: class-balanced batches)")
    parser.add_argument("--consistency", type=float, default=0.0,
                        help="weight of the consistency loss between two independently augmented views of each "
                             "image (0: one view)")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="share of lesions held out, per class")
    parser.add_argument("--tta", type=int, default=4, choices=(1, 2, 4, 8),
                        help="dihedral copies averaged inside the exported graph")
    parser.add_argument("--target-sensitivity", type=float, default=0.92,
                        help="melanoma sensitivity the operating point keeps on clean and stressed validation")
    parser.add_argument("--stress-copies", type=int, default=2)
    parser.add_argument("--limit", type=int, default=0, help="use only N images (smoke tests)")
    parser.add_argument("--max-flip-rate", type=float, default=audit.MAX_FLIP_RATE,
                        help="the audit limit the bundle declares; export refuses a model over it")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--id", default=EXAM)
    parser.add_argument("--version", default=VERSION)
    parser.add_argument("--runs-dir", type=Path, default=REPO_ROOT / "runs")
    parser.add_argument("--no-progress", action="store_true")


def class_weights(y: torch.Tensor, power: float) -> torch.Tensor:
    counts = torch.bincount(y, minlength=len(LABELS)).float().clamp(min=1)
    w = (counts.sum() / counts) ** power
    return w / (w * counts).sum() * counts.sum()  # mean weight per image is 1


def sampling_weights(y: torch.Tensor, power: float) -> torch.Tensor | None:
    """Per-image draw weights (1 / class frequency) ** power; None for plain epochs (power 0)."""
    if power == 0:
        return None
    counts = torch.bincount(y, minlength=len(LABELS)).double().clamp(min=1)
    return (1.0 / counts[y]) ** power


def fit(x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(args.seed)
    model = build_model(tuple(int(w) for w in args.widths.split(",")), args.blocks, classes=len(LABELS), channels=3)
    n = len(y)
    steps = args.epochs * math.ceil(n / args.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.2)
    weights = class_weights(y, args.class_weight_power)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    ema = EMA(model, args.ema) if args.ema > 0 else None
    bar = tqdm(total=steps, desc="train", unit="step", disable=args.no_progress)
    draw = sampling_weights(y, args.sample_power)
    views = 2 if args.consistency > 0 else 1
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(n, generator=gen) if draw is None else torch.multinomial(draw, n, True, generator=gen)
        for start in range(0, n, args.batch_size):
            idx = order[start : start + args.batch_size]
            logits, _ = model(torch.cat([aug.augment(x[idx], mean, std, aug.TRAIN, gen) for _ in range(views)]))
            loss = F.cross_entropy(logits, y[idx].repeat(views), weight=weights, label_smoothing=args.label_smoothing)
            if views == 2:
                loss = loss + args.consistency * consistency_loss(*logits.chunk(2))
            step(loss, model, opt, sched, ema, bar, epoch)
    bar.close()
    return (ema.model if ema else model).eval()


def predict(model: torch.nn.Module, x: torch.Tensor, copies: int) -> np.ndarray:
    """Logits with `copies` dihedral copies averaged, as the exported graph computes them."""
    return predict_batched(DihedralAverage(model, copies).eval(), x, batch=128)


def train_model(args: argparse.Namespace) -> tuple[dict, Path]:
    """Train, score and save; the checkpoint and its path."""
    started = time.time()
    seed_everything(args.seed, args.threads)
    train, val = load_split(args.data, args.val_fraction, args.split_seed, args.limit)
    contract = input_contract(args.size)
    progress = not args.no_progress
    train_x = torch.from_numpy(load_images(train, contract, progress))
    train_y = torch.tensor([s.label for s in train])
    val_x = torch.from_numpy(load_images(val, contract, progress))
    val_y = np.array([s.label for s in val])
    model = fit(train_x, train_y, args)

    rule = Rule(args.target_sensitivity, args.stress_copies, args.seed)
    scored = score(lambda x: predict(model, x, args.tta), val_x, val_y, stress_inputs(val_x, rule), rule)
    single_logits = predict(model, val_x, 1)
    single = multiclass_report(val_y, softmax(single_logits, fit_temperature(single_logits, val_y)), LABELS, URGENT,
                               scored["threshold"], FOCUS)
    checkpoint = {
        "exam": EXAM, "labels": LABELS, "urgent_labels": URGENT,
        "widths": tuple(int(w) for w in args.widths.split(",")), "blocks": args.blocks, "size": args.size,
        "channels": 3, "classes": len(LABELS), "tta": args.tta,
        "state_dict": model.state_dict(), "temperature": scored["temperature"], "threshold": scored["threshold"],
        "data": {"n_train": len(train), "n_val": len(val), "val_fraction": args.val_fraction, "limit": args.limit,
                 "split_seed": args.split_seed,
                 "train_counts": [int((train_y == i).sum()) for i in range(len(LABELS))],
                 "val_counts": [int((val_y == i).sum()) for i in range(len(LABELS))]},
        "train_config": train_config(args),
        "augment": {k: str(v) for k, v in dataclasses.asdict(aug.TRAIN).items()},
        "training_command": command_line(args, EXAM), "seed": args.seed, "max_flip_rate": args.max_flip_rate,
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "training_seconds": round(time.time() - started, 1),
    }
    for name, r in (("validation", scored["reports"]["clean"]), ("stress", scored["reports"]["stress"]),
                    ("validation, no TTA", single)):
        print(f"{name}: balanced accuracy {r['balanced_accuracy']:.4f}  melanoma AUC {r['per_class_auc']['mel']:.4f}  "
              f"sens {r['focus_sensitivity']:.4f} spec {r['focus_specificity']:.4f}  "
              f"urgent AUC {r['urgent_auc']:.4f}  per-class AUC "
              + " ".join(f"{k} {v:.3f}" for k, v in r["per_class_auc"].items()))
    print(f"temperature {scored['temperature']:.3f}, threshold {scored['threshold']:.4f}, "
          f"trained in {checkpoint['training_seconds']:.0f} s")
    return checkpoint, save_checkpoint(checkpoint, args.runs_dir, args.id)
