"""The units as systemd itself reads them: install.sh writes them (into a scratch root, with this
checkout as the prefix, so that ExecStart names a real `bedside`), `systemd-analyze verify` finds
no problem, and `systemd-analyze security` scores the service OK or better (exposure <= 4.0)."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kiosk_support import ROOT

SYSTEMD = ROOT / "systemd"
ANALYZE = shutil.which("systemd-analyze")
EXPOSURE = re.compile(r"Overall exposure level for \S+: (\d+(?:\.\d+)?) (\w+)")
VENV_BEDSIDE = Path(sys.executable).parent / "bedside"

pytestmark = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze missing (apt-get install systemd; .ci/run does)")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    if not VENV_BEDSIDE.is_file():
        pytest.skip(f"{VENV_BEDSIDE} missing: the project is not installed in this venv (make install)")
    root = tmp_path_factory.mktemp("root")
    prefix = VENV_BEDSIDE.parent.parent.parent  # <prefix>/.venv/bin/bedside
    done = subprocess.run([str(SYSTEMD / "install.sh"), "--prefix", str(prefix)],
                          env={"DESTDIR": str(root), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return root / "etc" / "systemd" / "system"


def _unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    text = path.read_text().replace("\\\n", " ")
    parser.read_string(text)
    return parser


def test_install_writes_units_with_the_prefix_and_the_config(installed):
    service = _unit(installed / "bedside.service")
    assert service["Service"]["ExecStart"].startswith(f"{VENV_BEDSIDE} serve --safe-mode ")
    assert service["Service"]["ExecStartPre"].startswith(f"-+{VENV_BEDSIDE} app recover ")
    assert (installed.parent.parent / "bedside" / "bedside.toml").read_text() == (SYSTEMD / "bedside.toml").read_text()
    screen = _unit(installed / "bedside-kiosk.service")
    assert "http://127.0.0.1:8080/" in screen["Service"]["ExecStart"]


@pytest.mark.parametrize("unit", ["bedside.service", "bedside-kiosk.service"])
def test_systemd_analyze_verify(installed, unit):
    done = subprocess.run([ANALYZE, "verify", str(installed / unit)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


def test_service_security_is_ok(installed):
    done = subprocess.run([ANALYZE, "security", "--offline=yes", "--no-pager", str(installed / "bedside.service")],
                          capture_output=True, text=True, timeout=60)
    match = EXPOSURE.search(done.stdout)
    assert match, done.stdout + done.stderr
    exposure, verdict = float(match.group(1)), match.group(2)
    assert exposure <= 4.0 and verdict in ("OK", "SAFE"), done.stdout


def test_service_is_what_the_appliance_needs(installed):
    s = _unit(installed / "bedside.service")["Service"]
    assert s["Type"] == "notify" and s["NotifyAccess"] == "main"
    assert s["Restart"] == "on-failure" and int(s["WatchdogSec"]) > 0
    assert s["User"] == "bedside" and s["ProtectSystem"] == "strict" and s["NoNewPrivileges"] == "yes"
    assert s["CapabilityBoundingSet"] == "" and s["MemoryMax"]
    assert "/var/lib/bedside" in s["ReadWritePaths"].split() and "/var/lib/bedside" in s["ExecStart"]
    assert set(s["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    screen = _unit(installed / "bedside-kiosk.service")
    # Started only once the kiosk is ready (Type=notify: After= waits for READY=1), stopped with it.
    assert "bedside.service" in screen["Unit"]["After"].split() and screen["Unit"]["BindsTo"] == "bedside.service"
    # The TLS keys' folder: only the service user may enter it; the browser's unit cannot see it.
    assert screen["Service"]["InaccessiblePaths"] == "-/etc/bedside/tls"
    tls = installed.parent.parent / "bedside" / "tls"
    assert tls.is_dir() and tls.stat().st_mode & 0o777 == 0o700


def test_with_https_the_screen_opens_the_loopback_plain_port(tmp_path):
    """[server] tls_cert with plain_http_loopback_port: the browser on the device's own screen opens
    http://127.0.0.1:<that port>/ (the kiosk's port speaks HTTPS only)."""
    root = tmp_path / "root"
    (root / "etc" / "bedside").mkdir(parents=True)
    (root / "etc" / "bedside" / "bedside.toml").write_text(
        '[server]\nhost = "0.0.0.0"\nport = 443\ntls_cert = "/etc/bedside/tls/bedside.crt"\n'
        'tls_key = "/etc/bedside/tls/bedside.key"\nplain_http_loopback_port = 8081\n')
    done = subprocess.run([str(SYSTEMD / "install.sh"), "--prefix", str(VENV_BEDSIDE.parent.parent.parent)],
                          env={"DESTDIR": str(root), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    screen = _unit(root / "etc" / "systemd" / "system" / "bedside-kiosk.service")
    assert screen["Service"]["ExecStart"].endswith(" http://127.0.0.1:8081/")


def test_security_test_can_fail(tmp_path):
    """The same check on the unit before it was hardened scores EXPOSED: the threshold means something."""
    plain = tmp_path / "plain.service"
    plain.write_text(f"[Service]\nType=notify\nExecStart={VENV_BEDSIDE} serve\nUser=bedside\n")
    done = subprocess.run([ANALYZE, "security", "--offline=yes", "--no-pager", str(plain)],
                          capture_output=True, text=True, timeout=60)
    assert float(EXPOSURE.search(done.stdout).group(1)) > 4.0


def test_install_puts_a_provisioning_file_beside_the_config(tmp_path):
    provision = tmp_path / "technician.toml"
    provision.write_text('password_hash = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaA"\n')
    root = tmp_path / "root"
    done = subprocess.run([str(SYSTEMD / "install.sh"), "--prefix", str(VENV_BEDSIDE.parent.parent.parent),
                           "--provision", str(provision), "--no-screen"],
                          env={"DESTDIR": str(root), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    installed = root / "etc" / "bedside" / "technician.toml"
    assert installed.read_text() == provision.read_text() and installed.stat().st_mode & 0o777 == 0o640
    assert not (root / "etc" / "systemd" / "system" / "bedside-kiosk.service").exists()


def test_install_refuses_a_prefix_without_bedside(tmp_path):
    done = subprocess.run([str(SYSTEMD / "install.sh"), "--prefix", str(tmp_path)],
                          env={"DESTDIR": str(tmp_path / "root"), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "make install" in done.stderr
    assert not (tmp_path / "root" / "etc").exists()


def test_install_with_app_slots_runs_the_switched_venv(tmp_path):
    """--app-slots: the unit runs <prefix>/app/bin/bedside, the link application updates switch."""
    prefix = tmp_path / "opt"
    prefix.mkdir()
    (prefix / "app").symlink_to(VENV_BEDSIDE.parent.parent)  # stands in for .slots/app/a, a real venv
    root = tmp_path / "root"
    done = subprocess.run([str(SYSTEMD / "install.sh"), "--prefix", str(prefix), "--app-slots", "--no-screen"],
                          env={"DESTDIR": str(root), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    unit = root / "etc" / "systemd" / "system" / "bedside.service"
    service = _unit(unit)["Service"]
    assert service["ExecStart"].startswith(f"{prefix}/app/bin/bedside serve --safe-mode ")
    assert service["ExecStartPre"].startswith(f"-+{prefix}/app/bin/bedside app recover ")
    verified = subprocess.run([ANALYZE, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert verified.returncode == 0 and not verified.stderr.strip(), verified.stderr
