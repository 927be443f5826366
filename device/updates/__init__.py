"""Signed model bundles, installed into A/B slots with a self-test, a health check and rollback.

The public API (stable; the CLI ``bedside keys`` / ``bedside bundle`` and the technician pages use
only this). ``config`` is a ``device.core.settings.KioskConfig`` (its ``[updates]``, ``[store]`` and
``[models]`` sections). Every failure raises an ``UpdateError`` subclass whose ``str()`` is one plain
line naming the reason (``.message`` the same without the shell command that fixes it, for pages);
nothing is half done when one is raised.

Keys and archives (the model team's side):
    generate_keys(out_dir, name="bedside-signing") -> KeyPair(key_id, private_path, public_path)
    pack_bundle(bundle_dir, out) -> Contents                 unsigned FILE.bedside
    sign_archive(path, key, allow_downgrade=False) -> Statement

The appliance's side:
    verify(path, config.updates, trust_dir=None) -> VerifiedArchive(.exam_id, .version, .key_id,
                                                    .allow_downgrade, .as_json())     raises Refused
    install(path, config, health=None, progress=None, trust_dir=None, commit=True) -> InstallResult
    commit(exam, config, version=None) -> InstallResult     an install made with commit=False, recorded
    list_installed(config) -> list[InstalledExam(exam_id, version, source, path, slots: [SlotInfo])]
    activate(exam, slot, config, health=None, progress=None) -> InstallResult
    rollback(exam | None, config, health=None, progress=None) -> InstallResult   (undoes one on trial)
    use_shipped(exam, config, health=None, progress=None) -> InstallResult   the shipped bundle again
    shipped_version(config, exam) -> str | None;  check_downgrade(verified, current) raises Refused;
    current_version(config, slots_of(config), exam, state) -> str | None      what an install replaces
    selftest_active(exam, config) -> SelfTestResult(ok, checks, .reason())
    recover(config) -> list[str]                             at kiosk start: undo uncommitted switches
    served_paths(config) -> list[Path]                       the bundle folders the kiosk serves
    find_archives(folders) -> list[DriveArchive(path, bytes)]   *.bedside on USB drives

    InstallResult(exam_id, version, slot, previous_version, health, previous_slot).line() -> one line
    for people (slot None: the shipped bundle)
    progress(step, detail) is called as each of STEPS starts ("extract" once per file).
    health: LiveKiosk(url) (a running `bedside serve`), InProcess(kiosk) (the calling kiosk process:
    anything with reload_exam(exam_id) -> dict and selftest_exam(exam_id) -> dict), or None (commit
    after the self-test; the kiosk loads the bundle at its next start).

The application (device/updates/application.py; a release is the same archive with release.json and wheels):
    pack_release(wheel_dir, version, out) -> Contents; sign it with sign_archive
    install_app(path, config, url=None, progress=None) -> AppResult(version, slot, previous_version,
                health).line()       switch + config.updates.restart_command + health gate on the version
    rollback_app(config, url=None, progress=None) -> AppResult;  recover_app(config) -> list[str]
    app_status(config) -> dict.  progress steps: APP_STEPS (a bundle's, plus "restart").  Run from a process the restart does not kill (not the kiosk itself).

Errors: UpdateError > Refused (before anything is written), SelfTestFailed, HealthCheckFailed
(rolled back), NotInstalled, Busy (another change of that exam is running), KeyProblem.

How the pieces fit: archive.py (the tar, checked member by member), signing.py (Ed25519 over a
statement that names the manifest's hash and the downgrade flag), verify.py, slots.py (the layout
and the atomic link), install.py (the steps and what undoes each), selftest.py, health.py.
"""

from __future__ import annotations

from device.core.settings import KioskConfig
from device.updates.application import APP_STEPS, AppResult, app_status, install_app, recover_app, rollback_app
from device.updates.archive import Contents, pack_release
from device.updates.authoring import pack_bundle, sign_archive
from device.updates.drives import DriveArchive, find_archives
from device.updates.errors import Busy, HealthCheckFailed, KeyProblem, NotInstalled, Refused, SelfTestFailed, UpdateError
from device.updates.health import HealthCheck, InProcess, LiveKiosk, kiosk_url
from device.updates.install import (
    STEPS, InstalledExam, InstallResult, SlotInfo, activate, check_downgrade, commit, current_version, install,
    list_installed, rollback, selftest_active, served_paths, shipped_version, slots_of, use_shipped,
)
from device.updates.keys import KeyPair, generate as generate_keys
from device.updates.selftest import SelfTestResult
from device.updates.signing import Statement
from device.updates.verify import VerifiedArchive, verify


def recover(config: "KioskConfig") -> list[str]:
    """Put every exam whose switch was not committed back on its committed slot; what was done."""
    return slots_of(config).recover()


__all__ = [
    "APP_STEPS", "STEPS", "AppResult", "app_status", "install_app", "pack_release", "recover_app", "rollback_app", "Busy", "Contents", "DriveArchive", "HealthCheck", "HealthCheckFailed", "InProcess", "InstallResult",
    "InstalledExam", "KeyPair", "KeyProblem", "LiveKiosk", "NotInstalled", "Refused", "SelfTestFailed",
    "SelfTestResult", "SlotInfo", "Statement", "UpdateError", "VerifiedArchive", "activate", "commit", "find_archives",
    "generate_keys", "install", "kiosk_url", "list_installed", "pack_bundle", "recover", "rollback",
    "selftest_active", "served_paths", "sign_archive", "verify", "check_downgrade", "current_version",
    "shipped_version", "use_shipped",
]
