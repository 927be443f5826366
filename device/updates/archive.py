"""The ``.bedside`` archive: one uncompressed tar holding ``manifest.json`` (a model bundle) or
``release.json`` (an application release, see release.py), the files it lists and a detached
``signature.json``, nothing else.

Reading an archive never trusts it: every member header is checked (regular files only, relative
names inside the bundle, no duplicates, sizes within the limits) and every file is hashed against the
manifest before a caller gets to write anything. Extraction repeats the hashing on what it writes,
so an archive changed on its USB stick between the check and the copy is caught too.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

from device.updates.errors import Refused
from models import atomic
from device.updates.release import RELEASE_NAME, Release, parse_release, release_for
from models.bundle import MANIFEST_NAME, BundleError, Manifest, read_manifest, verify_files

SIGNATURE_NAME = "signature.json"
SUFFIX = ".bedside"
MAX_META_BYTES = 4 * 2**20  # manifest and signature: JSON, read into memory
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    max_files: int


@dataclass(frozen=True)
class Contents:
    """An archive whose structure and file hashes were checked; the signature is not judged here."""

    path: Path
    manifest: Manifest | Release  # by meta_name: manifest.json or release.json
    manifest_bytes: bytes
    signature_bytes: bytes | None
    size: int
    meta_name: str = MANIFEST_NAME


def _refuse(path: Path, why: str) -> Refused:
    return Refused(f"{path.name}: {why}")


def _check_name(path: Path, name: str) -> str:
    posix = PurePosixPath(name)
    if not name or "\\" in name or "\0" in name:
        raise _refuse(path, f"archive member {name!r} has an unusable name")
    if posix.is_absolute():
        raise _refuse(path, f"archive member {name!r} is an absolute path")
    if any(part in ("..", ".", "") for part in name.split("/")):
        raise _refuse(path, f"archive member {name!r} leaves the bundle folder (path traversal)")
    return str(posix)


def _check_member(path: Path, member: tarfile.TarInfo) -> None:
    if member.issym() or member.islnk():
        raise _refuse(path, f"archive member {member.name!r} is a link; bundles hold regular files only")
    if member.isdev() or member.isfifo():
        raise _refuse(path, f"archive member {member.name!r} is a device or FIFO; bundles hold regular files only")
    if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
        raise _refuse(path, f"archive member {member.name!r} is not a regular file")


def _members(path: Path, tar: tarfile.TarFile, limits: Limits) -> Iterator[tarfile.TarInfo]:
    """Each member header, checked, in archive order; sizes summed against the limit as they come."""
    seen: set[str] = set()
    total = 0
    for member in tar:
        _check_member(path, member)
        name = _check_name(path, member.name)
        if name in seen:
            raise _refuse(path, f"archive member {name!r} appears twice")
        seen.add(name)
        if len(seen) > limits.max_files:
            raise _refuse(path, f"more than {limits.max_files} files (the [updates] max_files limit)")
        total += member.size
        if total > limits.max_bytes:
            raise _refuse(path, f"the files add up to more than the {limits.max_bytes // 2**20} MiB limit "
                                "([updates] max_archive_mb)")
        yield member


def _open(path: Path, limits: Limits) -> tarfile.TarFile:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise Refused(f"{path}: cannot read: {exc.strerror}") from None
    if not path.is_file():
        raise Refused(f"{path}: not a file")
    if size > limits.max_bytes:
        raise _refuse(path, f"{size / 2**20:.0f} MiB is larger than the {limits.max_bytes // 2**20} MiB limit "
                            "([updates] max_archive_mb)")
    try:
        return tarfile.open(path, "r:")
    except (tarfile.TarError, OSError) as exc:
        raise _refuse(path, f"not a .bedside archive (an uncompressed tar): {exc}") from None


def _read_small(path: Path, tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    if member.size > MAX_META_BYTES:
        raise _refuse(path, f"{member.name} is larger than {MAX_META_BYTES // 2**20} MiB")
    return tar.extractfile(member).read()


def _parse_meta(path: Path, name: str, data: bytes) -> Manifest | Release:
    if name == RELEASE_NAME:
        try:
            return parse_release(data, RELEASE_NAME)
        except ValueError as exc:
            raise _refuse(path, str(exc)) from None
    with tempfile.TemporaryDirectory(prefix="bedside-manifest-") as tmp:  # read_manifest reads a folder
        Path(tmp, MANIFEST_NAME).write_bytes(data)
        try:
            return read_manifest(Path(tmp))
        except BundleError as exc:
            raise _refuse(path, str(exc).replace(str(Path(tmp) / MANIFEST_NAME), MANIFEST_NAME)) from None


def _hash_stream(stream: io.BufferedIOBase, sink: Callable[[bytes], object] | None = None) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    for chunk in iter(lambda: stream.read(_CHUNK), b""):
        digest.update(chunk)
        size += len(chunk)
        if sink is not None:
            sink(chunk)
    return digest.hexdigest(), size


def _check_file(path: Path, manifest: Manifest | Release, name: str, digest: str, size: int) -> None:
    entry = manifest.files[name]
    if digest != entry.sha256 or size != entry.bytes:
        raise _refuse(path, f"file {name} does not match the manifest (sha256 {digest[:12]}..., expected "
                            f"{entry.sha256[:12]}...): the archive was changed after it was made")


def inspect(path: Path, limits: Limits) -> Contents:
    """Check the archive's structure and every file's hash; refuse with the first problem found."""
    path = Path(path)
    manifest_bytes = signature = meta_name = None
    manifest: Manifest | Release | None = None
    hashed: set[str] = set()
    with _open(path, limits) as tar:
        for member in _members(path, tar, limits):
            name = _check_name(path, member.name)
            if name in (MANIFEST_NAME, RELEASE_NAME) and manifest is None:
                meta_name, manifest_bytes = name, _read_small(path, tar, member)
                manifest = _parse_meta(path, name, manifest_bytes)
            elif name == SIGNATURE_NAME:
                signature = _read_small(path, tar, member)
            elif manifest is None:
                raise _refuse(path, f"{MANIFEST_NAME} (or {RELEASE_NAME}) must be the first member (found {name} before it)")
            elif name not in manifest.files:
                raise _refuse(path, f"archive member {name} is not listed in the manifest")
            else:
                _check_file(path, manifest, name, *_hash_stream(tar.extractfile(member)))
                hashed.add(name)
    if manifest is None:
        raise _refuse(path, f"no {MANIFEST_NAME} (or {RELEASE_NAME}) in the archive")
    missing = sorted(set(manifest.files) - hashed)
    if missing:
        raise _refuse(path, f"file {missing[0]} listed in the manifest is missing from the archive")
    return Contents(path, manifest, manifest_bytes, signature, path.stat().st_size, meta_name)


def extract(contents: Contents, dest: Path, limits: Limits, progress: Callable[[str], None]) -> None:
    """Write the bundle's files and manifest into the empty folder ``dest``, hashing what is written
    against the manifest that was checked; each file fsynced, then the folders."""
    path = contents.path
    dest.mkdir(parents=True, exist_ok=False)
    with _open(path, limits) as tar:
        for member in _members(path, tar, limits):
            name = _check_name(path, member.name)
            if name == contents.meta_name:
                if _read_small(path, tar, member) != contents.manifest_bytes:
                    raise _refuse(path, f"{name} changed while the archive was being installed")
            elif name in contents.manifest.files:
                progress(name)
                _write_member(path, contents.manifest, tar, member, dest, name)
    atomic.write_bytes(dest / contents.meta_name, contents.manifest_bytes)
    for folder in sorted({(dest / n).parent for n in contents.manifest.files}, key=lambda p: -len(p.parts)):
        atomic.fsync_directory(folder)
    try:
        verify_files(dest, contents.manifest)
    except BundleError as exc:
        raise _refuse(path, f"after copying: {exc}") from None


def _write_member(path: Path, manifest: Manifest | Release, tar: tarfile.TarFile, member: tarfile.TarInfo,
                  dest: Path, name: str) -> None:
    target = dest / name
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as out:
        digest, size = _hash_stream(tar.extractfile(member), out.write)
        out.flush()
        os.fsync(out.fileno())
    _check_file(path, manifest, name, digest, size)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    tar.addfile(info, io.BytesIO(data))


def _add_file(tar: tarfile.TarFile, name: str, source: Path) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = source.stat().st_size, 0o644, 0
    with open(source, "rb") as fh:
        tar.addfile(info, fh)


def write_archive(out: Path, manifest_bytes: bytes, manifest: Manifest | Release, read_file: Callable[[str], Path],
                  signature: bytes | None, meta_name: str = MANIFEST_NAME) -> Path:
    """A new archive at ``out``, written beside it and renamed into place (never half written)."""
    out = Path(out)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            with tarfile.open(fileobj=fh, mode="w:", format=tarfile.PAX_FORMAT) as tar:
                _add_bytes(tar, meta_name, manifest_bytes)
                for name in manifest.files:
                    _add_file(tar, name, read_file(name))
                if signature is not None:
                    _add_bytes(tar, SIGNATURE_NAME, signature)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    atomic.fsync_directory(out.parent)
    return out


def pack(bundle_dir: Path, out: Path) -> Contents:
    """An unsigned archive of a bundle folder: its manifest and exactly the files it lists (hashes
    checked first; a file in the folder that the manifest does not list is refused, not left out)."""
    bundle_dir = Path(bundle_dir)
    try:
        manifest = read_manifest(bundle_dir)
        verify_files(bundle_dir, manifest)
    except BundleError as exc:
        raise Refused(str(exc)) from None
    listed = {MANIFEST_NAME, *manifest.files}
    extra = sorted(str(p.relative_to(bundle_dir)) for p in bundle_dir.rglob("*")
                   if not p.is_dir() and str(p.relative_to(bundle_dir)) not in listed)
    if extra:
        raise Refused(f"{bundle_dir}: {extra[0]} is not listed in the manifest; list it in files or remove it")
    out = Path(out)
    if out.suffix != SUFFIX:
        raise Refused(f"{out}: a bundle archive's name ends in {SUFFIX}")
    manifest_bytes = (bundle_dir / MANIFEST_NAME).read_bytes()
    write_archive(out, manifest_bytes, manifest, lambda name: bundle_dir / name, None)
    return Contents(out, manifest, manifest_bytes, None, out.stat().st_size)


def pack_release(wheel_dir: Path, version: str, out: Path) -> Contents:
    """An unsigned application release of every wheel in a folder."""
    wheel_dir, out = Path(wheel_dir), Path(out)
    if out.suffix != SUFFIX:
        raise Refused(f"{out}: a release archive's name ends in {SUFFIX}")
    try:
        data = release_for(wheel_dir, version)
    except ValueError as exc:
        raise Refused(f"{wheel_dir}: {exc}") from None
    release = parse_release(data, RELEASE_NAME)
    write_archive(out, data, release, lambda name: wheel_dir / name, None, RELEASE_NAME)
    return Contents(out, release, data, None, out.stat().st_size, RELEASE_NAME)
