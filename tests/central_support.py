"""Bundle copies a central node or a kiosk must refuse or tell apart (the node itself:
benchmarks/central_peer.py)."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np

from models.bundle import file_entry, read_manifest, write_manifest


def tampered_copy(source: Path, dest: Path) -> Path:
    """The bundle with its model card changed after it was hashed: refused on its hashes."""
    shutil.copytree(source, dest)
    with open(dest / "MODEL_CARD.md", "a") as card:
        card.write("\nedited after signing\n")
    return dest


def rewrite(dest: Path, name: str, data: bytes, **manifest_changes) -> None:
    """Replace one file of a bundle copy and re-hash it in the manifest (so the copy verifies)."""
    (dest / name).write_bytes(data)
    m = read_manifest(dest)
    data_ = json.loads(m.model_dump_json())
    data_["files"][name] = file_entry(dest / name).model_dump()
    data_.update(manifest_changes)
    write_manifest(dest, type(m).model_validate(data_))


def wrong_golden_copy(source: Path, dest: Path) -> Path:
    """The bundle with golden outputs that its model does not compute (re-hashed): refused by the
    golden self-test, though every hash matches."""
    shutil.copytree(source, dest)
    m = read_manifest(dest)
    with np.load(dest / m.golden) as golden:
        inputs, probs = golden["inputs"], golden["probabilities"]
    buffer = io.BytesIO()
    np.savez(buffer, inputs=inputs, probabilities=probs[:, ::-1])  # every answer the other way round
    rewrite(dest, m.golden, buffer.getvalue())
    return dest


def versioned_copy(source: Path, dest: Path, version: str) -> Path:
    """The bundle under another version number (same files)."""
    shutil.copytree(source, dest)
    m = read_manifest(dest)
    write_manifest(dest, m.model_copy(update={"version": version}))
    return dest
