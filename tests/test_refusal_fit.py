"""The "may I judge this?" check: its fitting arithmetic, its calibration, its graph module (ONNX,
plain ops). The shipped bundles' checks on real images: tests/test_shipped_refusal.py."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")
onnx = pytest.importorskip("onnx")

from sklearn.covariance import LedoitWolf  # noqa: E402

from models.training import refusal as rf  # noqa: E402

# What the refusal head may put in a graph: matrix products, element-wise arithmetic, reductions,
# and the shape plumbing around them; no linear algebra (the whitening is precomputed).
PLAIN_OPS = {"MatMul", "Gemm", "Add", "Sub", "Mul", "Div", "Log", "Clip", "Max", "ReduceSum", "ReduceMin",
             "Concat", "Slice", "Gather", "Unsqueeze", "Squeeze", "Reshape", "Constant", "Transpose", "Identity"}


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
    by_check = (scores > thresholds).mean(0)
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

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head([[x[:, :4], x[:, 4:12]], [x[:, 12:16], x[:, 16:]]])  # per member, per stage


def test_head_module_computes_the_fit_scores_in_a_plain_onnx_graph(synthetic_fit, tmp_path):
    import onnxruntime as ort

    fit, calibration, negatives = synthetic_fit
    x = [np.concatenate([c, n]).astype(np.float32) for c, n in zip(calibration, negatives)]
    want = fit.scores(x)
    both = np.concatenate(x, 1)
    module = _TwoMembers(rf.RefusalHead(fit)).eval()
    with torch.no_grad():
        got = torch.stack(module(torch.from_numpy(both)), 1).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)

    batch = torch.export.Dim("batch", min=1, max=1024)
    with warnings.catch_warnings():  # torch's own exporter internals (as in models/training/export.py)
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
        program = torch.onnx.export(module, (torch.from_numpy(both[:2]),), dynamo=True, opset_version=18,
                                    input_names=["features"], output_names=list(module.head.output_names),
                                    dynamic_shapes={"x": {0: batch}}, verbose=False)
    path = tmp_path / "refusal.onnx"
    program.save(str(path), external_data=False)
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert ops <= PLAIN_OPS, f"not plain: {ops - PLAIN_OPS}"
    exported = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"features": both})
    assert [o.name for o in onnx.load(str(path)).graph.output] == ["refusal_domain", "refusal_density"]
    np.testing.assert_allclose(np.stack(exported, 1), want, rtol=1e-3, atol=1e-3)


def test_stress_cap_raises_only_the_density_threshold_to_spare_stressed_copies():
    """The density's threshold is raised until it refuses at most the cap of the calibration images'
    stress copies; the domain head's threshold is left where calibration put it."""
    rng = np.random.default_rng(4)
    train, labels = _synthetic(rng, 800)
    calibration, _ = _synthetic(rng, 400)
    negatives, _ = _synthetic(rng, 300, shift=2.5)
    stressed = [c * 1.6 for c in calibration]  # wider spread: far in density, same kind of image
    density = rf.fit_density_check(train, labels, BLOCKS)
    plain = rf.fit_refusal(train, labels, calibration, negatives, BLOCKS, rate=0.02, density=density)
    capped = rf.fit_refusal(train, labels, calibration, negatives, BLOCKS, rate=0.02, density=density,
                            stress=stressed, stress_cap=0.02)
    assert capped.checks[0].threshold == plain.checks[0].threshold
    assert capped.checks[1].threshold > plain.checks[1].threshold
    density_scores = capped.scores(stressed)[:, 1]
    assert (density_scores > capped.checks[1].threshold).mean() <= 0.02 < (density_scores > plain.checks[1].threshold).mean()


def test_the_rate_is_chosen_so_that_images_that_did_not_set_the_thresholds_keep_it():
    """Each half of the patients judged by thresholds set on the other: where one half's tail is heavier
    (as skin lesions of some kinds are), calibrating at 1% refuses more than 1% of the other half; the
    chosen rate is lower and keeps the cross-fitted refusals at 1%."""
    rng = np.random.default_rng(5)
    n = 4000
    first = np.arange(n) < n // 2
    scores = rng.normal(size=(n, 2))
    scores[~first] *= 1.12  # the second half's tails are heavier
    stressed, rows = scores + rng.normal(scale=0.1, size=(n, 2)), np.arange(n)
    at_rate, _ = rf.cross_fitted_refusals(scores, stressed, rows, first, 0.01, 0.25)
    assert at_rate.mean() > 0.011
    chosen = rf.held_out_rate(scores, stressed, rows, first, 0.01, 0.25)
    held, held_stress = rf.cross_fitted_refusals(scores, stressed, rows, first, chosen, 0.25)
    assert 0.0025 <= chosen < 0.01 and held.mean() <= 0.01 and held_stress.shape == (n,)
