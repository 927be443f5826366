"""Helpers for the update tests: tiny bundles with golden inputs made from real chest X-rays, signing
keys and a trust folder, archives packed and signed by the real commands, and hostile archives."""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from device.core.settings import KioskConfig
from device.intake import decode_file
from device.updates import pack_bundle, sign_archive
from models.bundle import Manifest, file_entry, read_manifest, write_manifest
from models.datasets import datasets_dir
from models.metrics import softmax
from models.preprocess import to_model_input
from tiny_bundle import make_tiny_bundle

EXAM = "tiny-test"


def xray_files(n: int = 4) -> list[Path]:
    root = datasets_dir() / "chest-xray" / "fullres-samples"
    files = sorted(root.rglob("*.jpeg"))[:n]
    if len(files) < n:
        pytest.skip(f"no full-resolution chest X-ray samples in {root}")
    return files


def make_bundle(root: Path, version: str, golden: str = "right", appliance: str | None = None) -> Path:
    """The tiny bundle at ``version`` with golden.npz: real X-rays as model inputs (float16) and the
    FP32 probabilities ONNX Runtime gives on them ("right"), or every answer flipped ("wrong")."""
    make_tiny_bundle(root)
    m = read_manifest(root)
    inputs = np.stack([to_model_input(decode_file(p).pixels, m.input) for p in xray_files()]).astype(np.float16)
    session = ort.InferenceSession(str(root / "model.onnx"), providers=["CPUExecutionProvider"])
    probs = softmax(session.run(["logits"], {"image": inputs.astype(np.float32)})[0].astype(np.float64))
    if golden == "wrong":
        probs = probs[:, ::-1].copy()
    np.savez(root / "golden.npz", inputs=inputs, probabilities=probs)
    files = {**m.files, "golden.npz": file_entry(root / "golden.npz")}
    write_manifest(root, Manifest.model_validate({**m.model_dump(mode="json"), "version": version, "golden": "golden.npz",
                                                  "files": {k: v.model_dump() for k, v in files.items()},
                                                  "appliance": appliance}))
    return root


@dataclass
class Signer:
    key: Path
    trust: Path
    other_key: Path  # a key that is not trusted

    def archive(self, bundle: Path, out: Path, allow_downgrade: bool = False, key: Path | None = None) -> Path:
        pack_bundle(bundle, out)
        sign_archive(out, key or self.key, allow_downgrade)
        return out


def kiosk_config(tmp_path: Path, signer: Signer, **updates: object) -> KioskConfig:
    """A kiosk with nothing shipped (its own empty bundles_dir), its data and installed bundles under tmp_path."""
    shipped = tmp_path / "shipped"
    shipped.mkdir(exist_ok=True)
    return KioskConfig.model_validate({
        "store": {"data_dir": str(tmp_path / "data")},
        "models": {"bundles_dir": str(shipped), "inference_threads": 1},
        "media": {"import_folders": [str(tmp_path / "media")], "export_folders": [str(tmp_path / "export")]},
        "updates": {"trust_dir": str(signer.trust), **updates},
    })


def config_toml(tmp_path: Path, config: KioskConfig) -> Path:
    """The same settings as a TOML file, for the commands and `bedside serve`."""
    path = tmp_path / "bedside.toml"
    path.write_text(
        f'[models]\nbundles_dir = "{config.models.bundles_dir}"\ninference_threads = 1\n'
        f'[media]\nimport_folders = ["{config.media.import_folders[0]}"]\n'
        f'[updates]\ntrust_dir = "{config.updates.trust_dir}"\nmax_archive_mb = {config.updates.max_archive_mb}\n'
    )
    return path


def tree(root: Path) -> dict[str, str]:
    """Every entry under root (links as their target), to show that nothing was written."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): (f"-> {p.readlink()}" if p.is_symlink() else str(p.stat().st_size))
            for p in sorted(root.rglob("*"))}


def rewrite(source: Path, out: Path, edit) -> Path:
    """A copy of an archive with its members passed through ``edit(info, data) -> [(info, data), ...]``."""
    with tarfile.open(source, "r:") as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar]
    with tarfile.open(out, "w:", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            for new_info, new_data in edit(info, data):
                new_info.size = len(new_data) if new_data is not None else 0
                tar.addfile(new_info, io.BytesIO(new_data) if new_data is not None else None)
    return out
