"""``bedside train`` and ``bedside export``: the training floor's two commands, in the shape
device/cli.py dispatches to. Importing this module imports torch: the appliance never does; where
torch is missing, ``bedside`` names the 'train' extra instead.

Each exam has its own trainer with its own options (models.training.registry names the exams):
``bedside train --exam skin-lesion-triage`` (default: the chest X-ray exam). ``bedside export``
reads the exam from the checkpoint, a trained model's or an ensemble's
(``python -m models.training.ensemble``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from models.training import registry
from models.training.bundle_writer import AuditFailed, group_shift_folds, write_bundle


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="runs/<id>-<time>/checkpoint.pt, or an ensemble checkpoint")
    parser.add_argument("--out", type=Path, required=True, help="bundle directory to write (replaced as a whole)")
    parser.add_argument("--data", type=Path, default=None,
                        help="the training folder, for the shortcut audits on its validation images "
                             "(default: the exam's folder in $BEDSIDE_DATASETS)")
    parser.add_argument("--group-shift", type=Path, nargs="*", default=[], metavar="CHECKPOINT",
                        help="checkpoints of --hold-out training runs (or fold ensembles), reported in the model card")
    parser.add_argument("--group-shift-note", default="",
                        help="a sentence for the card under the group-shift table (e.g. how their recipe differed)")
    parser.add_argument("--max-flip-rate", type=float, default=None,
                        help="the audit limit the bundle declares (default: the one the checkpoint was trained with)")
    parser.add_argument("--id", default=None, help="bundle id (default: the exam's)")
    parser.add_argument("--version", default=None, help="bundle version (default: the exam's current one)")


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def run_export(args: argparse.Namespace) -> int:
    checkpoint = load_checkpoint(args.checkpoint)
    if args.max_flip_rate is not None:
        checkpoint["max_flip_rate"] = args.max_flip_rate
    try:
        recipe = registry.recipe_of(checkpoint)
        folds = group_shift_folds([load_checkpoint(p) for p in args.group_shift])
        bundle = write_bundle(recipe, checkpoint, args.out, args.id, args.version, data_dir=args.data,
                              group_shift=folds, group_shift_note=args.group_shift_note)
    except (AuditFailed, registry.UnknownExam, ValueError) as exc:
        print(f"bedside export: {exc}", file=sys.stderr)
        return 1
    print(f"bundle {bundle}")
    return 0


def run_train(args: argparse.Namespace) -> int:
    recipe = registry.recipe(args.exam)
    try:
        checkpoint, path = recipe.train(args)
    except ValueError as exc:
        print(f"bedside train: {exc}", file=sys.stderr)
        return 2
    if args.out is None:
        return 0
    try:
        bundle = write_bundle(recipe, checkpoint, args.out, args.id, args.version, data_dir=args.data)
    except AuditFailed as exc:
        print(f"bedside train: {exc} (the checkpoint is kept)", file=sys.stderr)
        return 1
    print(f"bundle {bundle}")
    return 0


def exam_of(argv: list[str]) -> str:
    """The --exam value on a command line (default: the registry's default exam); the trainer is chosen by it."""
    for i, arg in enumerate(argv):
        if arg == "--exam" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--exam="):
            return arg.split("=", 1)[1]
    return registry.DEFAULT_EXAM


def add_arguments(parser: argparse.ArgumentParser, name: str, argv: list[str]) -> None:
    if name == "export":
        parser.set_defaults(_run=run_export)
        add_export_arguments(parser)
        return
    exams = registry.recipes()
    parser.add_argument("--exam", choices=sorted(exams), default=registry.DEFAULT_EXAM,
                        help="which exam's model to train; its options follow")
    parser.set_defaults(_run=run_train)
    # an unknown --exam is refused by the choices above, after the default exam's options are added
    exams.get(exam_of(argv), exams[registry.DEFAULT_EXAM]).add_train_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return args._run(args)
