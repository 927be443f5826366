"""Combine trained members of one exam into an ensemble checkpoint, averaged inside one graph.

    python -m models.training.ensemble --member runs/m64/.../checkpoint.pt runs/m128/.../checkpoint.pt \
        --out runs/ensemble.pt

Members differ in seed, input side and width, and share the validation split (train them with the
same --split-seed, --val-fraction, --limit and --hold-out). The ensemble is scored by its exam's own
rule, exactly as training scores one model: the members' calibrated logits are averaged, the
temperature is refitted on the average, the threshold chosen by the exam's rule, and every metric
recomputed; each member is scored the same way inside the ensemble's graph (same inputs) for the
card's members table. The result is a checkpoint like any other: `bedside export --checkpoint`
writes its bundle, models.training.operating_point re-targets it, and members of --hold-out runs
make a fold ensemble whose held-out metrics `export --group-shift` reports.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch

from models.training import registry
from models.training.ensemble_graph import Ensemble
from models.training.export import ensemble_model
from models.training.loop import predict_batched, write_checkpoint
from models.training.recipe import Recipe

# What the members must agree on: the validation split, and so every figure's denominator.
SPLIT_KEYS = ("val_fraction", "split_seed", "limit", "held_out", "n_train", "n_val")
# What each member brings into the ensemble checkpoint (its network and how it was made).
MEMBER_KEYS = ("widths", "blocks", "size", "channels", "classes", "tta", "state_dict", "temperature", "seed",
               "train_config", "training_command", "trained_at", "training_seconds")
# What the ensemble takes over from its first member: the shared split and the scoring settings.
SHARED_KEYS = ("data", "train_config", "augment", "target_sensitivity", "min_clean_sensitivity", "seed",
               "max_flip_rate", "channels", "classes", "labels", "urgent_labels")


class EnsembleRefused(ValueError):
    """Members that cannot be averaged in one graph; the message says why in plain words."""


def _split_value(checkpoint: dict, key: str) -> str:
    data = checkpoint["data"]
    if key == "split_seed":
        return str(data.get("split_seed", checkpoint["seed"]))  # runs before --split-seed used --seed for both
    return str(data.get(key, "" if key == "held_out" else 0))


def check_members(checkpoints: list[dict], names: list[str]) -> Recipe:
    """The members' exam; EnsembleRefused unless they are two or more trained models of one exam
    with one validation split."""
    if len(checkpoints) < 2:
        raise EnsembleRefused("an ensemble needs at least two members")
    nested = [n for n, c in zip(names, checkpoints) if "members" in c]
    if nested:
        raise EnsembleRefused(f"{nested[0]} is already an ensemble: give its members instead")
    exams = {registry.recipe_of(c).exam for c in checkpoints}
    if len(exams) > 1:
        raise EnsembleRefused(f"the members are of different exams ({', '.join(sorted(exams))})")
    for key in SPLIT_KEYS:
        values = {_split_value(c, key) for c in checkpoints}
        if len(values) > 1:
            raise EnsembleRefused(
                f"the members do not share one validation split: their {key.replace('_', ' ')} differs "
                f"({', '.join(sorted(values))}); train every member with the same --split-seed, --val-fraction, "
                "--limit and --hold-out")
    return registry.recipe_of(checkpoints[0])


def member_entry(checkpoint: dict) -> dict:
    return {k: checkpoint[k] for k in MEMBER_KEYS if k in checkpoint}


def combine(checkpoints: list[dict], names: list[str], data_dir: Path | None, command: str,
            log=print, views: int | None = None) -> dict:
    """The ensemble checkpoint of `checkpoints` (their file names in `names`, for messages).

    `views`: the dihedral views each member averages in the graph (default: each member's own). Two
    members of two views cost what one member of four does, the budget that buys the ensemble.
    """
    recipe = check_members(checkpoints, names)
    members = [member_entry(c) for c in checkpoints]
    if views is not None:
        for m in members:
            m["tta"] = views
    try:
        graph = ensemble_model({"members": members}, temperature=1.0)
    except ValueError as exc:
        raise EnsembleRefused(str(exc)) from None
    predictors = {"ensemble": lambda x: predict_batched(graph, x)}
    for i, m in enumerate(members):
        alone = Ensemble([graph.members[i]], [int(m["size"])], side=graph.side).eval()
        predictors[f"member {i}"] = lambda x, alone=alone: predict_batched(alone, x)
    log(f"scoring {len(members)} members and their average at {graph.side} px on the shared validation split")
    scored = recipe.score(predictors, checkpoints[0], graph.side, data_dir)
    for i, m in enumerate(members):
        m["scores"] = recipe.summary(scored[f"member {i}"])
    first = checkpoints[0]
    return {
        **{k: first[k] for k in SHARED_KEYS if k in first},
        "exam": recipe.exam,
        "members": members,
        "size": graph.side,
        **scored["ensemble"],
        "scores": recipe.summary(scored["ensemble"]),
        "training_command": command,
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "training_seconds": round(sum(float(c["training_seconds"]) for c in checkpoints), 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.training.ensemble", description=__doc__.splitlines()[0])
    parser.add_argument("--member", type=Path, nargs="+", required=True, metavar="CHECKPOINT",
                        help="training checkpoints of one exam, sharing the validation split")
    parser.add_argument("--out", type=Path, required=True, help="where the ensemble checkpoint goes")
    parser.add_argument("--data", type=Path, default=None, help="the training folder (default: the exam's)")
    parser.add_argument("--max-flip-rate", type=float, default=None,
                        help="the audit limit the bundle declares (default: the strictest of the members')")
    parser.add_argument("--views", type=int, choices=(1, 2, 4, 8), default=None,
                        help="dihedral views each member averages in the graph (default: each member's own)")
    args = parser.parse_args(argv)
    checkpoints = [torch.load(p, map_location="cpu", weights_only=True) for p in args.member]
    command = shlex.join(["python", "-m", "models.training.ensemble", *(argv if argv is not None else sys.argv[1:])])
    try:
        ensemble = combine(checkpoints, [str(p) for p in args.member], args.data, command, views=args.views)
    except (EnsembleRefused, registry.UnknownExam) as exc:
        print(f"ensemble: {exc}", file=sys.stderr)
        return 1
    limits = [float(c["max_flip_rate"]) for c in checkpoints if "max_flip_rate" in c]
    if args.max_flip_rate is not None or limits:
        ensemble["max_flip_rate"] = args.max_flip_rate if args.max_flip_rate is not None else min(limits)
    for name, value in ensemble["scores"].items():
        print(f"ensemble {name} {value:.4f}  members " + "  ".join(f"{m['scores'].get(name, float('nan')):.4f}"
                                                                  for m in ensemble["members"]))
    print(f"temperature {ensemble['temperature']:.3f}, threshold {ensemble['threshold']:.4f}")
    write_checkpoint(ensemble, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
