"""``bedside app``: the application update (device/updates/application.py): pack a wheel set, install it into
the inactive venv, switch, restart, health-gate, roll back; ``recover`` runs before the service starts.
Signing is ``bedside bundle sign`` (one archive format for both). One line out, exit 0; or one line
naming the reason, exit 1."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from device.core.settings import ConfigError, load_config
from device.updates import UpdateError, archive
from device.updates.application import app_status, install_app, recover_app, rollback_app


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    fmt = argparse.ArgumentDefaultsHelpFormatter
    pack = sub.add_parser("pack", help="archive a folder of wheels (pip wheel -w DIR .) as a release", formatter_class=fmt)
    pack.add_argument("dir", type=Path)
    pack.add_argument("--version", required=True, help="the bedside version the wheels install")
    pack.add_argument("--out", type=Path, required=True)
    for action, text in [("install", "install a signed release into the inactive venv, switch and restart"),
                         ("rollback", "switch back to the previous venv and restart"),
                         ("recover", "undo a switch that was not committed (the service runs it before starting)"),
                         ("status", "the running version and the two venvs")]:
        p = sub.add_parser(action, help=text, formatter_class=fmt)
        if action == "install":
            p.add_argument("file", type=Path)
        if action in ("install", "rollback"):
            p.add_argument("--url", help="the kiosk to health-check (default: from the config's [server])")
        p.add_argument("--config", type=Path, help="the kiosk's TOML settings file (its [updates] section)")


def _progress(step: str, detail: str) -> None:
    if step != "extract":
        print(f"  {step} {detail}", flush=True)


def _act(args: argparse.Namespace) -> str:
    if args.action == "pack":
        contents = archive.pack_release(args.dir, args.version, args.out)
        return (f"packed bedside {args.version} ({len(contents.manifest.files)} wheels, "
                f"{contents.size / 2**20:.1f} MiB) into {args.out}; sign it with `bedside bundle sign`")
    config = load_config(args.config)
    if args.action == "install":
        return install_app(args.file, config, args.url, _progress).line()
    if args.action == "rollback":
        return rollback_app(config, args.url, _progress).line()
    if args.action == "recover":
        return "; ".join(recover_app(config)) or "nothing to recover"
    return json.dumps(app_status(config), indent=2)


def run(args: argparse.Namespace) -> int:
    try:
        line = _act(args)
    except (UpdateError, ConfigError) as exc:
        print(f"bedside app {args.action}: {exc}", file=sys.stderr)
        return 1
    print(line)
    return 0
