"""`bedside acceptance` on real films: a local labelled set scored exactly as the kiosk serves the
model, its report and document, the rule's proposal and its refusals, apply / revert, and `infer` /
`eval --data-dir` deciding at the site's point. Each run is the command itself, in this process."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from html.parser import HTMLParser

import pytest

from device.cli import main as bedside
from device.core.site_record import SiteRecord
from models.bundle import load_bundle, write_manifest


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = bedside(list(args))
    out, err = capsys.readouterr()
    return code, out, err


class _Links(HTMLParser):
    """Every place an HTML page would fetch something from."""

    def __init__(self):
        super().__init__()
        self.fetched = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("src", "href") and value and not value.startswith("#"):
                self.fetched.append((tag, value))


def test_the_report_and_document_say_what_ran_on_which_cases(accepted, monitored_chest, chest_cases):
    document = json.loads((accepted["out"] / "acceptance.json").read_text())
    bundle = load_bundle(monitored_chest)
    assert document["bundle"]["sha256"] == bundle.sha256 and document["bundle"]["version"] == bundle.manifest.version
    served = document["served"]
    assert served["file_sha256"] == bundle.sha256_of(served["file"]) and served["backend"] and served["precision"]
    assert document["machine"]["model"] and document["machine"]["cores"] >= 1
    files = sorted(p for p in chest_cases["accept"].rglob("*") if p.is_file())
    assert len(document["cases"]) == len(files) == 160
    by_name = {c["file"]: c for c in document["cases"]}
    for path in files:
        case = by_name[path.relative_to(chest_cases["accept"]).as_posix()]
        assert case["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    f = document["figures"]
    c = f["counts"]  # 90 pneumonia and 70 normal films; what the exam refuses (about 1%) is in no figure
    assert c["positive"] <= 90 and c["negative"] <= 70 and c["positive"] + c["negative"] == c["judged"]
    assert c["cases"] - c["judged"] == c["ungradable"] <= 3 and 0.9 < f["auc"] <= 1
    assert {g["group"] for g in f["subgroups"]} >= {"normal IM-", "bacterial pneumonia", "viral pneumonia"}
    assert [r["figure"] for r in f["card"]] == ["auc", "sensitivity", "specificity"]
    proposal = document["proposal"]
    assert proposal["sensitivity"] >= 0.965 and document["refused"] is None
    assert proposal["sensitivity_ci"][0] <= proposal["sensitivity"] <= proposal["sensitivity_ci"][1]
    assert document["monitoring"]["signals"] and document["monitoring"]["template"] == bundle.manifest.monitoring.template
    html = (accepted["out"] / "report.html").read_text()
    links = _Links()
    links.feed(html)
    assert links.fetched == []  # offline and self-contained: nothing to fetch, no script
    assert "<script" not in html and html.count("<svg") == 2 and "@media print" in html
    assert f"{proposal['threshold']:.4f}" in html and bundle.sha256 in html
    assert "the highest threshold that keeps sensitivity for pneumonia at or above 0.965" in html


def test_a_small_or_hopeless_set_is_refused_with_the_rule(tmp_path, capsys, monitored_chest, chest_cases):
    code, out, _ = run(capsys, "acceptance", "run", "--bundle", str(monitored_chest), "--data",
                       str(chest_cases["small"]), "--out", str(tmp_path / "small"), "--data-dir", str(tmp_path / "d"),
                       "--json", "--bootstrap", "100")
    summary = json.loads(out)
    assert code == 2 and summary["proposal"] is None
    assert "at least 50 cases of pneumonia and 50 others" in summary["refused"] and "this set has 20 and 20" in summary["refused"]
    swapped = tmp_path / "swapped"  # every film under the other label: the model cannot meet the floor
    shutil.copytree(chest_cases["accept"] / "NORMAL", swapped / "PNEUMONIA", symlinks=True)
    shutil.copytree(chest_cases["accept"] / "PNEUMONIA", swapped / "NORMAL", symlinks=True)
    code, out, _ = run(capsys, "acceptance", "run", "--bundle", str(monitored_chest), "--data", str(swapped),
                       "--out", str(tmp_path / "swapped-out"), "--data-dir", str(tmp_path / "d"), "--json",
                       "--bootstrap", "100")
    assert code == 2 and "The floor cannot be met here" in json.loads(out)["refused"]
    assert "No site operating point can be proposed" in (tmp_path / "swapped-out" / "report.html").read_text()


def test_a_csv_of_files_and_labels_is_a_labelled_set(tmp_path, capsys, monitored_chest, chest_cases, datasets):
    """A CSV names files (DICOM too) and labels; a film the kiosk would not judge (a hip radiograph) is
    a case, UNGRADABLE with the kiosk's reason, and counts in no figure."""
    hip = datasets / "dicom" / "cr_dx" / "RG2_JPLL.dcm"
    rows = ["file,label"] + [f"{p.relative_to(chest_cases['small']).as_posix()},{p.parent.name.lower()}"
                             for p in sorted(chest_cases["small"].rglob("*.jpeg"))] + [f"{hip},NORMAL"]
    table = tmp_path / "cases.csv"
    table.write_text("\n".join(rows) + "\n")
    for path in chest_cases["small"].rglob("*.jpeg"):
        target = tmp_path / path.relative_to(chest_cases["small"])
        target.parent.mkdir(exist_ok=True)
        target.symlink_to(path)
    code, out, _ = run(capsys, "acceptance", "run", "--bundle", str(monitored_chest), "--data", str(table),
                       "--out", str(tmp_path / "o"), "--data-dir", str(tmp_path / "d"), "--json", "--bootstrap", "50")
    summary = json.loads(out)
    assert code == 2 and summary["cases"] == 41 and summary["judged"] == 40 and summary["ungradable"] == 1
    [case] = [c for c in json.loads((tmp_path / "o" / "acceptance.json").read_text())["cases"] if not c["gradable"]]
    assert case["file"] == str(hip) and case["reasons"] and case["triage"] == "UNGRADABLE"


def test_apply_then_infer_and_eval_decide_at_the_site_point(tmp_path, capsys, accepted, monitored_chest, chest_cases):
    data = tmp_path / "data"
    document = accepted["out"] / "acceptance.json"
    threshold = json.loads(document.read_text())["proposal"]["threshold"]
    judged = json.loads(document.read_text())["figures"]["counts"]["judged"]  # the cases its check did not refuse
    code, out, _ = run(capsys, "acceptance", "apply", str(document), "--signed-by", "Dr Ada Obi, clinical lead",
                       "--bundle", str(monitored_chest), "--data-dir", str(data))
    assert code == 0 and "Site operating point, accepted" in out and f"on {judged} local cases by Dr Ada Obi" in out
    code, out, _ = run(capsys, "eval", "--bundle", str(monitored_chest), "--data", str(chest_cases["small"]),
                       "--data-dir", str(data), "--json", "--bootstrap", "20")
    report = json.loads(out)
    assert code == 0 and report["operating_point"]["source"] == "site"
    assert report["threshold"] == pytest.approx(threshold) == report["operating_point"]["threshold"]
    code, out, _ = run(capsys, "eval", "--bundle", str(monitored_chest), "--data", str(chest_cases["small"]),
                       "--json", "--bootstrap", "20")
    assert json.loads(out)["operating_point"]["source"] == "bundle"
    film = next(chest_cases["small"].rglob("*.jpeg"))
    code, out, _ = run(capsys, "infer", "--bundle", str(monitored_chest), "--data-dir", str(data), "--json", str(film))
    assert json.loads(out)["operating_point"]["accepted_by"] == "Dr Ada Obi, clinical lead"
    code, out, _ = run(capsys, "acceptance", "revert", "--signed-by", "Dr Ada Obi", "--bundle", str(monitored_chest),
                       "--data-dir", str(data))
    assert code == 0 and "model's own operating point again" in out
    code, out, _ = run(capsys, "eval", "--bundle", str(monitored_chest), "--data", str(chest_cases["small"]),
                       "--data-dir", str(data), "--json", "--bootstrap", "20")
    assert json.loads(out)["operating_point"]["source"] == "bundle"
    record = SiteRecord.open(data)
    assert [e.action for e in record.history("chest-xray-pneumonia")] == ["reverted", "applied"]
    record.close()


def test_apply_refuses_an_edited_file_or_another_bundle(tmp_path, capsys, accepted, monitored_chest):
    document = json.loads((accepted["out"] / "acceptance.json").read_text())
    edited = tmp_path / "edited.json"
    document["proposal"]["threshold"] = round(document["proposal"]["threshold"] + 0.05, 6)
    edited.write_text(json.dumps(document))
    code, _, err = run(capsys, "acceptance", "apply", str(edited), "--signed-by", "X", "--bundle", str(monitored_chest),
                       "--data-dir", str(tmp_path / "d"))
    assert code == 1 and "does not follow from its own cases" in err
    other = tmp_path / "chest-next"
    shutil.copytree(monitored_chest, other)
    m = load_bundle(other).manifest
    next_version = m.version[:m.version.rindex(".") + 1] + str(int(m.version.rsplit(".", 1)[1]) + 1)
    write_manifest(other, m.model_copy(update={"version": next_version}))
    code, _, err = run(capsys, "acceptance", "apply", str(accepted["out"] / "acceptance.json"), "--signed-by", "X",
                       "--bundle", str(other), "--data-dir", str(tmp_path / "d"))
    assert code == 1 and re.search(rf"this acceptance is for chest-xray-pneumonia {re.escape(m.version)} .* but the kiosk "
                                   rf"serves chest-xray-pneumonia {re.escape(next_version)}", err)
    assert not (tmp_path / "d" / "site.sqlite3").exists() or SiteRecord.open(tmp_path / "d").history() == []
