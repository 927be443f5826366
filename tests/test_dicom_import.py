"""Import by DICOMDIR: the DICOMDIR on a drive stands for the images it lists; a record that
points outside its folder refuses the import."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pydicom
import pydicom.config

from dcmtk_peer import SAMPLES
from dicom_peers import need_dcmtk, need_samples

FILES = sorted((SAMPLES / "cr_dx").glob("*.dcm"))[:2]


def _dicomdir(folder: Path) -> Path:
    """A DICOMDIR as dcmtk's dcmmkdir writes it for the sample files copied onto the "drive"."""
    images = folder / "IMAGES"
    images.mkdir(parents=True)
    for i, path in enumerate(FILES):
        shutil.copyfile(path, images / f"IM{i}")
    done = subprocess.run(["dcmmkdir", "--recurse", "--invent", "--no-xfer-check", "+D", "DICOMDIR", "IMAGES"],
                          cwd=folder, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return folder / "DICOMDIR"


def test_a_dicomdir_imports_the_images_it_lists(client, drives):
    need_samples()
    need_dcmtk()
    dicomdir = _dicomdir(drives["usb"] / "DISK")
    response = client.post("/api/v1/imports", json={"paths": [str(dicomdir)]})
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert body["errors"] == [] and len(body["studies"]) == len(FILES)
    assert {s["source"] for s in body["studies"]} == {"import"}


def test_a_record_pointing_outside_refuses_the_import(client, drives):
    need_samples()
    need_dcmtk()
    dicomdir = _dicomdir(drives["usb"] / "DISK")
    ds = pydicom.dcmread(dicomdir)
    image = next(r for r in ds.DirectoryRecordSequence if r.DirectoryRecordType == "IMAGE")
    with pydicom.config.disable_value_validation():  # what a hostile writer does
        image.ReferencedFileID = ["..", "..", "secret"]
        ds.save_as(dicomdir)
    response = client.post("/api/v1/imports", json={"paths": [str(dicomdir)]})
    assert response.status_code == 400
    assert "not a DICOM file ID" in response.get_json()["error"]["message"]
