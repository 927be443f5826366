"""``bedside keys generate --out DIR``: an Ed25519 key pair for signing bundles (device/updates/keys.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from device.updates import UpdateError, generate_keys


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    gen = sub.add_parser("generate", help="make a key pair: NAME.key (private, mode 0600) and NAME.pub",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    gen.add_argument("--out", type=Path, required=True, help="folder for the two files (made if missing)")
    gen.add_argument("--name", default="bedside-signing", help="file name without suffix")


def run(args: argparse.Namespace) -> int:
    try:
        pair = generate_keys(args.out, args.name)
    except UpdateError as exc:
        print(f"bedside keys: {exc}", file=sys.stderr)
        return 1
    print(f"key {pair.key_id}: private {pair.private_path} (keep it secret), public {pair.public_path} "
          "(copy it into the appliance's [updates] trust_dir)")
    return 0
