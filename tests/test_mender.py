"""Model bundles through Mender: ``bedside bundle mender`` writes an Artifact that Debian's
mender-artifact reads and validates, and mender-client's own standalone ``mender install``,
``commit`` and ``rollback`` (as root) drive the update module through the signed A/B install, the
running kiosk's health check, the commit and the rollback."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from device import updates
from device.cli import main
from device.updates.slots import Slots
from kiosk_support import ROOT, running_server
from test_updates_live import triaged_by
from update_support import EXAM, config_toml, kiosk_config

MENDER_ARTIFACT = shutil.which("mender-artifact")
MENDER = shutil.which("mender")
MODULE = ROOT / "systemd" / "mender" / "bedside-bundle"
MODULES_DIR = Path("/usr/share/mender/modules/v3")  # fixed in mender-client 3.4 (no override)
ARTIFACT_INFO = Path("/etc/mender/artifact_info")  # read until a first update is recorded
BEDSIDE = Path(sys.executable).parent / "bedside"
NOBODY = 65534

pytestmark = pytest.mark.skipif(MENDER_ARTIFACT is None,
                                reason="mender-artifact missing (apt-get install mender-artifact; .ci/run does)")


def artifact(capsys, archive: Path, out: Path, *device_types: str) -> tuple[int, str, str]:
    args = ["bundle", "mender", str(archive), "--out", str(out)]
    for t in device_types:
        args += ["--device-type", t]
    rc = main(args)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_the_artifact_carries_the_signed_archive(tmp_path, capsys, releases):
    out = tmp_path / "tiny.mender"
    rc, stdout, stderr = artifact(capsys, releases["1.1.0"], out, "bedside-x86", "bedside-jetson")
    assert rc == 0, stderr
    assert stdout.strip() == (f"wrote Mender Artifact {EXAM}-1.1.0 (bedside-bundle: {EXAM} 1.1.0, for "
                              f"bedside-x86, bedside-jetson) to {out}")
    read = subprocess.run([MENDER_ARTIFACT, "read", str(out)], capture_output=True, text=True, timeout=60)
    assert read.returncode == 0, read.stderr
    assert "Compatible devices: '[bedside-x86 bedside-jetson]'" in read.stdout
    assert re.search(r"Type:\s+bedside-bundle", read.stdout)
    assert f"bedside-bundle.{EXAM}.version: 1.1.0" in read.stdout
    digest = hashlib.sha256(releases["1.1.0"].read_bytes()).hexdigest()
    assert re.search(rf"name:\s+{re.escape(releases['1.1.0'].name)}\s+size:\s+\d+\s+modified:.*\s+checksum:\s+{digest}",
                     read.stdout)
    validate = subprocess.run([MENDER_ARTIFACT, "validate", str(out)], capture_output=True, text=True, timeout=60)
    assert validate.returncode == 0, validate.stdout + validate.stderr


def test_an_unsigned_archive_is_refused(tmp_path, capsys):
    from update_support import make_bundle

    unsigned = tmp_path / "unsigned.bedside"
    updates.pack_bundle(make_bundle(tmp_path / "src", "1.3.0"), unsigned)
    rc, _, stderr = artifact(capsys, unsigned, tmp_path / "x.mender", "bedside-x86")
    assert rc == 1 and "not a signed bundle archive: sign it first" in stderr
    assert not (tmp_path / "x.mender").exists()


@pytest.mark.parametrize("state, answer", [("SupportsRollback", "Yes\n"), ("NeedsArtifactReboot", "No\n"),
                                           ("Download", ""), ("SomeStateAddedLater", "")])
def test_the_module_and_the_command_answer_mender_queries_alike(capsys, state, answer):
    """The shipped module answers the queries itself; `bedside bundle mender-module` the same way.
    Unknown states print nothing and succeed, as the protocol asks."""
    env = {"BEDSIDE": "/nonexistent/bedside", "PATH": os.environ["PATH"]}
    done = subprocess.run([str(MODULE), state, "/nonexistent"], capture_output=True, text=True, env=env, timeout=60)
    assert (done.returncode, done.stdout) == (0, answer)
    assert main(["bundle", "mender-module", state, "/nonexistent", "--config", "/nonexistent.toml"]) == 0
    assert capsys.readouterr().out == answer


@contextmanager
def mender_module_installed(tmp_path: Path):
    """The update module where mender-client 3.4 looks for it, as install.sh writes it, and the
    factory artifact name it reads before a first update; both put back as they were afterwards."""
    root = tmp_path / "root"
    done = subprocess.run([str(ROOT / "systemd" / "install.sh"), "--prefix", str(BEDSIDE.parent.parent.parent)],
                          env={"DESTDIR": str(root), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    target = MODULES_DIR / MODULE.name
    saved = {p: p.read_bytes() for p in (target, ARTIFACT_INFO) if p.exists()}
    MODULES_DIR.mkdir(parents=True, exist_ok=True)
    shutil.copy2(root / MODULES_DIR.relative_to("/") / MODULE.name, target)
    if ARTIFACT_INFO not in saved:
        ARTIFACT_INFO.write_text("artifact_name=bedside-factory\n")
    try:
        yield
    finally:
        for path in (target, ARTIFACT_INFO):
            if path in saved:
                path.write_bytes(saved[path])
            else:
                path.unlink(missing_ok=True)


@pytest.mark.slow  # a kiosk, and five mender runs each with a self-test and a live health check (~40 s)
@pytest.mark.skipif(MENDER is None, reason="mender-client missing (apt-get install mender-client; .ci/run does)")
@pytest.mark.skipif(os.geteuid() != 0, reason="mender install writes /usr/share/mender and /etc/mender: root only")
def test_mender_installs_commits_and_rolls_back_through_the_running_kiosk(tmp_path, capsys, signer, releases):
    config = kiosk_config(tmp_path, signer)
    toml = config_toml(tmp_path, config)
    data_dir = config.store.data_dir
    updates.install(releases["1.0.0"], config)
    os.chown(data_dir, NOBODY, NOBODY)  # the kiosk's own user owns its data dir; Mender runs as root
    state_dir = tmp_path / "mender"
    state_dir.mkdir()
    (state_dir / "device_type").write_text("device_type=bedside-test\n")
    (tmp_path / "mender.conf").write_text(json.dumps({"DeviceTypeFile": str(state_dir / "device_type")}))
    made = {}
    for name in ("1.1.0", "broken", "0.9.0-down"):
        made[name] = tmp_path / f"{name}.mender"
        assert artifact(capsys, releases[name], made[name], "bedside-test")[0] == 0
    slots = Slots(config.updates.installed_root(data_dir))

    with mender_module_installed(tmp_path), running_server(data_dir, [], "--config", str(toml)) as server:
        env = {**os.environ, "BEDSIDE_CONFIG": str(toml), "BEDSIDE_DATA_DIR": str(data_dir),
               "BEDSIDE_KIOSK_URL": server.url}

        def mender(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run([MENDER, "--config", str(tmp_path / "mender.conf"), "--fallback-config",
                                   str(tmp_path / "none.conf"), "--data", str(state_dir), "--no-syslog", *args],
                                  capture_output=True, text=True, env=env, timeout=300)

        installed = mender("install", str(made["1.1.0"]))
        assert installed.returncode == 0, installed.stderr[-3000:]
        assert triaged_by(server) == "1.1.0"  # health-checked and served, on trial
        assert slots.read_state(EXAM).trying == "b"
        owned = [p for p in (slots.root / ".slots" / EXAM).rglob("*") if p.stat().st_uid != NOBODY]
        assert not owned, owned  # handed to the data dir's owner: the kiosk's user can replace it later

        committed = mender("commit")
        assert committed.returncode == 0, committed.stderr[-3000:]
        state = slots.read_state(EXAM)
        assert (state.committed, state.trying) == ("b", None)
        assert mender("show-artifact").stdout.strip() == f"{EXAM}-1.1.0"

        broken = mender("install", str(made["broken"]))  # fails its self-test on the device
        assert broken.returncode != 0
        assert "failed its self-test on this device" in broken.stderr
        assert triaged_by(server) == "1.1.0" and slots.read_state(EXAM).committed == "b"

        trial = mender("install", str(made["0.9.0-down"]))  # a signed downgrade, then taken back
        assert trial.returncode == 0, trial.stderr[-3000:]
        assert triaged_by(server) == "0.9.0"
        back = mender("rollback")
        assert back.returncode == 0, back.stderr[-3000:]
        assert triaged_by(server) == "1.1.0"
        state = slots.read_state(EXAM)
        assert (state.committed, state.trying) == ("b", None) and slots.active_slot(EXAM) == "b"
        assert mender("show-artifact").stdout.strip() == f"{EXAM}-1.1.0"
