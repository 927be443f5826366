"""What every exam's trainer and scoring rule share: seeding, the weight EMA, the consistency loss,
batched prediction, the sensitivity-pinned threshold, the recorded command line and where a
checkpoint is saved.
"""

from __future__ import annotations

import argparse
import copy
import math
import random
import shlex
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F


def seed_everything(seed: int, threads: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)


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


def step(loss: torch.Tensor, model: torch.nn.Module, opt: torch.optim.Optimizer, sched, ema: EMA | None, bar,
         epoch: int) -> None:
    """One training step after the loss: backward, the optimiser and its schedule, the weight EMA,
    the progress bar."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    if ema:
        ema.update(model)
    bar.update(1)
    bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")


def consistency_loss(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence between the class distributions of two views of the same images."""
    p, q = F.softmax(first, dim=1), F.softmax(second, dim=1)
    mean = ((p + q) / 2).clamp_min(1e-7).log()
    return (F.kl_div(mean, p, reduction="batchmean") + F.kl_div(mean, q, reduction="batchmean")) / 2


@torch.no_grad()
def predict_batched(model: Callable[[torch.Tensor], tuple], x: torch.Tensor, batch: int = 256) -> np.ndarray:
    """The logits (first output) of `model` on `x`, `batch` images at a time."""
    if isinstance(model, torch.nn.Module):
        model.eval()
    return np.concatenate([model(x[i : i + batch].float())[0].numpy() for i in range(0, len(x), batch)])


def threshold_for_sensitivity(y: np.ndarray, p: np.ndarray, sensitivity: float) -> float:
    """The highest threshold that still calls at least `sensitivity` of the positives positive, set
    halfway down to the next lower score of any image: the same calls on these images, but not on a
    positive's own score, where the float difference between the graph that chose it and the exported
    one (torch against ONNX Runtime) could miss that positive (skin 3.0.0's stressed melanomas: 180 of
    196 referred, not 181, with the threshold on the 181st's score)."""
    p = np.asarray(p, dtype=np.float64)
    pos = np.sort(p[y == 1])
    kept = pos[int(math.floor((1.0 - sensitivity) * len(pos)))]
    lower = p[p < kept]
    return float((kept + lower.max()) / 2) if len(lower) else float(kept)


def command_line(args: argparse.Namespace | dict, exam: str) -> str:
    """The full `bedside train` command with every option spelled out, so the record does not
    depend on defaults."""
    values = dict(vars(args) if isinstance(args, argparse.Namespace) else args)
    values["exam"] = exam
    options: list[str] = []
    for action_name, value in sorted(values.items()):
        if action_name in ("func", "command", "no_progress") or action_name.startswith("_") or value in (None, "None"):
            continue
        flag = "--" + action_name.replace("_", "-")
        options += [flag, str(value)]
    return shlex.join(["bedside", "train", *options])


def train_config(args: argparse.Namespace) -> dict[str, str]:
    """The trainer's options as recorded in a checkpoint."""
    return {k: str(v) for k, v in sorted(vars(args).items()) if k != "func" and not k.startswith("_")}


def save_checkpoint(checkpoint: dict, runs_dir: Path, run_name: str) -> Path:
    """`runs_dir/<run_name>-<time>/checkpoint.pt`."""
    return write_checkpoint(checkpoint, Path(runs_dir) / f"{run_name}-{time.strftime('%Y%m%d-%H%M%S')}" / "checkpoint.pt")


def write_checkpoint(checkpoint: dict, path: Path) -> Path:
    """Save a checkpoint (its folder made as needed) and say where, as the commands' last line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    print(f"checkpoint {path}")
    return path
