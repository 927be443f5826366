"""The kiosk's settings: one TOML file, validated strictly, with a default for every setting.

With no file at all the appliance runs with the defaults below; a file only lists what differs.
An unknown or invalid key is refused with the key's dotted name and the file's path.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, model_validator

from device.capture.settings import CaptureSettings
from device.core.settings.dicom import DicomSettings
from device.core.settings.technician import TechnicianSettings
from device.core.settings.updates import UpdateSettings
from device.core.tls import ServerTls, check_private_key
from device.runtime.remote_backend import RemoteSettings
from device.tensorrt.settings import EngineSettings
from models.bundle import _Strict, default_bundles_dir, describe_validation_error


class ConfigError(Exception):
    """A configuration file that cannot be used; the message names the file and the key."""


def default_data_dir() -> Path:
    """Where studies live when nothing says otherwise: the XDG data dir (systemd passes /var/lib/bedside)."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "bedside"


LOOPBACK_NAMES = ("127.0.0.1", "::1", "localhost")  # a host here is reached from this machine only


class ServerSettings(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535, description="0 binds a free port")
    threads: int = Field(default=8, ge=1, le=64, description="request threads")
    max_upload_mb: int = Field(default=100, ge=1, le=512, description="largest accepted request body")
    connection_limit: int = Field(
        default=1000, ge=10, le=10_000, description="open connections at once (idle ones cost no thread)"
    )
    channel_timeout_s: int = Field(
        default=30, ge=5, le=600, description="a connection that sends or reads nothing this long is closed"
    )
    allowed_hosts: list[str] = Field(
        default=[], description="host names the kiosk answers to besides host, localhost and loopback (else 421)"
    )
    screen_without_login: bool = Field(
        default=True,
        description="when host is not a loopback address: the device's own screen (a request from this "
        "machine) still opens the clinician pages and API without a login; false: every request needs one",
    )
    tls_cert: Path | None = Field(
        default=None,
        description="PEM certificate (its chain may follow it): the port then serves HTTPS only, TLS 1.2 or newer, "
        "with HSTS; a renewed file is picked up without a restart",
    )
    tls_key: Path | None = Field(
        default=None, description="the certificate's PEM private key: mode 0600 and owned by the service user"
    )
    plain_http_loopback_port: int | None = Field(
        default=None, ge=1, le=65535,
        description="with TLS: plain HTTP on this port of 127.0.0.1 only, for the device's own screen",
    )

    @model_validator(mode="after")
    def _tls_needs_both_files(self) -> "ServerSettings":
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: set both (HTTPS) or neither (plain HTTP)")
        if self.plain_http_loopback_port is not None and self.tls_cert is None:
            raise ValueError("plain_http_loopback_port is for a kiosk that serves HTTPS: set tls_cert and tls_key")
        return self

    def tls(self) -> ServerTls | None:
        return None if self.tls_cert is None else ServerTls(cert=self.tls_cert, key=self.tls_key)


class DecodeSettings(_Strict):
    """The decode budget (device/intake/budget.py): images beyond it are refused with 413 before
    their memory is committed."""

    max_megapixels: float = Field(default=50, gt=0, le=100, description="largest image, width x height")
    max_frames: int = Field(default=1000, ge=1, le=100_000, description="most frames in one DICOM")
    max_inflated_mb: int = Field(
        default=200, ge=1, le=4096, description="largest decoded frame, and what deflated DICOM may inflate to"
    )
    concurrent: int = Field(default=2, ge=1, le=16, description="images decoded at once; more wait")
    wait_s: float = Field(default=30, gt=0, le=600, description="how long a decode waits for a slot (then 503)")


class ModelSettings(_Strict):
    bundles_dir: Path = Field(default_factory=default_bundles_dir, description="every bundle in it is an exam")
    bundles: list[Path] = Field(default=[], description="explicit bundle directories; replace bundles_dir")
    backend: str = Field(
        default="auto",
        description="auto: at start, time every available CPU backend on every variant whose gate passed "
        "(self-tested first; cached in the data dir per CPU and library versions) and serve on the fastest; "
        "or a backend's name (bedside doctor lists them) to serve on it untimed",
    )
    precision: Literal["auto", "fp32", "fp16", "int8"] = Field(
        default="auto",
        description="auto: whichever gated variant is fastest here; else the preferred variant "
        "(a bundle without it runs its fp32 variant)",
    )
    inference_threads: int | None = Field(
        default=None, ge=1, le=64,
        description="model threads (default: all usable cores); each study runs on one of them, and a burst "
        "is cut into this many parts run side by side",
    )
    gpu: Literal["auto", "off"] = Field(
        default="auto",
        description="auto: where a GPU backend runs, prepare each exam's GPU variant in the background "
        "(TensorRT builds its engine) while serving on `backend`, then switch to it",
    )
    tensorrt: EngineSettings = Field(default_factory=EngineSettings, description="the TensorRT engine cache and builds")
    stuck_after_s: float = Field(
        default=120, ge=1, le=3600,
        description="a model busy with one image this long counts as hung: health answers 503 and the "
        "systemd watchdog is no longer pinged, so the kiosk is restarted",
    )
    remote_url: str | None = Field(
        default=None, description="with backend = \"remote\": the central node, http://HOST:PORT"
    )
    remote_timeout_s: float = Field(
        default=1.0, gt=0, le=60,
        description="the longest a request to the node may take; past it the kiosk's own model triages the study",
    )
    remote_connect_timeout_s: float = Field(default=0.5, gt=0, le=60, description="the longest opening a connection may take")
    remote_tls_ca: Path | None = Field(
        default=None, description="with an https:// remote_url: the PEM CA bundle the node's certificate must chain to"
    )
    remote_tls_cert: Path | None = Field(default=None, description="our client certificate, where the node asks for one")
    remote_tls_key: Path | None = Field(default=None, description="its private key: mode 0600, owned by the service user")
    remote_tls_insecure: bool = Field(
        default=False, description="DANGER: neither the node's certificate nor its name is checked"
    )
    remote_retry_s: float = Field(
        default=10, ge=0.1, le=3600,
        description="while serving locally, how often the node is asked (and checked) again",
    )

    @model_validator(mode="after")
    def _remote_needs_its_url(self) -> "ModelSettings":
        if self.backend == "remote" and not self.remote_url:
            raise ValueError("backend = \"remote\" needs remote_url (the central node, http://HOST:PORT)")
        if self.remote_url is not None:
            try:
                self.remote_settings()
            except ValidationError as exc:
                raise ValueError(f"remote_url: {exc.errors()[0]['msg'].removeprefix('Value error, ')}") from None
        return self

    def remote_settings(self) -> RemoteSettings | None:
        if self.remote_url is None:
            return None
        return RemoteSettings(url=self.remote_url, timeout_s=self.remote_timeout_s,
                              connect_timeout_s=self.remote_connect_timeout_s, tls_ca=self.remote_tls_ca,
                              tls_cert=self.remote_tls_cert, tls_key=self.remote_tls_key,
                              tls_insecure=self.remote_tls_insecure)

    def backend_settings(self, backend: str) -> object | None:
        """The settings section of a backend, for those that have one. The remote backend's client key
        is checked here, where it is about to be used (TlsError: readable by others, not ours)."""
        if backend == "remote" and self.remote_tls_key is not None:
            check_private_key(self.remote_tls_key)
        return {"tensorrt": self.tensorrt, "remote": self.remote_settings()}.get(backend)


class StoreSettings(_Strict):
    data_dir: Path = Field(default_factory=default_data_dir)
    reserve_mb: int = Field(
        default=1024, ge=0, le=1_000_000,
        description="free space kept in the data dir: below it new studies are refused (507), views and the audit log go on",
    )


class MediaSettings(_Strict):
    """Removable drives and shared folders: where images are imported from and exports go."""

    import_folders: list[Path] = [Path("/media"), Path("/run/media")]
    export_folders: list[Path] = Field(
        default=[Path("/media"), Path("/run/media")],
        description="mounted drives under these are offered as export targets (besides <data_dir>/exports)",
    )
    max_listed_files: int = Field(default=500, ge=1, le=10_000)
    max_depth: int = Field(default=4, ge=0, le=16)


class UiSettings(_Strict):
    operator: str = Field(default="", max_length=80, description="default operator recorded with each action")
    page_size: int = Field(default=25, ge=5, le=200, description="studies per page of the worklist and history")
    on_screen_keyboard: Literal["auto", "always", "off"] = Field(
        default="auto", description="a keyboard on screen for text fields: auto = while the kiosk runs full screen"
    )
    require_reference: bool = Field(
        default=False, description="refuse a study (upload, import, capture) without a patient reference"
    )


class KioskConfig(_Strict):
    server: ServerSettings = ServerSettings()
    models: ModelSettings = ModelSettings()
    store: StoreSettings = StoreSettings()
    media: MediaSettings = MediaSettings()
    ui: UiSettings = UiSettings()
    capture: CaptureSettings = CaptureSettings()
    decode: DecodeSettings = DecodeSettings()
    dicom: DicomSettings = DicomSettings()
    technician: TechnicianSettings = TechnicianSettings()
    updates: UpdateSettings = UpdateSettings()

    def with_overrides(self, **dotted: object) -> "KioskConfig":
        """A copy with command-line values applied, e.g. ``{"server.port": 0}``; None means not given."""
        data = self.model_dump()
        for key, value in dotted.items():
            if value is None:
                continue
            section, name = key.split(".")
            data[section][name] = value
        return validate(data, "the command line")


def validate(data: dict, source: str) -> KioskConfig:
    try:
        return KioskConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: invalid setting: {describe_validation_error(exc)}") from None


def load_config(path: str | os.PathLike[str] | None) -> KioskConfig:
    """The settings in `path`, or all defaults for None."""
    if path is None:
        return KioskConfig()
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return validate(data, str(path))
