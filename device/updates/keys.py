"""Ed25519 signing keys (``cryptography``): made by ``bedside keys generate``, private keys stay with
the model team, public keys are copied into the appliance's trust folder (``[updates] trust_dir``).

A key is named by its key id: the first 16 hex digits of the SHA-256 of its raw public bytes, so a
signature says which key made it and the appliance looks it up in the trust folder."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from device.updates.errors import KeyProblem
from models import atomic

PRIVATE_SUFFIX = ".key"
PUBLIC_SUFFIX = ".pub"


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class KeyPair:
    key_id: str
    private_path: Path
    public_path: Path


def generate(out_dir: Path, name: str = "bedside-signing") -> KeyPair:
    """A new key pair in ``out_dir``: ``NAME.key`` (PEM PKCS#8, mode 0600) and ``NAME.pub`` (PEM)."""
    out_dir = Path(out_dir)
    private_path, public_path = out_dir / f"{name}{PRIVATE_SUFFIX}", out_dir / f"{name}{PUBLIC_SUFFIX}"
    for path in (private_path, public_path):
        if path.exists():
            raise KeyProblem(f"{path} already exists; choose another --out folder or remove it first")
    out_dir.mkdir(parents=True, exist_ok=True)
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    atomic.write_bytes(private_path, pem, mode=0o600)
    public = private.public_key()
    atomic.write_bytes(public_path, public.public_bytes(serialization.Encoding.PEM,
                                                        serialization.PublicFormat.SubjectPublicKeyInfo))
    return KeyPair(key_id(public), private_path, public_path)


def load_private(path: Path) -> Ed25519PrivateKey:
    path = Path(path)
    try:
        if os.stat(path).st_mode & 0o077:
            raise KeyProblem(f"{path} can be read by other users; chmod 600 it before signing with it")
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise KeyProblem(f"{path}: cannot read the private key: {exc.strerror}") from None
    except (ValueError, TypeError):
        raise KeyProblem(f"{path} is not an unencrypted PEM private key (make one with `bedside keys generate`)") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyProblem(f"{path} is not an Ed25519 key (make one with `bedside keys generate`)")
    return key


def load_public(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except OSError as exc:
        raise KeyProblem(f"{path}: cannot read the public key: {exc.strerror}") from None
    except (ValueError, TypeError):
        raise KeyProblem(f"{path} in the trust folder is not a PEM public key; remove it") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyProblem(f"{path} in the trust folder is not an Ed25519 key; remove it")
    return key


def trusted_keys(trust_dir: Path) -> dict[str, Ed25519PublicKey]:
    """Every ``*.pub`` in the trust folder by key id. A file that is not an Ed25519 public key is an error
    (the folder is the appliance's whole trust; nothing in it is skipped unread)."""
    trust_dir = Path(trust_dir)
    if not trust_dir.is_dir():
        raise KeyProblem(f"trust folder {trust_dir} does not exist; copy the model team's .pub key into it "
                         "(or set [updates] trust_dir)")
    keys = {}
    for path in sorted(trust_dir.glob(f"*{PUBLIC_SUFFIX}")):
        key = load_public(path)
        keys[key_id(key)] = key
    return keys


def signature_ok(public: Ed25519PublicKey, signature: bytes, data: bytes) -> bool:
    try:
        public.verify(signature, data)
    except InvalidSignature:
        return False
    return True
