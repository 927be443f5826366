"""Install, activate and roll back bundles in their A/B slots (see slots.py for the layout).

An install runs these steps, each reported to ``progress(step, detail)`` as it starts:

    verify    the archive: structure, hashes, signature, appliance range (nothing written yet)
    lock      this exam's lock; an interrupted earlier switch is recovered
    stage     the inactive slot is forgotten in state.json, then emptied
    extract   one call per file copied into it (hashed again as written, fsynced)
    selftest  the staged bundle loaded on this device's backend, golden inputs checked
    switch    state.json records the slot being tried, then the link is renamed onto it
    health    the live kiosk loads it and answers self-test requests
    commit    state.json records the slot as committed

A failure before commit puts everything back by itself: the staged slot is removed, or the link is
switched back and the kiosk reloads the old bundle. A process killed at any point leaves the link on
a complete slot; ``Slots.recover`` (run by the next install and at every kiosk start) undoes a switch
that was not committed.

An update service with a commit of its own (Mender: ArtifactInstall, then ArtifactCommit or
ArtifactRollback) installs with ``commit=False``: every step up to the health check, the slot left
being tried; ``commit`` then records it, ``rollback`` switches back to the committed slot. Until
then the kiosk serves the new bundle, and a kiosk restart puts the committed one back, as after a
crash.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from packaging.version import Version

from device.core.settings import KioskConfig
from device.updates import archive
from device.updates.errors import HealthCheckFailed, NotInstalled, Refused, SelfTestFailed, UpdateError
from device.updates.health import HealthCheck
from device.updates.selftest import SelfTestResult, selftest
from device.updates.slots import SLOTS, ExamState, Slot, SlotRecord, Slots, served_bundles
from device.updates.verify import VerifiedArchive, limits_of, verify
from models.bundle import BundleError, find_bundles, load_bundle, read_manifest

log = logging.getLogger("bedside.updates")

STEPS = ("verify", "lock", "stage", "extract", "selftest", "switch", "health", "commit")
Progress = Callable[[str, str], None]


def no_progress(step: str, detail: str) -> None:
    log.debug("%s %s", step, detail)


@dataclass(frozen=True)
class InstallResult:
    exam_id: str
    version: str
    slot: str | None  # None: the bundle shipped with the appliance serves
    previous_version: str | None  # what served before (installed or shipped), None if nothing did
    health: str  # what the health check found, in one line
    previous_slot: str | None = None  # where it served from; None: shipped (or nothing)

    def line(self) -> str:
        """One line for people, which says where both came from: two slots may hold one version."""
        where = f"is active in slot {self.slot}" if self.slot else "(shipped with the appliance) serves again"
        before = ("" if self.previous_version is None else f" (before: {self.previous_version} in slot {self.previous_slot})"
                  if self.previous_slot else f" (before: the shipped {self.previous_version})")
        return f"{self.exam_id} {self.version} {where}{before}: {self.health}"


def slots_of(config: "KioskConfig") -> Slots:
    return Slots(config.updates.installed_root(config.store.data_dir))


def served_paths(config: "KioskConfig") -> list[Path]:
    """The bundle folders the kiosk serves with this config (explicit ``models.bundles`` win)."""
    if config.models.bundles:
        return list(config.models.bundles)
    return served_bundles(slots_of(config).root, config.models.bundles_dir)


def shipped_path(config: "KioskConfig", exam: str) -> Path | None:
    """The folder of the bundle of ``exam`` shipped with the appliance, or None."""
    for path in find_bundles(config.models.bundles_dir):
        try:
            if read_manifest(path).id == exam:
                return path
        except BundleError:
            continue
    return None


def shipped_version(config: "KioskConfig", exam: str) -> str | None:
    path = shipped_path(config, exam)
    return None if path is None else read_manifest(path).version


def current_version(config: "KioskConfig", slots: Slots, exam: str, state: ExamState) -> str | None:
    """The version an install replaces: the committed slot's, else the shipped bundle's."""
    if state.committed is not None and state.committed in state.slots:
        return state.slots[state.committed].version
    return shipped_version(config, exam)


def check_downgrade(verified: VerifiedArchive, current: str | None) -> None:
    if current is not None and Version(verified.version) < Version(current) and not verified.allow_downgrade:
        raise Refused(f"{verified.path.name}: {verified.exam_id} {verified.version} is older than the installed "
                      f"{current}; an older version is installed only from an archive signed as a downgrade",
                      command="bedside bundle sign --allow-downgrade")


def now_utc() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def bundle_selftest(config: "KioskConfig", path: Path) -> SelfTestResult:
    m = config.models
    return selftest(load_bundle(path), m.backend, m.precision, m.inference_threads, m.backend_settings(m.backend))


def install(path: Path, config: "KioskConfig", health: HealthCheck | None = None,
            progress: Progress = no_progress, trust_dir: Path | None = None, commit: bool = True) -> InstallResult:
    """Install a signed archive into the exam's inactive slot and make it live (module docstring);
    with ``commit=False`` it stays on trial until ``commit`` or ``rollback``."""
    progress("verify", str(path))
    verified = verify(path, config.updates, trust_dir)
    slots = slots_of(config)
    exam = verified.exam_id
    check_downgrade(verified, current_version(config, slots, exam, slots.read_state(exam)))
    slots.root.mkdir(parents=True, exist_ok=True)
    with slots.locked(exam):
        progress("lock", exam)
        slots.recover_locked(exam)
        state = slots.read_state(exam)
        before = current_version(config, slots, exam, state)
        check_downgrade(verified, before)
        target = state.other(state.committed)
        state = _stage(config, slots, verified, state, target, progress)
        return _switch_and_commit(slots, exam, state, target, before, health, progress, commit)


def _stage(config: "KioskConfig", slots: Slots, verified: VerifiedArchive, state: ExamState, target: Slot,
           progress: Progress) -> ExamState:
    """Copy the archive into the inactive slot and self-test it there; the slot is removed on failure."""
    exam = verified.exam_id
    progress("stage", target)
    state = state.model_copy(update={"slots": {k: v for k, v in state.slots.items() if k != target}})
    slots.write_state(exam, state)  # the slot's old bundle is no longer a rollback target
    folder = slots.clear_slot(exam, target)
    try:
        archive.extract(verified.contents, folder, limits_of(config.updates), lambda name: progress("extract", name))
        progress("selftest", target)
        result = bundle_selftest(config, folder)
    except BaseException as exc:
        slots.clear_slot(exam, target)
        if isinstance(exc, OSError):
            raise UpdateError(f"{exam} {verified.version}: cannot copy into slot {target}: "
                              f"{exc.strerror or exc}; nothing changed") from None
        raise
    if not result.ok:
        slots.clear_slot(exam, target)
        raise SelfTestFailed(f"{exam} {verified.version} failed its self-test on this device ({result.reason()}); "
                             "it was removed and the active bundle is unchanged")
    record = SlotRecord(version=verified.version, key_id=verified.key_id, allow_downgrade=verified.allow_downgrade,
                        installed_at=now_utc(), archive=verified.path.name)
    return state.model_copy(update={"slots": {**state.slots, target: record}})


def _switch_and_commit(slots: Slots, exam: str, state: ExamState, target: Slot | None, before: str | None,
                       health: HealthCheck | None, progress: Progress, commit: bool = True,
                       version: str | None = None) -> InstallResult:
    """Point the exam at ``target`` (None: the shipped bundle, of ``version``), health-check, and
    commit unless ``commit`` is False (a two-phase install: `bundle commit` records it later)."""
    version = version or state.slots[target].version
    trying = state.model_copy(update={"trying": target})
    progress("switch", target or "shipped")
    slots.write_state(exam, trying)
    slots.switch(exam, target)
    progress("health", target or "shipped")
    try:
        summary = health.check(exam, version) if health is not None else \
            "no live kiosk checked; the kiosk loads it at its next start"
    except BaseException as exc:
        _switch_back(slots, exam, state, health)
        if isinstance(exc, HealthCheckFailed):
            raise HealthCheckFailed(f"{exam} {version} failed the health check ({exc}); {_back(state, before)}") from None
        raise
    if not commit:
        return InstallResult(exam, version, target, before, summary + "; awaiting commit", state.committed)
    progress("commit", target or "shipped")
    slots.write_state(exam, state.model_copy(update={"committed": target, "trying": None}))
    return InstallResult(exam, version, target, before, summary, state.committed)


def _switch_back(slots: Slots, exam: str, state: ExamState, health: HealthCheck | None) -> None:
    """The link back on the committed slot (or none: the shipped bundle), nothing on trial, and the
    live kiosk told to load it again."""
    slots.switch(exam, state.committed)
    slots.write_state(exam, state.model_copy(update={"trying": None}))
    if health is not None:
        health.restore(exam)


def _back(state: ExamState, before: str | None) -> str:
    return (f"rolled back to slot {state.committed} ({before})" if state.committed
            else f"rolled back to the shipped {before}" if before else "the exam is not installed")


def commit(exam: str, config: "KioskConfig", version: str | None = None) -> InstallResult:
    """Record the slot on trial as committed. ``version``: the one the caller installed; when it is
    already committed this is a repeat and changes nothing."""
    slots = slots_of(config)
    exam = _only_exam(slots, exam)
    with slots.locked(exam):
        state = slots.read_state(exam)
        if state.trying is None:
            done = state.slots.get(state.committed) if state.committed else None
            if version is not None and done is not None and done.version == version:
                return InstallResult(exam, version, state.committed, None, "already committed")
            raise NotInstalled(f"no {exam} update awaits a commit (a restart or a rollback may have undone it)")
        trial = state.slots[state.trying]
        if version is not None and trial.version != version:
            raise NotInstalled(f"{exam} {trial.version} awaits a commit, not {version}")
        before = state.slots[state.committed].version if state.committed in state.slots else None
        slots.write_state(exam, state.model_copy(update={"committed": state.trying, "trying": None}))
        return InstallResult(exam, trial.version, state.trying, before, "committed", state.committed)


def _only_exam(slots: Slots, exam: str | None) -> str:
    installed = slots.exams()
    if exam is None:
        if len(installed) == 1:
            return installed[0]
        if not installed:
            raise NotInstalled("no bundle has been installed on this appliance")
        raise NotInstalled(f"choose an exam: {', '.join(installed)}")
    if exam not in installed:
        raise NotInstalled(f"no installed bundle for exam {exam!r}"
                           + (f"; installed: {', '.join(installed)}" if installed else ""))
    return exam


def activate(exam: str, slot: Slot, config: "KioskConfig", health: HealthCheck | None = None,
             progress: Progress = no_progress) -> InstallResult:
    """Make a slot that holds a complete bundle live again (its files re-verified first), health-checked
    and committed like an install."""
    slots = slots_of(config)
    exam = _only_exam(slots, exam)
    if slot not in SLOTS:
        raise NotInstalled(f"{exam} has no slot {slot!r}; slots are {', '.join(SLOTS)}")
    with slots.locked(exam):
        progress("lock", exam)
        slots.recover_locked(exam)
        state = slots.read_state(exam)
        if slot == state.committed:
            raise NotInstalled(f"{exam} slot {slot} is already active")
        if slot not in state.slots:
            raise NotInstalled(f"{exam} slot {slot} holds no complete bundle")
        progress("selftest", slot)
        try:
            result = bundle_selftest(config, slots.slot_dir(exam, slot))
        except BundleError as exc:
            raise SelfTestFailed(f"{exam} slot {slot} is damaged ({exc}); it stays inactive") from None
        if not result.ok:
            raise SelfTestFailed(f"{exam} slot {slot} failed its self-test ({result.reason()}); it stays inactive")
        before = current_version(config, slots, exam, state)
        return _switch_and_commit(slots, exam, state, slot, before, health, progress)


def rollback(exam: str | None, config: "KioskConfig", health: HealthCheck | None = None,
             progress: Progress = no_progress) -> InstallResult:
    """Go back to the exam's previous bundle: the committed one when an update is on trial, else the
    other slot, health-checked and committed."""
    slots = slots_of(config)
    exam = _only_exam(slots, exam)
    state = slots.read_state(exam)
    if state.trying is not None:
        return _abandon(slots, exam, config, health, progress)
    previous = state.other(state.committed)
    if previous not in state.slots:
        raise NotInstalled(f"{exam} has no previous bundle to roll back to")
    return activate(exam, previous, config, health, progress)


def _abandon(slots: Slots, exam: str, config: "KioskConfig", health: HealthCheck | None,
             progress: Progress) -> InstallResult:
    """Undo the update on trial: back to the committed slot (or the shipped bundle)."""
    with slots.locked(exam):
        progress("lock", exam)
        state = slots.read_state(exam)
        if state.trying is None:
            raise NotInstalled(f"no {exam} update is on trial any more")
        tried = state.slots[state.trying].version
        progress("switch", str(state.committed or "shipped"))
        _switch_back(slots, exam, state, health)
        version = current_version(config, slots, exam, state)
        return InstallResult(exam, version or "-", state.committed or "shipped", tried,
                             f"{tried} was on trial and is no longer served", state.trying)


def use_shipped(exam: str, config: "KioskConfig", health: HealthCheck | None = None,
                progress: Progress = no_progress) -> InstallResult:
    """Serve the exam's bundle shipped with the appliance again, self-tested, health-checked and
    committed like an install; the installed slots are kept (either can be activated again)."""
    slots = slots_of(config)
    exam = _only_exam(slots, exam)
    shipped = shipped_path(config, exam)
    if shipped is None:
        raise NotInstalled(f"{exam}: no bundle of it was shipped with this appliance")
    with slots.locked(exam):
        progress("lock", exam)
        slots.recover_locked(exam)
        state = slots.read_state(exam)
        if state.committed is None:
            raise NotInstalled(f"{exam}: the shipped bundle serves already")
        progress("selftest", "shipped")
        try:
            result = bundle_selftest(config, shipped)
        except BundleError as exc:
            raise SelfTestFailed(f"{exam}: the shipped bundle is damaged ({exc}); the installed one stays active") from None
        if not result.ok:
            raise SelfTestFailed(f"{exam}: the shipped bundle failed its self-test ({result.reason()}); "
                                 "the installed one stays active")
        before = current_version(config, slots, exam, state)
        return _switch_and_commit(slots, exam, state, None, before, health, progress,
                                  version=read_manifest(shipped).version)


@dataclass(frozen=True)
class SlotInfo:
    slot: str
    version: str
    key_id: str
    installed_at: str
    archive: str
    role: str  # "active", "previous" or "trying" (switched to, not committed)

    def as_json(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class InstalledExam:
    exam_id: str
    version: str | None  # what the kiosk serves for this exam
    source: str  # "installed", "shipped", or "explicit" (models.bundles in the config)
    path: Path | None
    slots: list[SlotInfo]

    @property
    def rolled_back(self) -> bool:
        """It serves an older bundle than the newest it holds: an update failed its health check or was
        rolled back (or a signed downgrade was installed)."""
        active = next((s for s in self.slots if s.role in ("active", "trying")), None)
        return active is not None and any(Version(s.version) > Version(active.version)
                                          for s in self.slots if s is not active)

    def as_json(self) -> dict:
        return {"exam": self.exam_id, "version": self.version, "source": self.source,
                "path": str(self.path) if self.path else None, "slots": [s.as_json() for s in self.slots],
                "rolled_back": self.rolled_back}


def list_installed(config: "KioskConfig") -> list[InstalledExam]:
    """Every exam the kiosk serves with this config, and each installed exam's slots."""
    slots = slots_of(config)
    found: dict[str, InstalledExam] = {}
    source = "explicit" if config.models.bundles else None
    for path in served_paths(config):
        try:
            m = read_manifest(path)
        except BundleError:
            continue
        kind = source or ("installed" if path.is_relative_to(slots.root.resolve()) else "shipped")
        found[m.id] = InstalledExam(m.id, m.version, kind, path, [])
    for exam in slots.exams():
        state = slots.read_state(exam)
        active = slots.active_slot(exam)
        infos = [SlotInfo(name, r.version, r.key_id, r.installed_at, r.archive, _role(name, state, active))
                 for name, r in sorted(state.slots.items())]
        have = found.get(exam, InstalledExam(exam, None, "installed", None, []))
        found[exam] = InstalledExam(exam, have.version, have.source, have.path, infos)
    return sorted(found.values(), key=lambda e: e.exam_id)


def _role(slot: str, state: ExamState, active: str | None) -> str:
    if slot == active and slot != state.committed:
        return "trying"
    return "active" if slot == active else "previous"


def selftest_active(exam: str, config: "KioskConfig") -> SelfTestResult:
    """The self-test of the bundle the kiosk serves for ``exam`` (installed or shipped)."""
    for e in list_installed(config):
        if e.exam_id == exam and e.path is not None:
            return bundle_selftest(config, e.path)
    raise NotInstalled(f"no bundle serves exam {exam!r}")
