"""The application update: a signed set of wheels installed into the inactive of two virtual
environments, checked, switched, restarted (by systemd), health-gated, and rolled back on failure.

    <app_dir>/app                    -> .slots/app/a   (systemd runs <app_dir>/app/bin/bedside serve)
    <app_dir>/.slots/app/a/, b/         the two venvs; state.json and lock as for bundles (slots.py)

Steps, reported to ``progress`` like a bundle install: verify (signature, hashes, downgrade), lock,
stage (venv made, wheels installed by pip with --no-index: nothing is downloaded), selftest (the new
venv's ``bedside doctor``: it imports, and its shipped bundles pass their self-test), switch,
restart, health (the kiosk answers ready with the new version within app_start_timeout_s), commit.
A failed health check switches back and restarts the old version. The service's ExecStartPre runs
``bedside app recover`` so a power cut between switch and commit boots the old version.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from packaging.version import Version

from device.core.settings import KioskConfig
from device.updates import archive, signing
from device.updates.errors import HealthCheckFailed, NotInstalled, Refused, SelfTestFailed, UpdateError
from device.updates.health import kiosk_url
from device.updates.install import Progress, now_utc, no_progress
from device.updates.release import RELEASE_NAME
from device.updates.slots import ExamState, Slot, SlotRecord, Slots
from device.updates.verify import appliance_version, limits_of

APP = "app"
APP_STEPS = ("verify", "lock", "stage", "extract", "selftest", "switch", "restart", "health", "commit")
WHEELS = "wheels"
POLL_S = 0.5


@dataclass(frozen=True)
class AppResult:
    version: str
    slot: str
    previous_version: str | None
    health: str

    def line(self) -> str:
        before = f" (was {self.previous_version})" if self.previous_version else ""
        return f"bedside {self.version} is running from slot {self.slot}{before}: {self.health}"


def app_slots(config: "KioskConfig") -> Slots:
    return Slots(config.updates.app_dir)


def verify_release(path: Path, config: "KioskConfig", trust_dir: Path | None = None) -> tuple[archive.Contents, signing.Signed]:
    contents = archive.inspect(Path(path), limits_of(config.updates))
    if contents.meta_name != RELEASE_NAME:
        raise Refused(f"{Path(path).name} is a model bundle, not an application release: "
                      "install it with `bedside bundle install`")
    return contents, signing.check(contents, trust_dir or config.updates.trust_dir)


def _current(state: ExamState) -> str:
    """The committed version, or the one running this command where none was installed this way."""
    if state.committed is not None and state.committed in state.slots:
        return state.slots[state.committed].version
    return appliance_version()


def _check_downgrade(path: Path, version: str, signed: signing.Signed, current: str) -> None:
    if Version(version) < Version(current) and not signed.statement.allow_downgrade:
        raise Refused(f"{path.name}: bedside {version} is older than the installed {current}; a downgrade must be "
                      "signed as one (bedside bundle sign --allow-downgrade)")


def _run(cmd: list[str], what: str, timeout: float = 1800) -> None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UpdateError(f"{what}: {exc}") from None
    if done.returncode != 0:
        tail = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise UpdateError(f"{what} failed (exit {done.returncode}): {tail[0]}")


def _base_python() -> str:
    """The interpreter the running venv was made from (a venv is made from a real interpreter)."""
    return str(Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}")


def _stage(config: "KioskConfig", slots: Slots, contents: archive.Contents, target: Slot, progress: Progress) -> None:
    version = contents.manifest.version
    folder = slots.clear_slot(APP, target)
    wheels = slots.exam_dir(APP) / f"{target}.{WHEELS}"
    shutil.rmtree(wheels, ignore_errors=True)
    try:
        archive.extract(contents, wheels, limits_of(config.updates), lambda name: progress("extract", name))
        _run([_base_python(), "-m", "venv", str(folder)], "making the new virtual environment")
        _run([str(folder / "bin" / "python"), "-m", "pip", "install", "--no-index", "--find-links", str(wheels),
              "--no-input", "-q", f"bedside=={version}"], f"installing bedside {version} from the release's wheels")
        progress("selftest", target)
        try:
            _run([str(folder / "bin" / "bedside"), "doctor"], f"bedside {version}'s doctor")
        except UpdateError as exc:
            raise SelfTestFailed(f"{exc}; the new version was removed, the running one is unchanged") from None
    except BaseException:
        slots.clear_slot(APP, target)
        raise
    finally:
        shutil.rmtree(wheels, ignore_errors=True)


def wait_ready(url: str, version: str, timeout_s: float) -> str:
    """Poll the kiosk's health until it is ready and runs ``version``; HealthCheckFailed at the deadline."""
    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/api/v1/health", timeout=10) as resp:
                health = json.loads(resp.read())
            running = health.get("appliance", {}).get("version")
            if health.get("ready") and running == version:
                return f"the kiosk answers ready at {url} running {version}"
            last = f"it runs {running}, ready={health.get('ready')}"
        except (urllib.error.URLError, OSError, ValueError) as exc:
            last = str(getattr(exc, "reason", exc))
        time.sleep(POLL_S)
    raise HealthCheckFailed(f"the kiosk at {url} did not answer ready with bedside {version} within {timeout_s:g} s ({last})")


def install_app(path: Path, config: "KioskConfig", url: str | None = None, progress: Progress = no_progress,
                trust_dir: Path | None = None) -> AppResult:
    progress("verify", str(path))
    contents, signed = verify_release(path, config, trust_dir)
    version = contents.manifest.version
    slots = app_slots(config)
    _check_downgrade(Path(path), version, signed, _current(slots.read_state(APP)))
    slots.root.mkdir(parents=True, exist_ok=True)
    with slots.locked(APP):
        progress("lock", APP)
        slots.recover_locked(APP)
        state = slots.read_state(APP)
        before = _current(state)
        _check_downgrade(Path(path), version, signed, before)
        target = state.other(state.committed)
        progress("stage", target)
        state = state.model_copy(update={"slots": {k: v for k, v in state.slots.items() if k != target}})
        slots.write_state(APP, state)
        _stage(config, slots, contents, target, progress)
        record = SlotRecord(version=version, key_id=signed.key_id, allow_downgrade=signed.statement.allow_downgrade,
                            installed_at=now_utc(), archive=Path(path).name)
        state = state.model_copy(update={"slots": {**state.slots, target: record}})
        return _switch_restart_commit(config, slots, state, target, before, url, progress)


def _switch_restart_commit(config: "KioskConfig", slots: Slots, state: ExamState, target: Slot, before: str | None,
                           url: str | None, progress: Progress) -> AppResult:
    version = state.slots[target].version
    url = url or kiosk_url(config.server.host, config.server.port)
    progress("switch", target)
    slots.write_state(APP, state.model_copy(update={"trying": target}))
    slots.switch(APP, target)
    try:
        progress("restart", " ".join(config.updates.restart_command))
        _run(config.updates.restart_command, "restarting the kiosk", timeout=300)
        progress("health", url)
        summary = wait_ready(url, version, config.updates.app_start_timeout_s)
    except BaseException as exc:
        slots.switch(APP, state.committed)
        slots.write_state(APP, state)
        _restart_quietly(config)
        if isinstance(exc, UpdateError):
            back = f"bedside {before}" + (f" in slot {state.committed}" if state.committed else "")
            raise HealthCheckFailed(f"bedside {version} did not come up ({exc}); switched back to {back}") from None
        raise
    progress("commit", target)
    slots.write_state(APP, state.model_copy(update={"committed": target, "trying": None}))
    return AppResult(version, target, before, summary)


def _restart_quietly(config: "KioskConfig") -> None:
    try:
        _run(config.updates.restart_command, "restarting the previous version", timeout=300)
    except UpdateError:
        pass  # the switch back is done; systemd starts the old version at the latest on the next boot


def rollback_app(config: "KioskConfig", url: str | None = None, progress: Progress = no_progress) -> AppResult:
    slots = app_slots(config)
    with slots.locked(APP):
        slots.recover_locked(APP)
        state = slots.read_state(APP)
        previous = state.other(state.committed)
        if state.committed is None or previous not in state.slots:
            raise NotInstalled("no previous application version to roll back to")
        return _switch_restart_commit(config, slots, state, previous, _current(state), url, progress)


def recover_app(config: "KioskConfig") -> list[str]:
    """Boot time (the service's ExecStartPre): undo an application switch that was not committed."""
    return app_slots(config).recover()


def app_status(config: "KioskConfig") -> dict:
    slots = app_slots(config)
    state = slots.read_state(APP)
    return {"running": appliance_version(), "active_slot": slots.active_slot(APP), "committed": state.committed,
            "slots": {k: v.model_dump() for k, v in state.slots.items()}}
