"""Arguments and helpers shared by several subcommands."""

from __future__ import annotations

import argparse
from pathlib import Path

from device.runtime.registry import BACKENDS
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


def resolve_bundle(path: Path | None) -> Bundle:
    if path is not None:
        return load_bundle(path)
    shipped = find_bundles()
    if len(shipped) != 1:
        raise BundleError(
            f"{len(shipped)} bundles ship in {default_bundles_dir()}: choose one with --bundle"
        )
    return load_bundle(shipped[0])


def open_triager(args: argparse.Namespace) -> Triager:
    return Triager(resolve_bundle(args.bundle), args.backend, args.precision, args.threads)
