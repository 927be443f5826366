"""``bedside train`` and ``bedside export``: the training floor's two commands (models.train and
models.export), in the shape device/cli.py dispatches to. Importing this module imports torch: the
appliance never does; where torch is missing, ``bedside`` names the 'train' extra instead."""

from __future__ import annotations

import argparse

from models import export, train

COMMANDS = {"train": train, "export": export}


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.set_defaults(_training_command=name)
    COMMANDS[name].add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return COMMANDS[args._training_command].run(args)
