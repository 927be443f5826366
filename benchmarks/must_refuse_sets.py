"""Write the image folders `bedside eval --must-refuse` is run on for the README's refusal table,
from the shared datasets (read only): the fundus photographs of ood-dev (a .npz, not a folder) in
colour and in gray, and dermoscopy images in gray (a grayscale exam's colour gate refuses them in
colour before its model runs; in gray only the model's own check can). The CT/MR, ultrasound and
other-body-part radiograph folders of dicom/ and each exam's training folder are used as they are.

    python benchmarks/must_refuse_sets.py OUT
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from models.datasets import datasets_dir

SIDE = 224
DERMOSCOPY = 300


def _write(folder: Path, images, gray: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, rgb in enumerate(images):
        img = cv2.resize(np.ascontiguousarray(rgb), (SIDE, SIDE), interpolation=cv2.INTER_CUBIC)
        img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) if gray else cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
        cv2.imwrite(str(folder / f"{i:04d}.png"), img)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    root = datasets_dir()
    with np.load(root / "ood-dev" / "retinamnist_train_val.npz") as data:
        fundus = np.concatenate([data["train_images"], data["val_images"]])
    _write(args.out / "fundus", fundus, gray=False)
    _write(args.out / "fundus_gray", fundus, gray=True)
    files = sorted((root / "dermatology" / "train").rglob("*.jpg"))
    chosen = [files[i] for i in sorted(np.random.default_rng(0).permutation(len(files))[:DERMOSCOPY])]
    _write(args.out / "dermoscopy_gray", (cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in chosen), gray=True)
    for sub in sorted(args.out.iterdir()):
        print(f"{sub}: {sum(1 for _ in sub.iterdir())} images")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
