"""Arguments and helpers shared by several subcommands."""

from __future__ import annotations

import argparse
from pathlib import Path

from pydantic import ValidationError

from device.core.site_record import SiteRecord
from device.runtime.base import RuntimeUnavailable
from device.runtime.registry import BACKENDS
from device.runtime.remote_backend import RemoteSettings
from device.runtime.triager import Triager
from models.bundle import Bundle, BundleError, default_bundles_dir, find_bundles, load_bundle


def add_bundle_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bundle",
        type=Path,
        help="model bundle directory (default: the bundle shipped with Bedside, if exactly one ships)",
    )


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=sorted(BACKENDS), default="onnxruntime")
    parser.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp32")
    parser.add_argument("--threads", type=int, default=None, help="inference threads (default: all usable cores)")
    parser.add_argument("--remote-url", help="with --backend remote: the central node, http://HOST:PORT")
    parser.add_argument("--remote-timeout", type=float, default=RemoteSettings.model_fields["timeout_s"].default,
                        help="with --backend remote: seconds a request to the node may take")


def add_site_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir", type=Path,
        help="a kiosk's data dir: decide at the site operating point accepted there for this bundle "
             "(bedside acceptance apply), where there is one (default: the bundle's own point)",
    )


def resolve_bundle(path: Path | None) -> Bundle:
    if path is not None:
        return load_bundle(path)
    shipped = find_bundles()
    if len(shipped) != 1:
        raise BundleError(
            f"{len(shipped)} bundles ship in {default_bundles_dir()}: choose one with --bundle"
        )
    return load_bundle(shipped[0])


def remote_settings(args: argparse.Namespace) -> RemoteSettings | None:
    """The central node given on the command line, for ``--backend remote``."""
    if args.remote_url is None:
        return None
    if args.backend != "remote":
        raise RuntimeUnavailable("--remote-url is for --backend remote")
    try:
        return RemoteSettings(url=args.remote_url, timeout_s=args.remote_timeout)
    except ValidationError as exc:
        raise RuntimeUnavailable(f"--remote-url {args.remote_url}: {exc.errors()[0]['msg']}") from None


def open_triager(args: argparse.Namespace) -> Triager:
    """The bundle on the backend asked for, deciding at the site's accepted point where --data-dir has one."""
    triager = Triager(resolve_bundle(args.bundle), args.backend, args.precision, args.threads, remote_settings(args))
    data_dir = getattr(args, "data_dir", None)
    record = SiteRecord.open_existing(data_dir) if data_dir is not None else None
    if record is not None:
        try:
            accepted = record.current(triager.manifest.id, triager.bundle.sha256)
        finally:
            record.close()
        if accepted is not None:
            triager.operating_point = accepted.operating_point
    return triager
