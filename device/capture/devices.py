"""The V4L2 video devices on this machine (USB cameras, HDMI capture dongles), with their names."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

SYSFS = Path("/sys/class/video4linux")
DEV = Path("/dev")


@dataclass(frozen=True)
class VideoDevice:
    path: str
    name: str

    @property
    def uri(self) -> str:
        return f"v4l2://{self.path}"

    def as_json(self) -> dict:
        return {"path": self.path, "name": self.name, "uri": self.uri}


def list_video_devices(dev: Path = DEV, sysfs: Path = SYSFS) -> list[VideoDevice]:
    """Every /dev/videoN, in number order, named from sysfs (a camera often shows two nodes: the
    second carries metadata, not frames; both are listed since only opening tells them apart)."""
    found = []
    for node in dev.glob("video*"):
        match = re.fullmatch(r"video(\d+)", node.name)
        if match is None:
            continue
        try:
            name = (sysfs / node.name / "name").read_text(errors="replace").strip()
        except OSError:
            name = ""
        found.append((int(match.group(1)), VideoDevice(str(node), name or node.name)))
    return [device for _, device in sorted(found)]
