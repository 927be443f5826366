"""DICOM over TLS ([dicom] tls_cert, tls_key, tls_ca, tls_require_client_cert; a destination's tls),
against dcmtk: echoscu and storescu with +tls / +tla into the SCP, and the results sent by the
kiosk's SCU to a dcmtk storescp +tls that checks the kiosk's client certificate. A plain
association, TLS 1.1, a certificate from another CA, a certificate naming someone else and a stalled
handshake are each refused, logged once, and leave no thread behind."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from device.appliance.context import appliance_of
from device.core.store import StudyFilter
from dcmtk_peer import SAMPLES, echoscu, storescu, storescu_config
from dicom_peers import need_dcmtk, need_samples, wait_until
from loopback import free_port
from tls_support import TestCa, s_client

FILES = sorted((SAMPLES / "cr_dx").glob("*.dcm"))[:2]
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"


@pytest.fixture(scope="module")
def dicom_pki(tmp_path_factory, test_ca):
    """The SCP's certificate, the modality's client certificate (it names itself "xray1.clinic"),
    and one from a CA nobody trusts."""
    rogue = TestCa(tmp_path_factory.mktemp("rogue-ca"), "Rogue CA")
    return {
        "ca": test_ca.cert,
        "scp": test_ca.issue("bedside-scp", ["localhost", "127.0.0.1"]),
        "modality": test_ca.issue("xray1.clinic", ["xray1.clinic"], client=True),
        "other": test_ca.issue("ct2.clinic", ["ct2.clinic"], client=True),
        "rogue": rogue.issue("xray1.clinic", ["xray1.clinic"], client=True),
        "pacs": test_ca.issue("pacs", ["localhost", "127.0.0.1"]),
        "kiosk-client": test_ca.issue("bedside-kiosk", ["bedside-kiosk"], client=True),
    }


def tls_app(config, pki, require_client_cert=False, **more):
    from device.kiosk import create_app

    need_dcmtk()
    callers = [{"ae_title": "XRAY1", "host": "127.0.0.1", "tls_name": "xray1.clinic"}]
    cfg = config.with_overrides(**{
        "dicom.port": free_port(), "dicom.allowed_callers": callers, "dicom.acse_timeout_s": 3,
        "dicom.tls_cert": pki["scp"].cert, "dicom.tls_key": pki["scp"].key, "dicom.tls_ca": pki["ca"],
        "dicom.tls_require_client_cert": require_client_cert, **more,
    })
    return create_app(cfg)


@pytest.fixture
def tls_scp(config, dicom_pki):
    application = tls_app(config, dicom_pki)
    yield appliance_of(application)
    appliance_of(application).close()


@pytest.fixture
def mutual_scp(config, dicom_pki):
    application = tls_app(config, dicom_pki, require_client_cert=True)
    yield appliance_of(application)
    appliance_of(application).close()


def client_tls(pki, name: str) -> tuple[str, ...]:
    """dcmtk's options: our key and certificate, the CA the SCP's certificate must chain to."""
    return ("+tls", str(pki[name].key), str(pki[name].cert), "+cf", str(pki["ca"]))


def test_echoscu_with_and_without_a_client_certificate(tls_scp, dicom_pki):
    port = tls_scp.config.dicom.port
    anonymous = echoscu(port, "XRAY1", tls=("+tla", "+cf", str(dicom_pki["ca"])))
    assert anonymous.returncode == 0, anonymous.stdout + anonymous.stderr
    authenticated = echoscu(port, "XRAY1", tls=client_tls(dicom_pki, "modality"))
    assert authenticated.returncode == 0, authenticated.stdout + authenticated.stderr


def test_a_plain_association_and_tls_1_1_are_refused_and_logged_once(tls_scp, caplog):
    port = tls_scp.config.dicom.port
    plain = echoscu(port, "XRAY1")
    assert plain.returncode != 0
    old = s_client(port, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
    assert old.returncode != 0 and "alert protocol version" in old.stderr, old.stderr
    wait_until(lambda: "UNSUPPORTED_PROTOCOL" in caplog.text, 10, "the refused TLS 1.1 handshake in the log")
    assert caplog.text.count("a plain DICOM association from 127.0.0.1") == 1
    assert caplog.text.count("DICOM TLS handshake from 127.0.0.1") == 1


def test_the_scp_refuses_a_caller_that_does_not_trust_its_certificate(tls_scp, dicom_pki, tmp_path):
    stranger = TestCa(tmp_path / "ca", "Another CA")
    done = echoscu(tls_scp.config.dicom.port, "XRAY1", tls=("+tla", "+cf", str(stranger.cert)))
    assert done.returncode != 0


def test_storescu_over_tls_stores_and_triages(tls_scp, dicom_pki, tmp_path):
    need_samples()
    sent = storescu(tls_scp.config.dicom.port, "XRAY1", FILES, storescu_config(FILES, tmp_path),
                    tls=client_tls(dicom_pki, "modality"))
    assert sent.returncode == 0, sent.stderr
    assert tls_scp.store.list(StudyFilter(), 100)[1] == len(FILES)


def test_required_client_certificates_are_checked_against_the_allow_list(mutual_scp, dicom_pki):
    port = mutual_scp.config.dicom.port
    assert echoscu(port, "XRAY1", tls=client_tls(dicom_pki, "modality")).returncode == 0
    assert echoscu(port, "XRAY1", tls=("+tla", "+cf", str(dicom_pki["ca"]))).returncode != 0  # no certificate
    assert echoscu(port, "XRAY1", tls=client_tls(dicom_pki, "rogue")).returncode != 0  # another CA
    wrong = echoscu(port, "XRAY1", tls=client_tls(dicom_pki, "other"))  # our CA, another modality
    assert wrong.returncode != 0
    assert "Calling AE Title Not Recognized" in wrong.stdout + wrong.stderr
    (event,) = wait_until(mutual_scp.store.dicom_events, 10, "the rejection in the SCP's log")
    assert event["detail"] == "its client certificate names ct2.clinic, not xray1.clinic"


def test_stalled_handshakes_hold_nothing_and_leave_no_thread(tls_scp, dicom_pki, caplog):
    port = tls_scp.config.dicom.port
    before = threading.active_count()
    stalled = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    stalled[1].sendall(b"\x16\x03\x01\x02\x00\x01")  # half a ClientHello
    try:
        start = time.monotonic()
        done = echoscu(port, "XRAY1", tls=client_tls(dicom_pki, "modality"))
        assert done.returncode == 0 and time.monotonic() - start < 3, done.stderr
        wait_until(lambda: caplog.text.count("not completed") == 3, 10, "three handshakes timed out (acse_timeout_s 3)")
    finally:
        for sock in stalled:
            sock.close()
    wait_until(lambda: threading.active_count() == before, 10, "the handshake threads gone")


@pytest.fixture
def tls_pacs(dicom_pki, tmp_path):
    """dcmtk's storescp over TLS as the PACS: its own certificate from the test CA, and it requires
    the kiosk's client certificate from the same CA."""
    need_dcmtk()
    port, folder = free_port(), tmp_path / "pacs"
    folder.mkdir()
    with open(tmp_path / "storescp.log", "w") as log:
        proc = subprocess.Popen(["storescp", "-v", "+tls", str(dicom_pki["pacs"].key), str(dicom_pki["pacs"].cert),
                                 "+cf", str(dicom_pki["ca"]), "-rc", "-aet", "PACS", "-od", str(folder), str(port)],
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: _listening(port), 10, "storescp listening")
        yield port, folder
    finally:
        proc.terminate()
        proc.wait(10)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 1).close()
        return True
    except OSError:
        return False


def received_and_sent(config, pki, host: str, port: int, folder: Path):
    """A kiosk whose destination is the TLS PACS at host:port (with the kiosk's client certificate),
    after storescu +tls sent it one film; close it when done."""
    need_samples()
    destination = {"name": "pacs", "ae_title": "PACS", "host": host, "port": port, "tls": True,
                   "tls_ca": str(pki["ca"]), "tls_cert": str(pki["kiosk-client"].cert),
                   "tls_key": str(pki["kiosk-client"].key)}
    appliance = appliance_of(tls_app(config, pki, **{"dicom.destinations": [destination], "dicom.retry_first_s": 0.2}))
    sent = storescu(appliance.config.dicom.port, "XRAY1", FILES[:1], storescu_config(FILES[:1], folder),
                    tls=client_tls(pki, "modality"))
    if sent.returncode != 0:
        appliance.close()
    assert sent.returncode == 0, sent.stderr
    return appliance


def test_results_go_to_a_tls_pacs_that_checks_our_client_certificate(config, dicom_pki, tls_pacs, tmp_path):
    """storescu +tls into the kiosk, and its SR and heatmap SC out to storescp +tls -rc."""
    port, folder = tls_pacs
    appliance = received_and_sent(config, dicom_pki, "localhost", port, tmp_path)
    try:
        arrived = wait_until(lambda: len(list(folder.iterdir())) == 2 and sorted(folder.iterdir()), 60,
                             "the SR and the SC at the TLS PACS")
        assert any(p.name.startswith("SR") for p in arrived), arrived
    finally:
        appliance.close()


def test_a_pacs_whose_certificate_names_another_host_gets_nothing(config, dicom_pki, tls_pacs, tmp_path, caplog):
    """The PACS's certificate names localhost and 127.0.0.1; a destination that calls it 127.0.0.2
    refuses it (hostname checked) and the result waits in the outbox."""
    port, folder = tls_pacs
    appliance = received_and_sent(config, dicom_pki, "127.0.0.2", port, tmp_path)
    try:
        wait_until(lambda: "cannot associate with PACS at 127.0.0.2" in caplog.text, 30, "the refused association")
        assert list(folder.iterdir()) == []
        assert {i["state"] for i in appliance.dicom.outbox.items()} <= {"queued", "sending"}  # waiting, not lost
    finally:
        appliance.close()
