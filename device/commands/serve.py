"""``bedside serve``: run the kiosk (pages and JSON API) on a production WSGI server.

Prints ``Bedside kiosk ready at <url>`` once the models are loaded and warmed up and the socket is
bound (with ``--port 0`` the URL holds the port that was picked).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from device.kiosk.config import ConfigError, load_config
from device.kiosk.store import StoreError

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
        "--source",
        action="append",
        metavar="URI",
        help="live capture source, added to the config's (repeatable): v4l2:///dev/video0, csi://0, "
        "rtsp://..., http://.../mjpeg, file:///video.mp4?loop=1",
    )


def _stop(signum, frame) -> None:
    raise SystemExit(0)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Imported here so that other commands never pay for Flask and waitress.
    from device.kiosk.app import create_app
    from device.kiosk.context import kiosk_of
    from device.kiosk.server import KioskServer

    try:
        config = load_config(args.config).with_overrides(
            **{
                "server.host": args.host,
                "server.port": args.port,
                "server.threads": args.threads,
                "store.data_dir": args.data_dir,
                "models.bundles": args.bundle,
                "dicom.port": args.dicom_port,
            }
        )
        if args.source:
            config = config.with_overrides(
                **{"capture.sources": [s.model_dump() for s in config.capture.sources] + args.source}
            )
        app = create_app(config)
    except (ConfigError, StoreError) as exc:
        print(f"bedside: {exc}", file=sys.stderr)
        return 2
    try:
        server = KioskServer(app, config.server, before_close=kiosk_of(app).capture.end_views)
    except OSError as exc:
        kiosk_of(app).close()
        print(f"bedside: cannot listen on {config.server.host}:{config.server.port}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, _stop)
    print(READY_LINE.format(url=server.url), flush=True)
    try:
        server.serve_forever()
    finally:
        kiosk_of(app).close()
    return 0
