"""HTTPS for the kiosk ([server] tls_cert, tls_key), against real peers on loopback: curl and
openssl s_client. TLS 1.2 or newer only, HSTS, a client that trusts another CA or expects another
name refuses the kiosk, plain HTTP to the HTTPS port gets no page, handshakes that stall or break
are logged once each and hold no thread, a renewed certificate serves new connections without a
restart, and a private key other users could read stops the start in plain words."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import https_settings
from kiosk_support import ROOT, png_bytes, multipart, start_server, stop_server
from dicom_peers import wait_until
from tls_support import s_client, served_fingerprint


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", "20", *args], capture_output=True, text=True, timeout=30)


def head_and_status(kiosk, path: str, *extra: str) -> tuple[int, str]:
    done = curl("--cacert", str(kiosk.ca), "-D", "-", "-o", "/dev/null", "-w", "%{http_code}",
                f"https://localhost:{kiosk.port}{path}", *extra)
    assert done.returncode == 0, done.stderr
    return int(done.stdout[-3:]), done.stdout[:-3].lower()


def test_pages_api_and_metrics_over_https_with_hsts(https_kiosk):
    for path in ("/", "/api/v1/health", "/metrics"):
        status, headers = head_and_status(https_kiosk, path)
        assert status == 200, (path, headers)
        assert "strict-transport-security: max-age=31536000" in headers, path


def test_only_tls_1_2_and_newer(https_kiosk):
    ca = str(https_kiosk.ca)
    for version in ("-tls1_2", "-tls1_3"):
        shake = s_client(https_kiosk.port, version, "-CAfile", ca, "-verify_return_error")
        assert shake.returncode == 0 and "Verify return code: 0 (ok)" in shake.stdout, shake.stderr
    for version in ("-tls1", "-tls1_1"):
        # SECLEVEL=0 lets this client offer the old versions at all: the refusal is the kiosk's own.
        shake = s_client(https_kiosk.port, version, "-cipher", "DEFAULT@SECLEVEL=0", "-CAfile", ca)
        assert shake.returncode != 0, version
        assert "alert protocol version" in shake.stderr, shake.stderr


def test_a_client_that_trusts_another_ca_or_expects_another_name_refuses(https_kiosk, test_ca):
    other = curl("--cacert", str(test_ca.cert), f"https://localhost:{https_kiosk.port}/api/v1/health")
    assert other.returncode == 60, other  # peer certificate cannot be authenticated
    wrong_name = curl("--cacert", str(https_kiosk.ca), "--resolve", f"pacs.example:{https_kiosk.port}:127.0.0.1",
                      f"https://pacs.example:{https_kiosk.port}/api/v1/health")
    assert wrong_name.returncode == 60 and "pacs.example" in wrong_name.stderr, wrong_name
    time.sleep(0.5)
    assert "TLS handshake from 127.0.0.1" in https_kiosk.log() and "UNKNOWN_CA" in https_kiosk.log()


def test_plain_http_to_the_https_port_gets_no_page(https_kiosk):
    done = curl("-i", f"http://127.0.0.1:{https_kiosk.port}/")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("HTTP/1.1 400"), done.stdout
    assert "HTTPS only" in done.stdout and "<html" not in done.stdout.lower()


def test_the_screen_keeps_plain_http_on_loopback_only(https_kiosk):
    done = curl("-i", f"http://127.0.0.1:{https_kiosk.loopback_port}/")
    assert done.returncode == 0 and done.stdout.startswith("HTTP/1.1 200"), done.stdout[:300]
    assert "<html" in done.stdout.lower() and "strict-transport-security" not in done.stdout.lower()
    listening = _listening_addresses(https_kiosk.loopback_port)
    assert listening == {"127.0.0.1"}, listening


def _listening_addresses(port: int) -> set[str]:
    """The local addresses of the TCP sockets listening on `port` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]) if len(address) == 8 else address)
    return found


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no thread count")


def test_stalled_and_broken_handshakes_are_closed_logged_and_hold_no_thread(https_kiosk):
    """Three clients that connect and say nothing, three that send half a ClientHello, three that
    send garbage: all are closed within the 5 s channel timeout, one log line each, while a real
    client is served at once (the six that stall hold six of the 8 request threads: fewer than all,
    see README "Encrypted links"); afterwards the kiosk has as many threads as before."""
    pid = https_kiosk.server.proc.pid
    assert head_and_status(https_kiosk, "/api/v1/health")[0] == 200
    before = _threads(pid)
    logged = https_kiosk.log().count("TLS handshake from")
    bad = []
    for payload in (b"", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", b"\x16\x03\x03\x00\x05hello"):
        for _ in range(3):
            sock = socket.create_connection(("127.0.0.1", https_kiosk.port))
            sock.sendall(payload)
            bad.append(sock)
    try:
        start = time.monotonic()
        assert head_and_status(https_kiosk, "/api/v1/health")[0] == 200
        assert time.monotonic() - start < 3
        for sock in bad:
            _read_until_closed(sock)  # the kiosk closes each (an alert may come first)
        assert time.monotonic() - start < 12
    finally:
        for sock in bad:
            sock.close()
    time.sleep(0.5)
    assert https_kiosk.log().count("TLS handshake from") - logged == len(bad)
    assert https_kiosk.server.proc.poll() is None
    wait_until(lambda: _threads(pid) == before, 10, f"the kiosk back at {before} threads")


def _read_until_closed(sock: socket.socket) -> None:
    sock.settimeout(15)
    try:
        while sock.recv(100):
            pass
    except ConnectionResetError:
        pass


def test_a_private_key_others_can_read_stops_the_start_then_safe_mode_serves_the_screen_only(
        tmp_path, tiny_bundle, site_cert):
    """The start is refused in plain words (exit 2); the unit's next start (--safe-mode) serves the
    technician area with the reason on plain HTTP at 127.0.0.1 only, never HTTPS-less on the network."""
    key = tmp_path / "bedside.key"
    shutil.copy(site_cert.key, key)
    key.chmod(0o644)
    settings = https_settings(tmp_path, site_cert.cert, key, host="0.0.0.0")
    args = ["--config", str(settings), "--safe-mode"]
    done = subprocess.run([sys.executable, "-m", "device.cli", "serve", "--port", "0", "--data-dir",
                           str(tmp_path / "data"), "--bundle", str(tiny_bundle), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert f"the private key {key} can be read by other users (mode 644): run `chmod 600 {key}`" in done.stderr
    assert "PRIVATE KEY" not in done.stdout + done.stderr
    safe = start_server(tmp_path / "data", [tiny_bundle], *args, check_health=False)
    try:
        loopback = int(settings.read_text().split("plain_http_loopback_port = ")[1].split()[0])
        assert safe.url == f"http://127.0.0.1:{loopback}/"
        assert _listening_addresses(loopback) == {"127.0.0.1"}
        health = json.loads(curl(f"http://127.0.0.1:{loopback}/api/v1/health").stdout)
        assert health["safe_mode"] and "cannot serve HTTPS" in health["reason"] and "chmod 600" in health["reason"]
    finally:
        assert stop_server(safe) == 0


def test_a_renewed_certificate_serves_new_connections_without_a_restart(tmp_path, tiny_bundle, test_ca):
    """A study uploaded on a connection opened before the renewal and one uploaded after it both
    land; new handshakes get the new certificate; a renewal whose key does not match is refused in
    the log while the previous certificate goes on serving."""
    folder = tmp_path / "tls"
    first = test_ca.issue("kiosk-first", ["localhost", "127.0.0.1"])
    folder.mkdir()
    cert, key = folder / "kiosk.crt", folder / "kiosk.key"
    _install(first, cert, key)
    settings = https_settings(tmp_path, cert, key)
    server = start_server(tmp_path / "data", [tiny_bundle], "--config", str(settings), check_health=False)
    port = int(server.url.rstrip("/").rsplit(":", 1)[1])
    try:
        context = ssl.create_default_context(cafile=str(test_ca.cert))
        open_before = http.client.HTTPSConnection("localhost", port, timeout=30, context=context)
        assert _upload(open_before, 1) == 201
        old = served_fingerprint(port, test_ca.cert)

        second = test_ca.issue("kiosk-second", ["localhost", "127.0.0.1"])
        _install(second, cert, key)
        time.sleep(1.5)
        new = served_fingerprint(port, test_ca.cert)
        assert new != old
        assert _upload(open_before, 2) == 201  # the connection opened before goes on
        fresh = http.client.HTTPSConnection("localhost", port, timeout=30, context=context)
        fresh.request("GET", "/api/v1/studies")
        assert json.loads(fresh.getresponse().read())["total"] == 2
        fresh.close()
        open_before.close()

        mismatched = test_ca.issue("kiosk-third", ["localhost"])
        shutil.copy(mismatched.cert, cert)  # a half-done renewal: the new certificate, the old key
        time.sleep(1.5)
        assert served_fingerprint(port, test_ca.cert) == new
        assert server.log_tail(100_000).count("the renewed certificate is not used") == 1
    finally:
        assert stop_server(server) == 0


def _install(pair, cert: Path, key: Path) -> None:
    """As a renewal tool does: write beside, then rename over (the key stays 0600)."""
    for source, target in ((pair.cert, cert), (pair.key, key)):
        temporary = target.with_suffix(".new")
        shutil.copy(source, temporary)
        os.chmod(temporary, 0o600)
        os.replace(temporary, target)


def _upload(conn: http.client.HTTPSConnection, seed: int) -> int:
    body, ctype = multipart({"reference": f"tls-{seed}"}, (f"img{seed}.png", png_bytes(seed)))
    conn.request("POST", "/api/v1/studies", body=body, headers={"Content-Type": ctype})
    response = conn.getresponse()
    response.read()
    return response.status


def test_tls_cert_makes_a_self_signed_pair_and_prints_the_fingerprint_openssl_sees(tmp_path):
    done = subprocess.run([sys.executable, "-m", "device.cli", "technician", "tls-cert", "--out", str(tmp_path),
                           "--hostname", "kiosk.clinic", "10.0.0.5"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    key, cert = tmp_path / "bedside.key", tmp_path / "bedside.crt"
    assert key.stat().st_mode & 0o777 == 0o600 and key.stat().st_uid == os.geteuid()
    shown = subprocess.run(["openssl", "x509", "-in", str(cert), "-noout", "-fingerprint", "-sha256", "-ext",
                            "subjectAltName"], capture_output=True, text=True, timeout=30).stdout
    fingerprint = shown.split("=", 1)[1].splitlines()[0]
    assert f"SHA-256 fingerprint: {fingerprint}" in done.stdout
    assert "DNS:kiosk.clinic, IP Address:10.0.0.5" in shown
    assert f'tls_key = "{key}"' in done.stdout and "PRIVATE KEY" not in done.stdout


def test_a_private_key_of_another_user_is_refused(site_cert, tmp_path):
    from device.core.tls import ServerTls, TlsError

    if os.geteuid() != 0:
        pytest.skip("giving a file to another user needs root")
    key = tmp_path / "bedside.key"
    shutil.copy(site_cert.key, key)
    os.chown(key, 65534, 65534)
    with pytest.raises(TlsError, match=rf"the private key {key} belongs to .*, not to root that runs Bedside: "
                                        rf"run `chown root {key}`"):
        ServerTls(cert=site_cert.cert, key=key).context()


def test_the_watchdog_is_pinged_while_the_https_kiosk_answers(tmp_path, tiny_bundle, site_cert, watchdog_socket):
    """Under systemd (Type=notify, WatchdogSec) the kiosk asks its own HTTPS port for health before
    each ping: READY=1, then WATCHDOG=1 pings."""
    settings = https_settings(tmp_path, site_cert.cert, site_cert.key)
    server = start_server(tmp_path / "data", [tiny_bundle], "--config", str(settings), check_health=False)
    try:
        assert [watchdog_socket.recv(64) for _ in range(3)] == [b"READY=1", b"WATCHDOG=1", b"WATCHDOG=1"]
        assert "not pinging the watchdog" not in server.log_tail(100_000)
    finally:
        assert stop_server(server) == 0
