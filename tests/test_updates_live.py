"""Installs health-checked on a running `bedside serve`: the kiosk loads the new bundle, answers
self-test requests, and triages real X-rays with it; a kiosk that does not serve it fails the check
and the install rolls back by itself."""

from __future__ import annotations

import subprocess
import sys

from device import updates
from device.updates.slots import Slots
from kiosk_support import ROOT, running_server
from update_support import EXAM, config_toml, kiosk_config, xray_files


def bundle_cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "device.cli", "bundle", *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def triaged_by(server) -> str:
    client = server.client()
    try:
        status, body = client.upload("xray.jpeg", xray_files(1)[0].read_bytes())
    finally:
        client.close()
    assert status == 201, body
    return body["result"]["model"]["version"]


def test_install_and_rollback_health_checked_on_the_running_kiosk(tmp_path, signer, releases):
    config = kiosk_config(tmp_path, signer)
    toml = config_toml(tmp_path, config)
    updates.install(releases["1.0.0"], config)
    where = ("--config", str(toml), "--data-dir", str(config.store.data_dir))
    with running_server(config.store.data_dir, [], "--config", str(toml)) as server:
        assert triaged_by(server) == "1.0.0"
        done = bundle_cli("install", str(releases["1.1.0"]), "--url", server.url, *where)
        assert done.returncode == 0, done.stderr
        assert f"the live kiosk serves {EXAM} 1.1.0 on onnxruntime fp32 and passed 3 self-test request(s)" in done.stdout
        assert triaged_by(server) == "1.1.0"
        back = bundle_cli("rollback", EXAM, "--url", server.url, *where)
        assert back.returncode == 0 and f"{EXAM} 1.0.0 is active in slot a (before: 1.1.0 in slot b)" in back.stdout, back.stderr
        assert triaged_by(server) == "1.0.0"


def test_a_kiosk_that_does_not_serve_the_new_bundle_fails_the_health_check(tmp_path, signer, releases):
    config = kiosk_config(tmp_path, signer)
    toml = config_toml(tmp_path, config)
    updates.install(releases["1.0.0"], config)
    slots = Slots(config.updates.installed_root(config.store.data_dir))
    pinned = slots.slot_dir(EXAM, "a").resolve()  # started with --bundle: it never serves installed slots
    where = ("--config", str(toml), "--data-dir", str(config.store.data_dir))
    with running_server(config.store.data_dir, [pinned], "--config", str(toml)) as server:
        failed = bundle_cli("install", str(releases["1.1.0"]), "--url", server.url, *where)
        assert failed.returncode == 1
        assert failed.stderr.strip().splitlines() == [
            f"bedside bundle install: {EXAM} 1.1.0 failed the health check (the kiosk loaded {EXAM} 1.0.0, "
            "not 1.1.0); rolled back to slot a (1.0.0)"]
        assert triaged_by(server) == "1.0.0"
    assert slots.active_slot(EXAM) == "a" and slots.read_state(EXAM).committed == "a"
