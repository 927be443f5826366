"""The one ``bedside`` command line. Each subcommand lives with the floor it runs on and is imported
only when it runs: the appliance's commands in device/commands/, ``optimize`` in optimize/, ``train``
and ``export`` with the training code in models/. So ``bedside infer`` never pays for (or needs)
torch or onnx, and a command whose extra is not installed says which one to install.

A command module provides ``add_arguments(parser, name)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass
from types import ModuleType

from device.runtime.base import RuntimeFailure, RuntimeUnavailable
from models.bundle import BundleError

OUR_PACKAGES = ("device", "models", "optimize", "central")


@dataclass(frozen=True)
class Command:
    module: str
    help: str
    extra: str | None = None  # the install extra it needs beyond the appliance's (`pip install .`)
    # Its options depend on one of them (train: --exam picks the trainer and so its options), so
    # add_arguments(parser, name, argv) sees the command line.
    sees_argv: bool = False
    # How to get the extra where `pip install 'bedside[extra]'` is not the way (default: that line).
    install_hint: str | None = None


COMMANDS: dict[str, Command] = {
    "infer": Command("device.commands.infer", "triage image and DICOM files"),
    "eval": Command("device.commands.evaluate", "evaluate a bundle on a folder of labelled images"),
    "acceptance": Command("device.commands.acceptance", "site acceptance: score local labelled cases as the kiosk "
                          "serves the model, propose and apply a site operating point"),
    "bench": Command("device.commands.bench", "measure latency and throughput of every backend side by side"),
    "optimize": Command("optimize.command", "add a gated INT8 or FP16 variant to a bundle (needs the "
                        "'optimize' extra)", "optimize"),
    "serve": Command("device.commands.serve", "run the kiosk: pages for clinicians and the JSON API, on a WSGI server"),
    "technician": Command("device.commands.technician", "make a provisioning file for the technician's password"),
    "doctor": Command("device.commands.doctor", "report versions, backends, CPU features; verify shipped bundles"),
    "keys": Command("device.commands.keys", "make an Ed25519 key pair for signing model bundles"),
    "bundle": Command("device.commands.bundle", "pack, sign, verify, install, list and roll back signed model bundles"),
    "app": Command("device.commands.app_updates", "install, roll back and recover signed application updates (venv slots)"),
    "central": Command("central.command", "the central inference node: serve bundles to a fleet's kiosks on "
                       "Triton (needs the 'central' venv)", "central",
                       install_hint="nvidia-pytriton pins numpy below 2, so the node has its own venv: "
                       "make central, then .venv-central/bin/bedside central ..."),
    "train": Command("models.training.commands", "train a model and write its bundle (needs the 'train' extra)", "train",
                     sees_argv=True),
    "export": Command("models.training.commands", "export a training checkpoint to a bundle (needs the 'train' extra)",
                      "train", sees_argv=True),
}


class CommandUnavailable(Exception):
    """A subcommand that cannot run in this installation (e.g. training without torch)."""


def load_command(name: str) -> ModuleType:
    """The command's module; a library missing from this installation names the extra that brings it."""
    command = COMMANDS[name]
    try:
        return importlib.import_module(command.module)
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").split(".")[0]
        if command.extra is None or not missing or missing in OUR_PACKAGES:
            raise
        how = command.install_hint or f"install the '{command.extra}' extra (pip install 'bedside[{command.extra}]')"
        raise CommandUnavailable(f"'bedside {name}' needs {missing}: {how}") from None


def build_parser(selected: str | None, argv: list[str] | None = None) -> argparse.ArgumentParser:
    """Only the selected subcommand's module is imported and given its arguments."""
    parser = argparse.ArgumentParser(prog="bedside", description="Bedside point-of-care imaging triage")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        cmd = sub.add_parser(name, help=command.help, description=command.help,
                             formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        if name == selected:
            extra = (list(argv or []),) if command.sees_argv else ()
            load_command(name).add_arguments(cmd, name, *extra)
    return parser


def _selected_command(argv: list[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    name = _selected_command(argv)
    try:
        args = build_parser(name, argv).parse_args(argv)
        return load_command(args.command).run(args)
    except (CommandUnavailable, BundleError, RuntimeUnavailable, RuntimeFailure) as exc:
        print(f"bedside: {exc}", file=sys.stderr)
        return 1
    except FileNotFoundError as exc:
        # A missing input folder or file (e.g. `bedside train` without the datasets): say which.
        print(f"bedside {name}: {exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""),
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `bedside infer --json ... | head`: the reader left; that is not an error.
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
