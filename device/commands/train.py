"""``bedside train`` and ``bedside export``: thin wrappers over models.train / models.export.

They are the only commands that need torch; it is imported here, on demand, never by the
inference path.
"""

from __future__ import annotations

import argparse
import importlib

from device.cli import CommandUnavailable

TARGETS = {"train": "models.train", "export": "models.export"}


def _target(name: str):
    try:
        return importlib.import_module(TARGETS[name])
    except ModuleNotFoundError as exc:
        if exc.name in ("torch", "onnx", "onnxscript", "matplotlib"):
            raise CommandUnavailable(
                f"'bedside {name}' needs {exc.name}: install the training extra (pip install 'bedside[train]')"
            ) from None
        raise


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.set_defaults(_target=name)
    _target(name).add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return _target(args._target).run(args)
