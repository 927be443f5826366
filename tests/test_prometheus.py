"""The fleet's alert rules (systemd/prometheus/bedside-alerts.yml) as Prometheus itself reads them:
promtool checks them and runs their unit tests, and a real Prometheus scrapes a running kiosk,
sees its ready gauge and evaluates every rule against it without an error."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from loopback import free_port
from kiosk_support import ROOT, running_server
from tiny_bundle import make_tiny_bundle

PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
RULES = ROOT / "systemd" / "prometheus" / "bedside-alerts.yml"
RULE_TESTS = ROOT / "tests" / "prometheus" / "bedside-alerts.test.yml"

pytestmark = pytest.mark.skipif(PROMTOOL is None or PROMETHEUS is None,
                                reason="prometheus and promtool missing (apt-get install prometheus; .ci/run does)")


def test_promtool_checks_the_rules():
    done = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 11 rules found" in done.stdout


def test_promtool_runs_the_rules_unit_tests():
    done = subprocess.run([PROMTOOL, "test", "rules", str(RULE_TESTS)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def _query(base: str, path: str, **params: str) -> dict:
    url = f"{base}{path}?{urllib.parse.urlencode(params)}" if params else base + path
    with urllib.request.urlopen(url, timeout=10) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    return body["data"]


def _until(what, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"not within {timeout} s")


def test_a_real_prometheus_scrapes_a_running_kiosk(tmp_path):
    bundle = make_tiny_bundle(tmp_path / "bundles" / "tiny")
    with running_server(tmp_path / "data", [bundle]) as kiosk:
        target = urllib.parse.urlsplit(kiosk.url).netloc
        port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            f"rule_files: ['{RULES}']\n"
            f"scrape_configs:\n  - job_name: bedside\n    static_configs: [{{targets: ['{target}']}}]\n")
        log = tmp_path / "prometheus.log"
        with open(log, "wb") as out:
            prometheus = subprocess.Popen(
                [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{port}"], stdout=out, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        try:
            def ready_sample():
                try:
                    return _query(base, "/api/v1/query", query='bedside_ready{job="bedside"}')["result"]
                except OSError:
                    return None  # Prometheus is still starting

            [sample] = _until(ready_sample)
            assert sample["metric"]["instance"] == target and sample["value"][1] == "1"
            with urllib.request.urlopen(kiosk.url + "metrics", timeout=10) as response:
                exported = set(re.findall(r"^# TYPE (\w+) ", response.read().decode(), re.M))
            watched = set(re.findall(r"\bbedside_\w+", RULES.read_text()))
            assert watched and watched <= exported, watched - exported  # every rule watches a real series
            # the drift monitor's state as BedsideModelDrift reads it: this bundle ships no reference
            drift = _query(base, "/api/v1/query", query='bedside_drift_state{job="bedside"} == 1')["result"]
            assert [(d["metric"]["exam"], d["metric"]["state"]) for d in drift] == [("tiny-test", "collecting")], drift
            with urllib.request.urlopen(kiosk.url + "api/v1/monitoring", timeout=10) as response:
                [reason] = json.loads(response.read())["exams"]["tiny-test"]["reasons"]
            assert reason.startswith("No monitoring reference in this bundle: ")
            groups = _until(lambda: [g for g in _query(base, "/api/v1/rules")["groups"]
                                     if all(r.get("lastEvaluation", "").startswith("20") for r in g["rules"])])
            rules = [r for g in groups for r in g["rules"]]
            assert len(rules) == 11 and all(r["health"] == "ok" for r in rules), rules
            firing = [a for a in _query(base, "/api/v1/alerts")["alerts"] if a["state"] != "inactive"]
            assert not firing, firing  # a healthy kiosk raises nothing
        finally:
            prometheus.terminate()
            assert prometheus.wait(30) == 0, log.read_text()[-2000:]
