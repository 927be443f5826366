"""``bedside technician hash-password``: a provisioning file for the technician's password, so that
a fleet is installed without setting it on each device's screen (systemd/install.sh --provision).

The password is read from standard input (one line; from a prompt on a terminal) and only its
argon2id hash is printed, as the one line of the file: ``password_hash = "$argon2id$..."``.

``bedside technician tls-cert --out DIR --hostname NAME...``: a self-signed certificate and key for
HTTPS (or DICOM TLS) at a site without its own PKI; it prints the settings to add and the SHA-256
fingerprint a browser shows, to compare on the first connection.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    sub.add_parser("hash-password", help="read a password on stdin, print a provisioning file holding its argon2id hash")
    cert = sub.add_parser("tls-cert", help="make a self-signed certificate and key (0600) for HTTPS, print its fingerprint")
    cert.add_argument("--out", type=Path, required=True, help="folder for bedside.crt and bedside.key")
    cert.add_argument("--hostname", nargs="+", required=True, metavar="NAME",
                      help="every name and address the kiosk is reached at (the first is the subject)")
    cert.add_argument("--days", type=int, default=825, help="valid this many days (default 825)")


def run(args: argparse.Namespace) -> int:
    if args.action == "tls-cert":
        return _tls_cert(args)
    return _hash_password()


def _tls_cert(args: argparse.Namespace) -> int:
    from device.core.certificates import CertificateError, make_self_signed

    try:
        made = make_self_signed(args.out, args.hostname, days=args.days)
    except (CertificateError, OSError) as exc:
        print(f"bedside technician: {exc}", file=sys.stderr)
        return 1
    print(f"certificate: {made.cert}\nkey:         {made.key} (mode 0600: only its owner may read it)")
    print(f"SHA-256 fingerprint: {made.fingerprint_sha256}")
    print("Compare it with the fingerprint the browser shows on the first connection. In the settings file:")
    print(f'[server]\ntls_cert = "{made.cert.resolve()}"\ntls_key = "{made.key.resolve()}"')
    return 0


def _hash_password() -> int:
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
