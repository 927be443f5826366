"""Power loss during an install, simulated by SIGKILL just before every single change the installer
makes to the bundles folder: afterwards the kiosk starts and triages on the old bundle or on the new
one, never neither, and the next install works."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from pathlib import Path

from device import updates
from models.bundle import load_bundle
from kiosk_support import ROOT, kiosk_client, png_bytes
from update_support import EXAM, config_toml, kiosk_config

VICTIM = Path(__file__).with_name("install_victim.py")


def _victim(toml: Path, data: Path, archive: Path, kill_at: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(VICTIM), str(toml), str(data), str(archive), str(kill_at)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def _served_version(config) -> str:
    """Start the kiosk (it recovers first) and triage a study; the version of the model that triaged it."""
    with kiosk_client(config) as client:
        response = client.post("/api/v1/studies", data={"file": (io.BytesIO(png_bytes(1)), "x.png")})
        assert response.status_code == 201, response.get_json()
        return response.get_json()["result"]["model"]["version"]


def test_sigkill_before_every_change_leaves_the_old_or_the_new_bundle(tmp_path, signer, releases, caplog):
    """The commit (state.json renamed into place) is the install's last change, so every kill comes
    before it and the old bundle must serve; kills after the link was switched are undone by the
    kiosk's recovery at start, kills before it need none."""
    config = kiosk_config(tmp_path, signer)
    toml = config_toml(tmp_path, config)
    data = config.store.data_dir
    updates.install(releases["1.0.0"], config)
    full = _victim(toml, data, releases["1.1.0"], 0)
    assert full.returncode == 0, full.stderr
    changes = int(full.stdout.split("changes=")[1].split()[0])
    assert changes >= 10, full.stdout
    assert _served_version(config) == "1.1.0"
    recovered = []
    for kill_at in range(1, changes + 1):
        updates.rollback(EXAM, config)  # back to 1.0.0 in slot a, 1.1.0 in b
        died = _victim(toml, data, releases["1.1.0"], kill_at)
        assert died.returncode == -signal.SIGKILL, (kill_at, died.stdout, died.stderr)
        # Right after the kill, before anything recovers: the link names a complete, intact bundle.
        [live] = updates.served_paths(config)
        assert load_bundle(live).manifest.version in ("1.0.0", "1.1.0"), kill_at
        caplog.clear()
        assert _served_version(config) == "1.0.0", kill_at
        recovered.append(any("was not committed" in r.getMessage() for r in caplog.records))
        again = updates.install(releases["1.1.0"], config)  # nothing left behind blocks the next install
        assert again.version == "1.1.0" and _served_version(config) == "1.1.0"
    # Early kills needed no recovery, kills between the switch and the commit did.
    assert recovered[0] is False and recovered[-1] is True, recovered
    assert recovered == sorted(recovered), recovered
