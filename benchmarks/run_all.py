"""Run every benchmark and write one JSON report and the Markdown table the README includes.

    nice -n 19 .venv/bin/python benchmarks/run_all.py [--only NAME ...] [--quick]

Each benchmark runs as its own process with ``--json`` (its own documentation says what it
measures); a benchmark whose peer is missing here (Chromium, dcmtk, Orthanc) is recorded with its
error instead of stopping the others. The report carries the machine (CPU model, usable cores, load
average before and after, library versions) so that a number is never read without its box.
With ``--only``, the other benchmarks keep their results from the last run (each entry carries
when it ran and the load then). Written: benchmarks/results/latest.json, benchmarks/results/latest.md, and the table between the
README's ``<!-- benchmarks:begin -->`` and ``<!-- benchmarks:end -->`` markers. No number in that
README section is typed by hand.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from device.machine.clock import utc_iso
from device.machine.facts import cpu_features, package_versions_of, usable_cores
from models.bundle import default_bundles_dir
from models.datasets import datasets_dir

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
BEGIN, END = "<!-- benchmarks:begin -->", "<!-- benchmarks:end -->"
LIBRARIES = ("bedside", "numpy", "onnxruntime", "openvino", "opencv-python-headless", "torch", "pydicom")
TIMEOUT_S = 900


def chest_bundle() -> str:
    """The benchmarks' bundle: the chest exam (issue 15's targets are stated for it)."""
    return str(default_bundles_dir() / "chest-xray-pneumonia")


def samples() -> list[str]:
    return [str(p) for p in sorted((datasets_dir() / "chest-xray" / "fullres-samples").glob("*/*.jpeg"))]


def bedside(*args: str) -> list[str]:
    return [sys.executable, "-m", "device.cli", *args]


def script(name: str, *args: str) -> list[str]:
    return [sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), *args]


def benchmarks(quick: bool) -> dict[str, list[str]]:
    """Full runs take enough samples that one hiccup of a shared virtual machine does not decide a
    p99 or a ratio (its rounds vary by a third from one to the next); quick runs are smoke tests."""
    return {
        "engines": bedside("bench", "--bundle", chest_bundle(), "--json", "--iterations", "50" if quick else "1000",
                           "--rounds", "5" if quick else "20"),
        "pipeline": bedside("bench", "--bundle", chest_bundle(), "--json", "--iterations", "20" if quick else "200",
                            "--pipeline", *samples()),
        "burst": script("burst", "--json", "--rounds", "2" if quick else "30"),
        "tails": script("tails", "--json", "--calls", "50" if quick else "1000"),
        "kiosk_memory": script("kiosk_memory", "--json"),
        "http_upload": script("http_upload", "--json", "--rounds", "2" if quick else "5"),
        "upload_to_banner": script("upload_to_banner", "--json", "--rounds", "1" if quick else "3"),
        "live_stream": script("live_stream", "--json", "--seconds", "10" if quick else "20"),
        "dicom_ingest": script("dicom_ingest", "--json", "--count", "50" if quick else "200"),
        "central": script("central", "--json", "--images", "20" if quick else "300", "--rounds", "1" if quick else "3",
                          "--seconds", "1" if quick else "5", "--calls", "20" if quick else "200",
                          "--uploads", "16" if quick else "80"),
        "drift": script("drift", "--json", *(["--quick"] if quick else [])),
        "acceptance": script("acceptance", "--json"),
    }


def run_one(name: str, command: list[str]) -> dict:
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish within {TIMEOUT_S} s", "seconds": TIMEOUT_S}
    seconds = round(time.perf_counter() - t0, 1)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": f"exit {proc.returncode}: {tail[0]}", "seconds": seconds}
    try:
        return {"result": json.loads(proc.stdout), "seconds": seconds}
    except json.JSONDecodeError:
        return {"error": "its output is not JSON", "seconds": seconds}


def machine() -> dict:
    cpu = cpu_features()
    return {"cpu": cpu["model"], "features": cpu["features"], "cores": usable_cores(),
            "load_average": list(os.getloadavg()), "libraries": package_versions_of(LIBRARIES)}


# ---- the Markdown table ----------------------------------------------------------------------------


def _runner(x: dict) -> str:
    """* served; ! fails the bundle's self-test on this CPU (timed, never served, in no target)."""
    return f"{'*' if x['served'] else ''}{'' if x['selftest_ok'] else '!'}{x['backend']} {x['precision']}"


def _engines(r: dict) -> list[tuple[str, str]]:
    b1 = sorted((x for x in r["results"] if x["batch"] == 1 and not x.get("as_served")), key=lambda x: x["p50_ms"])
    served_path = sorted((x for x in r["results"] if x.get("as_served")), key=lambda x: x["p50_ms"])
    rows = [("batch 1 p50 / p99 ms, fastest first (* served, ! fails the self-test on this CPU)",
             "; ".join(f"{_runner(x)} ({x['variant']}) {x['p50_ms']:.3f} / {x['p99_ms']:.3f}" for x in b1))]
    if served_path:
        rows.append(("batch 1 p50 / p99 ms, each run after a study's decode (as the kiosk times its choice), fastest 4",
                     "; ".join(f"{_runner(x)} ({x['variant']}) {x['p50_ms']:.3f} / {x['p99_ms']:.3f}"
                               for x in served_path[:4])))
    big = max(x["batch"] for x in r["results"])
    bn = sorted((x for x in r["results"] if x["batch"] == big), key=lambda x: -x["throughput_ips"])[:4]
    rows.append((f"batch {big} images/s, best 4", "; ".join(f"{_runner(x)} {x['throughput_ips']:,.0f}" for x in bn)))
    rows += [(f"target: {t['target']}", f"{t['value']:.2f} ({'met' if t['met'] else 'NOT met'}, {t['op']} {t['bound']:g})")
             for t in r["targets"]]
    return rows


def _pipeline(r: dict) -> list[tuple[str, str]]:
    import numpy as np

    files = r["files"]
    med = {k: float(np.median([f["ms"][k] for f in files])) for k in ("decode", "quality", "preprocess", "model", "libjpeg")}
    ratios = [f["study_vs_libjpeg"] for f in files if "study_vs_libjpeg" in f]
    return [
        (f"full-resolution JPEG study, {len(files)} radiographs, medians ms",
         f"decode {med['decode']:.2f}, quality {med['quality']:.2f}, preprocess {med['preprocess']:.2f}, "
         f"model {med['model']:.2f}; libjpeg alone at that scale {med['libjpeg']:.2f}"),
        ("target: study / libjpeg at that scale (<= 1.5x)",
         f"median {np.median(ratios):.2f}x, best {min(ratios):.2f}x, worst {max(ratios):.2f}x"),
        ("target: quality + preprocess (<= 1 ms)", f"median {med['quality'] + med['preprocess']:.2f} ms"),
    ]


def _burst(r: dict) -> list[tuple[str, str]]:
    m, w = r["model_stage"], r["whole_studies"]
    return [(f"target: {r['queued']} queued, batched / one by one (>= 2x), model stage",
             f"{m['ratio']:.2f}x ({m['one_by_one_ips']:.0f} -> {m['batched_ips']:.0f} studies/s)"),
            (f"{r['queued']} concurrent whole studies (decode + triage) / one by one",
             f"{w['ratio']:.2f}x ({w['one_by_one_ips']:.0f} -> {w['batched_ips']:.0f}/s, mean batch {w['mean_batch_size']})")]


def _tails(r: dict) -> list[tuple[str, str]]:
    return [(f"target: {r['clients']} concurrent clients, p99 / p50 (<= 2x), {x['inference_threads']} thread(s)",
             f"{x['p99_over_p50']:.2f}x (p50 {x['p50_ms']:.2f} ms, p99 {x['p99_ms']:.2f} ms, {x['backend']} {x['precision']})")
            for x in r["rows"]]


def _memory(r: dict) -> list[tuple[str, str]]:
    return [(f"target: kiosk with two exams, {name.replace('_', ' ')}: ready (<= 5 s), RSS (<= 300 MB)",
             f"ready {s['ready_s']:.2f} s, RSS {s['rss_ready_mb']:.0f} MB, peak {s['peak_rss_after_uploads_mb']:.0f} MB "
             f"after an upload to each") for name, s in (("first start", r["first_start"]),
                                                          ("cached start", r["cached_start"]))]


def _http(r: dict) -> list[tuple[str, str]]:
    rows = [(f"upload over HTTP, {x['clients']} client(s), {x['studies']} studies",
             f"p50 {x['latency_ms']['p50']:.1f} / p95 {x['latency_ms']['p95']:.1f} ms, {x['studies_per_s']:.1f} studies/s, "
             f"{x['errors']} errors; outside the server's triage p50 {x['outside_triage_ms']['p50']:.1f} ms")
            for x in r["runs"]]
    return rows + [("server peak RSS (one exam)", f"{r['server_peak_rss_mb']:.0f} MB; one fsync {r['fsync_ms']:.1f} ms")]


def _banner(r: dict) -> list[tuple[str, str]]:
    return [("upload to verdict banner in Chromium (target p50 <= 200 ms)",
             f"banner p50 {r['banner_ms']['p50']:.0f} / p90 {r['banner_ms']['p90']:.0f} ms, preview shown p50 "
             f"{r['image_ms']['p50']:.0f} ms (n {r['banner_ms']['n']})")]


def _live(r: dict) -> list[tuple[str, str]]:
    return [(f"live {r['stream']}", f"{r['processed_fps']:.1f} fps triaged, {r['dropped']} dropped, frame-to-result p50 "
             f"{r['latency_ms_p50']:.1f} / p95 {r['latency_ms_p95']:.1f} ms, {r['cpu_this_process']:.2f} of a core")]


def _dicom(r: dict) -> list[tuple[str, str]]:
    b, o = r["bedside"], r["orthanc"]
    return [(f"C-STORE of {b['instances']} CR instances, Bedside (triaged, durable) against Orthanc (goal <= 1.5x)",
             f"Orthanc {r['orthanc_over_bedside_rate']:.2f}x as fast: Bedside {b['per_s']:.1f}/s (p50 {b['latency_ms_p50']:.0f} ms), "
             f"Orthanc {o['per_s']:.1f}/s (p50 {o['latency_ms_p50']:.0f} ms)")]


def _central(r: dict) -> list[tuple[str, str]]:
    same = [a for a in r["agreement"] if a["local_variant"] == "fp32"]
    rows = [(f"central node (Triton, FP32) vs the kiosk, {a['images']} real {a['exam']} images",
             f"same variant: {s['same_triage']}/{s['images']} same triage, max dP {s['max_prob_diff']:.1e}; "
             f"vs the kiosk's {a['local_variant'].split(' ')[0]}: {a['same_triage']}/{a['images']}, "
             f"max dP {a['max_prob_diff']:.3f}")
            for s, a in zip(same, [a for a in r["agreement"] if a["local_variant"] != "fp32"])]
    p, c = r["remote_path"], r["concurrency"]
    rows.append(("a study's model step, local FP32 against the node (p50)",
                 f"{p['local_p50_ms']:.2f} ms against {p['remote_p50_ms']:.2f} ms: +{p['added_p50_ms']:.2f} ms"))
    rows.append((f"central node, 1 client against {c['clients']} at once",
                 f"{c['one']['images_per_s']:.0f} -> {c['many']['images_per_s']:.0f} images/s; {c['clients']} clients p50 "
                 f"{c['many']['p50_ms']:.1f} ms, p99 {c['many']['p99_ms']:.1f} ms"))
    if "mean_batch" in c:
        n, scaling = c["clients"], c["model_batch_scaling"]
        rows.append(("what bounds that ratio here: Triton's batches, the model's cost per image by batch size",
                     f"mean batch {c['mean_batch']['1']:.2f} with 1 client, {c['mean_batch'][str(n)]:.2f} with {n}; "
                     f"the model (ORT FP32, 1 thread) per image at batch {n} {scaling[f'batch_{n}_ms_per_image']:.2f} ms "
                     f"against {scaling['batch_1_ms_per_image']:.2f} ms at batch 1 ({scaling['ratio']:.2f}x)"))
    if "fallback" in r:
        f = r["fallback"]
        rows.append((f"node killed during a burst of {f['uploads']} uploads",
                     f"{f['acknowledged']} acknowledged, {f['triaged']} triaged ({f['by_backend']}), {f['lost']} lost, "
                     f"{f['duplicated']} stored twice; first local result {f['first_local_after_kill_s']:.2f} s after the "
                     f"kill, slowest study it touched {f['slowest_study_after_kill_s']:.2f} s"))
    rows += [(f"target: {t['target']}", f"{t['value']:.3g} ({'met' if t['met'] else 'NOT met'}, {t['op']} {t['bound']:g})")
             for t in r["targets"]]
    return rows


def _generic(name: str) -> Callable[[dict], list[tuple[str, str]]]:
    """Benchmarks from earlier issues: their headline numbers, as they report them."""
    def rows(r: dict) -> list[tuple[str, str]]:
        flat = {k: v for k, v in r.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
        return [(name, ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in flat.items()))]
    return rows


def _own_rows(module: str) -> Callable[[dict], list[tuple[str, str]]]:
    """A benchmark that words its own rows (``rows`` in its module), as its ``--readme`` writes them too."""
    def rows(r: dict) -> list[tuple[str, str]]:
        return importlib.import_module(module).rows(r)
    return rows


ROWS: dict[str, Callable[[dict], list[tuple[str, str]]]] = {
    "engines": _engines, "pipeline": _pipeline, "burst": _burst, "tails": _tails, "kiosk_memory": _memory,
    "http_upload": _http, "upload_to_banner": _banner, "live_stream": _live, "dicom_ingest": _dicom,
    "central": _central, "drift": _own_rows("drift"), "acceptance": _own_rows("acceptance"),
}
# Benchmarks whose rows also go into a README section of their own, between these markers.
SECTIONS = {name: (f"<!-- {name}:begin -->", f"<!-- {name}:end -->") for name in ("central", "drift", "acceptance")}


def markdown(report: dict) -> str:
    m = report["machine"]
    libs = ", ".join(f"{k} {v}" for k, v in m["libraries"].items() if v)
    lines = [
        f"Written by `benchmarks/run_all.py` on {report['finished_at']} ({report['mode']} run): {m['cpu']} "
        f"({' '.join(m['features']) or 'no SIMD features read'}), {m['cores']} usable cores, "
        f"load average (1 min) {m['load_average'][0]:.1f} at the start and "
        f"{report['load_average_after'][0]:.1f} at the end, each benchmark's own beside it "
        f"(other work shares this machine); {libs}.",
        "",
        "| benchmark | what | result |",
        "| --- | --- | --- |",
    ]
    for name, entry in report["benchmarks"].items():
        when = f"{name} ({entry['started_at'][:16].replace('T', ' ')}, load {entry['load_average_before'][0]:.1f})"
        if "error" in entry:
            lines.append(f"| {when} | not measured | {entry['error'].replace('|', '/')} |")
            continue
        for what, result in ROWS.get(name, _generic(name))(entry["result"]):
            lines.append(f"| {when} | {what} | {result.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def section(report: dict, name: str) -> str | None:
    """One benchmark's rows as a table of their own, for its README section (None: not measured)."""
    entry = report["benchmarks"].get(name)
    if entry is None or "error" in entry:
        return None
    load = entry["load_average_before"][0]
    return section_body(f"Measured by `benchmarks/run_all.py --only {name}` on {entry['started_at'][:16].replace('T', ' ')} "
                        f"({report['machine']['cpu']}, {report['machine']['cores']} usable cores, load average {load:.1f}):",
                        ROWS[name](entry["result"]))


def section_body(header: str, rows: list[tuple[str, str]]) -> str:
    lines = [header, "", "| what | result |", "| --- | --- |"]
    lines += [f"| {what.replace('|', '/')} | {result.replace('|', '/')} |" for what, result in rows]
    return "\n".join(lines) + "\n"


def own_parser(doc: str) -> argparse.ArgumentParser:
    """The arguments of a benchmark that words its own rows: --json, and --readme to write its section."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--readme", action="store_true", help="write the figures into the README's section")
    return parser


def finish(name: str, report: dict, args: argparse.Namespace) -> int:
    """Its section written (with --readme, worded by its module's ``rows``) and its report printed."""
    if args.readme:
        write_section(name, ROWS[name](report))
    print(json.dumps(report) if args.json else json.dumps(report, indent=1))
    return 0


def write_section(name: str, rows: list[tuple[str, str]]) -> None:
    """A benchmark's own README section, written by the benchmark itself (its ``--readme``)."""
    cpu = cpu_features()
    header = (f"Measured by `benchmarks/{name}.py --readme` on {utc_iso(time.time())[:16].replace('T', ' ')} UTC "
              f"({cpu['model']} ({' '.join(cpu['features'])}), {usable_cores()} usable cores, load average "
              f"{os.getloadavg()[0]:.1f}):")
    begin, end = SECTIONS[name]
    text = _replace(README.read_text(), begin, end, section_body(header, rows))
    if text is None:
        raise SystemExit(f"README.md has no {begin} ... {end} section")
    README.write_text(text)


def _replace(text: str, begin: str, end: str, body: str) -> str | None:
    if begin not in text or end not in text:
        return None
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{body}{end}{tail}"


def update_readme(table: str, report: dict) -> bool:
    text = _replace(README.read_text(), BEGIN, END, table)
    if text is None:
        return False
    for name, (begin, end) in SECTIONS.items():
        body = section(report, name)
        if body is not None:
            text = _replace(text, begin, end, body) or text
    README.write_text(text)
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these (names as in the report)")
    parser.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run, not for the README)")
    args = parser.parse_args()
    chosen = benchmarks(args.quick)
    if args.only:
        unknown = set(args.only) - set(chosen)
        if unknown:
            parser.error(f"unknown benchmark(s) {sorted(unknown)}; known: {', '.join(chosen)}")
        chosen = {k: v for k, v in chosen.items() if k in args.only}
    report = {"machine": machine(), "mode": "quick" if args.quick else "full", "benchmarks": {}}
    if args.only and (RESULTS / "latest.json").is_file():  # the others keep their last results
        report["benchmarks"] = json.loads((RESULTS / "latest.json").read_text())["benchmarks"]
    for name, command in chosen.items():
        print(f"running {name} ...", file=sys.stderr, flush=True)
        started = {"started_at": utc_iso(time.time()), "load_average_before": list(os.getloadavg())}
        report["benchmarks"][name] = {**started, **run_one(name, command), "mode": report["mode"]}
    report["load_average_after"] = list(os.getloadavg())
    report["finished_at"] = utc_iso(time.time())
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    (RESULTS / "latest.md").write_text(table)
    print(table)
    if not update_readme(table, report):
        print(f"README.md has no {BEGIN} ... {END} section; the table is in {RESULTS / 'latest.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
