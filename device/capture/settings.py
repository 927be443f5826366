"""The ``[capture]`` settings of the kiosk's TOML file (validated like the rest: unknown keys refused).

    [capture]
    stall_timeout_s = 3.0        # no new frame for this long -> stalled -> reconnect
    smoothing_frames = 1         # 1 = off; N = also show the mean over the last N gradable frames

    [[capture.sources]]
    uri = "v4l2:///dev/video0?width=1280&height=720&fps=30&fourcc=MJPG"
    id = "otoscope"              # optional; default cam0, cam1, ... in order
    name = "Otoscope"            # optional, shown on screen
    exam = "chest-xray-pneumonia"  # optional when one exam is installed

A source may also be given as a bare URI string: ``sources = ["http://10.0.0.5/stream"]``.
"""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from device.capture.frame_quality import FrameQualityPolicy
from device.capture.sources import SourceError, parse_source
from device.capture.stream import Timing
from models.bundle import _Strict

_DEFAULT_QUALITY = FrameQualityPolicy()


class SourceSettings(_Strict):
    uri: str
    id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,40}$")
    name: str = Field(default="", max_length=80)
    exam: str | None = None

    @field_validator("uri")
    @classmethod
    def _parses(cls, uri: str) -> str:
        try:
            parse_source(uri)
        except SourceError as exc:
            raise ValueError(str(exc)) from None
        return uri.strip()


class FrameQualitySettings(_Strict):
    min_sharpness: float = Field(default=_DEFAULT_QUALITY.min_sharpness, ge=0)
    min_range: float = Field(default=_DEFAULT_QUALITY.min_range, ge=0, le=1)
    min_mean: float = Field(default=_DEFAULT_QUALITY.min_mean, ge=0, le=1)
    max_mean: float = Field(default=_DEFAULT_QUALITY.max_mean, ge=0, le=1)

    def policy(self) -> FrameQualityPolicy:
        return FrameQualityPolicy(self.min_sharpness, self.min_range, self.min_mean, self.max_mean)


class CaptureSettings(_Strict):
    sources: list[SourceSettings] = []
    stall_timeout_s: float = Field(default=3.0, gt=0, le=120)
    open_timeout_s: float = Field(default=5.0, gt=0, le=120)
    backoff_initial_s: float = Field(default=0.5, gt=0, le=60)
    backoff_max_s: float = Field(default=8.0, gt=0, le=600)
    watchdog_interval_s: float = Field(default=0.25, gt=0, le=10)
    smoothing_frames: int = Field(default=1, ge=1, le=120, description="1 = off")
    view_fps: float = Field(default=15.0, gt=0, le=60, description="frame rate of the live view stream")
    view_max_width: int = Field(default=960, ge=160, le=3840, description="live view is scaled down to this")
    max_viewers: int = Field(
        default=2, ge=0, le=32,
        description="live views open at once, all sources together (each holds a server thread)",
    )
    quality: FrameQualitySettings = FrameQualitySettings()

    @field_validator("sources", mode="before")
    @classmethod
    def _bare_uris(cls, value: object) -> object:
        if isinstance(value, list):
            return [{"uri": item} if isinstance(item, str) else item for item in value]
        return value

    @model_validator(mode="after")
    def _unique_ids(self) -> "CaptureSettings":
        ids = source_ids(self.sources)
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"source id {dupes[0]!r} is used twice")
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("backoff_max_s must be at least backoff_initial_s")
        return self

    def timing(self) -> Timing:
        return Timing(self.stall_timeout_s, self.open_timeout_s, self.backoff_initial_s, self.backoff_max_s)


def source_ids(sources: list[SourceSettings]) -> list[str]:
    """Each source's id: its own, or cam<position>."""
    return [s.id or f"cam{i}" for i, s in enumerate(sources)]
