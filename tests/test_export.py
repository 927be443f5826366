"""Export: BN folding and temperature baking keep the maths, ONNX matches torch, shapes are right."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from models.training.architectures import build_model  # noqa: E402
from models.training.export import INPUT_NAME, OPSET, OUTPUT_NAMES, export_onnx, max_abs_diff, onnx_session  # noqa: E402


def _random_model():
    """A model with non-trivial BN statistics, so folding is actually exercised."""
    torch.manual_seed(0)
    model = build_model((16, 32), 1).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model


def test_cam_mean_is_logits():
    model = _random_model()
    logits, cam = model(torch.randn(2, 1, 64, 64))
    assert cam.shape == (2, 2, 16, 16)  # stem and one stage at stride 2: 64 / 4
    torch.testing.assert_close(cam.mean(dim=(2, 3)), logits)


def test_fuse_and_temperature_keep_outputs():
    model = _random_model()
    x = torch.randn(3, 1, 64, 64)
    logits, cam = model(x)
    model.bake_temperature(2.0)
    model.fuse()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    fused_logits, fused_cam = model(x)
    torch.testing.assert_close(fused_logits, logits / 2.0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused_cam, cam / 2.0, atol=1e-5, rtol=1e-5)


def test_onnx_matches_torch_with_dynamic_batch(tmp_path):
    model = _random_model().fuse()
    path = export_onnx(model, 64, tmp_path / "model.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no external-data file
    graph = onnx.load(str(path))
    assert graph.opset_import[0].version >= OPSET
    assert [i.name for i in graph.graph.input] == [INPUT_NAME]
    assert [o.name for o in graph.graph.output] == list(OUTPUT_NAMES)
    assert "BatchNormalization" not in {n.op_type for n in graph.graph.node}
    for batch in (1, 5):
        diff = max_abs_diff(model, path, torch.randn(batch, 1, 64, 64))
        assert max(diff.values()) < 1e-4, diff
    logits, cam = onnx_session(path).run(None, {INPUT_NAME: torch.randn(3, 1, 64, 64).numpy()})
    assert logits.shape == (3, 2) and cam.shape == (3, 2, 16, 16)
