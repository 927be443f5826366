"""Choose the chest X-ray model's operating point for the shift, from the group-shift runs.

A threshold set for sensitivity S on the patient-level validation loses sensitivity on an
acquisition group the model never saw, and the group-shift runs (`bedside train --hold-out`)
measure how much. So the validation target is raised until the same rule, applied in each
group-shift run to that run's own validation, keeps the required sensitivity on the held-out groups
(on average over the runs); the shipped model is then given that target, and its metrics are
recomputed at the new threshold. A model and its group-shift runs may each be an ensemble
(models.training.ensemble): each is scored as its graph computes.

    python -m models.training.operating_point --checkpoint runs/.../main/checkpoint.pt \
        --group-shift runs/.../fold-*/*/checkpoint.pt --out runs/.../shifted.pt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from models.metrics import bootstrap_intervals, softmax
from models.training.chest.data import checkpoint_split, input_contract
from models.training.chest.evaluation import choose_threshold, split_metrics, subgroups
from models.training.export import deployable
from models.training.images import load_images
from models.training.loop import predict_batched, write_checkpoint

CANDIDATES = (0.95, 0.96, 0.97, 0.98, 0.99)
REQUIRED_SENSITIVITY = 0.95


@torch.no_grad()
def held_out_scores(checkpoint: dict, data_dir: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """Labels and calibrated P(PNEUMONIA) of a group-shift run's held-out images."""
    split = checkpoint_split(checkpoint, data_dir)
    if len(split.held_out) != int(checkpoint["data"]["n_held_out"]):
        raise ValueError("the data gives another held-out set than the checkpoint recorded")
    x = torch.from_numpy(load_images(split.held_out, input_contract(int(checkpoint["size"])), progress=False))
    logits = predict_batched(deployable(checkpoint), x)
    return np.array([s.label for s in split.held_out]), softmax(logits.astype(np.float64))[:, 1]


def threshold_rule(checkpoint: dict, clean_sensitivity: float) -> float:
    """The training rule (see models.training.chest.evaluation) on a checkpoint's stored validation scores."""
    curves = {k: (v[0].numpy(), v[1].numpy()) for k, v in checkpoint["curves"].items() if k in ("clean", "stress")}
    return choose_threshold(curves["clean"], curves["stress"], float(checkpoint["target_sensitivity"]),
                            clean_sensitivity)


def fold_table(folds: list[tuple[dict, np.ndarray, np.ndarray]]) -> list[dict]:
    """For every candidate validation target: each run's held-out sensitivity and specificity."""
    rows = []
    for target in CANDIDATES:
        for ck, y, p in folds:
            pred = p >= threshold_rule(ck, target)
            rows.append({"target": target, "held_out": ck["data"]["held_out"],
                         "sensitivity": float(pred[y == 1].mean()), "specificity": float((~pred[y == 0]).mean())})
    return rows


def choose_target(rows: list[dict], required: float = REQUIRED_SENSITIVITY) -> float:
    """The lowest candidate whose held-out sensitivity, averaged over the runs, reaches `required`
    (else the highest). The average, not the worst run: each run holds out a large share of one
    class (up to 60% of the normals), a harsher shift than a new site of the same population."""
    for target in CANDIDATES:
        if np.mean([r["sensitivity"] for r in rows if r["target"] == target]) >= required:
            return target
    return CANDIDATES[-1]


def retarget(checkpoint: dict, target: float, rows: list[dict], data_dir: Path | None) -> dict:
    """The checkpoint with the new validation target, its threshold and every metric at that threshold."""
    threshold = threshold_rule(checkpoint, target)
    val = checkpoint_split(checkpoint, data_dir).val
    (y, p), (ys, ps) = ((t.numpy() for t in checkpoint["curves"][k]) for k in ("clean", "stress"))
    clean_name, stress_name = (m["split"] for m in checkpoint["metrics"][:2])
    out = dict(checkpoint)
    out.update(
        threshold=threshold,
        min_clean_sensitivity=target,
        metrics=[split_metrics(clean_name, y, p, threshold), split_metrics(stress_name, ys, ps, threshold)],
        intervals=bootstrap_intervals(y == 1, p, threshold, [s.patient for s in val], 1000, int(checkpoint["seed"])),
        subgroups=subgroups(val, y, p, threshold),
        operating_point={"target": target, "required": REQUIRED_SENSITIVITY, "runs": rows},
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.training.operating_point", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="the model's training checkpoint")
    parser.add_argument("--group-shift", type=Path, nargs="+", required=True, metavar="CHECKPOINT",
                        help="checkpoints of --hold-out runs of the same recipe")
    parser.add_argument("--data", type=Path, default=None, help="the training folder (default: the shared one)")
    parser.add_argument("--out", type=Path, required=True, help="where the re-targeted checkpoint goes")
    args = parser.parse_args(argv)

    def load(path: Path) -> dict:
        return torch.load(path, map_location="cpu", weights_only=True)

    folds = []
    for path in args.group_shift:
        ck = load(path)
        folds.append((ck, *held_out_scores(ck, args.data)))
    rows = fold_table(folds)
    for r in rows:
        print(f"target {r['target']:.2f}  held out {r['held_out']:<20} sensitivity {r['sensitivity']:.4f}  "
              f"specificity {r['specificity']:.4f}")
    target = choose_target(rows)
    shifted = retarget(load(args.checkpoint), target, rows, args.data)
    m = shifted["metrics"][0]
    print(f"validation target {target:.2f}: threshold {shifted['threshold']:.4f}, validation sensitivity "
          f"{m['sensitivity']:.4f}, specificity {m['specificity']:.4f}")
    write_checkpoint(shifted, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
