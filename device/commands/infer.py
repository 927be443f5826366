"""``bedside infer``: triage files; a table for people, JSON lines for programs.

Exit status: 0 when every file was triaged (UNGRADABLE counts as triaged), 2 when any failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from device import intake
from device.commands.common import add_bundle_argument, add_runtime_arguments, add_site_argument, open_triager
from device.decision import heatmap
from device.decision.triage import TriageResult
from models.bundle import InputContract

EXIT_SOME_FAILED = 2


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    add_bundle_argument(parser)
    add_runtime_arguments(parser)
    add_site_argument(parser)
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--heatmap-dir", type=Path, help="write <name>.heatmap.png overlays here")
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE")


def _table_row(result: TriageResult) -> str:
    """One line; an UNGRADABLE result has no label or score to print (its JSON keeps what the model said)."""
    reasons = "; ".join(f"{i.message} ({i.detail})" if i.detail else i.message for i in result.reasons) or "ok"
    top = ""
    if result.probabilities is not None and len(result.probabilities) > 2:
        best = sorted(result.probabilities.items(), key=lambda kv: -kv[1])[:3]
        top = "  top " + ", ".join(f"{name} {p:.2f}" for name, p in best)
    p = "-" if result.urgent_probability is None else f"{result.urgent_probability:.3f}"
    return (f"{result.triage:<10} {result.label or '-':<10} {p:>6} {result.latency_ms:>8.1f}  "
            f"{result.source}  [{reasons}]{top}")


def _write_heatmap(directory: Path, path: Path, result: TriageResult, img: intake.DecodedImage,
                   contract: InputContract) -> None:
    if result.cam is None:
        return
    directory.mkdir(parents=True, exist_ok=True)
    if img.pixels.shape[:2] != img.original_size:  # decoded at the model's scale: draw on the full image
        img = intake.decode_file(path)
    overlay = heatmap.overlay(img.pixels, result.cam, contract=contract)
    heatmap.write_png(directory / f"{path.name}.heatmap.png", overlay)


def run(args: argparse.Namespace) -> int:
    triager = open_triager(args)
    m = triager.manifest
    if not args.json:
        op = triager.operating_point
        print(f"model {m.id} {m.version} ({triager.model.precision}, {triager.model.backend}), "
              f"threshold P({' + '.join(m.policy.urgent_labels)}) >= {op.threshold:.3f}: {op.text}")
        short = m.policy.urgent_labels[0][:3] if len(m.policy.urgent_labels) == 1 else "urg"
        print(f"{'TRIAGE':<10} {'LABEL':<10} {'P(' + short + ')':>6} {'ms':>8}  FILE")
    failed = 0
    for path in args.files:
        try:
            result, img = triager.triage_file(path)
            if args.heatmap_dir:
                _write_heatmap(args.heatmap_dir, path, result, img, m.input)
        except intake.IntakeError as exc:
            failed += 1
            if args.json:
                print(json.dumps({"file": str(path), "error": exc.reason, "kind": exc.kind}), flush=True)
            else:
                print(f"{'ERROR':<10} {'-':<10} {'-':>6} {'-':>8}  {path}  [{exc.reason}]", flush=True)
            continue
        if args.json:
            print(json.dumps(result.as_json()), flush=True)
        else:
            print(_table_row(result), flush=True)
    if failed:
        print(f"{failed} of {len(args.files)} files could not be triaged", file=sys.stderr)
    return EXIT_SOME_FAILED if failed else 0
