"""The "may I judge this?" check: its fitting arithmetic, its calibration, its graph module (ONNX,
plain ops), and the whole fit on the shipped chest model's features of real films and negatives."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")
onnx = pytest.importorskip("onnx")

from sklearn.covariance import LedoitWolf  # noqa: E402

from models.bundle import default_bundles_dir, load_bundle  # noqa: E402
from models.preprocess import to_model_input  # noqa: E402
from models.training import negatives as ng  # noqa: E402
from models.training import refusal as rf  # noqa: E402
from models.training.data import decode_rgb, load_split  # noqa: E402

# What the refusal head may put in a graph: matrix products, element-wise arithmetic, reductions,
# and the shape plumbing around them; no linear algebra (the whitening is precomputed).
PLAIN_OPS = {"MatMul", "Gemm", "Add", "Sub", "Mul", "Div", "Log", "Clip", "Max", "ReduceSum", "ReduceMin",
             "Concat", "Slice", "Unsqueeze", "Squeeze", "Reshape", "Constant", "Transpose", "Identity"}


def _synthetic(rng: np.random.Generator, n: int, shift: float = 0.0) -> tuple[list[np.ndarray], np.ndarray]:
    """Two members' correlated 12-wide features of two classes; `shift` moves them away."""
    labels = rng.integers(0, 2, n)
    mix = np.random.default_rng(42).normal(size=(12, 12))
    members = [(rng.normal(size=(n, 12)) + 1.5 * labels[:, None] + shift) @ mix for _ in range(2)]
    return members, labels


BLOCKS = [rf.Block("a", 0, 4), rf.Block("b", 4, 12)]


def test_whitening_gives_the_mahalanobis_distance_under_the_shrunk_covariance():
    rng = np.random.default_rng(0)
    (x, _), labels = _synthetic(rng, 400)
    whitening, centres = rf.fit_gaussian(x, labels)
    means = np.stack([x[labels == k].mean(0) for k in (0, 1)])
    residual = x - means[labels]
    scale = residual.std(0) + 1e-6
    shrunk = LedoitWolf(assume_centered=True).fit(residual / scale).covariance_ * np.outer(scale, scale)
    query = rng.normal(size=(50, 12)) * 3
    expected = np.min([np.einsum("ij,jk,ik->i", query - m, np.linalg.inv(shrunk), query - m) for m in means], axis=0)
    got = (((query @ whitening.T)[:, None, :] - centres[None]) ** 2).sum(-1).min(1)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_calibration_refuses_the_stated_share_split_between_the_checks():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(4000, 2))
    scores[:, 1] += 0.5 * scores[:, 0]
    thresholds = rf.calibrate(scores, 0.01, [0.75, 0.25])
    assert 0.009 <= rf.refused(scores, thresholds).mean() <= 0.01
    by_check = (scores >= thresholds).mean(0)
    assert 2.0 < by_check[0] / by_check[1] < 4.0
    alone = rf.calibrate(scores, 0.01, [1.0, 0.0])
    assert np.isinf(alone[1]) and 0.009 <= rf.refused(scores, alone).mean() <= 0.01
    with pytest.raises(ValueError, match="rate"):
        rf.calibrate(scores, 1.5, [1.0, 0.0])


@pytest.fixture(scope="module")
def synthetic_fit() -> tuple[rf.RefusalFit, list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(1)
    train, labels = _synthetic(rng, 800)
    calibration, _ = _synthetic(rng, 400)
    negatives, _ = _synthetic(rng, 300, shift=2.5)
    fit = rf.fit_refusal(train, labels, calibration, negatives, BLOCKS, rate=0.02)
    fresh_negatives, _ = _synthetic(rng, 300, shift=2.5)
    return fit, calibration, fresh_negatives


def test_fit_refuses_its_rate_of_calibration_images_and_the_negatives(synthetic_fit):
    fit, calibration, negatives = synthetic_fit
    assert fit.calibration["refused"] <= 0.02 and fit.refuse(calibration).mean() <= 0.02
    assert fit.refuse(negatives).mean() > 0.9
    described = fit.describe()
    assert [c["name"] for c in described["checks"]] == ["domain", "density"] and described["members"] == 2
    assert len(fit.terms) == 4  # two members x two blocks


def test_fit_refuses_members_that_do_not_line_up(synthetic_fit):
    fit, calibration, _ = synthetic_fit
    with pytest.raises(TypeError, match="one .* matrix per ensemble member"):
        fit.scores(calibration[0])
    with pytest.raises(ValueError, match="feature widths"):
        fit.scores([calibration[0], calibration[1][:, :8]])
    with pytest.raises(ValueError, match="same images"):
        fit.scores([calibration[0], calibration[1][:10]])
    with pytest.raises(ValueError, match="1 block layouts for 2 members"):
        rf.fit_density(calibration, np.zeros(len(calibration[0]), int), [BLOCKS])


def test_members_of_different_widths_get_their_own_layouts():
    rng = np.random.default_rng(3)
    (wide, narrow), labels = _synthetic(rng, 300)
    terms, oof = rf.fit_density([wide, narrow[:, :4]], labels, [BLOCKS, BLOCKS[:1]])
    assert [(t.member, t.block.name) for t in terms] == [(0, "a"), (0, "b"), (1, "a")] and oof.shape == (300, 3)
    assert abs(oof.mean()) < 1e-9 and np.allclose(oof.std(0), 1)  # standardised out of fold


class _TwoMembers(torch.nn.Module):
    """One input holding both members' features side by side, as an ensemble graph has them."""

    def __init__(self, head: rf.RefusalHead):
        super().__init__()
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head([x[:, :12], x[:, 12:]])


def test_head_module_computes_the_fit_scores_in_a_plain_onnx_graph(synthetic_fit, tmp_path):
    import onnxruntime as ort

    fit, calibration, negatives = synthetic_fit
    x = [np.concatenate([c, n]).astype(np.float32) for c, n in zip(calibration, negatives)]
    want = fit.scores(x)
    both = np.concatenate(x, 1)
    module = _TwoMembers(rf.RefusalHead(fit)).eval()
    with torch.no_grad():
        got = module(torch.from_numpy(both)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)

    batch = torch.export.Dim("batch", min=1, max=1024)
    with warnings.catch_warnings():  # torch's own exporter internals (as in models/training/export.py)
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
        program = torch.onnx.export(module, (torch.from_numpy(both[:2]),), dynamo=True, opset_version=18,
                                    input_names=["features"], output_names=["refusal"],
                                    dynamic_shapes={"x": {0: batch}}, verbose=False)
    path = tmp_path / "refusal.onnx"
    program.save(str(path), external_data=False)
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert ops <= PLAIN_OPS, f"not plain: {ops - PLAIN_OPS}"
    (exported,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"features": both})
    np.testing.assert_allclose(exported, want, rtol=1e-3, atol=1e-3)


def test_shipped_chest_model_refuses_unseen_kinds_and_keeps_films(datasets, shipped_chest_resnet):
    """Fitted on a few hundred of the model's own training films and some negative families, the
    check keeps held-out validation films and refuses fresh draws, including two families it never saw."""
    model = shipped_chest_resnet
    contract = load_bundle(default_bundles_dir() / "chest-xray-pneumonia").manifest.input
    split = load_split(datasets / "chest-xray" / "train", 0.17, 0)  # the shipped model's own split
    rng = np.random.default_rng(0)
    train = [split.train[i] for i in rng.choice(len(split.train), 200, replace=False)]
    val = [split.val[i] for i in rng.choice(len(split.val), 160, replace=False)]
    train_images = [decode_rgb(s.path) for s in train]

    @torch.no_grad()
    def features(images) -> np.ndarray:
        x = torch.from_numpy(np.stack([to_model_input(img, contract) for img in images]))
        logits, _, pooled = rf.forward_with_features(model, x)
        np.testing.assert_allclose(logits[:8].numpy(), model(x[:8])[0].numpy(), atol=1e-5)
        return pooled.numpy()

    families = {f.name: f for f in ng.families(ng.CHEST_EXAM, own=train_images[:60])}
    seen = ("documents", "textures", "scenes", "cells", "inverted", "rotated")
    negatives = np.concatenate([features(ng.generate(families[n], 0, 24, 128)) for n in seen])
    fit = rf.fit_refusal([features(train_images)], np.array([s.label for s in train]),
                         [features([decode_rgb(s.path) for s in val[:80]])], [negatives],
                         rf.feature_blocks(model), rate=0.02)

    kept = 1 - fit.refuse([features([decode_rgb(s.path) for s in val[80:]])]).mean()
    assert kept >= 0.95
    for name in (*seen, "dicom", "fundus"):  # dicom and fundus: never shown to the fit
        refused = fit.refuse([features(ng.generate(families[name], 1, 20, 128))]).mean()
        assert refused >= 0.9, f"{name}: refused {refused:.0%}"
