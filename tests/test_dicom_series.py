"""The series rule against dcmtk's storescu: under ``[dicom.series] triage = "one_per_series"`` every
instance is stored and acknowledged, one per series is triaged (frontal over lateral by View
Position; the middle one of a cine sent as single frames), the rest are kept with its study; an
instance arriving after its series was triaged is kept too; held instances survive a restart."""

from __future__ import annotations

import random
import re

import pydicom
import pytest
from pydicom.uid import generate_uid

from device.appliance.context import appliance_of
from device.core.store import StudyFilter
from device.dicom.series import pick
from dcmtk_peer import SAMPLES, storescu, storescu_config
from dicom_peers import need_dcmtk, need_samples, wait_until
from loopback import free_port

SOURCE = SAMPLES / "cr_dx" / "RG2_JPLY_fixed.dcm"  # a real CR, JPEG extended


def series_files(folder, views_and_numbers, study_uid=None, series_uid=None):
    """One file per (ViewPosition, InstanceNumber), all of one series of one study."""
    ds = pydicom.dcmread(SOURCE)
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    paths = []
    for view, number in views_and_numbers:
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.ViewPosition, ds.InstanceNumber = view, number
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path)
        paths.append(path)
    return paths


def open_kiosk(config, port, stable_s):
    from device.kiosk import create_app

    cfg = config.with_overrides(**{
        "dicom.port": port, "dicom.allowed_callers": [{"ae_title": "XRAY1", "host": "127.0.0.1"}],
        "dicom.series": {"triage": "one_per_series", "stable_s": stable_s},
    })
    return create_app(cfg)


def uid_of(path):
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def test_the_rule_prefers_frontal_then_the_middle_instance():
    row = lambda view, n: {"view_position": view, "instance_number": n}  # noqa: E731
    assert pick([row("LL", "1"), row("PA", "2"), row("LL", "3")], ["PA", "AP"]) == row("PA", "2")
    assert pick([row("AP", "1"), row("PA", "2")], ["PA", "AP"]) == row("PA", "2")
    assert pick([row("LATERAL", "1"), row("", "2")], ["PA", "AP"]) == row("LATERAL", "1")  # unlisted: equal, middle
    cine = [row("", str(n)) for n in (4, 1, 5, 3, 2)]  # arrival order is not the frame order
    assert pick(cine, ["PA", "AP"]) == row("", "3")


def test_one_instance_per_series_is_triaged_the_rest_kept(config, tmp_path):
    need_dcmtk()
    need_samples()
    chest = series_files(tmp_path, [("LL", "1"), ("PA", "2"), ("LL", "3")])
    cine = series_files(tmp_path, [("", str(n)) for n in range(1, 6)])
    random.Random(0).shuffle(cine)
    port = free_port()
    # Long enough that no gap between two instances of one association ends a series early on a
    # loaded machine (each instance is decoded before its status is sent).
    app = open_kiosk(config, port, stable_s=3)
    appliance = appliance_of(app)
    try:
        files = chest + cine
        sent = storescu(port, "XRAY1", files, storescu_config(files, tmp_path))
        assert sent.returncode == 0, sent.stderr
        assert sent.stderr.count("Received Store Response (Success)") + sent.stdout.count(
            "Received Store Response (Success)") == len(files)
        for path in files:  # acknowledged means stored, triaged or not
            assert appliance.store.dicom_instance(uid_of(path)) is not None
        studies = wait_until(lambda: (lambda s: s if len(s) == 2 else None)(appliance.store.list(StudyFilter(), 10)[0]),
                             60, "a study per series")
        by_uid = {}
        for study in studies:
            instances = appliance.store.dicom_instances(study.id)
            by_uid.update({i["sop_instance_uid"]: (study.id, i["triaged"]) for i in instances})
        assert len(by_uid) == len(files)  # every instance is kept with its series' study
        assert by_uid[uid_of(chest[1])][1] == 1 and [by_uid[uid_of(p)][1] for p in chest] == [0, 1, 0]
        middle = next(p for p in cine if pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber == 3)
        assert [p for p in cine if by_uid[uid_of(p)][1]] == [middle]
        assert appliance.store.list(StudyFilter(), 10)[1] == 2  # the worklist holds two studies, not eight

        chest_study = by_uid[uid_of(chest[1])][0]
        late = series_files(tmp_path, [("LL", "4")], *_uids(chest[0]))
        assert storescu(port, "XRAY1", late, storescu_config(late, tmp_path)).returncode == 0
        row = appliance.store.dicom_instance(uid_of(late[0]))
        assert (row["study_id"], row["triaged"]) == (chest_study, 0)
        assert appliance.store.list(StudyFilter(), 10)[1] == 2
        assert any(e["event"] == "series_triaged" for e in appliance.store.dicom_events())
        page = app.test_client().get(f"/studies/{chest_study}").get_data(as_text=True)
        assert re.search(r"data-series>4 images; triaged: PA, instance 2;\s+kept: LL 1, LL 3, LL 4</dd>", page), page
    finally:
        appliance.close()


def _uids(path):
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)


def test_held_instances_are_triaged_after_a_restart(config, tmp_path):
    need_dcmtk()
    need_samples()
    files = series_files(tmp_path, [("LL", "1"), ("AP", "2")])
    port = free_port()
    app = open_kiosk(config, port, stable_s=3600)  # the series never completes while this kiosk runs
    appliance = appliance_of(app)
    try:
        assert storescu(port, "XRAY1", files, storescu_config(files, tmp_path)).returncode == 0
        assert appliance.store.list(StudyFilter(), 10)[1] == 0
        assert all(appliance.store.dicom_instance(uid_of(p))["study_id"] is None for p in files)
    finally:
        appliance.close()
    app = open_kiosk(config, free_port(), stable_s=0.2)
    appliance = appliance_of(app)
    try:
        (study,) = wait_until(lambda: appliance.store.list(StudyFilter(), 10)[0], 60, "the held series triaged")
        assert [(i["sop_instance_uid"], i["triaged"]) for i in appliance.store.dicom_instances(study.id)] == [
            (uid_of(files[1]), 1), (uid_of(files[0]), 0)]
        assert study.source == "dicom:XRAY1"
    finally:
        appliance.close()


@pytest.mark.parametrize("setting", [{"triage": "sometimes"}, {"stable_s": 0}, {"prefer": ["PA"]}])
def test_series_settings_are_checked(config, setting):
    from device.core.settings import ConfigError

    with pytest.raises(ConfigError, match="dicom.series"):
        config.with_overrides(**{"dicom.series": setting})


def test_a_crash_after_the_study_commit_does_not_triage_the_series_twice(config, tmp_path):
    """The study of the picked instance was committed, then the kiosk died before the series was
    settled: at start the series is settled onto that study, not triaged again."""
    need_dcmtk()
    need_samples()
    from device.dicom.header import uid_file_name

    files = series_files(tmp_path, [("LL", "1"), ("PA", "2")])
    port = free_port()
    app = open_kiosk(config, port, stable_s=3600)
    appliance = appliance_of(app)
    try:
        assert storescu(port, "XRAY1", files, storescu_config(files, tmp_path)).returncode == 0
        picked = uid_of(files[1])  # the PA
        held = appliance.store.dicom_instance(picked)
        data = appliance.store.image_path(held["image_sha256"]).read_bytes()  # as received
        committed = appliance.studies.create_study(data, uid_file_name(picked), source="dicom:XRAY1")
    finally:
        appliance.close()
    app = open_kiosk(config, free_port(), stable_s=0.2)
    appliance = appliance_of(app)
    try:
        wait_until(lambda: appliance.store.dicom_instance(picked)["study_id"], 60, "the series settled")
        assert appliance.store.list(StudyFilter(), 10)[1] == 1
        assert {i["sop_instance_uid"]: i["triaged"] for i in appliance.store.dicom_instances(committed.id)} == {
            picked: 1, uid_of(files[0]): 0}
    finally:
        appliance.close()
