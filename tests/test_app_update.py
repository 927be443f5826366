"""The application update: a signed set of wheels installed into a new venv, switched, restarted,
health-gated, rolled back. The archive checks run on small archives; the whole path (real wheels of
this checkout and its dependencies, pip offline, a restart script standing in for systemd, the real
kiosk answering health) is the slow test at the end."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from device.cli import main
from device.updates import sign_archive
from kiosk_support import ROOT


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out.strip(), err.strip()


def fake_release(tmp_path: Path, signer, version: str = "0.2.0") -> Path:
    """A signed release whose 'wheels' are arbitrary bytes: enough for the archive checks."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / f"bedside-{version}-py3-none-any.whl").write_bytes(os.urandom(2048))
    (wheels / "numpy-2.0.0-cp311-cp311-linux_x86_64.whl").write_bytes(os.urandom(4096))
    out = tmp_path / f"bedside-{version}.bedside"
    assert main(["app", "pack", str(wheels), "--version", version, "--out", str(out)]) == 0
    sign_archive(out, signer.key)
    return out


def app_toml(tmp_path: Path, signer, **extra: str) -> Path:
    path = tmp_path / "app.toml"
    lines = [f'trust_dir = "{signer.trust}"', f'app_dir = "{tmp_path / "opt"}"', *extra.values()]
    path.write_text("[updates]\n" + "\n".join(lines) + "\n")
    return path


def test_a_tampered_wheel_is_refused_and_nothing_is_written(tmp_path, capsys, signer):
    from update_support import rewrite

    release = fake_release(tmp_path, signer)

    def flip(info, data):
        if info.name.startswith("numpy"):
            data = data[:-1] + bytes([data[-1] ^ 1])
        return [(info, data)]

    bad = rewrite(release, tmp_path / "bad.bedside", flip)
    rc, _, err = cli(capsys, "app", "install", str(bad), "--config", str(app_toml(tmp_path, signer)))
    assert rc == 1 and "file numpy-2.0.0-cp311-cp311-linux_x86_64.whl does not match" in err
    assert not (tmp_path / "opt").exists()


def test_releases_and_bundles_are_not_mixed_up(tmp_path, capsys, signer, releases):
    release = fake_release(tmp_path, signer)
    config = app_toml(tmp_path, signer)
    rc, _, err = cli(capsys, "bundle", "install", str(release), "--offline", "--config", str(config),
                     "--data-dir", str(tmp_path / "data"))
    assert rc == 1 and "is an application release, not a model bundle" in err
    rc, _, err = cli(capsys, "app", "install", str(releases["1.0.0"]), "--config", str(config))
    assert rc == 1 and "is a model bundle, not an application release" in err


def test_an_older_release_needs_a_signed_downgrade(tmp_path, capsys, signer):
    release = fake_release(tmp_path, signer, "0.0.9")  # this checkout is 0.1.0
    rc, _, err = cli(capsys, "app", "install", str(release), "--config", str(app_toml(tmp_path, signer)))
    assert rc == 1 and "bedside 0.0.9 is older than the installed 0.1.0" in err


# ---- the whole path, with real wheels ------------------------------------------------------------


def _source_copy(dest: Path, version: str, broken: bool) -> Path:
    shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(
        ".git", ".venv", "__pycache__", "build", "dist", "*.egg-info", ".pytest_cache", "runs", "node_modules"))
    pyproject = dest / "pyproject.toml"
    pyproject.write_text(re.sub(r'(?m)^version = ".*"$', f'version = "{version}"', pyproject.read_text()))
    if broken:  # a release whose kiosk cannot start: its serve command fails at once
        serve = dest / "device" / "commands" / "serve.py"
        serve.write_text(serve.read_text().replace("    logging.basicConfig(", "    raise SystemExit('broken build')\n"
                                                   "    logging.basicConfig(", 1))
    return dest


def _pip_wheel(source: Path, out: Path, deps: bool) -> None:
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "-w", str(out), str(source)] + ([] if deps else ["--no-deps"])
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def wheel_releases(tmp_path_factory, signer) -> dict[str, Path]:
    """Signed releases 0.1.1 (good) and 0.1.2 (its kiosk cannot start): this checkout's wheel at that
    version plus the wheels of every dependency (from the package registry; pip's cache helps)."""
    base = tmp_path_factory.mktemp("app-releases")
    deps = base / "deps"
    _pip_wheel(_source_copy(base / "src-0.1.0", "0.1.0", False), deps, deps=True)
    for wheel in deps.glob("bedside-*.whl"):
        wheel.unlink()
    made = {}
    for version, broken in [("0.1.1", False), ("0.1.2", True)]:
        folder = base / f"wheels-{version}"
        shutil.copytree(deps, folder)
        _pip_wheel(_source_copy(base / f"src-{version}", version, broken), folder, deps=False)
        out = base / f"bedside-{version}.bedside"
        assert main(["app", "pack", str(folder), "--version", version, "--out", str(out)]) == 0
        sign_archive(out, signer.key)
        made[version] = out
    return made


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _health(port: int, deadline_s: float = 120) -> dict:
    """The kiosk's health once it answers ready (polled until the deadline)."""
    import urllib.request

    deadline = time.monotonic() + deadline_s
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/health", timeout=5) as resp:
                body = json.loads(resp.read())
                if body.get("ready"):
                    return body
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"no ready kiosk on port {port}")
        time.sleep(0.2)


@pytest.mark.slow
def test_install_switches_restarts_and_a_release_that_cannot_start_is_rolled_back(tmp_path, signer, wheel_releases):
    port = _free_port()
    pidfile, log = tmp_path / "kiosk.pid", tmp_path / "kiosk.log"
    restart = tmp_path / "restart.sh"  # what systemctl restart does: stop the old process, start the link's
    restart.write_text(
        "#!/bin/sh\n"
        f'if [ -f "{pidfile}" ]; then pid=$(cat "{pidfile}"); kill "$pid" 2>/dev/null;\n'
        '  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done; fi\n'
        f'setsid "{tmp_path}/opt/app/bin/bedside" serve --config "{tmp_path}/app.toml" --data-dir "{tmp_path}/data" '
        f'>>"{log}" 2>&1 </dev/null &\n'
        f'echo $! > "{pidfile}"\n'
    )
    config = app_toml(tmp_path, signer, restart=f'restart_command = ["sh", "{restart}"]',
                      timeout="app_start_timeout_s = 90", server=f"[server]\nport = {port}\n[models]\ninference_threads = 1")
    app = [sys.executable, "-m", "device.cli", "app"]
    try:
        done = subprocess.run([*app, "install", str(wheel_releases["0.1.1"]), "--config", str(config)],
                              capture_output=True, text=True, timeout=1800, cwd=tmp_path)
        assert done.returncode == 0, done.stderr + (log.read_text() if log.exists() else "(the kiosk never started)")
        assert "bedside 0.1.1 is running from slot a (was 0.1.0)" in done.stdout
        assert _health(port)["appliance"]["version"] == "0.1.1"
        failed = subprocess.run([*app, "install", str(wheel_releases["0.1.2"]), "--config", str(config)],
                                capture_output=True, text=True, timeout=1800, cwd=tmp_path)
        assert failed.returncode == 1
        assert re.fullmatch(r"bedside app install: bedside 0\.1\.2 did not come up \(.*\); switched back to "
                            r"bedside 0\.1\.1 in slot a", failed.stderr.strip()), failed.stderr
        assert _health(port)["appliance"]["version"] == "0.1.1"
        assert "broken build" in log.read_text()
    finally:
        if pidfile.exists():
            try:
                os.kill(int(pidfile.read_text()), signal.SIGTERM)
            except ProcessLookupError:
                pass


def test_recover_at_boot_undoes_an_application_switch_that_was_not_committed(tmp_path, capsys, signer):
    """As after a power cut between the switch and the commit: the link names the new venv, state.json
    says it was only being tried. `bedside app recover` (the unit's ExecStartPre) puts the old one back."""
    from device.updates.slots import ExamState, SlotRecord, Slots

    slots = Slots(tmp_path / "opt")
    record = {"key_id": "0" * 16, "installed_at": "2026-12-01T00:00:00Z", "archive": "x.bedside"}
    for slot in ("a", "b"):
        (slots.slot_dir("app", slot) / "bin").mkdir(parents=True)
    slots.write_state("app", ExamState(committed="a", trying="b", slots={
        "a": SlotRecord(version="0.1.1", **record), "b": SlotRecord(version="0.1.2", **record)}))
    slots.switch("app", "b")
    config = app_toml(tmp_path, signer)
    rc, out, _ = cli(capsys, "app", "recover", "--config", str(config))
    assert rc == 0 and out == "app: an update was not committed; back on slot a"
    assert os.readlink(tmp_path / "opt" / "app") == ".slots/app/a"
    rc, out, _ = cli(capsys, "app", "recover", "--config", str(config))
    assert (rc, out) == (0, "nothing to recover")
    status = json.loads(cli(capsys, "app", "status", "--config", str(config))[1])
    assert status["active_slot"] == "a" and status["committed"] == "a" and status["slots"]["b"]["version"] == "0.1.2"
