"""The chest exam's sets for its refusal check (models.training.refusal_policy): the training films
clean and under the training and stress augmentations (at their drawn aspects, as training shows
them), the validation films and their stress copies, exactly as the exam's scoring makes them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from models.training.chest import augment as aug
from models.training.chest.data import MEAN, STD, checkpoint_split, input_contract
from models.training.chest.evaluation import NATIVE_SIDE, Rule, aspects, film_aspects, load_validation
from models.training.images import load_images
from models.training.refusal_policy import AUGMENTED_COPIES, CHUNK, SEED, RefusalInputs, decoded


def refusal_inputs(checkpoint: dict, size: int, data_dir: Path | None, other: list[np.ndarray]) -> RefusalInputs:
    split = checkpoint_split(checkpoint, data_dir)
    val = load_validation(split, size, checkpoint["data"].get("held_out", ""))
    rule = Rule.of(checkpoint)
    stress_x, _ = val.stress(rule.stress_copies, rule.seed)
    medians, sampler = film_aspects(split)
    aspect = aspects(split.train, medians)
    labels = np.array([s.label for s in split.train])
    ids = np.arange(len(labels))

    def batches():
        clean = load_images(split.train, input_contract(size), progress=False)
        for i in range(0, len(ids), CHUNK):
            yield clean[i : i + CHUNK], labels[i : i + CHUNK], ids[i : i + CHUNK]
        del clean
        native = load_images(split.train, input_contract(NATIVE_SIDE), progress=False)
        gen = torch.Generator().manual_seed(SEED)
        for cfg in [aug.TRAIN] * AUGMENTED_COPIES + [aug.STRESS]:
            for i in range(0, len(ids), CHUNK):
                x = aug.augment(torch.from_numpy(native[i : i + CHUNK]).float(), MEAN, STD, cfg, gen,
                                aspect[i : i + CHUNK], sampler, size)
                yield x.numpy(), labels[i : i + CHUNK], ids[i : i + CHUNK]

    return RefusalInputs(
        train_batches=batches, val_x=val.x.numpy(), val_groups=np.array([s.patient for s in split.val]),
        stress_x=stress_x.numpy(), stress_rows=np.tile(np.arange(len(split.val)), rule.stress_copies),
        own=decoded(split.train), other=other)
