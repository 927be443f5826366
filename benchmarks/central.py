"""More than one box: a central node (``bedside central serve``: Triton through pytriton, FP32) against
the kiosk's own model, side by side in one run on this machine (node and clients share its cores).

    nice .venv/bin/python benchmarks/central.py [--json] [--images 200] [--seconds 4] [--rounds 3]

- agreement: real images of both exams (validation-style: the shared training folders, every k-th
  file), decoded, checked and preprocessed once on the kiosk, then triaged by the node and locally on
  the same variant (FP32) and on the variant the kiosk serves by itself (CPU INT8): same triage, and
  the largest difference of any probability.
- remote path: one study's model step through the ``remote`` backend against the local FP32 run,
  interleaved rounds of batch-1 calls on the same tensors; the p50 the network path adds.
- concurrency: one client, then 16 at once (threads, each a kiosk's request), alternating for
  ``--rounds``; images/s and latency percentiles of each, and the ratios. Beside them, what bounds
  the ratio on a CPU: the mean batch Triton formed (its own counters) and the model's own time per
  image at batch 16 against batch 1 (where batching saves no compute, 16 clients can gain only
  from the cores a lone client leaves idle).
- fallback: a kiosk set to the node (``backend = "remote"``) takes a burst of uploads of distinct
  real images from 4 clients; the node (and its Triton) is SIGKILLed once a quarter are done. Every
  upload acknowledged, each triaged once, which backend answered, how soon after the kill a study
  was answered locally, and the slowest study the kill touched.
Targets (issue 27) are printed as ratios of this run.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from central_peer import SHIPPED, Node, descendants, missing_venv, start_node
from device import intake
from http_upload import multipart
from kiosk_process import served_kiosk
from device.runtime.base import VariantFile, model_io
from device.runtime.onnxruntime_backend import OnnxRuntimeBackend
from device.runtime.remote_backend import RemoteSettings
from device.runtime.triager import Triager
from models.bundle import load_bundle
from models.datasets import datasets_dir

IMAGE_FOLDERS = {"chest-xray-pneumonia": "chest-xray/train", "skin-lesion-triage": "dermatology/train"}
CLIENTS = 16


def images(exam: str, n: int) -> list[Path]:
    files = sorted((datasets_dir() / IMAGE_FOLDERS[exam]).rglob("*.jp*g"))
    if not files:
        raise SystemExit(f"no images in {datasets_dir() / IMAGE_FOLDERS[exam]}")
    step = max(1, len(files) // n)
    return files[::step][:n]


def agreement(url: str, n: int) -> list[dict]:
    rows = []
    for path in SHIPPED:
        bundle = load_bundle(path)
        m = bundle.manifest
        local = Triager(bundle, "onnxruntime", "fp32", 1)
        served_int8 = Triager(bundle, "onnxruntime", "int8", 1)
        remote = Triager(bundle, "remote", "fp32", 1, RemoteSettings(url=url, timeout_s=10))
        files = images(m.id, n)
        triagers = {"local": local, "int8": served_int8, "remote": remote}
        got = {key: [] for key in triagers}
        for f in files:
            prepared = local.prepare(intake.decode_file(f, reduce=local.reduced_decode), str(f))
            for key, triager in triagers.items():
                got[key].append(triager.triage_prepared([prepared])[0])
        for other, variant in (("local", "fp32"), ("int8", "int8 (CPU, what the kiosk serves alone)")):
            # An image refused (UNGRADABLE) carries no score: dP is over the images both judged; a refusal
            # on one side only is a different triage.
            pairs = list(zip(got["remote"], got[other]))
            diffs = [max(abs(a.probabilities[k] - b.probabilities[k]) for k in m.labels)
                     for a, b in pairs if a.probabilities is not None and b.probabilities is not None]
            same = sum(a.triage == b.triage for a, b in pairs)
            rows.append({"exam": m.id, "images": len(files), "local_variant": variant, "same_triage": same,
                         "agreement": same / len(files), "max_prob_diff": max(diffs, default=0.0),
                         "refused_by_both": sum(a.probabilities is None and b.probabilities is None for a, b in pairs)})
        for t in triagers.values():
            t.close()
    return rows



def remote_path(url: str, calls: int, rounds: int) -> dict:
    bundle = load_bundle(SHIPPED[0])
    local = Triager(bundle, "onnxruntime", "fp32", 1)
    remote = Triager(bundle, "remote", "fp32", 1, RemoteSettings(url=url, timeout_s=10))
    x = [local.prepare(intake.decode_file(f, reduce=local.reduced_decode), str(f)) for f in images(bundle.manifest.id, 8)]
    times: dict[str, list[float]] = {"local": [], "remote": []}
    for _ in range(rounds):
        for key, triager in (("local", local), ("remote", remote)):
            for i in range(calls):
                t0 = time.perf_counter()
                triager.triage_prepared([x[i % len(x)]])
                times[key].append((time.perf_counter() - t0) * 1e3)
    local.close()
    remote.close()
    p50 = {k: float(np.median(v)) for k, v in times.items()}
    return {"calls": calls * rounds, "local_p50_ms": p50["local"], "remote_p50_ms": p50["remote"],
            "added_p50_ms": p50["remote"] - p50["local"],
            "remote_p99_ms": float(np.percentile(times["remote"], 99))}


def concurrency(node: Node, seconds: float, rounds: int) -> dict:
    bundle = load_bundle(SHIPPED[0])
    remote = Triager(bundle, "remote", "fp32", 1, RemoteSettings(url=node.url, timeout_s=30))
    prepared = remote.prepare(intake.decode_file(images(bundle.manifest.id, 1)[0], reduce=remote.reduced_decode), "x")
    runs: dict[int, list[dict]] = {1: [], CLIENTS: []}
    counted = {1: [0.0, 0.0], CLIENTS: [0.0, 0.0]}  # requests, executions (Triton's own counters)
    for _ in range(rounds):
        for clients in (1, CLIENTS):
            before = _executions(node, bundle.manifest.id)
            runs[clients].append(_load(remote, prepared, clients, seconds))
            after = _executions(node, bundle.manifest.id)
            counted[clients] = [c + a - b for c, a, b in zip(counted[clients], after, before)]
    remote.close()
    summary = {}
    for clients, rs in runs.items():
        latencies = np.concatenate([r["latencies_ms"] for r in rs])
        summary[clients] = {"images_per_s": float(np.median([r["images_per_s"] for r in rs])),
                            "p50_ms": float(np.percentile(latencies, 50)), "p99_ms": float(np.percentile(latencies, 99))}
    return {"clients": CLIENTS, "one": summary[1], "many": summary[CLIENTS],
            "throughput_ratio": summary[CLIENTS]["images_per_s"] / summary[1]["images_per_s"],
            "p99_over_p50": summary[CLIENTS]["p99_ms"] / summary[CLIENTS]["p50_ms"],
            "mean_batch": {str(k): requests / executions for k, (requests, executions) in counted.items()},
            "model_batch_scaling": _batch_scaling(bundle, prepared.tensor)}


def _executions(node: Node, model: str) -> tuple[float, float]:
    """Triton's counts of requests answered and of model executions (batches) for ``model``."""
    return node.counter("nv_inference_count", model), node.counter("nv_inference_exec_count", model)


def _batch_scaling(bundle, tensor: np.ndarray) -> dict:
    """What batching can save on this CPU: the model's own time per image (ONNX Runtime FP32, one
    thread, as each node instance runs it) at batch 1 and at batch 16, interleaved."""
    backend = OnnxRuntimeBackend(VariantFile.of(bundle, bundle.manifest.variant("fp32")), model_io(bundle.manifest), 1)
    batches = {n: np.repeat(tensor[None].astype(np.float32), n, axis=0) for n in (1, CLIENTS)}
    per_image: dict[int, list[float]] = {n: [] for n in batches}
    for _ in range(3):
        backend.run(batches[1])
    for _ in range(20):
        for n, x in batches.items():
            t0 = time.perf_counter()
            backend.run(x)
            per_image[n].append((time.perf_counter() - t0) * 1e3 / n)
    backend.close()
    p50 = {n: float(np.median(v)) for n, v in per_image.items()}
    return {"batch_1_ms_per_image": p50[1], f"batch_{CLIENTS}_ms_per_image": p50[CLIENTS],
            "ratio": p50[CLIENTS] / p50[1]}


def _load(triager: Triager, prepared, clients: int, seconds: float) -> dict:
    latencies: list[float] = []
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)
    deadline = [0.0]

    def client() -> None:
        mine = []
        start.wait()
        while time.perf_counter() < deadline[0]:
            t0 = time.perf_counter()
            triager.triage_prepared([prepared])
            mine.append((time.perf_counter() - t0) * 1e3)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    deadline[0] = t0 + seconds
    start.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    return {"images_per_s": len(latencies) / elapsed, "latencies_ms": np.asarray(latencies)}


def fallback(node: Node, workdir: Path, uploads: int) -> dict:
    """The node killed during a burst of uploads to a kiosk set to it (the last part: the node is gone)."""
    toml = workdir / "remote.toml"
    toml.write_text(f'[models]\nbackend = "remote"\nremote_url = "{node.url}"\nremote_retry_s = 5\n')
    files = images(SHIPPED[0].name, uploads)
    done: list[dict] = []
    lock = threading.Lock()
    killed: list[float] = []
    with served_kiosk(workdir / "kiosk", [SHIPPED[0]], "--config", str(toml)) as (_, host, port):
        def client(share: list[Path]) -> None:
            conn = http.client.HTTPConnection(host, port, timeout=60)
            for f in share:
                body, ctype = multipart(f.name, f.read_bytes())
                t0 = time.monotonic()
                conn.request("POST", "/api/v1/studies", body=body, headers={"Content-Type": ctype})
                response = conn.getresponse()
                payload = json.loads(response.read())
                with lock:
                    done.append({"status": response.status, "start": t0, "end": time.monotonic(), "error": payload.get("error"),
                                 "id": payload.get("id"), "backend": (payload.get("result") or {}).get("model", {}).get("backend")})
                    if len(done) == uploads // 4 and not killed:
                        for pid in [node.process.pid, *descendants(node.process.pid)]:  # the whole node at once
                            os.kill(pid, signal.SIGKILL)
                        killed.append(time.monotonic())
            conn.close()

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(client, [files[i::4] for i in range(4)]))
        conn = http.client.HTTPConnection(host, port, timeout=60)
        conn.request("GET", f"/api/v1/studies?limit={uploads * 2}")
        stored = json.loads(conn.getresponse().read())
        conn.close()
    kill = killed[0]
    acknowledged = [d for d in done if d["status"] == 201]
    local_after = [d["end"] - kill for d in acknowledged if d["backend"] != "remote" and d["end"] >= kill]
    touched = [d["end"] - d["start"] for d in acknowledged if d["end"] >= kill]
    by_backend: dict[str, int] = {}
    for d in acknowledged:
        by_backend[d["backend"]] = by_backend.get(d["backend"], 0) + 1
    return {"uploads": uploads, "acknowledged": len(acknowledged), "triaged": sum(d["backend"] is not None for d in acknowledged),
            "by_backend": by_backend, "lost": uploads - len(acknowledged),
            "duplicated": stored["total"] - len({d["id"] for d in acknowledged}),
            "first_local_after_kill_s": min(local_after), "slowest_study_after_kill_s": max(touched),
            "refused": sorted({f"{d['status']} {d['error'] and d['error'].get('message')}" for d in done if d["status"] != 201})}


def targets(result: dict) -> list[dict]:
    same = [r for r in result["agreement"] if r["local_variant"] == "fp32"]
    across = [r for r in result["agreement"] if r["local_variant"].startswith("int8")]
    c = result["concurrency"]
    rows = [
        ("remote vs local triage, same variant: agreement", min(r["agreement"] for r in same), ">=", 1.0),
        ("remote vs local, same variant: max dP", max(r["max_prob_diff"] for r in same), "<=", 1e-4),
        ("remote (fp32) vs the kiosk's own INT8, max dP", max(r["max_prob_diff"] for r in across), "<=", 0.02),
        (f"{c['clients']} clients / 1 client, images/s", c["throughput_ratio"], ">=", 3.0),
        (f"{c['clients']} clients: p99 / p50", c["p99_over_p50"], "<=", 3.0),
        ("remote path p50 added over local, ms", result["remote_path"]["added_p50_ms"], "<=", 5.0),
        ("node killed mid-burst: studies lost or stored twice", result["fallback"]["lost"] + result["fallback"]["duplicated"],
         "<=", 0),
        ("node killed mid-burst: first local result after the kill, s", result["fallback"]["first_local_after_kill_s"],
         "<=", 2.0),
    ]
    return [{"target": name, "value": value, "op": op, "bound": bound,
             "met": bool(value >= bound if op == ">=" else value <= bound)} for name, value, op, bound in rows]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--images", type=int, default=200, help="images per exam for the agreement")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each concurrency run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (remote path, concurrency)")
    parser.add_argument("--calls", type=int, default=100, help="batch-1 calls per backend per round (remote path)")
    parser.add_argument("--uploads", type=int, default=60, help="uploads in the burst the node is killed in")
    args = parser.parse_args()
    why = missing_venv()
    if why:
        raise SystemExit(why)
    with tempfile.TemporaryDirectory(prefix="bench-central-") as tmp:
        node = start_node(SHIPPED, Path(tmp))
        try:
            result = {"node": {"bundles": [p.name for p in SHIPPED], "precision": "fp32",
                               "backend": "onnxruntime", "instances": "one per usable core"},
                      "agreement": agreement(node.url, args.images),
                      "remote_path": remote_path(node.url, args.calls, args.rounds),
                      "concurrency": concurrency(node, args.seconds, args.rounds)}
            result["fallback"] = fallback(node, Path(tmp), args.uploads)  # last: the node is killed
        finally:
            node.stop()
    result["targets"] = targets(result)
    if args.json:
        print(json.dumps(result))
        return 0
    for r in result["agreement"]:
        print(f"{r['exam']}: node fp32 vs local {r['local_variant']}: {r['same_triage']}/{r['images']} same triage, "
              f"max dP {r['max_prob_diff']:.2e}")
    p = result["remote_path"]
    print(f"model step p50: local {p['local_p50_ms']:.2f} ms, remote {p['remote_p50_ms']:.2f} ms "
          f"(+{p['added_p50_ms']:.2f} ms; remote p99 {p['remote_p99_ms']:.2f} ms)")
    c = result["concurrency"]
    for label, row in (("1 client", c["one"]), (f"{c['clients']} clients", c["many"])):
        print(f"{label}: {row['images_per_s']:.0f} images/s, p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms")
    scaling, n = c["model_batch_scaling"], c["clients"]
    print(f"Triton's mean batch: {c['mean_batch']['1']:.2f} with 1 client, {c['mean_batch'][str(n)]:.2f} with {n}; "
          f"the model's own time per image at batch {n}: {scaling['ratio']:.2f}x batch 1 "
          f"({scaling[f'batch_{n}_ms_per_image']:.2f} against {scaling['batch_1_ms_per_image']:.2f} ms)")
    f = result["fallback"]
    print(f"node killed during {f['uploads']} uploads: {f['acknowledged']} acknowledged, {f['triaged']} triaged "
          f"{f['by_backend']}, {f['lost']} lost, {f['duplicated']} stored twice; first local result "
          f"{f['first_local_after_kill_s']:.2f} s after the kill, slowest study it touched {f['slowest_study_after_kill_s']:.2f} s")
    for t in result["targets"]:
        print(f"target: {t['target']}: {t['value']:.4g} ({'met' if t['met'] else 'NOT met'}, {t['op']} {t['bound']:g})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
