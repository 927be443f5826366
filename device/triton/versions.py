"""Triton names a model version by a positive integer (its folder name); a bundle by MAJOR.MINOR.PATCH.
The mapping is MAJOR * 1,000,000 + MINOR * 1,000 + PATCH: it keeps the order (Triton's default
policy serves the highest version, so the newest bundle wins) and reads back without a table
(2.0.0 <-> 2000000)."""

from __future__ import annotations

import re

STEP = 1000
_SEMVER = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")


class VersionError(ValueError):
    """A bundle version Triton cannot name (a minor or patch number of 1000 or more)."""


def triton_version(version: str) -> int:
    """The Triton model version of a bundle version: "2.0.0" -> 2000000."""
    match = _SEMVER.match(version)
    if match is None:
        raise VersionError(f"bundle version {version!r} is not MAJOR.MINOR.PATCH")
    major, minor, patch = (int(p) for p in match.groups())
    if minor >= STEP or patch >= STEP:
        raise VersionError(f"bundle version {version}: Triton's mapping allows minor and patch numbers below {STEP}")
    value = (major * STEP + minor) * STEP + patch
    if value == 0:
        raise VersionError("bundle version 0.0.0 has no Triton version (Triton's versions start at 1)")
    return value


def bundle_version(value: int) -> str:
    """The bundle version a Triton model version stands for: 2000000 -> "2.0.0"."""
    if value < 1:
        raise VersionError(f"Triton model version {value} is not a positive integer")
    rest, patch = divmod(value, STEP)
    major, minor = divmod(rest, STEP)
    return f"{major}.{minor}.{patch}"
