"""The technician's DICOM page against a real PACS (Orthanc, Debian's package): the settings are
shown, and the C-ECHO test answers success for the PACS, names a refused association (a wrong
called AE title) and a peer that is down, each on its own line."""

from __future__ import annotations


from device.appliance.context import appliance_of
from loopback import free_port
from kiosk_support import form_client
from orthanc_peer import AE_TITLE
from test_technician import log_in, set_password


def test_echo_each_destination(orthanc, config):
    from device.kiosk import create_app

    destinations = [
        {"name": "pacs", "ae_title": AE_TITLE, "host": "127.0.0.1", "port": orthanc.dicom_port},
        {"name": "wrong-title", "ae_title": "NOT-ORTHANC", "host": "127.0.0.1", "port": orthanc.dicom_port},
        {"name": "down", "ae_title": "NOBODY", "host": "127.0.0.1", "port": free_port()},
    ]
    app = create_app(config.with_overrides(**{"dicom.destinations": destinations}))
    try:
        with form_client(app) as c:
            set_password(c)
            log_in(c)
            page = c.get("/technician/dicom")
            assert page.status_code == 200 and b"BEDSIDE" in page.data and f":{orthanc.dicom_port}".encode() in page.data
            text = c.post("/technician/dicom/echo").data.decode()
        # One <li> per destination (the list may be on one line): an assertion then shows that one's words.
        lines = {name: next(item for item in text.split("<li") if f"<strong>{name} (" in item)
                 for name in ("pacs", "wrong-title", "down")}
        assert "C-ECHO answered: success" in lines["pacs"] and "tech-ok" in lines["pacs"]
        assert "no association: rejected" in lines["wrong-title"] and "tech-bad" in lines["wrong-title"]
        assert "not reachable" in lines["down"]
    finally:
        appliance_of(app).close()
