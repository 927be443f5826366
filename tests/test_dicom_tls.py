"""DICOM over TLS ([dicom] tls_cert, tls_key, tls_ca, tls_require_client_cert; a destination's tls),
against dcmtk: echoscu and storescu with +tls / +tla into the SCP, and the results sent by the
kiosk's SCU to a dcmtk storescp +tls and to an Orthanc with DicomTlsEnabled, both requiring the
kiosk's client certificate. A plain
association, TLS 1.1, a certificate from another CA, a certificate naming someone else and a stalled
handshake are each refused, logged once, and leave no thread behind."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

from device.appliance.context import appliance_of
from device.core.store import StudyFilter
from dcmtk_peer import SAMPLES, echoscu, storescu, storescu_config
from dicom_peers import need_dcmtk, need_samples, wait_until
from tls_support import TestCa, dcmtk_tls, s_client, tls_dicom_app

FILES = sorted((SAMPLES / "cr_dx").glob("*.dcm"))[:2]
SR_CLASS, SC_CLASS = "1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.7"


def test_echoscu_with_and_without_a_client_certificate(tls_scp, dicom_pki):
    port = tls_scp.config.dicom.port
    anonymous = echoscu(port, "XRAY1", tls=("+tla", "+cf", str(dicom_pki["ca"])))
    assert anonymous.returncode == 0, anonymous.stdout + anonymous.stderr
    authenticated = echoscu(port, "XRAY1", tls=dcmtk_tls(dicom_pki, "modality"))
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
                    tls=dcmtk_tls(dicom_pki, "modality"))
    assert sent.returncode == 0, sent.stderr
    assert tls_scp.store.list(StudyFilter(), 100)[1] == len(FILES)


def test_required_client_certificates_are_checked_against_the_allow_list(mutual_scp, dicom_pki):
    port = mutual_scp.config.dicom.port
    assert echoscu(port, "XRAY1", tls=dcmtk_tls(dicom_pki, "modality")).returncode == 0
    assert echoscu(port, "XRAY1", tls=("+tla", "+cf", str(dicom_pki["ca"]))).returncode != 0  # no certificate
    assert echoscu(port, "XRAY1", tls=dcmtk_tls(dicom_pki, "rogue")).returncode != 0  # another CA
    wrong = echoscu(port, "XRAY1", tls=dcmtk_tls(dicom_pki, "other"))  # our CA, another modality
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
        done = echoscu(port, "XRAY1", tls=dcmtk_tls(dicom_pki, "modality"))
        assert done.returncode == 0 and time.monotonic() - start < 3, done.stderr
        wait_until(lambda: caplog.text.count("not completed") == 3, 10, "three handshakes timed out (acse_timeout_s 3)")
    finally:
        for sock in stalled:
            sock.close()
    wait_until(lambda: threading.active_count() == before, 10, "the handshake threads gone")


def received_and_sent(config, pki, host: str, port: int, folder: Path, ae_title: str = "PACS"):
    """A kiosk whose destination is the TLS PACS at host:port (with the kiosk's client certificate),
    after storescu +tls sent it one film; close it when done."""
    need_dcmtk()
    need_samples()
    destination = {"name": "pacs", "ae_title": ae_title, "host": host, "port": port, "tls": True,
                   "tls_ca": str(pki["ca"]), "tls_cert": str(pki["kiosk-client"].cert),
                   "tls_key": str(pki["kiosk-client"].key)}
    appliance = appliance_of(tls_dicom_app(config, pki, **{"dicom.destinations": [destination], "dicom.retry_first_s": 0.2}))
    sent = storescu(appliance.config.dicom.port, "XRAY1", FILES[:1], storescu_config(FILES[:1], folder),
                    tls=dcmtk_tls(pki, "modality"))
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
        (item, *_) = wait_until(lambda: [i for i in appliance.dicom.outbox.items() if i["attempts"] >= 1], 30,
                                "a refused attempt")
        assert "its certificate is refused: IP address mismatch" in item["last_error"], item
        assert list(folder.iterdir()) == []
        assert {i["state"] for i in appliance.dicom.outbox.items()} <= {"queued", "sending"}  # waiting, not lost
    finally:
        appliance.close()


def test_results_go_to_orthanc_over_dicom_tls(config, dicom_pki, tls_orthanc, tmp_path):
    """Orthanc with DicomTlsEnabled, requiring the kiosk's client certificate, receives the SR and the SC."""
    appliance = received_and_sent(config, dicom_pki, "localhost", tls_orthanc.dicom_port, tmp_path, "ORTHANC")
    try:
        arrived = wait_until(lambda: len(tls_orthanc.get("/instances")) == 2 and tls_orthanc.instances(), 60,
                             "the SR and the SC in Orthanc")
        assert {i["SOPClassUID"] for i in arrived} == {SR_CLASS, SC_CLASS}
        wait_until(lambda: {i["state"] for i in appliance.dicom.outbox.items()} == {"sent"}, 10, "both marked sent")
    finally:
        appliance.close()
