"""Ensembles averaged inside one graph: two tiny real chest members at different sides (32 and 64
px), their group-shift fold runs, combined, re-targeted for shift, exported and checked as the
device runs them."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from device.cli import main as bedside  # noqa: E402
from models.bundle import load_bundle  # noqa: E402
from models.training.ensemble import EnsembleRefused, combine, main as ensemble_main  # noqa: E402

HOLD_OUT = "normal2,virus"


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def ensemble(tiny_chest, tiny_chest_32, train_tiny_chest, tmp_path_factory):
    """The ensemble recipe run end to end, as `make model` runs one model: fold members and their
    fold ensemble, the main ensemble, its operating point from the fold, its bundle."""
    from models.training.operating_point import main as operating_point

    out = tmp_path_factory.mktemp("ensemble")
    folds = [train_tiny_chest(32, seed=1, hold_out=HOLD_OUT), train_tiny_chest(64, seed=0, hold_out=HOLD_OUT)]
    assert ensemble_main(["--member", *(str(f.checkpoint) for f in folds), "--out", str(out / "fold.pt")]) == 0
    assert ensemble_main(["--member", str(tiny_chest_32.checkpoint), str(tiny_chest.checkpoint),
                          "--out", str(out / "ensemble.pt")]) == 0
    assert operating_point(["--checkpoint", str(out / "ensemble.pt"), "--group-shift", str(out / "fold.pt"),
                            "--out", str(out / "shifted.pt")]) == 0
    assert bedside(["export", "--checkpoint", str(out / "shifted.pt"), "--group-shift", str(out / "fold.pt"),
                    "--out", str(out / "bundle")]) == 0
    return out


def test_the_ensemble_graph_is_what_the_bundle_runs(ensemble):
    """ONNX against torch on real validation films; the logits are the mean of each member's on the
    input average-pooled to its side, with its temperature and the ensemble's; the CAM's spatial
    mean is the logits; the golden inputs reproduce under the device's self-test."""
    from device.runtime.variant_check import selftest_variants
    from models.metrics import softmax
    from models.training.export import INPUT_NAME, deployable, deployable_model, onnx_session
    from models.training.images import load_images
    from models.training.registry import recipe_of

    checkpoint, bundle = load(ensemble / "shifted.pt"), load_bundle(ensemble / "bundle")
    m = bundle.manifest
    assert m.input.height == m.input.width == 64 and [e.input_side for e in m.ensemble] == [32, 64]
    recipe = recipe_of(checkpoint)
    x = torch.from_numpy(load_images(recipe.validation_samples(checkpoint, None)[:6], m.input, progress=False)).float()
    logits, cam = onnx_session(bundle.path_of("model.onnx")).run(["logits", "cam"], {INPUT_NAME: x.numpy()})
    with torch.no_grad():
        want_logits, want_cam = deployable(checkpoint)(x)
        t = float(checkpoint["temperature"])
        by_member = [deployable_model(mb, float(mb["temperature"]) * t)(F.avg_pool2d(x, 64 // int(mb["size"])))[0]
                     for mb in checkpoint["members"]]
    np.testing.assert_allclose(logits, want_logits.numpy(), atol=1e-4)
    np.testing.assert_allclose(cam, want_cam.numpy(), atol=1e-4)
    np.testing.assert_allclose(logits, torch.stack(by_member).mean(0).numpy(), atol=1e-4)
    assert cam.shape == (6, 2, 4, 4)  # the finest member's grid: 64 px / 16
    np.testing.assert_allclose(cam.mean(axis=(2, 3)), logits, atol=1e-5)

    with np.load(bundle.path_of("golden.npz"), allow_pickle=False) as golden:
        inputs, stored = golden["inputs"], golden["probabilities"]
    assert inputs.shape == (8, 1, 64, 64)
    got = onnx_session(bundle.path_of("model.onnx")).run(["logits"], {INPUT_NAME: inputs.astype(np.float32)})[0]
    np.testing.assert_allclose(softmax(got.astype(np.float64)), stored, atol=1e-6)
    assert all(v["ok"] for v in selftest_variants(bundle))


def test_card_and_manifest_report_each_member_and_the_ensemble(ensemble):
    checkpoint, fold = load(ensemble / "shifted.pt"), load(ensemble / "fold.pt")
    m = load_bundle(ensemble / "bundle").manifest
    held_out = f"held-out AUC ({HOLD_OUT})"
    for entry, member, fold_member in zip(m.ensemble, checkpoint["members"], fold["members"]):
        assert entry.training_command == member["training_command"] and "--size" in entry.training_command
        assert set(entry.scores) == {"clean AUC", "stress AUC", held_out}
        assert entry.scores[held_out] == fold_member["scores"]["held-out AUC"]
    # every figure is the ensemble's own, recomputed (and re-targeted for shift from the fold)
    assert m.metrics[0].auc == checkpoint["metrics"][0]["auc"] == checkpoint["scores"]["clean AUC"]
    assert m.calibration["temperature"] == checkpoint["temperature"]
    assert m.policy.operating_point.threshold == checkpoint["threshold"] and "operating_point" in checkpoint
    assert m.provenance.training_command.startswith("python -m models.training.ensemble --member")
    assert "members (32 px, 64 px) averaged inside the graph" in m.variant("fp32").notes
    card = (ensemble / "bundle" / "MODEL_CARD.md").read_text()
    assert "## Model: 2 members averaged inside one graph" in card
    assert "CAMs are brought to one\n4x4 grid" in card  # the 32 px member's 2x2 into the 64 px one's 4x4
    assert f"| member | clean AUC | stress AUC | {held_out} |" in card
    assert "| 32 px, widths 16-32-64-128, 1 block/stage, seed 1, 1 epoch |" in card
    assert f"| **ensemble (averaged in the graph)** | {checkpoint['scores']['clean AUC']:.4f} |" in card
    fold_row = f"| {HOLD_OUT} | {fold['metrics'][2]['n']} |"
    assert fold_row in card  # the fold ensemble in the group-shift table


def test_members_that_cannot_share_one_graph_are_refused_in_plain_words(tiny_chest, tiny_chest_32, tmp_path, capsys):
    a, b = load(tiny_chest_32.checkpoint), load(tiny_chest.checkpoint)
    names = ["a.pt", "b.pt"]
    with pytest.raises(EnsembleRefused, match="at least two members"):
        combine([a], names[:1], None, "")
    with pytest.raises(EnsembleRefused, match=r"do not share one validation split: their split seed differs \(0, 5\)"):
        combine([{**a, "data": {**a["data"], "split_seed": 5}}, b], names, None, "")
    with pytest.raises(EnsembleRefused, match="cannot see the 64 px input through an exact average pool: 64 is not a "
                                              "multiple of 48"):
        combine([{**a, "size": 48}, b], names, None, "")
    torch.save({**a, "exam": "adult-ct"}, tmp_path / "ct.pt")
    assert ensemble_main(["--member", str(tmp_path / "ct.pt"), str(tiny_chest.checkpoint),
                          "--out", str(tmp_path / "e.pt")]) == 1
    assert "ensemble: unknown exam 'adult-ct'" in capsys.readouterr().err and not (tmp_path / "e.pt").exists()


class PooledHead(nn.Module):
    """A head on every member's pooled stage features (what an in-graph refusal check would read)."""

    def __init__(self, widths: list[int]):
        super().__init__()
        self.fc = nn.Linear(sum(widths), 1)  # each stage's channel norms

    def forward(self, pooled: list[list[torch.Tensor]]) -> torch.Tensor:
        return torch.sigmoid(self.fc(torch.cat([stage for member in pooled for stage in member], dim=1)))


def test_a_head_on_the_members_pooled_features_is_one_more_graph_output(tiny_chest, tiny_chest_32, tmp_path):
    import onnx

    from models.training.ensemble_graph import Ensemble
    from models.training.export import export_onnx, max_abs_diff, member_model

    members = [load(tiny_chest_32.checkpoint), load(tiny_chest.checkpoint)]
    widths = [w for m in members for w in (16, *m["widths"])]  # the stem, then each stage
    torch.manual_seed(0)
    graph = Ensemble([member_model(m) for m in members], [32, 64], heads={"refusal": PooledHead(widths)}).eval()
    path = export_onnx(graph, 64, tmp_path / "model.onnx")
    assert [o.name for o in onnx.load(str(path)).graph.output] == ["logits", "cam", "refusal"]
    diff = max_abs_diff(graph, path, torch.randn(3, 1, 64, 64, generator=torch.Generator().manual_seed(1)))
    assert set(diff) == {"logits", "cam", "refusal"} and max(diff.values()) < 1e-4


def test_a_head_reads_only_the_members_it_is_given(tmp_path):
    """Skin's refusal check reads only the members at the full input side (112 px, not 56 px): the
    head's features, its fit's layout and its graph output come from those members alone, the
    triage outputs still from every member, and the card says which members it reads."""
    from models.bundle import RefusalCheck, RefusalPolicy
    from models.training import refusal as rf
    from models.training.architectures import build_model
    from models.training.ensemble_graph import Ensemble
    from models.training.export import export_onnx, full_side_members, max_abs_diff
    from models.training.refusal_policy import card_section, member_blocks
    from models.training.tta import DihedralAverage

    torch.manual_seed(0)
    members = [DihedralAverage(build_model((16, 16, 16, 16), 1, classes=7, channels=3), 1) for _ in range(3)]
    sides = [112, 56, 112]
    assert full_side_members({"members": [{"size": s} for s in sides]}) == [0, 2]
    assert full_side_members({"size": 112}) == [0]
    x = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(1))
    every = Ensemble(members, sides, head_stages=2).eval()
    full = Ensemble(members, sides, head_stages=2, head_members=[0, 2]).eval()
    with torch.no_grad():
        every_logits, every_features = every.features(x)
        logits, features = full.features(x)
    torch.testing.assert_close(logits, every_logits)
    assert len(every_features) == 3 and len(features) == 2
    torch.testing.assert_close(features[1], every_features[2])
    assert [[b.name for b in layout] for layout in member_blocks(full)] == [["stage2", "stage3"]] * 2

    widths = [16 + 16] * 2  # two stages of 16 channels, per member read
    full.heads["refusal"] = PooledHead(widths)
    path = export_onnx(full, 112, tmp_path / "model.onnx", channels=3)
    assert max(max_abs_diff(full, path, x).values()) < 1e-4

    policy = RefusalPolicy(checks=[RefusalCheck(name="density", output="refusal", statistic="s", threshold=1.0)],
                           subject="a dermoscopy image", advice="Check the image.", calibrated_refusal_rate=0.01,
                           calibrated_on="validation", measured=[])
    assert "run from the features of members 1 and 3 only (112 px: the members that see the full input side)," \
        in card_section(policy, full)
    assert "computed in the same model run, is above" in card_section(policy, every)
    for wrong in ([], [3]):
        with pytest.raises(ValueError, match="a head reads one or more of the 3 members"):
            Ensemble(members, sides, head_members=wrong)


def test_heatmaps_that_do_not_nest_meet_on_their_least_common_grid(tmp_path):
    """Skin's 112 px member maps 7x7, a 56 px one 4x4: the ensemble's CAM is 28x28 (whole-factor
    nearest upsampling), still averages to the logits, and runs the same under ONNX Runtime and the
    eager runner. Members whose common grid would pass 64x64 are refused in plain words."""
    from models.training.architectures import build_model
    from models.training.ensemble_graph import Ensemble
    from models.training.export import export_onnx, max_abs_diff
    from models.training.onnx_eager import EagerGraph
    from models.training.tta import DihedralAverage

    torch.manual_seed(0)

    def member():
        return DihedralAverage(build_model((16, 16, 16, 16), 1, classes=7, channels=3), 1)

    graph = Ensemble([member(), member()], [112, 56]).eval()
    x = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits, cam = graph(x)
    assert graph.upsample == [4, 7] and cam.shape == (2, 7, 28, 28)
    np.testing.assert_allclose(cam.mean(dim=(2, 3)).numpy(), logits.numpy(), atol=1e-5)
    path = export_onnx(graph, 112, tmp_path / "model.onnx", channels=3)
    assert max(max_abs_diff(graph, path, x).values()) < 1e-4
    eager = EagerGraph(path)(x.numpy())
    np.testing.assert_allclose(eager["cam"], cam.numpy(), atol=1e-4)

    with pytest.raises(ValueError, match="no common grid of at most 64x64 cells \\(theirs is 70x70\\)"):
        Ensemble([member(), member()], [112, 160], side=1120)


def test_the_skin_card_names_the_common_grid_and_each_members_epochs():
    """A skin ensemble of a 112 px member (40 epochs) and a 56 px one (60 epochs): its card names the
    28x28 grid the graph builds and does not give the first member's epochs for both."""
    from models.training.architectures import build_model
    from models.training.skin.card import _network

    def member(size, epochs):
        model = build_model((16, 32, 64, 128), 1, classes=7, channels=3)
        return {"widths": (16, 32, 64, 128), "blocks": 1, "size": size, "channels": 3, "classes": 7, "tta": 1,
                "state_dict": model.state_dict(), "temperature": 1.0, "seed": size,
                "train_config": {"epochs": str(epochs)}, "training_command": "bedside train", "scores": {}}

    checkpoint = {"members": [member(112, 40), member(56, 60)], "size": 112, "temperature": 1.0, "scores": {}}
    cfg = {"epochs": "40", "lr": 0.003, "batch_size": 64, "weight_decay": 0.0005, "label_smoothing": 0.05,
           "ema": 0.995, "class_weight_power": 0.0}
    text = _network(checkpoint, {"logits": 0.0, "cam": 0.0}, [], cfg)
    assert "The CAMs are brought to one 28x28 grid" in text
    assert "for\neach member's epochs (the table above)" in text and "40 epochs of" not in text
    assert "| 56 px, widths 16-32-64-128, 1 block/stage, seed 56, 60 epochs |" in text


def test_the_cpu_int8_recipe_keeps_each_members_first_convolution_in_float(ensemble, tmp_path):
    """Each member's first convolution reads the input (the 32 px one through its average pool): the
    CPU recipe leaves all of them in float, as it does the one of a single model."""
    import onnx

    from optimize.quantize import CPU_INT8, quantize_int8

    fp32 = ensemble / "bundle" / "model.onnx"
    with np.load(ensemble / "bundle" / "golden.npz", allow_pickle=False) as golden:
        calibration = golden["inputs"].astype(np.float32)
    quantize_int8(fp32, tmp_path / "int8.onnx", "image", calibration, CPU_INT8, "minmax")
    graph = onnx.load(str(tmp_path / "int8.onnx")).graph
    initializers = {t.name for t in graph.initializer}
    float_convs = [n for n in graph.node if n.op_type == "Conv" and n.input[1] in initializers]
    producers = {o: n.op_type for n in graph.node for o in n.output}
    assert len(float_convs) == 2
    assert sorted(producers.get(c.input[0], "input") for c in float_convs) == ["AveragePool", "input"]


def test_a_head_reading_the_last_stages_leaves_the_full_resolution_maps_unpooled(tiny_chest, tiny_chest_32, tmp_path):
    """`head_stages=2`: the head's input is each member's last two stages' channel norms, one graph
    node each, and the graph pools no larger map (what the refusal check's cost on the CPU comes from)."""
    import onnx

    from models.training import refusal as rf
    from models.training.ensemble_graph import Ensemble
    from models.training.export import export_onnx, member_model

    members = [load(tiny_chest_32.checkpoint), load(tiny_chest.checkpoint)]

    def largest_pooled_side(head_stages):
        models = [member_model(m) for m in members]
        blocks = [rf.feature_blocks(m.model, head_stages) for m in models]
        widths = [b.stop - b.start for layout in blocks for b in layout]
        graph = Ensemble(models, [32, 64], heads={"refusal": PooledHead(widths)}, head_stages=head_stages).eval()
        _, features = graph.features(torch.zeros(2, 1, 64, 64))
        assert [f.shape[1] for f in features] == [layout[-1].stop for layout in blocks]
        model = onnx.shape_inference.infer_shapes(onnx.load(str(export_onnx(graph, 64, tmp_path / "m.onnx"))))
        shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in model.graph.value_info}
        norms = [n for n in model.graph.node if n.op_type == "ReduceL2"]
        assert len(norms) == sum(len(layout) for layout in blocks)  # one node per member and stage read
        return max(shapes[n.input[0]][2] for n in norms)

    assert [b.name for b in rf.feature_blocks(member_model(members[1]).model, 2)] == ["stage2", "stage3"]
    assert largest_pooled_side(None) == 32  # the 64 px member's stem
    assert largest_pooled_side(2) == 8  # its stage2: a 64 px input over 8
    with pytest.raises(ValueError, match="at least one stage"):
        Ensemble([member_model(members[0])], [32], head_stages=0)
    with pytest.raises(ValueError, match="stages, not 9"):
        rf.feature_blocks(member_model(members[0]).model, 9)
