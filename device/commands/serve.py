"""``bedside serve``: run the kiosk (pages and JSON API) on a production WSGI server.

Prints ``Bedside kiosk ready at <url>`` once the models are loaded and warmed up and the socket is
bound (with ``--port 0`` the URL holds the port that was picked).

With ``--safe-mode`` (the appliance's unit), when the last start did not complete or the settings
file cannot be used, it starts in safe mode instead (device/technician/safe_mode.py): no models, the
studies readable, the technician area, and the ready line says why. Without it such settings are refused (exit status 2).
Exits 75 when a technician asked for a restart (systemd's Restart=on-failure starts it again).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from device.core.settings import ConfigError, load_config
from device.core.store import StoreError
from device.core.tls import TlsError

READY_LINE = "Bedside kiosk ready at {url}"


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("--config", type=Path, help="TOML settings file (default: built-in defaults)")
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default 8080; 0 picks a free one)")
    parser.add_argument("--data-dir", type=Path, help="where studies are stored")
    parser.add_argument(
        "--bundle", type=Path, action="append", help="serve this model bundle (repeatable; default: all shipped)"
    )
    parser.add_argument("--dicom-port", type=int, help="DICOM C-STORE listener port (0: none; see [dicom])")
    parser.add_argument("--threads", type=int, help="request threads (default 8)")
    parser.add_argument(
        "--safe-mode", action="store_true",
        help="when the last start did not complete or the settings cannot be used, start the technician "
        "area only, with the last good settings, instead of exiting (bedside.service sets this)",
    )
    parser.add_argument(
        "--source",
        action="append",
        metavar="URI",
        help="live capture source, added to the config's (repeatable): v4l2:///dev/video0, csi://0, "
        "rtsp://..., http://.../mjpeg, file:///video.mp4?loop=1",
    )


def _stop(signum, frame) -> None:
    raise SystemExit(0)


def _overrides(args: argparse.Namespace) -> dict:
    return {
        "server.host": args.host,
        "server.port": args.port,
        "server.threads": args.threads,
        "store.data_dir": args.data_dir,
        "models.bundles": args.bundle,
        "dicom.port": args.dicom_port,
    }


def _load(args: argparse.Namespace):
    """The settings, or None and why they cannot be used."""
    try:
        config = load_config(args.config).with_overrides(**_overrides(args))
        if args.source:
            config = config.with_overrides(
                **{"capture.sources": [s.model_dump() for s in config.capture.sources] + args.source}
            )
    except ConfigError as exc:
        return None, str(exc)
    return config, None


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Imported here so that other commands never pay for Flask and waitress.
    from device.core.settings import default_data_dir
    from device.technician.safe_mode import StartRecord

    config, config_error = _load(args)
    data_dir = args.data_dir or (config.store.data_dir if config is not None else default_data_dir())
    record = StartRecord(Path(data_dir))
    if args.safe_mode:
        reason = record.why_safe() or (f"the settings cannot be used: {config_error}" if config_error else None)
        if reason is not None:
            return _serve_safe(args, record, reason, config)
    elif config_error is not None:
        print(f"bedside: {config_error}", file=sys.stderr)
        return 2
    return _serve(config, record)


def _serve(config, record) -> int:
    from device.kiosk.app import create_app
    from device.appliance.context import appliance_of
    from device.kiosk.server import HealthProbe, KioskServer
    from device.technician.area import RESTART_EXIT_STATUS, area_of

    record.starting()
    try:
        _check_tls(config)
        app = create_app(config)
    except (ConfigError, StoreError, TlsError) as exc:
        record.failed(str(exc))
        print(f"bedside: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        record.failed(f"{type(exc).__name__}: {exc}")
        raise
    appliance, technician = appliance_of(app), area_of(app)
    try:
        server = KioskServer(app, config.server, appliance.capture.end_views,
                             HealthProbe("/api/v1/health", technician.internal_token))
    except (OSError, TlsError) as exc:
        appliance.close()
        why = _cannot_listen(config, exc)
        record.failed(why)
        print(f"bedside: {why}", file=sys.stderr)
        return 2 if isinstance(exc, TlsError) else 1
    record.started(config)
    signal.signal(signal.SIGTERM, _stop)
    print(_ready_line(server), flush=True)
    try:
        server.serve_forever()
    finally:
        appliance.close()
    return RESTART_EXIT_STATUS if technician.restart_requested.is_set() else 0


def _check_tls(config) -> None:
    """The certificate and key, checked before any model loads (TlsError says what is wrong)."""
    tls = config.server.tls()
    if tls is not None:
        tls.context()


def _screen_only(config):
    """Safe mode where HTTPS cannot be served: plain HTTP on 127.0.0.1 only (the loopback port where
    one is set), never on the network, so that the technician can read why on the device's screen."""
    server = config.server
    port = server.plain_http_loopback_port or server.port
    screen = server.model_copy(update={"host": "127.0.0.1", "port": port, "tls_cert": None, "tls_key": None,
                                       "plain_http_loopback_port": None})
    return config.model_copy(update={"server": screen})


def _cannot_listen(config, exc: Exception) -> str:
    if isinstance(exc, TlsError):
        return f"cannot serve HTTPS: {exc}"
    return f"cannot listen on {config.server.host}:{config.server.port}: {exc.strerror or exc}"


def _ready_line(server) -> str:
    """The ready line; with HTTPS beside a loopback plain-HTTP port, that one too (for the screen)."""
    line = READY_LINE.format(url=server.url)
    return line if server.loopback_url is None else f"{line} (this device's screen: {server.loopback_url})"


def _serve_safe(args: argparse.Namespace, record, reason: str, config) -> int:
    """Safe mode with the last known good settings; where no start ever completed, the settings
    file's if it validates (no model is loaded from it), else the defaults."""
    from device.kiosk.app import close_app, create_safe_app
    from device.core.settings import KioskConfig
    from device.kiosk.server import HealthProbe, KioskServer
    from device.technician.area import RESTART_EXIT_STATUS, area_of

    logging.getLogger("bedside.safe_mode").error("SAFE MODE: %s", reason)
    base = record.last_good_config() or config or KioskConfig()
    try:
        config = base.with_overrides(**{**_overrides(args), "store.data_dir": record.data_dir, "models.bundles": None})
    except ConfigError as exc:
        print(f"bedside: {exc}", file=sys.stderr)
        return 2
    try:
        _check_tls(config)
    except TlsError as exc:
        reason = f"{reason}; cannot serve HTTPS ({exc}), so only this device's screen is served"
        config = _screen_only(config)
    record.safe(reason)
    app = create_safe_app(config, reason)
    technician = area_of(app)
    try:
        server = KioskServer(app, config.server, lambda: None, HealthProbe("/api/v1/alive", technician.internal_token))
    except OSError as exc:
        close_app(app)
        print(f"bedside: {_cannot_listen(config, exc)}", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, _stop)
    print(_ready_line(server) + f" (SAFE MODE: {reason})", flush=True)
    try:
        server.serve_forever()
    finally:
        close_app(app)
    return RESTART_EXIT_STATUS if technician.restart_requested.is_set() else 0
