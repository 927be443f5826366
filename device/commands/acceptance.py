"""``bedside acceptance``: prove a model works on this site's own cases before go-live, and apply the
site operating point it proposes.

- ``run``: a labelled set (a folder per label, a CSV, or the kiosk's reviewed studies) through the
  exam exactly as the kiosk serves it; writes ``acceptance.json`` and ``report.html`` into --out.
  Exit 0 with a proposal, 2 when the rule proposes none (the report says why), 1 on an error.
- ``apply FILE --signed-by NAME``: every result of that exam is then decided at the site point (a
  running kiosk from its next study); refused when the file is for another bundle or was changed.
- ``revert [EXAM] --signed-by NAME``: back to the model's own point.
- ``status``: each exam's operating point, acceptance and drift state.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from device.commands import acceptance_cases as cases_of
from device.commands.evaluate import DataFolderError
from device.core.decoding import Decoder
from device.core.exams import open_exam
from device.core.settings import ConfigError, KioskConfig, load_config
from device.core.site_points import SitePoints
from device.core.site_record import SiteRecord
from device.core.store import Store
from device.machine.clock import utc_iso
from device.machine.facts import cpu_features, usable_cores
from device.site.acceptance import (
    AcceptanceDocument, AcceptanceError, BundleIdentity, Served, positive_words, read_document,
)
from device.site.figures import acceptance_figures
from device.site.report import render
from device.updates import served_paths
from device.updates.verify import appliance_version
from models import atomic, drift
from models.bundle import Bundle, BundleError, load_bundle, read_manifest

EXIT_NO_PROPOSAL = 2
DOCUMENT, REPORT = "acceptance.json", "report.html"


def _config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="the kiosk's TOML settings file")
    parser.add_argument("--data-dir", type=Path, help="the kiosk's data dir, as `bedside serve` is given it")


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    fmt = argparse.ArgumentDefaultsHelpFormatter
    run = sub.add_parser("run", help="score a local labelled set as the kiosk serves the model; write the report",
                         formatter_class=fmt)
    which = run.add_mutually_exclusive_group(required=True)
    which.add_argument("--bundle", type=Path, help="the bundle folder")
    which.add_argument("--exam", help="the exam whose bundle the kiosk serves (per --config)")
    data = run.add_mutually_exclusive_group(required=True)
    data.add_argument("--data", type=Path, help="a folder with one subfolder per label, or a CSV of file,label[,patient]")
    data.add_argument("--reviewed", action="store_true",
                      help="the kiosk's reviewed studies that say agree or disagree (in --data-dir)")
    run.add_argument("--out", type=Path, required=True, help="where acceptance.json and report.html are written")
    run.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    run.add_argument("--bootstrap", type=int, default=1000, help="patient bootstrap resamples for the intervals")
    _config_arguments(run)
    apply = sub.add_parser("apply", help="use an acceptance's site operating point for every result of its exam",
                           formatter_class=fmt)
    apply.add_argument("file", type=Path, help="acceptance.json")
    apply.add_argument("--signed-by", required=True, help="who accepts it, e.g. 'Dr Ada Obi, clinical lead'")
    apply.add_argument("--bundle", type=Path, help="the bundle it is for, where the config does not serve it")
    _config_arguments(apply)
    revert = sub.add_parser("revert", help="back to the model's own operating point", formatter_class=fmt)
    revert.add_argument("exam", nargs="?", help="the exam (default: the only one served)")
    revert.add_argument("--signed-by", required=True, help="who reverts it")
    revert.add_argument("--bundle", type=Path, help="the bundle, where the config does not serve it")
    _config_arguments(revert)
    status = sub.add_parser("status", help="each exam's operating point and acceptance", formatter_class=fmt)
    status.add_argument("--json", action="store_true")
    _config_arguments(status)


def _config(args: argparse.Namespace) -> KioskConfig:
    return load_config(args.config).with_overrides(**{"store.data_dir": args.data_dir})


def _served(config: KioskConfig, exam: str | None) -> Bundle:
    """The bundle the kiosk serves for ``exam`` (the only one, when None)."""
    found = {}
    for path in served_paths(config):
        try:
            found[read_manifest(path).id] = path
        except BundleError:
            continue
    if exam is None and len(found) == 1:
        return load_bundle(next(iter(found.values())))
    if exam not in found:
        raise AcceptanceError(f"the kiosk serves no exam {exam!r} (it serves: {', '.join(found) or 'none'})"
                              if exam else f"name the exam: the kiosk serves {', '.join(found)}")
    return load_bundle(found[exam])


# ---- run -------------------------------------------------------------------------------------------


def _sources(args: argparse.Namespace, config: KioskConfig, bundle: Bundle) -> tuple[list, str, str]:
    """The cases, where they came from, and what the positive cases are, in words."""
    m, rule = bundle.manifest, bundle.manifest.acceptance_rule()
    positive = positive_words(m, rule)
    if args.reviewed:
        store = Store.open(config.store.data_dir)
        try:
            sources = list(cases_of.reviewed_sources(store, m))
        finally:
            store.close()
        return sources, f"the reviewed studies of {m.id} in {config.store.data_dir} (labels: each reviewer's " \
                        "agree / disagree with the triage, not a reference standard)", positive
    if args.data.is_file():
        return list(cases_of.csv_sources(args.data, m, rule)), f"the cases listed in {args.data}", positive
    sources, single = cases_of.folder_sources(args.data, m, rule)
    return sources, f"the labelled folder {args.data}", m.label_name(single) if single else positive


def run_acceptance(args: argparse.Namespace) -> AcceptanceDocument:
    started = time.perf_counter()
    config = _config(args)
    bundle = load_bundle(args.bundle) if args.bundle else _served(config, args.exam)
    m, rule = bundle.manifest, bundle.manifest.acceptance_rule()
    sources, where, positive = _sources(args, config, bundle)
    exam = open_exam(bundle.root, config.models, config.store.data_dir)
    try:
        cases, unreadable = cases_of.score(exam, Decoder(config.decode), sources, len(sources))
        model = exam.triager.model
    finally:
        exam.close()
    figures, proposal, refused = acceptance_figures(cases, m, rule, args.bootstrap, positive)
    return AcceptanceDocument(
        created_at=utc_iso(), seconds=round(time.perf_counter() - started, 2), appliance=appliance_version(),
        machine={**cpu_features(), "cores": usable_cores()},
        bundle=BundleIdentity(id=m.id, version=m.version, sha256=bundle.sha256, title=m.title),
        served=Served(backend=model.backend, precision=model.precision,
                      file=m.variant(model.precision, "gpu" if model.backend == "tensorrt" else "cpu").file,
                      file_sha256=model.sha256),
        data={"source": where, "files": len(sources), "unreadable": unreadable},
        rule=rule, rule_declared=m.acceptance is not None, positive_class=positive, cases=cases,
        figures=figures, proposal=proposal, refused=refused,
        monitoring=_reference(cases, bundle, len(cases)),
    )


def _reference(cases: list, bundle: Bundle, n: int):
    """The cases' signals, binned by the same function as the bundle's reference (its template too)."""
    if not cases:
        return None
    values: dict[str, list[float]] = {drift.P_URGENT: [c.p_urgent for c in cases]}
    names = set().union(*(c.signals for c in cases))
    for name in sorted(names):
        values[name] = [c.signals.get(name, np.nan) for c in cases]
    urgent = np.array([c.urgent for c in cases])
    template = drift.template_of(bundle.manifest.monitoring)
    return drift.build_reference({k: np.asarray(v) for k, v in values.items()}, urgent, template,
                                 f"site acceptance sample (n={n})")


def _summary(document: AcceptanceDocument, out: Path) -> dict:
    f = document.figures
    return {"out": str(out), "bundle": document.bundle.model_dump(), "served": document.served.model_dump(),
            "cases": f["counts"]["cases"], "judged": f["counts"]["judged"], "ungradable": f["counts"]["ungradable"],
            "unreadable": len(document.data["unreadable"]), "auc": f.get("auc"), "auc_ci": f.get("auc_ci"),
            "proposal": None if document.proposal is None else document.proposal.model_dump(),
            "refused": document.refused, "seconds": document.seconds}


def _print_run(document: AcceptanceDocument, out: Path) -> None:
    f, b = document.figures, document.bundle
    c = f["counts"]
    print(f"{b.id} {b.version} ({document.served.precision}, {document.served.backend}) on {document.data['source']}")
    print(f"cases {c['cases']} (judged {c['judged']}: {document.positive_class} {c['positive']}, others {c['negative']};"
          f" UNGRADABLE {c['ungradable']}; unreadable {len(document.data['unreadable'])})")
    if "auc" in f:
        own = f["points"][0]
        print(f"AUC {f['auc']:.3f} ({f['auc_ci'][0]:.3f}-{f['auc_ci'][1]:.3f}); at the model's own point "
              f"{own['threshold']:.4f}: sensitivity {own['sensitivity']:.3f}, specificity {own['specificity']:.3f}")
    if document.proposal is not None:
        p = document.proposal
        print(f"proposed site operating point: {p.threshold:.4f} (sensitivity {p.sensitivity:.3f} "
              f"{p.sensitivity_ci[0]:.3f}-{p.sensitivity_ci[1]:.3f}, specificity {p.specificity:.3f} "
              f"{p.specificity_ci[0]:.3f}-{p.specificity_ci[1]:.3f})")
    else:
        print(f"no site operating point: {document.refused}")
    print(f"wrote {out / DOCUMENT} and {out / REPORT} in {document.seconds:.1f} s")


def _command(args: argparse.Namespace) -> str:
    """The run as a command line, for the report."""
    words = ["bedside", "acceptance", "run", *(["--bundle", str(args.bundle)] if args.bundle else ["--exam", args.exam]),
             *(["--data", str(args.data)] if args.data else ["--reviewed"]), "--out", str(args.out)]
    for option in ("config", "data_dir"):
        if getattr(args, option):
            words += [f"--{option.replace('_', '-')}", str(getattr(args, option))]
    return " ".join(shlex.quote(w) for w in words)


def _run(args: argparse.Namespace) -> int:
    document = run_acceptance(args)
    args.out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(document.model_dump(mode="json"), indent=1) + "\n"
    atomic.write_bytes(args.out / DOCUMENT, text.encode("utf-8"))
    atomic.write_bytes(args.out / REPORT, render(document, _command(args)).encode("utf-8"))
    if args.json:
        print(json.dumps(_summary(document, args.out)))
    else:
        _print_run(document, args.out)
    return 0 if document.proposal is not None else EXIT_NO_PROPOSAL


# ---- apply, revert, status ---------------------------------------------------------------------------


def _points(config: KioskConfig) -> tuple[SiteRecord, SitePoints]:
    record = SiteRecord.open(config.store.data_dir)
    return record, SitePoints(record)


def _apply(args: argparse.Namespace) -> int:
    config = _config(args)
    try:
        data = args.file.read_bytes()
    except OSError as exc:
        raise AcceptanceError(f"cannot read {args.file}: {exc.strerror or exc}") from None
    document = read_document(data, str(args.file))
    bundle = load_bundle(args.bundle) if args.bundle else _served(config, document.bundle.id)
    record, points = _points(config)
    try:
        event = points.apply(document, bundle, args.signed_by, "command line")
    finally:
        record.close()
    print(f"{event.exam} {event.bundle_version} now decides at P >= {event.threshold:.4f}: "
          f"{event.operating_point.text}. A running kiosk uses it from its next study.")
    return 0


def _revert(args: argparse.Namespace) -> int:
    config = _config(args)
    bundle = load_bundle(args.bundle) if args.bundle else _served(config, args.exam)
    record, points = _points(config)
    try:
        points.revert(bundle, args.signed_by, "command line")
    finally:
        record.close()
    m = bundle.manifest
    print(f"{m.id} {m.version} decides at the model's own operating point again "
          f"(P >= {m.policy.operating_point.threshold:.4f}).")
    return 0


def _status(args: argparse.Namespace) -> int:
    config = _config(args)
    record, points = _points(config)
    try:
        exams = {}
        for path in served_paths(config):
            bundle = load_bundle(path, verify=False)
            m = bundle.manifest
            events = record.monitor_events(m.id, 1)
            exams[m.id] = {"version": m.version, "bundle_sha256": bundle.sha256, **points.status(m.id, bundle),
                           "drift": events[0].as_json() if events else None}
    finally:
        record.close()
    if args.json:
        print(json.dumps({"exams": exams}))
        return 0
    for exam, s in exams.items():
        op = s["operating_point"]
        print(f"{exam} {s['version']}: P >= {op['threshold']:.4f}, {op['text']}")
        if s["needed_again"]:
            print(f"  {s['words']}")
        if s["drift"]:
            print(f"  drift monitor: {s['drift']['state']} since {s['drift']['at']}")
    return 0


ACTIONS = {"run": _run, "apply": _apply, "revert": _revert, "status": _status}


def run(args: argparse.Namespace) -> int:
    try:
        return ACTIONS[args.action](args)
    except (AcceptanceError, DataFolderError, ConfigError, BundleError) as exc:
        print(f"bedside acceptance {args.action}: {exc}", file=sys.stderr)
        return 1
