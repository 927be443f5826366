"""The skin exam's sets for its refusal check (models.training.refusal_policy): the training images
clean and under the training and stress augmentations, the validation images and their stress
copies, exactly as the exam's scoring makes them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from models.training.images import load_images
from models.training.refusal_policy import AUGMENTED_COPIES, CHUNK, SEED, RefusalInputs, decoded
from models.training.skin import augment as aug
from models.training.skin.data import MEAN, STD, checkpoint_split, input_contract
from models.training.skin.evaluation import Rule, stress_inputs


def refusal_inputs(checkpoint: dict, size: int, data_dir: Path | None, other: list[np.ndarray]) -> RefusalInputs:
    train, val = checkpoint_split(checkpoint, data_dir)
    contract = input_contract(size)
    val_x = torch.from_numpy(load_images(val, contract, progress=False)).float()
    rule = Rule.of(checkpoint)
    labels = np.array([s.label for s in train])
    ids = np.arange(len(labels))
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)

    def batches():
        clean = load_images(train, contract, progress=False)
        for i in range(0, len(ids), CHUNK):
            yield clean[i : i + CHUNK], labels[i : i + CHUNK], ids[i : i + CHUNK]
        gen = torch.Generator().manual_seed(SEED)
        for cfg in [aug.TRAIN] * AUGMENTED_COPIES + [aug.STRESS]:
            for i in range(0, len(ids), CHUNK):
                x = aug.augment(torch.from_numpy(clean[i : i + CHUNK]).float(), mean, std, cfg, gen)
                yield x.numpy(), labels[i : i + CHUNK], ids[i : i + CHUNK]

    return RefusalInputs(
        train_batches=batches, val_x=val_x.numpy(), val_groups=np.array([s.lesion for s in val]),
        stress_x=stress_inputs(val_x, rule).numpy(), stress_rows=np.tile(np.arange(len(val)), rule.stress_copies),
        own=decoded(train), other=other)
