"""The benchmarks that write the README's table still run: each of the model-side ones is run
exactly as ``benchmarks/run_all.py --quick`` runs it (its own process, its JSON read back), and
the table's rows are rendered from what it printed. A benchmark broken by a change elsewhere
(a renamed argument, a second bundle shipped) fails here, not on the day numbers are wanted."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def run_all():
    spec = importlib.util.spec_from_file_location("run_all", ROOT / "benchmarks" / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["run_all"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["engines", "pipeline", "burst", "tails"])
def test_model_benchmark_runs_as_run_all_runs_it(run_all, name):
    command = run_all.benchmarks(quick=True)[name]
    entry = run_all.run_one(name, command)
    assert "error" not in entry, entry.get("error")
    rows = run_all.ROWS[name](entry["result"])
    assert rows and all(what and result for what, result in rows)
    if name == "engines":
        assert any(r["served"] for r in entry["result"]["results"])  # the kiosk's choice is marked
        assert {t["target"] for t in entry["result"]["targets"]} >= {"served p50 / fastest p50 (batch 1)"}


@pytest.mark.slow  # its own central node (Triton starts in 8-15 s here), a kiosk, and a short run against them
def test_central_benchmark_runs_as_run_all_runs_it(run_all, datasets):
    entry = run_all.run_one("central", run_all.benchmarks(quick=True)["central"])
    assert "error" not in entry, entry.get("error")
    rows = run_all.ROWS["central"](entry["result"])
    assert rows and all(what and result for what, result in rows)
    killed = entry["result"]["fallback"]  # the node SIGKILLed mid-burst: every upload triaged, once
    assert (killed["acknowledged"], killed["lost"], killed["duplicated"], killed["refused"]) == (16, 0, 0, []), killed
    assert killed["by_backend"].get("remote", 0) >= 4 and killed["first_local_after_kill_s"] < 2.0
    batches = entry["result"]["concurrency"]["mean_batch"]  # Triton's own counters: a lone client is never batched
    assert batches["1"] == 1.0 and batches["16"] > 1.5, batches
    body = run_all.section({"benchmarks": {"central": {**entry, "started_at": "2026-01-01T00:00:00Z",
                                                       "load_average_before": [0.0]}},
                            "machine": {"cpu": "test", "cores": 2}}, "central")
    assert body.count("\n| ") == len(rows) + 2 and "target: " in body  # the header, its rule, a line a row


@pytest.mark.slow  # 300 films triaged five ways (unchanged, gamma, local contrast, inverted) and replayed: ~1 min
def test_drift_benchmark_runs_as_run_all_runs_it(run_all, datasets):
    entry = run_all.run_one("drift", run_all.benchmarks(quick=True)["drift"])
    assert "error" not in entry, entry.get("error")
    result = entry["result"]
    rows = run_all.ROWS["drift"](result)
    assert rows and all(what and result for what, result in rows)
    assert result["targets"]["monitor < 1 ms per study"]
    assert all(d["detected"] == d["streams"] for d in result["processing"].values())
    assert result["targets"]["prevalence alone never reads drift"], result["prevalence"]


def test_refusal_cost_times_every_shipped_check_against_its_graph_without_it():
    spec = importlib.util.spec_from_file_location("refusal_cost", ROOT / "benchmarks" / "refusal_cost.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from models.bundle import default_bundles_dir

    rows = [r for p in sorted(default_bundles_dir().iterdir()) for r in module.measure(p, calls=40, rounds=4)]
    assert {r["variant"] for r in rows} == {"fp32 (cpu/gpu)", "int8 (cpu)"} and len(rows) == 4
    for r in rows:  # each ratio from four paired rounds of timings that really ran
        assert r["p50_ms"] > 0 and r["p50_ms_without_check"] > 0
        assert np.isfinite([r["ratio"], *r["ratio_quartiles"]]).all() and r["ratio"] > 0


def test_skin_compare_pairs_two_bundles_on_the_same_images(datasets):
    """The shipped skin bundle against itself on 150 validation images and their stress copies: the
    same AUCs, every difference and its whole interval exactly zero (the two runs see the same
    images and the same stress draw); bundles validated on different inputs are refused."""
    spec = importlib.util.spec_from_file_location("skin_compare", ROOT / "benchmarks" / "skin_compare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from models.bundle import default_bundles_dir

    skin = default_bundles_dir() / "skin-lesion-triage"
    rows = module.compare(skin, skin, limit=150)
    assert rows[0].startswith("old 3.3.0, new 3.3.0: 150 validation images, 2 stress copies each (seed 2)")
    table = [r.split(" | ") for r in rows if r.startswith(("| melanoma", "| refer group"))]
    assert [r[0] for r in table] == ["| melanoma, clean", "| refer group, clean", "| melanoma, stressed",
                                     "| refer group, stressed"]
    for _, old, new, difference in table:
        assert old == new and 0.5 < float(old) <= 1.0
        assert difference == "+0.0000 [+0.0000, +0.0000] |"
    with pytest.raises(ValueError, match="different splits or inputs"):
        module.compare(default_bundles_dir() / "chest-xray-pneumonia", skin, limit=150)


def test_round_ratios_pair_each_round_so_drift_between_rounds_cancels():
    from optimize.timing import round_ratios

    # Two rounds of three calls; the machine is twice as slow in the second round. A pooled p50
    # would compare a fast-round median with a slow-round one; paired by round, 1.1 both times.
    baseline = np.array([1.0, 1.0, 1.0, 2.0, 2.0, 2.0])
    runner = np.array([1.1, 1.1, 1.1, 2.2, 2.2, 2.2])
    assert np.allclose(round_ratios(runner, baseline, 2), [1.1, 1.1])
    with pytest.raises(ValueError):
        round_ratios(runner, baseline, 4)  # six calls are not four equal rounds
