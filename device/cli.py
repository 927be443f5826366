"""The ``bedside`` command line. Each subcommand lives in device/commands/<name>.py."""

from __future__ import annotations

import argparse
import importlib
import sys

from device.runtime.base import RuntimeFailure, RuntimeUnavailable
from models.bundle import BundleError

# name -> (module, one-line help). Modules are imported only when their command runs,
# so `bedside infer` never pays for (or needs) torch, which only train/export use.
COMMANDS: dict[str, tuple[str, str]] = {
    "infer": ("device.commands.infer", "triage image and DICOM files"),
    "eval": ("device.commands.evaluate", "evaluate a bundle on a folder of labelled images"),
    "bench": ("device.commands.bench", "measure latency and throughput of every backend side by side"),
    "optimize": ("device.commands.optimize", "add a gated INT8 or FP16 variant to a bundle"),
    "serve": ("device.commands.serve", "run the kiosk: pages for clinicians and the JSON API, on a WSGI server"),
    "doctor": ("device.commands.doctor", "report versions, backends, CPU features; verify shipped bundles"),
    "train": ("device.commands.train", "train a model and write its bundle (needs the 'train' extra)"),
    "export": ("device.commands.train", "export a training checkpoint to a bundle (needs the 'train' extra)"),
}


class CommandUnavailable(Exception):
    """A subcommand that cannot run in this installation (e.g. training without torch)."""


def build_parser(selected: str | None) -> argparse.ArgumentParser:
    """Only the selected subcommand's module is imported and given its arguments."""
    parser = argparse.ArgumentParser(prog="bedside", description="Bedside point-of-care imaging triage")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        cmd.set_defaults(_module=module_name)
        if name == selected:
            importlib.import_module(module_name).add_arguments(cmd, name)
    return parser


def _selected_command(argv: list[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser(_selected_command(argv)).parse_args(argv)
        return importlib.import_module(args._module).run(args)
    except (CommandUnavailable, BundleError, RuntimeUnavailable, RuntimeFailure) as exc:
        print(f"bedside: {exc}", file=sys.stderr)
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
