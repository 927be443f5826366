"""Data handling and a smoke training run on real images: train -> calibrate -> export -> bundle,
and the exam registry the training commands and the optimizer look exams up in."""

from __future__ import annotations


import numpy as np
import pytest

torch = pytest.importorskip("torch")

from models.bundle import load_bundle, sha256_file  # noqa: E402
from models.training.chest.data import (  # noqa: E402
    default_data_dir,
    list_samples,
    patient_id,
    remove_duplicates,
    split_by_patient,
)

DATA = default_data_dir()
needs_data = pytest.mark.skipif(
    not (DATA / "NORMAL").is_dir(), reason=f"chest X-ray dataset not found at {DATA} (set BEDSIDE_DATASETS)"
)


def test_patient_ids_from_file_names():
    assert patient_id("person1000_bacteria_2931.jpeg", "PNEUMONIA") == "PNEUMONIA:person1000"
    assert patient_id("person447_virus_921_1.jpeg", "PNEUMONIA") == "PNEUMONIA:person447"
    assert patient_id("IM-0115-0001.jpeg", "NORMAL") == "NORMAL:IM-0115"
    assert patient_id("IM-0429-0001-0002.jpeg", "NORMAL") == "NORMAL:IM-0429"
    assert patient_id("NORMAL2-IM-0115-0001.jpeg", "NORMAL") == "NORMAL:NORMAL2-IM-0115"
    with pytest.raises(ValueError):
        patient_id("scan.jpeg", "NORMAL")


@pytest.fixture(scope="module")
def samples():
    if not (DATA / "NORMAL").is_dir():
        pytest.skip(f"chest X-ray dataset not found at {DATA} (set BEDSIDE_DATASETS)")
    return list_samples(DATA)


@needs_data
def test_duplicates_removed(samples):
    kept, removed = remove_duplicates(samples)
    assert removed > 0 and len(kept) + removed == len(samples)
    assert len({sha256_file(s.path) for s in kept}) == len(kept)


@needs_data
def test_split_keeps_patients_on_one_side(samples):
    kept, _ = remove_duplicates(samples)
    train, val = split_by_patient(kept, 0.17, seed=0)
    assert sorted(train + val) == list(range(len(kept)))
    assert not {kept[i].patient for i in train} & {kept[i].patient for i in val}
    val_share = [np.mean([kept[i].label for i in idx]) for idx in (train, val)]
    assert abs(val_share[0] - val_share[1]) < 0.05  # stratified: similar class balance
    assert split_by_patient(kept, 0.17, seed=0) == (train, val)  # fixed seed, fixed split


def test_smoke_train_to_bundle(tiny_chest):
    from models.preprocess import to_model_input
    from models.training.chest.data import input_contract
    from models.training.export import INPUT_NAME, deployable_model, onnx_session
    from models.training.images import decode_rgb
    from models.training.registry import recipe_of

    bundle = load_bundle(tiny_chest.bundle)
    m = bundle.manifest
    assert m.labels == ["NORMAL", "PNEUMONIA"] and m.policy.urgent_labels == ["PNEUMONIA"]
    assert m.input == input_contract(64, INPUT_NAME)
    assert {"model.onnx", "roc.png", "MODEL_CARD.md"} <= set(m.files)
    assert [s.split.startswith("validation") for s in m.metrics] == [True, True]
    assert m.input.aspect_range == (0.8, 2.3)
    audits = m.variant("fp32").audit
    assert m.audit.max_flip_rate == 1.0 and m.audit.checks == [c.name for c in audits if c.group is None]
    # the geometry checks again on the NORMAL2 normals alone (4 of the 16 validation films here)
    assert m.audit.group.name == "NORMAL2 normals" and m.audit.group.label == "NORMAL"
    grouped = [c for c in audits if c.group == "NORMAL2 normals"]
    assert [c.name for c in grouped] == m.audit.group.checks == ["squeeze_0.8", "widen_1.25", "border_crop"]
    n_group = sum(s.path.name.startswith("NORMAL2-") for s in recipe_of({}).validation_samples(
        torch.load(tiny_chest.checkpoint, weights_only=True), None))
    assert n_group > 0 and all(c.n == n_group and c.flip_rate_positive is None for c in grouped)
    assert m.evaluation.patient_pattern and m.evaluation.aspect_buckets == [1.2, 1.5]
    card = bundle.path_of("MODEL_CARD.md").read_text()
    assert "## Shortcut audits" in card and "squeeze_0.8" in card and "95% interval" in card
    assert f"| squeeze_0.8, NORMAL2 normals only (n={n_group}) |" in card
    # the drift monitor's reference: every validation film, through the graph as written
    assert m.monitoring is not None and m.monitoring.n == m.provenance.split.val_images
    assert {s.name for s in m.monitoring.signals} >= {"p_urgent", "image.brightness", "image.layout"}
    assert m.acceptance is not None and m.acceptance_rule().sensitivity_floor == 0.95

    paths = sorted((DATA / "PNEUMONIA").glob("*.jpeg"))[:2] + sorted((DATA / "NORMAL").glob("*.jpeg"))[:2]
    x = np.stack([to_model_input(decode_rgb(p), m.input) for p in paths])
    logits, cam = onnx_session(bundle.path_of("model.onnx")).run(["logits", "cam"], {INPUT_NAME: x})
    assert logits.shape == (4, 2) and cam.shape == (4, 2, 4, 4)
    checkpoint = torch.load(tiny_chest.checkpoint, weights_only=True)
    with torch.no_grad():
        want_logits, want_cam = deployable_model(checkpoint)(torch.from_numpy(x))
    np.testing.assert_allclose(logits, want_logits.numpy(), atol=1e-4)
    np.testing.assert_allclose(cam, want_cam.numpy(), atol=1e-4)


def test_export_refuses_a_model_over_its_audit_limit_and_keeps_the_old_bundle(tiny_chest, tmp_path):
    """An operating point at the median score makes every perturbation flip triages: refused."""
    import shutil

    from models.training.bundle_writer import AuditFailed, write_bundle
    from models.training.registry import recipe_of

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_chest.bundle, bundle)
    before = {p.name: p.read_bytes() for p in bundle.iterdir()}
    checkpoint = torch.load(tiny_chest.checkpoint, weights_only=True)
    checkpoint["threshold"] = float(np.median(checkpoint["curves"]["clean"][1].numpy()))
    checkpoint["max_flip_rate"] = 0.0
    with pytest.raises(AuditFailed, match=r"refusing to write the bundle: .* flips .* \(allowed 0.0%\)"):
        write_bundle(recipe_of(checkpoint), checkpoint, bundle, version="9.9.9", log=lambda _: None)
    assert {p.name: p.read_bytes() for p in bundle.iterdir()} == before
    assert load_bundle(bundle).manifest.version != "9.9.9"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no work folder left


def test_unknown_hold_out_group_is_named():
    from models.training.chest.data import held_out_groups

    assert held_out_groups("normal2, virus") == {"normal2", "virus"}
    with pytest.raises(ValueError, match="unknown group.*adults.*choose from normal-im, normal2, bacteria, virus, wide"):
        held_out_groups("adults,virus")


@needs_data
def test_samples_carry_group_and_original_aspect(samples):
    by_name = {s.path.name: s for s in samples}
    assert by_name["IM-0115-0001.jpeg"].group == "normal-im" and by_name["IM-0115-0001.jpeg"].aspect == 1.11
    assert by_name["IM-0122-0001.jpeg"].aspect is None  # 'unknown' in train_aspect.csv
    assert {s.group for s in samples} == {"normal-im", "normal2", "bacteria", "virus"}
    assert sum(s.aspect is not None for s in samples) > 4000


def test_export_fits_the_refusal_check_into_the_graph_and_declares_it(tiny_chest):
    """`bedside train --out` / `export` fit the refusal check on the model's own features and put it
    in the graph: the manifest names its outputs and thresholds with what was measured, the golden
    file holds its scores, the card explains it, and a fresh draw of printed documents is refused."""
    from models.preprocess import to_model_input
    from models.training import negatives as ng
    from models.training.export import INPUT_NAME, onnx_session
    from models.training.images import decode_rgb

    bundle = load_bundle(tiny_chest.bundle)
    policy = bundle.manifest.refusal
    assert policy is not None and policy.subject == "a chest X-ray" and "chest radiographs" in policy.advice
    assert [(c.name, c.output) for c in policy.checks] == [("domain", "refusal_domain"), ("density", "refusal_density")]
    assert policy.calibrated_refusal_rate == 0.01 and "half of the" in policy.calibrated_on
    assert bundle.manifest.output_names == ("logits", "cam", "refusal_domain", "refusal_density")
    kinds = [m.data for m in policy.measured]
    assert kinds[0].startswith("validation (in-distribution)") and kinds[1].startswith("stress copies")
    families = ng.families(ng.CHEST_EXAM, own=[np.zeros((8, 8, 3), np.uint8)], other=[np.zeros((8, 8, 3), np.uint8)])
    assert sum(k.startswith("negatives: ") for k in kinds) == len(families) == 11
    assert sum(k.startswith("left out of the fit: ") for k in kinds) == len(families)
    assert "## When the model refuses" in bundle.path_of("MODEL_CARD.md").read_text()

    session = onnx_session(bundle.path_of("model.onnx"))
    with np.load(bundle.path_of("golden.npz"), allow_pickle=False) as golden:
        inputs, stored = golden["inputs"].astype(np.float32), {c.output: golden[c.output] for c in policy.checks}
    got = session.run(list(stored), {INPUT_NAME: inputs})
    for (name, want), value in zip(stored.items(), got):
        assert value.shape == (len(inputs),)
        np.testing.assert_allclose(value, want, rtol=1e-5, atol=1e-5)

    documents = ng.generate(next(f for f in families if f.name == "documents"), 5, 12, 224)
    films = [decode_rgb(p) for p in sorted((DATA / "NORMAL").glob("*.jpeg"))[:6]]
    limits = np.array([c.threshold for c in policy.checks])

    def refused(images) -> np.ndarray:
        x = np.stack([to_model_input(img, bundle.manifest.input) for img in images])
        scores = np.stack(session.run([c.output for c in policy.checks], {INPUT_NAME: x}), 1)
        return (scores > limits).any(1)

    assert refused(documents).mean() >= 0.9
    assert refused(films).mean() <= 0.5  # a one-epoch model on 48 films: a loose bound, but not "refuse all"


def test_bundle_ships_golden_inputs_that_the_self_test_checks(tiny_chest, tmp_path):
    """Real validation images with the FP32 probabilities stored at export; doctor's self-test runs
    every variant on them, and stored outputs that no longer match are a failure."""
    import shutil

    from device.runtime.variant_check import selftest_variants
    from models.bundle import file_entry, write_manifest
    from models.metrics import softmax
    from models.training.export import INPUT_NAME, onnx_session

    bundle = load_bundle(tiny_chest.bundle)
    assert bundle.manifest.golden == "golden.npz"
    with np.load(bundle.path_of("golden.npz"), allow_pickle=False) as golden:
        inputs, stored = golden["inputs"], golden["probabilities"]
    assert inputs.shape == (8, 1, 64, 64) and inputs.dtype == np.float16 and np.unique(inputs).size > 100
    logits = onnx_session(bundle.path_of("model.onnx")).run(["logits"], {INPUT_NAME: inputs.astype(np.float32)})[0]
    np.testing.assert_allclose(softmax(logits.astype(np.float64)), stored, atol=1e-6)
    assert all(v["ok"] for v in selftest_variants(bundle))

    copy = tmp_path / "bundle"
    shutil.copytree(bundle.root, copy)
    wrong = np.eye(2)[(stored[:, 1] < 0.5).astype(int)]  # every stored answer the opposite class, for sure
    np.savez_compressed(copy / "golden.npz", inputs=inputs, probabilities=wrong)
    m = bundle.manifest
    write_manifest(copy, m.model_copy(update={"files": {**m.files, "golden.npz": file_entry(copy / "golden.npz")}}))
    assert not any(v["ok"] for v in selftest_variants(load_bundle(copy)))


def test_the_registry_names_the_exams_and_refuses_an_unknown_one(tiny_chest, tmp_path, capsys):
    from device.cli import main as bedside
    from models.training import registry

    assert list(registry.recipes()) == ["chest-xray-pneumonia", "skin-lesion-triage"]
    assert registry.recipe_for_split("by-lesion-stratified").exam == "skin-lesion-triage"
    assert registry.recipe_of({}).exam == registry.DEFAULT_EXAM  # checkpoints from before exams were recorded
    with pytest.raises(registry.UnknownExam,
                       match=r"unknown exam 'adult-ct' \(known: chest-xray-pneumonia, skin-lesion-triage\)"):
        registry.recipe("adult-ct")
    with pytest.raises(SystemExit) as exit_:
        bedside(["train", "--exam", "adult-ct"])
    assert exit_.value.code == 2 and "invalid choice: 'adult-ct'" in capsys.readouterr().err
    torch.save({**torch.load(tiny_chest.checkpoint, weights_only=True), "exam": "adult-ct"}, tmp_path / "ct.pt")
    assert bedside(["export", "--checkpoint", str(tmp_path / "ct.pt"), "--out", str(tmp_path / "bundle")]) == 1
    assert "bedside export: unknown exam 'adult-ct'" in capsys.readouterr().err and not (tmp_path / "bundle").exists()


def test_export_refuses_a_model_whose_audit_group_flips_over_the_limit(tiny_chest, tmp_path):
    """A threshold inside the squeeze's change of exactly one NORMAL2 normal's score: that flips one
    film in 16 overall (within the limit) but one in the group's few (over it). The shared machinery
    runs with a recipe whose only check is the squeeze, so no other check flips another film."""
    from models import audit
    from models.metrics import softmax
    from models.preprocess import to_model_input
    from models.training.bundle_writer import AuditFailed, validation_samples, write_bundle
    from models.training.chest.exam import ChestRecipe
    from models.training.export import INPUT_NAME, onnx_session
    from models.training.images import decode_rgb

    class SqueezeOnly(ChestRecipe):
        audit_checks = ("squeeze_0.8",)
        audit_group = ChestRecipe.audit_group.model_copy(update={"checks": ["squeeze_0.8"]})

    recipe = SqueezeOnly()
    checkpoint = torch.load(tiny_chest.checkpoint, weights_only=True)
    val = validation_samples(recipe, checkpoint, None)
    images = [decode_rgb(s.path) for s in val]
    session, contract = onnx_session(tiny_chest.bundle / "model.onnx"), recipe.input_contract(64)

    def p_pneumonia(batch: list[np.ndarray]) -> np.ndarray:
        x = np.stack([to_model_input(i, contract) for i in batch])
        return softmax(session.run(["logits"], {INPUT_NAME: x})[0].astype(np.float64))[:, 1]

    p0, p1 = p_pneumonia(images), p_pneumonia([audit.squeeze(i) for i in images])
    lo, hi = np.minimum(p0, p1), np.maximum(p0, p1)  # a film flips at t when lo < t <= hi

    def flips(t: float) -> np.ndarray:
        return (lo < t) & (t <= hi)

    group = [i for i, s in enumerate(val) if s.path.name.startswith("NORMAL2-")]
    cuts = sorted({x for i in group for x in (lo[i], hi[i])} | {x for x in np.concatenate([lo, hi])})
    lone = [t for t in ((a + b) / 2 for a, b in zip(cuts, cuts[1:])) if flips(t).sum() == 1 and flips(t)[group].any()]
    assert lone, "no threshold flips exactly one NORMAL2 normal under the squeeze"
    checkpoint["threshold"] = lone[0]
    checkpoint["max_flip_rate"] = (1 / len(val) + 1 / len(group)) / 2
    with pytest.raises(AuditFailed) as refused:
        write_bundle(recipe, checkpoint, tmp_path / "bundle", log=lambda _: None)
    assert str(refused.value) == (f"refusing to write the bundle: squeeze_0.8 flips {1 / len(group):.1%} of NORMAL2 "
                                  f"normals (allowed {checkpoint['max_flip_rate']:.1%})")
    assert not (tmp_path / "bundle").exists()


def test_the_sensitivity_threshold_sits_between_scores_not_on_a_positives_own():
    """Halfway to the next lower score: the same calls on these images, and a positive whose score the
    exported graph computes a rounding lower is still called (on its own score it was missed)."""
    from models.training.loop import threshold_for_sensitivity

    y = np.array([1, 1, 1, 1, 0, 0, 1])
    p = np.array([0.9, 0.8, 0.6, 0.3, 0.5, 0.2, 0.7])
    threshold = threshold_for_sensitivity(y, p, 0.75)  # 4 of 5 positives: 0.6 kept, 0.3 may be missed
    assert threshold == pytest.approx(0.55)  # halfway to the negative at 0.5
    assert ((p >= threshold) == (p >= 0.6)).all()
    assert 0.6 - 1e-7 >= threshold  # the kept positive, a rounding lower, is still called
    assert threshold_for_sensitivity(np.array([1, 1]), np.array([0.4, 0.7]), 1.0) == 0.4  # nothing below
