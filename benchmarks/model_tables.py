"""Print the README's model tables from the shipped bundles' manifests (no number typed by hand):
validation metrics, ensemble members, shortcut audits (overall and on the audit group), the refusal
check's measured rates, and each variant's gate.

    python benchmarks/model_tables.py [BUNDLE ...]   (default: every bundle in models/bundles)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from models.bundle import Manifest, default_bundles_dir, load_bundle


def _f(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def metrics_table(m: Manifest) -> list[str]:
    rows = ["| split | AUC | sensitivity | specificity |", "| --- | --- | --- | --- |"]
    for s in m.metrics:
        rows.append(f"| {s.split} | {_f(getattr(s, 'auc', None))} | {_f(getattr(s, 'sensitivity', None))} | "
                    f"{_f(getattr(s, 'specificity', None))} |")
    return rows


def members_table(m: Manifest) -> list[str]:
    if not m.ensemble:
        return []
    columns = sorted({k for e in m.ensemble for k in e.scores})
    rows = ["| member | " + " | ".join(columns) + " |", "| --- |" + " --- |" * len(columns)]
    rows += [f"| {e.config} | " + " | ".join(_f(e.scores.get(c)) for c in columns) + " |" for e in m.ensemble]
    return rows


def audit_table(m: Manifest) -> list[str]:
    rows = ["| check | flips | on |", "| --- | --- | --- |"]
    for c in m.variant("fp32").audit or []:
        rows.append(f"| {c.name} | {c.flip_rate:.2%} | {c.group or 'all validation'} (n={c.n}) |")
    return rows


def refusal_table(m: Manifest) -> list[str]:
    """In-distribution rows as they are; each negative family's fresh draw beside its left-out fit."""
    if m.refusal is None:
        return ["(no refusal check)"]
    fresh, left, rows = {}, {}, ["| images | n | refused | refused when left out of the fit |", "| --- | --- | --- | --- |"]
    for r in m.refusal.measured:
        if r.data.startswith("negatives: "):
            fresh[r.data.removeprefix("negatives: ").removesuffix(" (a fresh draw)")] = r
        elif r.data.startswith("left out of the fit: "):
            left[r.data.removeprefix("left out of the fit: ")] = r
        else:
            rows.append(f"| {r.data} | {r.n} | {r.refused:.1%} | |")
    for family, r in fresh.items():
        alone = left.get(family)
        rows.append(f"| negatives: {family} | {r.n} | {r.refused:.1%} | {'-' if alone is None else format(alone.refused, '.1%')} |")
    return rows


def variants_table(m: Manifest) -> list[str]:
    rows = ["| variant | targets | AUC drop | triage agreement | refusal decisions changed | passed |",
            "| --- | --- | --- | --- | --- | --- |"]
    for v in m.variants:
        g = v.gate or {}
        changed = g.get("refusal_changed")
        rows.append(f"| {v.precision} | {', '.join(v.targets)} | {_f(g.get('auc_drop'))} | "
                    f"{'-' if 'agreement' not in g else format(g['agreement'], '.2%')} | "
                    f"{'-' if changed is None else format(changed, '.2%')} | {g.get('passed', 'reference')} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="*", type=Path)
    args = parser.parse_args(argv)
    for path in args.bundles or sorted(p for p in default_bundles_dir().iterdir() if (p / "manifest.json").exists()):
        m = load_bundle(path).manifest
        print(f"### {m.id} {m.version}\n")
        for title, table in (("Validation", metrics_table(m)), ("Members", members_table(m)),
                             ("Shortcut audits (FP32)", audit_table(m)), ("Refusal check", refusal_table(m)),
                             ("Variants", variants_table(m))):
            if table:
                print(f"{title}:\n\n" + "\n".join(table) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
