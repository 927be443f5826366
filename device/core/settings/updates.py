"""The ``[updates]`` section of the kiosk's TOML file: whose signatures are trusted, where installed
bundles live, and how large an update may be."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from models.bundle import _Strict

DEFAULT_TRUST_DIR = Path("/etc/bedside/trusted-keys")


class UpdateSettings(_Strict):
    trust_dir: Path = Field(
        default=DEFAULT_TRUST_DIR,
        description="folder of trusted public keys (*.pub, PEM, Ed25519); a bundle signed by any other key is refused",
    )
    bundles_dir: Path | None = Field(
        default=None,
        description="where installed bundles live, two slots per exam (default: <store.data_dir>/bundles); "
        "an installed exam replaces the shipped bundle of the same id",
    )
    max_archive_mb: int = Field(default=2048, ge=1, le=65536, description="larger archives are refused unread")
    max_files: int = Field(default=256, ge=2, le=100_000, description="most files in one archive")
    health_requests: int = Field(
        default=3, ge=1, le=100, description="self-test requests the live kiosk must answer after a switch"
    )
    health_timeout_s: float = Field(
        default=300, gt=0, le=3600, description="how long the live kiosk may take to load and answer (engine builds)"
    )

    app_dir: Path = Field(
        default=Path("/opt/bedside"),
        description="the application's two virtual environments; bedside.service runs <app_dir>/app/bin/bedside",
    )
    restart_command: list[str] = Field(
        default=["systemctl", "restart", "bedside.service"],
        description="restarts the kiosk after an application switch (systemd brings it up from the new venv)",
    )
    app_start_timeout_s: float = Field(
        default=600, gt=0, le=7200, description="how long the restarted kiosk may take to answer ready"
    )

    def installed_root(self, data_dir: Path) -> Path:
        return self.bundles_dir if self.bundles_dir is not None else Path(data_dir) / "bundles"
