"""``bedside technician hash-password``: a provisioning file for the technician's password, so that
a fleet is installed without setting it on each device's screen (systemd/install.sh --provision).

The password is read from standard input (one line; from a prompt on a terminal) and only its
argon2id hash is printed, as the one line of the file: ``password_hash = "$argon2id$..."``.
"""

from __future__ import annotations

import argparse
import getpass
import sys


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    sub.add_parser("hash-password", help="read a password on stdin, print a provisioning file holding its argon2id hash")


def run(args: argparse.Namespace) -> int:
    from device.technician.credentials import CredentialError, hash_password

    if sys.stdin.isatty():
        password = getpass.getpass("Technician password: ")
        if getpass.getpass("The same again: ") != password:
            print("bedside technician: the two passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    try:
        digest = hash_password(password)
    except CredentialError as exc:
        print(f"bedside technician: {exc}", file=sys.stderr)
        return 1
    print(f'password_hash = "{digest}"')
    return 0
