"""The study store on its own: pragmas, migrations, content-addressed images, the append-only audit
log, and the start-up check that refuses a corrupt database and reports missing files."""

from __future__ import annotations

import hashlib
import json
import sqlite3

import numpy as np
import pytest

from device.core.store import DB_NAME, MIGRATIONS, NewStudy, Store, StoredImage, StoreError, StudyFilter
from device.core.study_result import StudyResult
from device.decision.quality import QualityReport
from device.decision.triage import ModelOutput, ModelRef, TriageResult


def new_study(sha: str, size: int, triage: str = "ROUTINE", reference: str = "") -> NewStudy:
    said = ModelOutput(label="NORMAL", probabilities={"NORMAL": 0.8, "PNEUMONIA": 0.2}, urgent_probability=0.2)
    result = TriageResult.of(
        said, triage, np.arange(12, dtype=np.float32).reshape(3, 4),
        source="f.png", threshold=0.5, quality=QualityReport(True, ()), timings_ms={"inference": 1.0},
        model=ModelRef("m", "1.0.0", "ab" * 32, "fp32", "onnxruntime"),
    )
    image = StoredImage(sha256=sha, bytes=size, media_type="image/png", source_format="png", height=8, width=8)
    return NewStudy(exam="exam", source="upload", reference=reference, operator="op", filename="f.png", image=image,
                    result=StudyResult(result=result))


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path / "data")
    yield s
    s.close()


def add(store: Store, data: bytes, **kw):
    return store.add_study(new_study(store.put_image(data), len(data), **kw))


def test_pragmas_and_migrations(store, tmp_path):
    db = store._db
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    versions = [v for (v,) in db.execute("SELECT version FROM schema_migrations")]
    assert versions == [v for v, _ in MIGRATIONS]


def test_the_audit_logs_check_takes_every_action_and_older_entries_survive_its_rebuild(tmp_path):
    from device.core.store import AUDIT_ACTIONS
    from device.core.store.schema import FIRST_AUDIT_ACTIONS, statements

    s = Store.open(tmp_path)
    try:
        for action in AUDIT_ACTIONS:  # the newest migration's CHECK knows every action the code writes
            s.audit(action, "dr a")
        with pytest.raises(sqlite3.IntegrityError):
            s.audit("study_deleted", "dr a")
    finally:
        s.close()
    # A store made before migration 5: its entries are kept, and the new actions accepted after it.
    (tmp_path / "old").mkdir()
    db = sqlite3.connect(tmp_path / "old" / DB_NAME, isolation_level=None)
    for version, sql in MIGRATIONS[:4]:
        for statement in statements(sql):
            db.execute(statement)
    db.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
    db.executemany("INSERT INTO schema_migrations VALUES (?, 'then')", [(v,) for v, _ in MIGRATIONS[:4]])
    db.execute("INSERT INTO audit_log (at, operator, action, detail) VALUES ('then', 'dr z', 'settings_changed', '{}')")
    with pytest.raises(sqlite3.IntegrityError):
        db.execute("INSERT INTO audit_log (at, action) VALUES ('then', 'study_reopened')")
    db.close()
    s = Store.open(tmp_path / "old")
    try:
        s.audit("study_reopened", "dr a")
        assert [(e.action, e.operator) for e in s.audit_log()] == [("study_reopened", "dr a"), ("settings_changed", "dr z")]
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            s._db.execute("DELETE FROM audit_log")
    finally:
        s.close()
    assert set(FIRST_AUDIT_ACTIONS) < set(AUDIT_ACTIONS)


def test_images_are_content_addressed_and_stored_once(store):
    a = add(store, b"image-bytes-1")
    b = add(store, b"image-bytes-1")
    assert a.id != b.id and a.image_sha256 == b.image_sha256 == hashlib.sha256(b"image-bytes-1").hexdigest()
    path = store.image_path(a.image_sha256)
    assert path.read_bytes() == b"image-bytes-1" and path.parent.name == a.image_sha256[:2]
    assert list(store.tmp_dir.iterdir()) == []
    got = store.get(a.id)
    np.testing.assert_array_equal(got.cam, np.arange(12, dtype=np.float32).reshape(3, 4))
    assert got.result["model"]["sha256"] == got.model.sha256 == "ab" * 32 and got.model.backend == "onnxruntime"


def test_every_result_records_model_backend_precision_threshold_timings(store):
    s = add(store, b"x")
    row = store._db.execute(
        "SELECT model_id, model_version, model_sha256, backend, precision, threshold, timings_json FROM studies"
    ).fetchone()
    assert row == ("m", "1.0.0", "ab" * 32, "onnxruntime", "fp32", 0.5, '{"inference": 1.0}')
    assert s.threshold == 0.5


def test_audit_log_is_append_only(store):
    s = add(store, b"y")
    store.audit("study_viewed", "dr", s.id)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        store._db.execute("UPDATE audit_log SET operator = 'someone else'")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        store._db.execute("DELETE FROM audit_log")
    with pytest.raises(sqlite3.DatabaseError, match="never deleted"):
        store._db.execute("DELETE FROM studies")
    assert [e.action for e in store.audit_log()] == ["study_viewed", "study_created"]
    with pytest.raises(sqlite3.IntegrityError):
        store.audit("made_up_action", "dr")


def test_worklist_is_every_unreviewed_study_urgent_first_then_longest_waiting(store):
    for i, t in enumerate(["ROUTINE", "URGENT", "UNGRADABLE", "ROUTINE", "URGENT"]):
        add(store, f"img{i}".encode(), triage=t)
    for i in range(20):  # twenty newer routine studies push nothing urgent out
        add(store, f"newer{i}".encode(), triage="ROUTINE")
    studies, total = store.worklist(limit=4)
    assert total == 25 and [(s.id, s.triage) for s in studies] == [
        (2, "URGENT"), (5, "URGENT"), (3, "UNGRADABLE"), (1, "ROUTINE")
    ]
    assert store.unreviewed_counts() == {"URGENT": 2, "UNGRADABLE": 1, "ROUTINE": 22}
    paged = [s.id for offset in range(0, 25, 4) for s in store.worklist(4, offset)[0]]
    assert sorted(paged) == list(range(1, 26))  # every page together: each study exactly once

    store.review(2, "dr", "seen")
    studies, total = store.worklist(limit=2)
    assert total == 24 and [s.id for s in studies] == [5, 3]
    assert store.unreviewed_counts()["URGENT"] == 1
    assert [s.id for s in store.list(StudyFilter(reviewed=True), 10)[0]] == [2]
    assert store.list(StudyFilter(triage=("URGENT",), reviewed=False), 10)[1] == 1
    studies, total = store.list(StudyFilter(triage=("URGENT",)), limit=1)
    assert total == 2 and studies[0].id == 5


def test_first_with_image_finds_the_earlier_study_of_the_same_bytes(store):
    first = add(store, b"same")
    add(store, b"other")
    again = add(store, b"same")
    assert store.first_with_image(again.image_sha256) == first.id
    assert store.first_with_image("0" * 64) is None


def test_reopen_keeps_everything_and_reports_orphans_and_missing_files(tmp_path):
    s = Store.open(tmp_path)
    kept = add(s, b"kept")
    gone = add(s, b"gone")
    s.close()
    (tmp_path / "images" / "00" / ("00" * 32)).write_bytes(b"orphan: image written, row never committed")
    (tmp_path / "tmp" / "half-written").write_bytes(b"partial")
    s.image_path(gone.image_sha256).unlink()
    s = Store.open(tmp_path)
    try:
        assert s.check.studies == 2 and s.check.orphan_files == 1
        assert not s.check.ok and s.check.problems == (f"image {gone.image_sha256[:12]} is missing",)
        assert s.get(kept.id).image_sha256 == kept.image_sha256
        assert list((tmp_path / "tmp").iterdir()) == []
    finally:
        s.close()


def test_corrupt_database_is_refused(tmp_path):
    Store.open(tmp_path).close()
    db = tmp_path / DB_NAME
    data = bytearray(db.read_bytes())
    data[:16] = b"this is not sql!"
    db.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="not usable"):
        Store.open(tmp_path)


def test_database_from_a_newer_build_is_refused(tmp_path):
    Store.open(tmp_path).close()
    with sqlite3.connect(tmp_path / DB_NAME) as db:
        db.execute("INSERT INTO schema_migrations VALUES (99, 'later')")
    db.close()
    with pytest.raises(StoreError, match="schema version 99"):
        Store.open(tmp_path)


def test_all_shard_directories_exist_after_open(store):
    assert sorted(p.name for p in store.images_dir.iterdir()) == [f"{i:02x}" for i in range(256)]


def test_iter_studies_reads_everything_in_batches_without_heatmaps(store):
    for i in range(7):
        add(store, f"img{i}".encode(), triage="URGENT" if i % 2 else "ROUTINE")
    everything = list(store.iter_studies(StudyFilter(), batch=2))
    assert [s.id for s in everything] == [7, 6, 5, 4, 3, 2, 1]
    assert all(s.cam is None for s in everything) and everything[0].result["model"]["id"] == "m"
    assert [s.id for s in store.iter_studies(StudyFilter(triage=("URGENT",)), batch=2)] == [6, 4, 2]


def test_an_ungradable_study_keeps_what_the_model_said_in_its_row_and_shows_none_of_it(store):
    study = add(store, b"blank", triage="UNGRADABLE")
    assert (study.label, study.probability, study.cam) == (None, None, None)
    assert study.result["urgent_probability"] is None and study.result["probability"] is None
    assert study.result["ungraded_model_output"] == {
        "probabilities": {"NORMAL": 0.8, "PNEUMONIA": 0.2}, "probability": 0.2, "label": "NORMAL"}
    row = store._db.execute("SELECT label, probability, cam FROM studies WHERE id = ?", (study.id,)).fetchone()
    assert row == ("NORMAL", 0.2, None)  # for audit; no heatmap was ever made part of the result


def test_migration_moves_an_older_ungradable_score_out_of_sight(tmp_path):
    s = Store.open(tmp_path)
    old = add(s, b"blank", triage="UNGRADABLE")
    kept = old.result["ungraded_model_output"]
    older = {**old.result, "probabilities": kept["probabilities"], "probability": kept["probability"],
             "label": kept["label"]}
    del older["ungraded_model_output"]  # as a study was saved before migration 2
    s._db.execute("UPDATE studies SET result_json = ? WHERE id = ?", (json.dumps(older), old.id))
    s._db.execute("DELETE FROM schema_migrations WHERE version = 2")
    s._db.execute("DROP INDEX studies_to_review")
    s._db.execute("DROP INDEX studies_by_image")
    s.close()
    s = Store.open(tmp_path)
    try:
        result = s.get(old.id).result
        assert result["probabilities"] is None and result["probability"] is None and result["label"] is None
        assert result["ungraded_model_output"] == kept
    finally:
        s.close()
