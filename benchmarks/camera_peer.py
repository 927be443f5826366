"""A real camera for the capture tests and benchmarks/live_stream.py: videos and MJPEG streams made by
ffmpeg from the shared sample X-rays (no mocked cameras)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import cv2

from loopback import free_port, wait_for
from models.datasets import datasets_dir

FFMPEG = shutil.which("ffmpeg")


def sample_xrays() -> list[Path]:
    root = datasets_dir() / "chest-xray" / "fullres-samples"
    return sorted(root.glob("*/*.jpeg")) if root.is_dir() else []


def make_frames(folder: Path, images: list[Path], size: tuple[int, int] = (1280, 720)) -> list[Path]:
    """The X-rays scaled to fill a `size` (w, h) frame and centre-cropped, as a camera aimed at a
    film or monitor would see them, written as numbered JPEGs."""
    folder.mkdir(parents=True, exist_ok=True)
    width, height = size
    out = []
    for i, path in enumerate(images):
        gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        scale = max(width / gray.shape[1], height / gray.shape[0])
        resized = cv2.resize(gray, (round(gray.shape[1] * scale), round(gray.shape[0] * scale)), interpolation=cv2.INTER_AREA)
        y0, x0 = (resized.shape[0] - height) // 2, (resized.shape[1] - width) // 2
        target = folder / f"frame{i:03d}.jpg"
        cv2.imwrite(str(target), resized[y0 : y0 + height, x0 : x0 + width], [cv2.IMWRITE_JPEG_QUALITY, 90])
        out.append(target)
    return out


def make_video(out: Path, frames_dir: Path, fps: int = 30, seconds_per_image: float = 0.5) -> Path:
    """An MJPEG video at `fps` from the numbered JPEGs, each held for `seconds_per_image`; MJPEG so that
    ffmpeg can later stream it with ``-c:v copy`` (no re-encoding CPU on the stream side)."""
    subprocess.run(
        [
            FFMPEG, "-hide_banner", "-loglevel", "error", "-y",
            "-framerate", f"{1 / seconds_per_image:g}", "-i", str(frames_dir / "frame%03d.jpg"),
            "-vf", f"fps={fps},format=yuvj420p", "-c:v", "mjpeg", "-q:v", "4", str(out),
        ],
        check=True,
        timeout=120,
    )
    return out


def serving(port: int) -> bool:
    """Whether a socket on 127.0.0.1:port listens or already serves a client, read from /proc so as
    not to connect: ffmpeg's ``-listen 1`` serves exactly one client and would serve (and then lose)
    a probe, and it stops listening once it has one, which a capture client that keeps reconnecting
    can be within a poll's interval."""
    suffix = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[1].endswith(suffix) and fields[3] in ("0A", "01"):  # LISTEN, ESTABLISHED
                return True
    return False


class MjpegServer:
    """``ffmpeg -re -stream_loop -1 -i VIDEO -c:v copy -f mpjpeg -listen 1 http://127.0.0.1:PORT/stream``:
    a camera that can be killed, frozen (SIGSTOP) and started again on the same port."""

    def __init__(self, video: Path, port: int | None = None):
        self.video = video
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream"

    def start(self, wait: bool = True) -> "MjpegServer":
        self.proc = subprocess.Popen(
            [
                FFMPEG, "-hide_banner", "-loglevel", "quiet", "-nostdin",
                "-re", "-stream_loop", "-1", "-i", str(self.video),
                "-c:v", "copy", "-f", "mpjpeg", "-listen", "1", self.url,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if wait and not wait_for(lambda: serving(self.port) or self.proc.poll() is not None, 10):
            raise RuntimeError(f"ffmpeg did not listen on port {self.port}")
        return self

    def kill(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def freeze(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def __enter__(self) -> "MjpegServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.thaw()
        self.kill()


def pattern_video(out: Path, fps: int = 30, seconds: float = 3.0, size: tuple[int, int] = (1280, 720)) -> Path:
    """ffmpeg's moving test pattern as MJPEG, for machines without the sample X-rays."""
    subprocess.run(
        [
            FFMPEG, "-hide_banner", "-loglevel", "error", "-y",
            "-f", "lavfi", "-i", f"testsrc2=size={size[0]}x{size[1]}:rate={fps}", "-t", f"{seconds:g}",
            "-vf", "format=yuvj420p", "-c:v", "mjpeg", "-q:v", "4", str(out),
        ],
        check=True,
        timeout=120,
    )
    return out


def camera_video(folder: Path, size: tuple[int, int] = (1280, 720), fps: int = 30, images: int = 6) -> Path:
    """A `size` MJPEG video at `fps`: the sample X-rays as a camera would see them, or a test pattern."""
    samples = sample_xrays()[:images]
    if not samples:
        return pattern_video(folder / "pattern.mkv", fps, size=size)
    make_frames(folder / "frames", samples, size)
    return make_video(folder / "xrays.mkv", folder / "frames", fps)


