"""Signed bundles installed into A/B slots: what is refused (with its reason, before anything is
written), what a failed self-test or health check undoes, and rollback."""

from __future__ import annotations

import json
import os
import shutil
import stat
import tarfile

import pytest

from device import updates
from device.cli import main
from device.updates.slots import Slots
from models.bundle import load_bundle
from update_support import EXAM, config_toml, kiosk_config, make_bundle, rewrite, tree


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out.strip(), err.strip()


def installed_cli(tmp_path, config) -> tuple[str, ...]:
    return ("--config", str(config_toml(tmp_path, config)), "--data-dir", str(config.store.data_dir))


def test_keys_generate_makes_a_private_key_only_its_owner_reads(tmp_path, capsys):
    rc, out, _ = cli(capsys, "keys", "generate", "--out", str(tmp_path / "k"))
    assert rc == 0 and "bedside-signing.key" in out
    assert stat.S_IMODE(os.stat(tmp_path / "k" / "bedside-signing.key").st_mode) == 0o600
    rc, _, err = cli(capsys, "keys", "generate", "--out", str(tmp_path / "k"))
    assert rc == 1 and err.count("\n") == 0 and "already exists" in err


def test_pack_sign_verify_on_the_command_line(tmp_path, capsys, signer):
    bundle = make_bundle(tmp_path / "src", "1.0.0")
    archive = tmp_path / "tiny.bedside"
    assert cli(capsys, "bundle", "pack", str(bundle), "--out", str(archive))[0] == 0
    rc, _, err = cli(capsys, "bundle", "verify", str(archive), "--trust", str(signer.trust))
    assert rc == 1 and "not signed" in err
    assert cli(capsys, "bundle", "sign", str(archive), "--key", str(signer.key))[0] == 0
    rc, out, _ = cli(capsys, "bundle", "verify", str(archive), "--trust", str(signer.trust))
    assert rc == 0 and f"{EXAM} 1.0.0 signed by trusted key" in out
    with tarfile.open(archive) as tar:
        assert sorted(tar.getnames()) == ["golden.npz", "manifest.json", "model.onnx", "signature.json"]


def test_pack_refuses_a_file_the_manifest_does_not_list(tmp_path, capsys):
    bundle = make_bundle(tmp_path / "src", "1.0.0")
    (bundle / "notes.txt").write_text("left behind")
    rc, _, err = cli(capsys, "bundle", "pack", str(bundle), "--out", str(tmp_path / "x.bedside"))
    assert rc == 1 and "notes.txt is not listed in the manifest" in err


def _flip_byte(name):
    def edit(info, data):
        if info.name == name:
            data = data[:-1] + bytes([data[-1] ^ 1])
        return [(info, data)]
    return edit


def _drop(name):
    return lambda info, data: [] if info.name == name else [(info, data)]


def _retitle(info, data):
    if info.name == "manifest.json":
        manifest = json.loads(data)
        manifest["title"] = "Something else"
        data = json.dumps(manifest).encode()
    return [(info, data)]


def _forge(info, data):
    if info.name == "signature.json":
        body = json.loads(data)
        body["statement"] = body["statement"].replace('"allow_downgrade": false', '"allow_downgrade": true')
        data = json.dumps(body).encode()
    return [(info, data)]


def _add(kind: str, name: str = "extra"):
    def edit(info, data):
        out = [(info, data)]
        if info.name == "manifest.json":
            extra = tarfile.TarInfo(name)
            extra.type = kind
            extra.linkname = "/etc/passwd" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
            out.append((extra, b"evil" if kind == tarfile.REGTYPE else None))
        return out
    return edit


HOSTILE = {
    "tampered file": (_flip_byte("model.onnx"), "file model.onnx does not match the manifest"),
    "tampered manifest": (_retitle, "the manifest is not the one that was signed"),
    "unsigned": (_drop("signature.json"), "not signed"),
    "forged downgrade flag": (_forge, "the signature does not match"),
    "traversal": (_add(tarfile.REGTYPE, "../evil"), "leaves the bundle folder (path traversal)"),
    "nested traversal": (_add(tarfile.REGTYPE, "sub/../../evil"), "path traversal"),
    "absolute path": (_add(tarfile.REGTYPE, "/tmp/evil"), "is an absolute path"),
    "symlink": (_add(tarfile.SYMTYPE), "is a link"),
    "hard link": (_add(tarfile.LNKTYPE), "is a link"),
    "device": (_add(tarfile.CHRTYPE), "is a device or FIFO"),
    "fifo": (_add(tarfile.FIFOTYPE), "is a device or FIFO"),
    "unlisted file": (_add(tarfile.REGTYPE, "payload.sh"), "payload.sh is not listed in the manifest"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archives_are_refused_before_anything_is_written(case, tmp_path, capsys, signer, releases):
    config = kiosk_config(tmp_path, signer)
    assert updates.install(releases["1.0.0"], config).version == "1.0.0"
    edit, reason = HOSTILE[case]
    archive = rewrite(releases["1.1.0"], tmp_path / "hostile.bedside", edit)
    before = tree(tmp_path / "data")
    rc, _, err = cli(capsys, "bundle", "install", str(archive), "--offline", *installed_cli(tmp_path, config))
    assert rc == 1 and reason in err and "\n" not in err, err
    assert tree(tmp_path / "data") == before
    assert not (tmp_path / "evil").exists() and not (tmp_path.parent / "evil").exists()


def test_an_archive_signed_by_an_unknown_key_is_refused(tmp_path, capsys, signer):
    archive = signer.archive(make_bundle(tmp_path / "src", "1.0.0"), tmp_path / "t.bedside", key=signer.other_key)
    config = kiosk_config(tmp_path, signer)
    rc, _, err = cli(capsys, "bundle", "install", str(archive), "--offline", *installed_cli(tmp_path, config))
    assert rc == 1 and "which is not in the trust folder" in err
    assert tree(tmp_path / "data") == {}


def test_an_oversize_archive_is_refused_unread(tmp_path, capsys, signer, releases):
    big = rewrite(releases["1.0.0"], tmp_path / "big.bedside",
                  lambda info, data: [(info, data + (b"\0" * 2**21 if info.name == "golden.npz" else b""))])
    config = kiosk_config(tmp_path, signer, max_archive_mb=1)
    rc, _, err = cli(capsys, "bundle", "install", str(big), "--offline", *installed_cli(tmp_path, config))
    assert rc == 1 and "larger than the 1 MiB limit" in err
    assert tree(tmp_path / "data") == {}


def test_a_bundle_for_another_appliance_version_is_refused(tmp_path, capsys, signer, releases):
    config = kiosk_config(tmp_path, signer)
    rc, _, err = cli(capsys, "bundle", "install", str(releases["future"]), "--offline", *installed_cli(tmp_path, config))
    assert rc == 1 and "needs appliance version >=99; this appliance is 0.1.0" in err
    assert tree(tmp_path / "data") == {}


def test_a_lower_version_needs_a_signed_downgrade(tmp_path, capsys, signer, releases):
    config = kiosk_config(tmp_path, signer)
    updates.install(releases["1.0.0"], config)
    before = tree(tmp_path / "data")
    rc, _, err = cli(capsys, "bundle", "install", str(releases["0.9.0"]), "--offline", *installed_cli(tmp_path, config))
    assert rc == 1 and "0.9.0 is older than the installed 1.0.0" in err and "--allow-downgrade" in err
    assert tree(tmp_path / "data") == before
    rc, out, _ = cli(capsys, "bundle", "install", str(releases["0.9.0-down"]), "--offline", *installed_cli(tmp_path, config))
    assert rc == 0 and f"{EXAM} 0.9.0 is active in slot b (before: 1.0.0 in slot a)" in out


def test_the_shipped_bundle_serves_again_after_an_install(tmp_path, signer, releases):
    config = kiosk_config(tmp_path, signer)
    make_bundle(tmp_path / "shipped" / "tiny", "0.5.0")
    updates.install(releases["1.0.0"], config)
    back = updates.use_shipped(EXAM, config)
    assert back.line().startswith(f"{EXAM} 0.5.0 (shipped with the appliance) serves again (before: 1.0.0 in slot a): ")
    assert load_bundle(updates.served_paths(config)[0]).manifest.version == "0.5.0"
    [exam] = updates.list_installed(config)
    assert (exam.version, exam.source) == ("0.5.0", "shipped")
    assert [(s.slot, s.role, s.version) for s in exam.slots] == [("a", "previous", "1.0.0")]  # kept, to go back to
    with pytest.raises(updates.NotInstalled, match="the shipped bundle serves already"):
        updates.use_shipped(EXAM, config)
    again = updates.activate(EXAM, "a", config)
    assert again.line().startswith(f"{EXAM} 1.0.0 is active in slot a (before: the shipped 0.5.0): ")
    shutil.rmtree(tmp_path / "shipped" / "tiny")
    with pytest.raises(updates.NotInstalled, match="no bundle of it was shipped"):
        updates.use_shipped(EXAM, config)


def test_install_update_and_rollback_switch_slots(tmp_path, capsys, signer, releases):
    config = kiosk_config(tmp_path, signer)
    first = updates.install(releases["1.0.0"], config)
    second = updates.install(releases["1.1.0"], config)
    assert (first.slot, second.slot, second.previous_version) == ("a", "b", "1.0.0")
    root = config.updates.installed_root(config.store.data_dir)
    assert os.readlink(root / EXAM) == f".slots/{EXAM}/b"
    [exam] = updates.list_installed(config)
    assert (exam.version, exam.source) == ("1.1.0", "installed")
    assert {(s.slot, s.role, s.version) for s in exam.slots} == {("a", "previous", "1.0.0"), ("b", "active", "1.1.0")}
    rc, out, _ = cli(capsys, "bundle", "rollback", "--offline", *installed_cli(tmp_path, config))
    assert rc == 0 and f"{EXAM} 1.0.0 is active in slot a (before: 1.1.0 in slot b)" in out
    assert load_bundle(updates.served_paths(config)[0]).manifest.version == "1.0.0"
    rc, out, _ = cli(capsys, "bundle", "list", "--json", *installed_cli(tmp_path, config))
    listed = json.loads(out)["exams"][0]
    assert listed["version"] == "1.0.0" and [s["role"] for s in listed["slots"]] == ["active", "previous"]


def test_an_install_on_trial_waits_for_commit_or_rollback(tmp_path, capsys, signer, releases):
    """What an update service with a commit of its own (Mender) drives: the new bundle served on
    trial, then committed; the next one on trial, then rolled back; one on trial when the kiosk
    restarts is undone, as after a crash."""
    config = kiosk_config(tmp_path, signer)
    where = installed_cli(tmp_path, config)
    slots = Slots(config.updates.installed_root(config.store.data_dir))
    updates.install(releases["1.0.0"], config)
    rc, out, _ = cli(capsys, "bundle", "install", str(releases["1.1.0"]), "--offline", "--no-commit", *where)
    assert rc == 0 and out.endswith("; awaiting commit")
    assert slots.active_slot(EXAM) == "b" and slots.read_state(EXAM).trying == "b"
    assert load_bundle(updates.served_paths(config)[0]).manifest.version == "1.1.0"  # served while on trial
    rc, out, _ = cli(capsys, "bundle", "commit", *where)
    assert rc == 0 and out == f"{EXAM} 1.1.0 is active in slot b (before: 1.0.0 in slot a): committed"
    assert (slots.read_state(EXAM).committed, slots.read_state(EXAM).trying) == ("b", None)
    rc, _, err = cli(capsys, "bundle", "commit", *where)
    assert rc == 1 and "no tiny-test update awaits a commit" in err
    assert updates.commit(EXAM, config, "1.1.0").health == "already committed"  # a repeated commit

    updates.install(releases["0.9.0-down"], config, commit=False)
    rc, out, _ = cli(capsys, "bundle", "rollback", "--offline", *where)
    assert rc == 0 and out.splitlines()[-1] == (f"{EXAM} 1.1.0 is active in slot b (before: 0.9.0 in slot a): 0.9.0 was on trial "
                                                "and is no longer served")
    assert slots.active_slot(EXAM) == "b" and slots.read_state(EXAM).trying is None

    updates.install(releases["0.9.0-down"], config, commit=False)
    assert updates.recover(config) == [f"{EXAM}: an update was not committed; back on slot b"]
    assert slots.active_slot(EXAM) == "b"
    with pytest.raises(updates.NotInstalled, match="awaits a commit"):
        updates.commit(EXAM, config, "0.9.0")


def test_a_bundle_whose_self_test_fails_is_removed_and_the_old_one_stays(tmp_path, capsys, signer, releases):
    config = kiosk_config(tmp_path, signer)
    updates.install(releases["1.0.0"], config)
    rc, _, err = cli(capsys, "bundle", "install", str(releases["broken"]), "--offline", *installed_cli(tmp_path, config))
    assert rc == 1 and f"{EXAM} 1.2.0 failed its self-test on this device" in err and "max |dp|" in err
    slots = Slots(config.updates.installed_root(config.store.data_dir))
    assert slots.active_slot(EXAM) == "a" and not slots.slot_dir(EXAM, "b").exists()
    assert [e.version for e in updates.list_installed(config)] == ["1.0.0"]


class FailingKiosk:
    """A kiosk whose reload raises, as one does when the new bundle cannot be loaded there."""

    def __init__(self):
        self.reloads = 0

    def reload_exam(self, exam_id):
        self.reloads += 1
        if self.reloads == 1:
            raise RuntimeError("out of GPU memory")
        return {"version": "1.0.0"}

    def selftest_exam(self, exam_id):
        return {"ok": True}


def test_a_failed_health_check_switches_back_and_reloads_the_old_bundle(tmp_path, signer, releases):
    config = kiosk_config(tmp_path, signer)
    updates.install(releases["1.0.0"], config)
    kiosk = FailingKiosk()
    with pytest.raises(updates.HealthCheckFailed, match="out of GPU memory.*rolled back to slot a \\(1.0.0\\)"):
        updates.install(releases["1.1.0"], config, updates.InProcess(kiosk))
    assert kiosk.reloads == 2  # the new bundle, then the old one again
    slots = Slots(config.updates.installed_root(config.store.data_dir))
    assert slots.active_slot(EXAM) == "a" and slots.read_state(EXAM).committed == "a"


def test_install_from_the_one_archive_on_a_usb_drive(tmp_path, capsys, signer, releases):
    config = kiosk_config(tmp_path, signer)
    drive = tmp_path / "media" / "USB" / "updates"
    drive.mkdir(parents=True)
    rc, _, err = cli(capsys, "bundle", "install", "--from-drives", "--offline", *installed_cli(tmp_path, config))
    assert rc == 1 and "0 .bedside archives on the drives" in err
    (drive / "tiny.bedside").write_bytes(releases["1.0.0"].read_bytes())
    (drive / "link.bedside").symlink_to(releases["1.1.0"])  # links on a drive are not followed
    rc, out, _ = cli(capsys, "bundle", "install", "--from-drives", "--offline", *installed_cli(tmp_path, config))
    assert rc == 0 and f"{EXAM} 1.0.0 is active" in out


def test_install_without_a_running_kiosk_asks_for_offline(tmp_path, capsys, signer, releases):
    config = kiosk_config(tmp_path, signer)
    rc, _, err = cli(capsys, "bundle", "install", str(releases["1.0.0"]), "--url", "http://127.0.0.1:9",
                     *installed_cli(tmp_path, config))
    assert rc == 1 and "no kiosk answers at http://127.0.0.1:9" in err and "--offline" in err
    assert tree(tmp_path / "data") == {}


def test_existing_manifests_without_an_appliance_range_stay_valid(tmp_path):
    bundle = make_bundle(tmp_path / "src", "1.0.0")
    manifest = json.loads((bundle / "manifest.json").read_text())
    del manifest["appliance"]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    m = load_bundle(bundle).manifest
    assert m.appliance is None and m.runs_on("0.1.0")


def test_the_kiosk_reloads_an_exam_from_its_slot_and_self_tests_the_serving_model(tmp_path, signer, releases):
    from kiosk_support import kiosk_client

    config = kiosk_config(tmp_path, signer)
    updates.install(releases["1.0.0"], config)
    with kiosk_client(config) as client:
        updates.install(releases["1.1.0"], config)  # offline: the running kiosk still serves 1.0.0
        assert client.get("/api/v1/exams").get_json()["exams"][0]["version"] == "1.0.0"
        reloaded = client.post(f"/api/v1/exams/{EXAM}/reload", json={})
        assert reloaded.status_code == 200 and reloaded.get_json()["version"] == "1.1.0"
        check = client.post(f"/api/v1/exams/{EXAM}/selftest", json={}).get_json()
        assert check["ok"] and check["version"] == "1.1.0" and check["max_prob_diff"] <= check["tolerance"]
        assert client.post("/api/v1/exams/nope/reload", json={}).status_code == 404
        assert client.post(f"/api/v1/exams/{EXAM}/reload", data="x", content_type="text/plain").status_code == 415


def test_bundle_selftest_command(tmp_path, capsys, signer, releases):
    config = kiosk_config(tmp_path, signer)
    updates.install(releases["1.0.0"], config)
    rc, out, _ = cli(capsys, "bundle", "selftest", EXAM, *installed_cli(tmp_path, config))
    assert rc == 0 and f"{EXAM} 1.0.0: self-test passed" in out
    rc, _, err = cli(capsys, "bundle", "selftest", "nope", *installed_cli(tmp_path, config))
    assert rc == 1 and "no bundle serves exam 'nope'" in err


def test_rollback_refuses_a_previous_slot_whose_files_were_damaged(tmp_path, capsys, signer, releases):
    config = kiosk_config(tmp_path, signer)
    updates.install(releases["1.0.0"], config)
    updates.install(releases["1.1.0"], config)
    slots = Slots(config.updates.installed_root(config.store.data_dir))
    with open(slots.slot_dir(EXAM, "a") / "model.onnx", "r+b") as fh:
        fh.write(b"\0")
    rc, _, err = cli(capsys, "bundle", "rollback", EXAM, "--offline", *installed_cli(tmp_path, config))
    assert rc == 1 and f"{EXAM} slot a is damaged" in err and "does not match the manifest" in err
    assert slots.active_slot(EXAM) == "b"


def test_a_first_install_that_fails_its_health_check_is_no_longer_offered_by_the_kiosk(tmp_path, signer):
    from device.kiosk import create_app
    from device.appliance.context import appliance_of
    from tiny_bundle import edit_manifest

    config = kiosk_config(tmp_path, signer)
    make_bundle(tmp_path / "shipped" / "tiny", "1.0.0")  # the kiosk starts with the shipped tiny exam
    new_exam = make_bundle(tmp_path / "src", "1.0.0")
    edit_manifest(new_exam, id="second-exam")
    archive = signer.archive(new_exam, tmp_path / "second.bedside")
    kiosk = appliance_of(create_app(config))
    try:
        live = updates.InProcess(kiosk)

        class LoadsThenFails:  # the kiosk really loads the new exam; then the check fails
            def check(self, exam_id, version):
                kiosk.reload_exam(exam_id)
                raise updates.HealthCheckFailed("the clinic's test image was misread")

            def restore(self, exam_id):
                live.restore(exam_id)

        with pytest.raises(updates.HealthCheckFailed, match="misread\\); the exam is not installed$"):
            updates.install(archive, config, LoadsThenFails())
        assert kiosk.exams.ids() == [EXAM]
        assert live.check(EXAM, "1.0.0").startswith(f"the live kiosk serves {EXAM} 1.0.0")
    finally:
        kiosk.close()


def test_a_second_install_of_the_same_exam_waits_for_none_and_says_busy(tmp_path, signer, releases):
    config = kiosk_config(tmp_path, signer)
    updates.install(releases["1.0.0"], config)
    slots = Slots(config.updates.installed_root(config.store.data_dir))
    with slots.locked(EXAM):  # as a running install holds it
        with pytest.raises(updates.Busy, match=f"another install, activation or rollback of {EXAM} is running"):
            updates.install(releases["1.1.0"], config)
        assert updates.recover(config) == []  # the kiosk starting meanwhile leaves the running install alone
    assert updates.install(releases["1.1.0"], config).version == "1.1.0"
