"""The detached signature of an archive (``signature.json``) and what it vouches for.

The key signs a small statement, kept as the exact bytes that were signed: the bundle's id and
version, the SHA-256 of its ``manifest.json`` (which holds every file's hash), and whether it may
replace a newer installed version (``allow_downgrade``). So the downgrade permission is covered by the
signature like everything else, and a flag added to an archive later breaks it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError

from device.updates import keys
from device.updates.archive import Contents
from device.updates.errors import KeyProblem, Refused
from models.bundle import _Strict, describe_validation_error

FORMAT = "bedside-signature/1"


class Statement(_Strict):
    bundle_id: str
    version: str
    manifest_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    allow_downgrade: bool = False
    signed_at: str


class SignatureFile(_Strict):
    format: Literal["bedside-signature/1"]
    key_id: str = Field(pattern=r"^[0-9a-f]{16}$")
    statement: str = Field(description="the signed bytes: a Statement as JSON text")
    signature: str = Field(description="Ed25519 signature of the statement's UTF-8 bytes, base64")


@dataclass(frozen=True)
class Signed:
    """A signature checked against a trusted key, and the statement it covers."""

    key_id: str
    statement: Statement


def sign(contents: Contents, private_key_path: Path, allow_downgrade: bool = False) -> bytes:
    """The bytes of ``signature.json`` for an archive's contents."""
    private = keys.load_private(private_key_path)
    statement = Statement(
        bundle_id=contents.manifest.id,
        version=contents.manifest.version,
        manifest_sha256=hashlib.sha256(contents.manifest_bytes).hexdigest(),
        allow_downgrade=allow_downgrade,
        signed_at=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    text = json.dumps(statement.model_dump(), sort_keys=True)
    signature = private.sign(text.encode("utf-8"))
    body = SignatureFile(format=FORMAT, key_id=keys.key_id(private.public_key()), statement=text,
                         signature=base64.b64encode(signature).decode("ascii"))
    return (json.dumps(body.model_dump(), indent=2) + "\n").encode("utf-8")


def check(contents: Contents, trust_dir: Path) -> Signed:
    """The archive's signature, checked: made by a key in the trust folder, over this manifest."""
    name = contents.path.name
    if contents.signature_bytes is None:
        raise Refused(f"{name}: not signed (no signature.json); ask whoever made it for the signed archive",
                      command="sign it with `bedside bundle sign`")
    try:
        body = SignatureFile.model_validate_json(contents.signature_bytes)
        raw = base64.b64decode(body.signature, validate=True)
    except ValidationError as exc:
        raise Refused(f"{name}: signature.json is malformed: {describe_validation_error(exc)}") from None
    except (binascii.Error, ValueError):
        raise Refused(f"{name}: signature.json is malformed: the signature is not base64") from None
    try:
        trusted = keys.trusted_keys(trust_dir)
    except KeyProblem as exc:
        raise Refused(str(exc)) from None
    public = trusted.get(body.key_id)
    if public is None:
        raise Refused(f"{name}: signed by key {body.key_id}, which is not in the trust folder {trust_dir}")
    if not keys.signature_ok(public, raw, body.statement.encode("utf-8")):
        raise Refused(f"{name}: the signature does not match (key {body.key_id}): the archive or its "
                      "signature was changed after signing")
    try:
        statement = Statement.model_validate_json(body.statement)
    except ValidationError as exc:
        raise Refused(f"{name}: the signed statement is malformed: {describe_validation_error(exc)}") from None
    m = contents.manifest
    if statement.manifest_sha256 != hashlib.sha256(contents.manifest_bytes).hexdigest():
        raise Refused(f"{name}: the manifest is not the one that was signed: it was changed after signing")
    if (statement.bundle_id, statement.version) != (m.id, m.version):
        raise Refused(f"{name}: the signature is for {statement.bundle_id} {statement.version}, "
                      f"not {m.id} {m.version}")
    return Signed(body.key_id, statement)
