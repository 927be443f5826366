"""The technician's DICOM page against a real PACS (Orthanc, Debian's package): the settings are
shown, and the C-ECHO test answers success for the PACS, names a refused association (a wrong
called AE title) and a peer that is down, each on its own line; the page shows the results
waiting for a destination that is down, with the error, and the stores the SCP refused. Restart
is asked first."""

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


def test_the_dicom_page_shows_the_backlog_and_the_refused_stores(config, tmp_path):
    """Results waiting for a destination that is down (with its error), and the refusals: an
    association from an unknown caller and a broken instance."""
    from device.kiosk import create_app
    from dcmtk_peer import SAMPLES, echoscu, storescu, storescu_config
    from dicom_peers import need_dcmtk, need_samples, wait_until

    need_dcmtk()
    need_samples()
    cfg = config.with_overrides(**{
        "dicom.port": free_port(), "dicom.allowed_callers": [{"ae_title": "XRAY1", "host": "127.0.0.1"}],
        "dicom.retry_first_s": 0.2,
        "dicom.destinations": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": free_port()}]})
    app = create_app(cfg)
    try:
        appliance = appliance_of(app)
        with form_client(app) as c:
            set_password(c)
            log_in(c)
            page = c.get("/technician/dicom").data.decode()
            assert "Nothing has been queued yet" in page and "None: every store from the modalities was accepted" in page
            files = [SAMPLES / "cr_dx" / "RG3_J2KR.dcm", SAMPLES / "edge_cases" / "966.dcm"]
            storescu(cfg.dicom.port, "XRAY1", files, storescu_config(files, tmp_path))
            assert echoscu(cfg.dicom.port, "STRANGER").returncode != 0
            wait_until(lambda: any(i["attempts"] for i in appliance.dicom.outbox.items()), 30, "a first try to send")
            wait_until(lambda: len(appliance.store.dicom_events(10, ("association_rejected", "store_failed"))) == 2,
                       10, "both refusals logged")
            page = c.get("/technician/dicom").data.decode()
        row = page[page.index('data-destination="pacs"'):]
        row = row[:row.index("</tr>")]
        waiting = len(appliance.dicom.outbox.items())
        assert f'<td class="tech-bad">{waiting} (since ' in row and "cannot connect" in row, row
        refused = page[page.index("data-refused"):]
        assert "from <strong>STRANGER</strong> (127.0.0.1):\n    association rejected" in refused
        assert "from <strong>XRAY1</strong> (127.0.0.1):\n    C-STORE refused: " in refused
    finally:
        appliance_of(app).close()


def test_restart_is_asked_first(client, app):
    from device.technician.area import area_of

    set_password(client)
    log_in(client)
    asked = client.post("/technician/restart")
    assert asked.status_code == 200 and b"Restart the kiosk?" in asked.data and b'name="confirm" value="1"' in asked.data
    assert not area_of(app).restart_requested.is_set()
    started = app.test_client().get("/technician/started")  # no session: a restart ends it
    assert started.status_code == 200 and started.json == {"started_at": area_of(app).started_at_utc, "safe_mode": False}
