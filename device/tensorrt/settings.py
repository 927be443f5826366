"""Where TensorRT engines live and how they are built: ``[models.tensorrt]`` in the kiosk's config
file, with each setting overridable by its environment variable (for ``bedside infer``/``doctor``,
which read no config file, and for a one-off change on a device)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import Field, field_validator

from device.tensorrt.build import BuildOptions
from models.bundle import _Strict

ENV_CACHE_DIR = "BEDSIDE_ENGINE_CACHE"
DEFAULT_CACHE_DIR = "~/.cache/bedside/engines"
# setting -> the environment variable that overrides it
ENV_NUMBERS = {
    "max_batch": "BEDSIDE_TRT_MAX_BATCH",
    "opt_batch": "BEDSIDE_TRT_OPT_BATCH",
    "workspace_mb": "BEDSIDE_TRT_WORKSPACE_MB",
    "dla_core": "BEDSIDE_DLA_CORE",
}


class EngineSettings(_Strict):
    cache_dir: Path = Field(
        default_factory=lambda: Path(DEFAULT_CACHE_DIR).expanduser(),
        description=f"engine cache; must be writable and persistent (env {ENV_CACHE_DIR})",
    )
    max_batch: int = Field(default=16, ge=1, description="largest batch of the engine's profile")
    opt_batch: int = Field(default=1, ge=1, description="the batch kernels are tuned for")
    workspace_mb: int = Field(default=1024, ge=1, description="builder workspace")
    dla_core: int | None = Field(default=None, ge=0, description="DLA core to build for (default: the GPU)")

    @field_validator("cache_dir")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser()

    def with_env(self, environ: Mapping[str, str] = os.environ) -> "EngineSettings":
        """These settings with the environment's overrides applied (an unset or empty variable is none)."""
        changes: dict[str, object] = {}
        if environ.get(ENV_CACHE_DIR, "").strip():
            changes["cache_dir"] = Path(environ[ENV_CACHE_DIR].strip())
        for name, variable in ENV_NUMBERS.items():
            raw = environ.get(variable, "").strip()
            if not raw:
                continue
            try:
                changes[name] = int(raw)
            except ValueError:
                raise ValueError(f"{variable}={raw!r} is not an integer") from None
        return type(self).model_validate({**self.model_dump(), **changes}) if changes else self

    def build_options(self, precision: str) -> BuildOptions:
        return BuildOptions(precision, self.max_batch, self.opt_batch, self.workspace_mb << 20, self.dla_core)
