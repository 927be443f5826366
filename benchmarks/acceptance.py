"""Site acceptance as a clinic would run it (issue 25's targets), on the chest bundle's validation
films (the owners' sequestered test split is not on this machine):

- how long `bedside acceptance run` takes on 200 films (target < 30 s): the command as a user runs
  it, a new process on a fresh data dir, so the kiosk's backend choice is measured too;
- the owners'-style check: an acceptance on a patient-disjoint 30% of the films, applied with
  `bedside acceptance apply`, then `bedside eval --data-dir` on the other 70% at the site's point
  (targets: sensitivity >= 0.95, specificity >= 0.88), beside the bundle's own point on the same 70%.

Every step is the console command in its own process, on folders of links to the shared films.

    nice -n 19 .venv/bin/python benchmarks/acceptance.py [--json] [--readme]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from drift_reference import validation_samples, with_reference
from models.bundle import default_bundles_dir, load_bundle
from models.datasets import datasets_dir
from run_all import finish, own_parser

TIMED_FILMS = 200
SITE_SHARE = 0.3


def bedside(*args: str, ok: tuple[int, ...] = (0,)) -> tuple[float, str]:
    """One console command in its own process: (seconds, stdout); raises with its stderr when its exit
    status is not in ``ok`` (an acceptance run's 2, no proposal, is a failure unless said)."""
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "device.cli", *args], capture_output=True, text=True)
    if done.returncode not in ok:
        raise RuntimeError(f"bedside {' '.join(args[:2])} exited {done.returncode}: {done.stderr.strip()[-800:]}")
    return time.perf_counter() - t0, done.stdout


def linked(folder: Path, samples: list, labels: list[str]) -> Path:
    """A labelled folder (one subfolder per label) of links to the samples' films."""
    for s in samples:
        target = folder / labels[s.label] / s.path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(s.path)
    return folder


def patient_split(samples: list, patient_of, share: float, rng) -> tuple[list, list]:
    """(about ``share`` of the films, the rest), no patient on both sides."""
    patients = np.array([f"{s.label}:{patient_of(s.path.name)}" for s in samples])
    order = rng.permutation(np.unique(patients))
    counts = {p: int((patients == p).sum()) for p in order}
    chosen, taken = set(), 0
    for p in order:
        if taken >= share * len(samples):
            break
        chosen.add(p)
        taken += counts[p]
    picked = np.isin(patients, list(chosen))
    return [s for s, k in zip(samples, picked) if k], [s for s, k in zip(samples, picked) if not k]


def rates(report: dict) -> dict:
    return {k: report[k] for k in ("n", "n_positive", "threshold", "sensitivity", "specificity")} | {
        "sensitivity_ci": report["intervals"]["sensitivity"], "specificity_ci": report["intervals"]["specificity"]}


def measure() -> dict:
    rng = np.random.default_rng(0)
    datasets = datasets_dir()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        source = default_bundles_dir() / "chest-xray-pneumonia"
        path = source if load_bundle(source).manifest.monitoring is not None else \
            with_reference(source, tmp / "bundle", datasets)
        bundle = load_bundle(path)
        m = bundle.manifest
        val = validation_samples(bundle, datasets)
        labels = list(m.labels)

        halves = [[s for s in val if s.label == label] for label in range(len(labels))]
        picked = [group[i] for group in halves for i in rng.choice(len(group), TIMED_FILMS // len(halves), replace=False)]
        timed = linked(tmp / "timed", picked, labels)
        seconds, out = bedside("acceptance", "run", "--bundle", str(path), "--data", str(timed), "--out",
                               str(tmp / "timed-out"), "--data-dir", str(tmp / "timed-data"), "--json", ok=(0, 2))
        summary = json.loads(out)
        report = {"bundle": f"{m.id} {m.version}", "films": len(val),
                  "timed": {"films": TIMED_FILMS, "command_s": round(seconds, 2), "run_s": summary["seconds"],
                            "served": summary["served"]}}

        site, rest = patient_split(val, m.evaluation.patient_of, SITE_SHARE, rng)
        data = tmp / "kiosk-data"
        _, out = bedside("acceptance", "run", "--bundle", str(path), "--data", str(linked(tmp / "site", site, labels)),
                         "--out", str(tmp / "site-out"), "--data-dir", str(data), "--json")
        proposal = json.loads(out)["proposal"]
        bedside("acceptance", "apply", str(tmp / "site-out" / "acceptance.json"), "--signed-by", "benchmark",
                "--bundle", str(path), "--data-dir", str(data))
        others = linked(tmp / "rest", rest, labels)
        _, out = bedside("eval", "--bundle", str(path), "--data", str(others), "--data-dir", str(data), "--json")
        at_site = json.loads(out)
        _, out = bedside("eval", "--bundle", str(path), "--data", str(others), "--json")
        at_bundle = json.loads(out)
    report["owners_check"] = {
        "sample": {"films": len(site), "positive": proposal["positives"], "negative": proposal["negatives"]},
        "proposal": {k: proposal[k] for k in ("threshold", "target_sensitivity", "sensitivity", "specificity")},
        "rest_at_site_point": rates(at_site) | {"source": at_site["operating_point"]["source"]},
        "rest_at_bundle_point": rates(at_bundle) | {"source": at_bundle["operating_point"]["source"]},
    }
    rest = report["owners_check"]["rest_at_site_point"]
    report["targets"] = {
        f"acceptance run on {TIMED_FILMS} films < 30 s": report["timed"]["command_s"] < 30,
        "site point on the other 70%: sensitivity >= 0.95": rest["sensitivity"] >= 0.95,
        "site point on the other 70%: specificity >= 0.88": rest["specificity"] >= 0.88,
    }
    return report


def rows(r: dict) -> list[tuple[str, str]]:
    """The README's rows (also benchmarks/run_all.py's)."""
    t, o = r["timed"], r["owners_check"]
    s, b = o["rest_at_site_point"], o["rest_at_bundle_point"]
    ci = lambda v: f"{v[0]:.3f}-{v[1]:.3f}"  # noqa: E731
    return [
        (f"`bedside acceptance run` on {t['films']} films of {r['bundle']}, a new process on a fresh data dir",
         f"{t['command_s']:.1f} s ({t['run_s']:.1f} s inside the run; served {t['served']['backend']} "
         f"{t['served']['precision']})"),
        (f"site point chosen on a patient-disjoint {o['sample']['films']} of {r['films']} validation films "
         f"({o['sample']['positive']} pneumonia, {o['sample']['negative']} normal)",
         f"threshold {o['proposal']['threshold']:.4f} (sensitivity {o['proposal']['sensitivity']:.3f}, specificity "
         f"{o['proposal']['specificity']:.3f} there; aimed at {o['proposal']['target_sensitivity']:.3f})"),
        (f"`bedside eval --data-dir` on the other {s['n']} films ({s['n_positive']} pneumonia), site point",
         f"sensitivity {s['sensitivity']:.3f} ({ci(s['sensitivity_ci'])}), specificity {s['specificity']:.3f} "
         f"({ci(s['specificity_ci'])})"),
        (f"the same {b['n']} films at the bundle's own point {b['threshold']:.4f}",
         f"sensitivity {b['sensitivity']:.3f} ({ci(b['sensitivity_ci'])}), specificity {b['specificity']:.3f} "
         f"({ci(b['specificity_ci'])})"),
        *((f"target: {name}", "met" if met else "NOT met") for name, met in r["targets"].items()),
    ]


def main() -> int:
    return finish("acceptance", measure(), own_parser(__doc__).parse_args())


if __name__ == "__main__":
    sys.exit(main())
