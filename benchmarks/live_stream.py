"""Live triage of a 1280x720 30 fps MJPEG camera stream: can every frame be triaged in real time?

    .venv/bin/python benchmarks/live_stream.py [--seconds 30] [--threads 1] [--precision int8] [--json]

ffmpeg serves a 1280x720 30 fps MJPEG stream on loopback (the sample chest X-rays as a camera would
see them, or ffmpeg's test pattern without the datasets; ``-c:v copy``, so ffmpeg itself only
paces and sends). This process reads it with the appliance's own capture stream (HTTP multipart
reader, newest-frame slot, watchdog) and live triage loop (reduced JPEG decode, frame quality gate,
the bundle's quality checks and the shipped model), exactly as the kiosk does, and reports:

- processed fps: frames triaged per second, over the measured window;
- frame-to-result latency p50/p95: from the moment a whole frame has arrived to its result;
- dropped frames: frames replaced by a newer one before the triage loop took them;
- CPU use of this process (CPU time / wall time; 1.0 = one core) and of ffmpeg.

Target (issue 5): >= 29 fps processed with p95 frame-to-result latency < 50 ms, on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from camera_peer import FFMPEG, MjpegServer, camera_video
from device.capture.live import LiveTriage
from device.capture.sources import parse_source
from device.capture.stream import STREAMING, CaptureStream
from device.capture.watchdog import Watchdog
from device.runtime.triager import Triager
from loopback import wait_for
from models.bundle import default_bundles_dir, load_bundle


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process, in seconds (from /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(url: str, triager: Triager, seconds: float, ffmpeg_pid: int) -> dict:
    stream = CaptureStream("bench", parse_source(url))
    watchdog = Watchdog([stream])
    latencies: list[float] = []
    live = LiveTriage("bench", stream.slot, triager.triage_image, triager.manifest)
    live.start()
    stream.start()
    watchdog.start()
    try:
        if not wait_for(lambda: stream.state == STREAMING, 15):
            raise RuntimeError(f"the stream did not start: {stream.status()}")
        time.sleep(2.0)  # warm-up: caches, the allocator, the rate meters
        frames0, s0 = stream.status()["frames"], live.stats()
        cpu0, ff0, wall0 = time.process_time(), proc_cpu_s(ffmpeg_pid), time.monotonic()
        last_seq = live.latest().frame.seq
        deadline = wall0 + seconds
        while time.monotonic() < deadline:
            result = live.wait_result(last_seq, timeout=1.0)
            if result is not None:
                last_seq = result.frame.seq
                latencies.append(result.latency_ms)
        wall = time.monotonic() - wall0
        cpu, ff = time.process_time() - cpu0, proc_cpu_s(ffmpeg_pid) - ff0
        frames, s1 = stream.status()["frames"] - frames0, live.stats()
        status = stream.status()
    finally:
        watchdog.stop()
        stream.stop()
        live.stop()
    processed = s1["processed"] - s0["processed"]
    return {
        "seconds": round(wall, 2),
        "frames_received": frames,
        "received_fps": round(frames / wall, 2),
        "processed": processed,
        "processed_fps": round(processed / wall, 2),
        "dropped": s1["dropped"] - s0["dropped"],
        "errors": s1["errors"] - s0["errors"],
        "latency_ms_p50": round(float(np.percentile(latencies, 50)), 2),
        "latency_ms_p95": round(float(np.percentile(latencies, 95)), 2),
        "latency_ms_max": round(float(np.max(latencies)), 2),
        "cpu_this_process": round(cpu / wall, 3),
        "cpu_ffmpeg": round(ff / wall, 3),
        "reconnects": status["reconnects"],
        "last_result": {"triage": live.latest().result.triage, "timings_ms": live.latest().result.as_json()["timings_ms"]},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=default_bundles_dir() / "chest-xray-pneumonia")
    parser.add_argument("--precision", default="int8")
    parser.add_argument("--threads", type=int, default=1, help="inference threads (default 1)")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if FFMPEG is None:
        parser.error("ffmpeg is not installed (apt-get install ffmpeg)")
    triager = Triager(load_bundle(args.bundle), precision=args.precision, threads=args.threads)
    with tempfile.TemporaryDirectory(prefix="bedside-live-") as tmp:
        video = camera_video(Path(tmp), (1280, 720), 30)
        with MjpegServer(video) as camera:
            report = measure(camera.url, triager, args.seconds, camera.proc.pid)
    triager.close()
    report.update(
        model=f"{triager.model.id} {triager.model.version} {triager.model.precision} ({triager.model.backend})",
        threads=args.threads,
        stream="1280x720 30 fps MJPEG over HTTP (ffmpeg -re -c:v copy -f mpjpeg, loopback)",
        cores=len(os.sched_getaffinity(0)),
        target_met=report["processed_fps"] >= 29 and report["latency_ms_p95"] < 50,
    )
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key:>20}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
