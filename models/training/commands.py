"""``bedside train`` and ``bedside export``: the training floor's two commands, in the shape
device/cli.py dispatches to. Importing this module imports torch: the appliance never does; where
torch is missing, ``bedside`` names the 'train' extra instead.

Each exam has its own trainer with its own options: ``bedside train --exam skin-lesion-triage``
(default: the chest X-ray exam). ``bedside export`` reads the exam from the checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from models.training import train
from models.training.card import AuditFailed, group_shift_folds, write_bundle
from models.training.skin import card as skin_card
from models.training.skin import train as skin_train

# exam (bundle id) -> its trainer module (add_arguments(parser), run(args))
TRAINERS = {train.DEFAULT_ID: train, skin_train.DEFAULT_ID: skin_train}


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, required=True, help="runs/<id>-<time>/checkpoint.pt")
    parser.add_argument("--out", type=Path, required=True, help="bundle directory to write (replaced as a whole)")
    parser.add_argument("--data", type=Path, default=None,
                        help="the training folder, for the shortcut audits on its validation images "
                             "(default: $BEDSIDE_DATASETS/chest-xray/train)")
    parser.add_argument("--group-shift", type=Path, nargs="*", default=[], metavar="CHECKPOINT",
                        help="checkpoints of --hold-out training runs, reported in the model card")
    parser.add_argument("--group-shift-note", default="",
                        help="a sentence for the card under the group-shift table (e.g. how their recipe differed)")
    parser.add_argument("--max-flip-rate", type=float, default=None,
                        help="the audit limit the bundle declares (default: the one the checkpoint was trained with)")
    parser.add_argument("--id", default=train.DEFAULT_ID, help="bundle id (default: %(default)s)")
    parser.add_argument("--version", default=train.DEFAULT_VERSION, help="bundle version (default: %(default)s)")


def run_export(args: argparse.Namespace) -> int:
    def load(path: Path) -> dict:
        return torch.load(path, map_location="cpu", weights_only=True)

    checkpoint = load(args.checkpoint)
    if args.max_flip_rate is not None:
        checkpoint["max_flip_rate"] = args.max_flip_rate
    if checkpoint.get("exam") == skin_train.DEFAULT_ID:
        bundle_id = skin_train.DEFAULT_ID if args.id == train.DEFAULT_ID else args.id
        version = skin_train.DEFAULT_VERSION if args.version == train.DEFAULT_VERSION else args.version
        try:
            print(f"bundle {skin_card.write_bundle(checkpoint, Path(args.out), bundle_id, version, args.data)}")
        except AuditFailed as exc:
            print(f"bedside export: {exc}", file=sys.stderr)
            return 1
        return 0
    folds = group_shift_folds([load(p) for p in args.group_shift])
    try:
        bundle = write_bundle(checkpoint, Path(args.out), args.id, args.version, data_dir=args.data, group_shift=folds,
                              group_shift_note=args.group_shift_note)
    except AuditFailed as exc:
        print(f"bedside export: {exc}", file=sys.stderr)
        return 1
    print(f"bundle {bundle}")
    return 0


def exam_of(argv: list[str]) -> str:
    """The --exam value on a command line (default: the chest exam); the trainer is chosen by it."""
    for i, arg in enumerate(argv):
        if arg == "--exam" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--exam="):
            return arg.split("=", 1)[1]
    return train.DEFAULT_ID


def add_arguments(parser: argparse.ArgumentParser, name: str, argv: list[str]) -> None:
    if name == "export":
        parser.set_defaults(_run=run_export)
        add_export_arguments(parser)
        return
    exam = exam_of(argv)
    parser.add_argument("--exam", choices=sorted(TRAINERS), default=train.DEFAULT_ID,
                        help="which exam's model to train; its options follow")
    trainer = TRAINERS.get(exam, train)  # an unknown --exam is refused by the choices above
    parser.set_defaults(_run=trainer.run)
    trainer.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return args._run(args)
