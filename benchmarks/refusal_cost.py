"""What a bundle's refusal check adds to the served model's latency, measured side by side in one run:
each variant's graph as shipped (every output the device fetches) against the same graph cut down
to logits and cam (onnx.utils.extract_model: the refusal check's own nodes removed), batch 1, on a
real validation image, interleaved rounds on this CPU. Issue 21's budget: at most 10% on the p50.
The ratio is the median over rounds of each round's p50 with the check over its p50 without
(optimize.timing.round_ratios), with the quartiles of those ratios: how much it moved in this run.

    python benchmarks/refusal_cost.py [BUNDLE ...]   (default: every shipped bundle with a check)
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnx.utils
import onnxruntime as ort

from device.runtime.variant_check import golden_set
from models.bundle import default_bundles_dir, load_bundle
from optimize.timing import interleaved_latencies, round_ratios, summarise

THREADS = 1  # the kiosk's default intra-op threads on a 2-core appliance


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def measure(bundle_dir: Path, calls: int, rounds: int) -> list[dict]:
    bundle = load_bundle(bundle_dir)
    m = bundle.manifest
    # What the device runs: a real validation image as it preprocesses one (the bundle's first golden input).
    x = np.ascontiguousarray(golden_set(bundle)[0][:1], dtype=np.float32)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for v in m.variants:
            if "cpu" not in v.targets:
                continue
            full = bundle.path_of(v.file)
            plain = Path(tmp) / f"plain-{v.file}"
            onnx.utils.extract_model(str(full), str(plain), [m.input.tensor_name], [m.outputs.logits, m.outputs.cam])
            runs = []
            for path, names in ((full, list(m.output_names)), (plain, [m.outputs.logits, m.outputs.cam])):
                sess = _session(path)
                runs.append(lambda batch, s=sess, n=names: s.run(n, {m.input.tensor_name: batch}))
            samples = interleaved_latencies(runs, x, calls, rounds)
            with_check, without = (summarise(s, 1)["p50_ms"] for s in samples)
            low, ratio, high = np.percentile(round_ratios(*samples, rounds), [25, 50, 75])
            rows.append({"bundle": f"{m.id} {m.version}", "variant": f"{v.precision} ({'/'.join(v.targets)})",
                         "p50_ms": with_check, "p50_ms_without_check": without, "ratio": float(ratio),
                         "ratio_quartiles": (float(low), float(high))})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="*", type=Path)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args(argv)
    paths = args.bundles or [p for p in sorted(default_bundles_dir().iterdir())
                             if (p / "manifest.json").exists() and load_bundle(p).manifest.refusal]
    print("| bundle | variant | p50 ms with the check | p50 ms without | ratio (median of rounds) | quartiles |")
    print("| --- | --- | --- | --- | --- | --- |")
    for path in paths:
        for r in measure(path, args.calls, args.rounds):
            print(f"| {r['bundle']} | {r['variant']} | {r['p50_ms']:.3f} | {r['p50_ms_without_check']:.3f} | "
                  f"{r['ratio']:.3f} | {r['ratio_quartiles'][0]:.3f}-{r['ratio_quartiles'][1]:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
