"""The appliance install: `pip install .` with no extras, in a fresh venv, gives a working `bedside
serve`, `infer`, `eval`, `bench` and `doctor`, without torch or onnx; `train`, `export` and
`optimize` say which extra they need. Installs from the package registry (pip's cache helps)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kiosk_support import start_server, stop_server

ROOT = Path(__file__).resolve().parent.parent
CHEST = ROOT / "models" / "bundles" / "chest-xray-pneumonia"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def appliance(tmp_path_factory) -> Path:
    """The bin/ folder of a fresh venv with `pip install .` of a copy of this checkout."""
    base = tmp_path_factory.mktemp("appliance")
    source = base / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "__pycache__", "build", "dist", "*.egg-info", ".pytest_cache", "runs", "artifacts"))
    subprocess.run([sys.executable, "-m", "venv", str(base / "venv")], check=True)
    pip = subprocess.run([str(base / "venv" / "bin" / "python"), "-m", "pip", "install", "-q", str(source)],
                         capture_output=True, text=True, timeout=1500, cwd=base)
    assert pip.returncode == 0, pip.stderr[-4000:]
    return base / "venv" / "bin"


def run(bin_dir: Path, *args: str, rc: int = 0) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([str(bin_dir / "bedside"), *map(str, args)], capture_output=True, text=True,
                          timeout=600, cwd=bin_dir, env=env)
    assert proc.returncode == rc, proc.stderr[-4000:] + proc.stdout[-2000:]
    return proc


def test_no_torch_or_onnx_in_the_appliance(appliance):
    code = "import importlib.util as u; print([m for m in ('torch', 'onnx') if u.find_spec(m)])"
    out = subprocess.run([str(appliance / "python"), "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_doctor_infer_eval_and_bench_work(appliance, datasets, tmp_path):
    report = json.loads(run(appliance, "doctor", "--json").stdout)
    assert [b["id"] for b in report["bundles"] if b["ok"]] == ["chest-xray-pneumonia", "skin-lesion-triage"]
    samples = datasets / "chest-xray" / "fullres-samples"
    images = {label: sorted((samples / label).glob("*.jpeg"))[:2] for label in ("NORMAL", "PNEUMONIA")}
    line = json.loads(run(appliance, "infer", "--bundle", CHEST, "--json", images["PNEUMONIA"][0]).stdout.splitlines()[0])
    assert line["triage"] in ("URGENT", "ROUTINE", "UNGRADABLE") and line["model"]["id"] == "chest-xray-pneumonia"
    for label, files in images.items():
        (tmp_path / "data" / label).mkdir(parents=True)
        for f in files:
            (tmp_path / "data" / label / f.name).symlink_to(f)
    evaluation = json.loads(run(appliance, "eval", "--bundle", CHEST, "--data", tmp_path / "data", "--json").stdout)
    assert evaluation["n"] == 4
    bench = json.loads(run(appliance, "bench", "--bundle", CHEST, "--json", "--iterations", "4", "--rounds", "1", "--batch", "2").stdout)
    assert any(r["backend"] == "onnxruntime" for r in bench["results"])
    assert any(s.startswith("pytorch-eager: torch is not installed") for s in bench["skipped"])


def test_serve_answers_health(appliance, tmp_path):
    server = start_server(tmp_path / "data", [], bedside=(str(appliance / "bedside"),), cwd=tmp_path)
    client = server.client()
    try:
        status, health = client.get_json("/api/v1/health")
    finally:
        client.close()
        stop_server(server)
    assert status == 200 and health["ready"] and health["models"][0]["id"] == "chest-xray-pneumonia"


@pytest.mark.parametrize("command, extra", [("train", "train"), ("export", "train"), ("optimize", "optimize")])
def test_workstation_commands_name_their_extra(appliance, command, extra):
    proc = run(appliance, command, "--help", rc=1)
    assert f"pip install 'bedside[{extra}]'" in proc.stderr and "Traceback" not in proc.stderr
