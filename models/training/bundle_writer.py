"""Write a bundle from a checkpoint (a trained model or an ensemble), for any exam: fit its refusal
check (models.training.refusal_policy) and put it in the graph, export the graph, check it against
torch, run the shortcut audits (refusing a model over its limit), store the golden inputs, then the
exam's figures, card and manifest. The exam's recipe supplies what differs.

`bedside train --out` and `bedside export` both end here. A bundle is built in a temporary folder
beside `out` and moved into place only once complete, so a refused or interrupted export never
leaves a half-replaced bundle.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from models import audit
from models.bundle import (
    AuditCheck,
    AuditPolicy,
    RefusalPolicy,
    DataSplit,
    Manifest,
    Outputs,
    Provenance,
    Variant,
    file_entry,
    write_manifest,
)
from models.datasets import REPO_ROOT
from models.metrics import softmax
from models.preprocess import to_model_input
from models.training.card_tables import ensemble_members
from models.training.export import (INPUT_NAME, OPSET, as_ensemble, deployable, export_onnx, full_side_members,
                                    graph_notes, max_abs_diff, onnx_session)
from models.training.images import Sample, decode_rgb, load_images
from models.training.monitoring import add_monitoring_reference
from models.training.recipe import Exported, Recipe
from models.training.refusal_policy import HEAD_STAGES, card_section, refusal_for

MODEL_FILE = "model.onnx"
GOLDEN_FILE = "golden.npz"
CARD_FILE = "MODEL_CARD.md"
ONNX_CHECK_IMAGES = 8
MAX_ONNX_DIFF = 1e-3


class AuditFailed(Exception):
    """The model flips too many triages under a shortcut audit, or its data is not the training
    data: no bundle is written."""


def code_revision() -> str:
    """git HEAD (or "uncommitted") plus a hash of the models/ sources that actually ran."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        head = "uncommitted"
    digest = hashlib.sha256()
    models = REPO_ROOT / "models"
    for path in sorted(models.rglob("*.py")):
        digest.update(path.relative_to(models).as_posix().encode() + b"\0" + path.read_bytes())
    return f"{head} (models/**/*.py sha256 {digest.hexdigest()[:16]})"


def framework_versions() -> str:
    import onnx
    import onnxruntime

    return (f"python {platform.python_version()}, torch {torch.__version__}, onnx {onnx.__version__} "
            f"(opset {OPSET}), onnxruntime {onnxruntime.__version__}")


def build_in_place(out: Path, build: Callable[[Path], None]) -> Path:
    """Run `build(folder)` in a hidden temporary folder beside `out`, then replace `out` with it as
    a whole; a refused or interrupted build leaves `out` as it was. Returns `out`."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    try:
        build(work)
        if out.exists():
            shutil.rmtree(out)
        os.replace(work, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def validation_samples(recipe: Recipe, checkpoint: dict, data_dir: Path | None) -> list[Sample]:
    """The checkpoint's validation samples, refused unless the data gives exactly as many."""
    val = recipe.validation_samples(checkpoint, data_dir)
    if len(val) != int(checkpoint["data"]["n_val"]):
        raise AuditFailed(f"the data gives {len(val)} validation images, the checkpoint had {checkpoint['data']['n_val']}: "
                          "not the training data, so the audits and the self-test inputs cannot be made")
    return val


def audit_policy(recipe: Recipe, checkpoint: dict) -> AuditPolicy:
    return audit.policy(recipe.validation_name(checkpoint), recipe.audit_checks,
                        float(checkpoint.get("max_flip_rate", audit.MAX_FLIP_RATE)), recipe.audit_group)


def audit_onnx(recipe: Recipe, path: Path, checkpoint: dict, val: list[Sample]) -> list[AuditCheck]:
    """The shortcut audits of an exported model on its validation images, at its threshold, overall
    and on the recipe's audit group."""
    images = [decode_rgb(s.path) for s in val]  # as the device receives them
    urgent = [recipe.labels.index(u) for u in recipe.urgent]
    positive = np.array([s.label in urgent for s in val])
    session = onnx_session(path)

    def p_urgent(x: np.ndarray) -> np.ndarray:
        return softmax(session.run(["logits"], {INPUT_NAME: x})[0].astype(np.float64))[:, urgent].sum(1)

    in_group = audit.group_members(recipe.audit_group, [s.path.name for s in val], [recipe.labels[s.label] for s in val])
    contract = recipe.input_contract(int(checkpoint["size"]), INPUT_NAME)
    return audit.run_audit(p_urgent, images, positive, contract, float(checkpoint["threshold"]), recipe.audit_checks,
                           recipe.audit_group, in_group)


def write_golden(recipe: Recipe, path: Path, model_path: Path, checkpoint: dict, val: list[Sample],
                 refusal: RefusalPolicy | None = None) -> Path:
    """Real validation images (the first few of each class) as model inputs, with the FP32 model's
    probabilities on exactly those inputs (and each refusal output, under its output's name): what
    the device's self-test reproduces."""
    chosen = [s for label in range(len(recipe.labels))
              for s in [v for v in val if v.label == label][: recipe.golden_per_class]]
    contract = recipe.input_contract(int(checkpoint["size"]), INPUT_NAME)
    inputs = np.stack([to_model_input(decode_rgb(s.path), contract) for s in chosen]).astype(np.float16)
    extra = [c.output for c in refusal.checks] if refusal else []
    logits, *scores = onnx_session(model_path).run(["logits", *extra], {INPUT_NAME: inputs.astype(np.float32)})
    with open(path, "wb") as fh:
        np.savez_compressed(fh, inputs=inputs, probabilities=softmax(logits.astype(np.float64)),
                            **{name: np.asarray(v, np.float32).reshape(len(inputs)) for name, v in zip(extra, scores)})
    return path


def group_shift_folds(checkpoints: list[dict]) -> list[dict]:
    """The group-shift results of held-out training runs (or fold ensembles), for the card."""
    folds = []
    for ck in checkpoints:
        held = [m for m in ck["metrics"] if m["split"].startswith("group shift")]
        if not held:
            raise ValueError("a group-shift checkpoint must come from a run with --hold-out")
        folds.append({"name": ck["data"]["held_out"], "validation": ck["metrics"][0], "held_out": held[0],
                      "members": ck.get("members", []), "scores": ck.get("scores", {})})
    return folds


def build_manifest(recipe: Recipe, checkpoint: dict, results, bundle_id: str, version: str, files: dict,
                   checks: list[AuditCheck], group_shift: list[dict], refusal: RefusalPolicy | None = None) -> Manifest:
    data, who = checkpoint["data"], recipe.identity
    return Manifest(
        id=bundle_id, version=version, title=who.title, intended_use=who.intended_use, research_only=True,
        disclaimer=who.disclaimer, task=recipe.task, labels=list(recipe.labels), label_names=who.label_names,
        input=recipe.input_contract(int(checkpoint["size"]), INPUT_NAME), outputs=Outputs(logits="logits", cam="cam"),
        quality=recipe.quality, refusal=refusal,
        provenance=Provenance(
            dataset=who.dataset, dataset_licence=who.licence, citation=who.citation,
            training_command=checkpoint["training_command"], seed=int(checkpoint["seed"]),
            code_revision=code_revision(), trained_at=checkpoint["trained_at"],
            training_seconds=float(checkpoint["training_seconds"]), framework=framework_versions(),
            split=DataSplit(method=recipe.split_method, val_fraction=float(data["val_fraction"]),
                            seed=int(data.get("split_seed", checkpoint["seed"])), train_images=int(data["n_train"]),
                            val_images=int(data["n_val"])),
        ),
        audit=audit_policy(recipe, checkpoint), evaluation=recipe.evaluation, golden=GOLDEN_FILE,
        acceptance=recipe.acceptance,
        variants=[Variant(precision="fp32", file=MODEL_FILE, targets=["cpu", "gpu"], notes=graph_notes(checkpoint),
                          audit=checks)],
        files=files,
        ensemble=ensemble_members(checkpoint, group_shift) if "members" in checkpoint else [],
        **recipe.manifest_fields(checkpoint, results),
    )


def write_bundle(recipe: Recipe, checkpoint: dict, out: Path, bundle_id: str | None = None, version: str | None = None,
                 data_dir: Path | None = None, group_shift: list[dict] | None = None, group_shift_note: str = "",
                 log: Callable[[str], None] = print) -> Path:
    """Export, check ONNX against torch, audit, plot, write card and manifest; returns the bundle dir
    (`out`, replaced as a whole). Raises AuditFailed, writing nothing, when an audit is over the limit."""
    return build_in_place(out, lambda work: _write_files(
        recipe, checkpoint, work, bundle_id or recipe.exam, version or recipe.version, data_dir,
        group_shift or [], group_shift_note, log))


def _write_files(recipe: Recipe, checkpoint: dict, out: Path, bundle_id: str, version: str, data_dir: Path | None,
                 group_shift: list[dict], group_shift_note: str, log: Callable[[str], None]) -> None:
    size = int(checkpoint["size"])
    contract = recipe.input_contract(size, INPUT_NAME)
    val = validation_samples(recipe, checkpoint, data_dir)
    readers = full_side_members(checkpoint) if recipe.refusal_reads_full_side_only else None
    model = as_ensemble(checkpoint, head_stages=HEAD_STAGES, head_members=readers)
    # The audits judge the triage alone: run them on the graph without the refusal check first, so
    # a model over its limit is refused before the (slower) refusal fit.
    export_onnx(model, size, out / MODEL_FILE, channels=contract.channels)
    checks = audit_onnx(recipe, out / MODEL_FILE, checkpoint, val)
    for row in audit.table(checks):
        log(row)
    refused = audit.failures(checks, audit_policy(recipe, checkpoint))
    if refused:
        raise AuditFailed("refusing to write the bundle: " + "; ".join(refused))
    refusal = refusal_for(recipe, checkpoint, model, data_dir, log)
    model.heads["refusal"] = refusal.head
    export_onnx(model, size, out / MODEL_FILE, channels=contract.channels)
    check = torch.from_numpy(load_images(val[:ONNX_CHECK_IMAGES], contract, progress=False))
    diff = max_abs_diff(model, out / MODEL_FILE, check)
    if max(diff.values()) > MAX_ONNX_DIFF:
        raise RuntimeError(f"ONNX output differs from torch: {diff}")
    results = recipe.results(checkpoint, deployable(checkpoint), val, data_dir)
    write_golden(recipe, out / GOLDEN_FILE, out / MODEL_FILE, checkpoint, val, refusal.policy)
    figures = recipe.plots(checkpoint, results, out)
    card = recipe.card(Exported(checkpoint, results, checks, diff, group_shift, group_shift_note))
    (out / CARD_FILE).write_text(card.rstrip("\n") + "\n\n" + card_section(refusal.policy, model) + "\n", encoding="utf-8")
    files = {name: file_entry(out / name) for name in (MODEL_FILE, GOLDEN_FILE, *figures, CARD_FILE)}
    write_manifest(out, build_manifest(recipe, checkpoint, results, bundle_id, version, files, checks, group_shift,
                                       refusal.policy))
    # Last: the drift monitor's reference (it reads the manifest's refusal checks), through the graph as
    # written (loading the bundle refuses to finish with one the device would reject).
    add_monitoring_reference(out, val, recipe.validation_name(checkpoint))
