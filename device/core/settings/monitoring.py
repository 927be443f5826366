"""The ``[monitoring]`` section of the kiosk's settings: the drift monitor's window (device/core/drift_monitor.py)."""

from __future__ import annotations

from pydantic import Field, model_validator

from models.bundle import _Strict


class MonitoringSettings(_Strict):
    window: int = Field(default=100, ge=20, le=5000,
                        description="the latest studies of an exam compared with its reference")
    min_studies: int = Field(default=50, ge=20, le=5000,
                             description="studies needed before the first comparison (until then: collecting)")
    confirm: int = Field(default=5, ge=1, le=100,
                         description="consecutive studies that must agree before the state changes")

    @model_validator(mode="after")
    def _fits(self) -> "MonitoringSettings":
        if self.min_studies > self.window:
            raise ValueError("min_studies cannot be more than window")
        return self
