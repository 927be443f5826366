"""Shared fixtures, one place for all of them: what a test asks for by name is defined here, and
the helpers these fixtures stand on live in the *_support.py modules beside it."""

from __future__ import annotations

import logging
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

import fakes
from browser_support import AXE, CHROMIUM
from camera_peer import camera_video, FFMPEG, sample_xrays
from dicom_peers import need_orthanc
from device.core.exams import ExamRegistry
from device.core.settings import KioskConfig, ModelSettings
from device.runtime.triager import Triager
from device.tensorrt import backend as tensorrt_backend
from device.updates import generate_keys
from kiosk_support import CHOICE_SEED, TINY_MODELS, form_client, shipped_bundle
from models.bundle import default_bundles_dir, find_bundles, load_bundle
from models.datasets import datasets_dir
from orthanc_peer import Orthanc
from tiny_bundle import declare_refusal, make_tiny_bundle, tiny_onnx
from update_support import Signer, make_bundle


@pytest.fixture(scope="session")
def datasets() -> Path:
    """The shared development datasets; tests that need real images skip where they are absent."""
    root = datasets_dir()
    if not root.is_dir():
        pytest.skip(f"datasets not found at {root}; set BEDSIDE_DATASETS")
    return root


@pytest.fixture
def state_changes(caplog) -> Callable[[], list[tuple[str, str]]]:
    """The capture streams' state changes so far, in order, as (state, reason), read from the log
    records they write for every change."""
    caplog.set_level(logging.DEBUG, logger="device.capture.stream")
    return lambda: [(r.state, r.reason) for r in caplog.records
                    if r.name == "device.capture.stream" and hasattr(r, "state")]


# ---- A kiosk on the tiny bundle: its data dir, drives, the app and a client that posts as its pages do ---


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """The tiny bundle, with its backend choice timed once for the session: every kiosk of the
    ``config`` fixture starts from that cache, as a kiosk's second boot does (self-test only), instead
    of timing each candidate again (about 0.4 s a kiosk). The timing itself is tested in
    test_backend_choice."""
    bundle = make_tiny_bundle(tmp_path_factory.mktemp("bundles") / "tiny")
    ExamRegistry.load(ModelSettings(bundles=[bundle], **TINY_MODELS), cache_dir=bundle.parent / CHOICE_SEED).close()
    return bundle



@pytest.fixture(scope="session")
def tiny_refusing_bundle(tmp_path_factory) -> Path:
    """The tiny bundle with a refusal check in its graph and manifest (tiny_bundle.REFUSAL): id
    tiny-refusing, "a chest X-ray"."""
    return make_tiny_bundle(tmp_path_factory.mktemp("bundles") / "tiny-refusing", refusal=True)


@pytest.fixture
def drives(tmp_path) -> dict[str, Path]:
    """An import folder (a 'USB drive' with images on it) and an export folder."""
    usb = tmp_path / "media" / "usb"
    (usb / "DCIM").mkdir(parents=True)
    out = tmp_path / "export"
    out.mkdir()
    return {"import": tmp_path / "media", "usb": usb, "export": out}



@pytest.fixture
def config(tmp_path, tiny_bundle, drives) -> KioskConfig:
    shutil.copytree(tiny_bundle.parent / CHOICE_SEED, tmp_path / "data")
    return KioskConfig.model_validate(
        {
            "store": {"data_dir": str(tmp_path / "data")},
            "models": {"bundles": [str(tiny_bundle)], **TINY_MODELS},
            "media": {"import_folders": [str(drives["import"])], "export_folders": [str(drives["export"])]},
            "server": {"max_upload_mb": 4},
        }
    )



@pytest.fixture
def app(config):
    from device.kiosk import create_app
    from device.appliance.context import appliance_of

    application = create_app(config)
    application.config["TESTING"] = True
    yield application
    appliance_of(application).close()



@pytest.fixture
def client(app):
    with form_client(app) as c:
        yield c



# ---- DICOM peers --------------------------------------------------------------------------------


@pytest.fixture
def orthanc(tmp_path):
    """A real Orthanc on loopback (benchmarks/orthanc_peer.py), stopped after the test."""
    need_orthanc()
    peer = Orthanc(tmp_path / "orthanc")
    peer.start()
    yield peer
    peer.stop()


# ---- The backends' own tests ---------------------------------------------------------------------


@pytest.fixture
def model_path(tmp_path) -> Path:
    """The tiny model's ONNX file alone, for the backends' own tests."""
    path = tmp_path / "model.onnx"
    tiny_onnx(path)
    return path



# ---- Live capture --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def ffmpeg() -> str:
    if FFMPEG is None:
        pytest.skip("ffmpeg is not installed (apt-get install ffmpeg; .ci/run installs it)")
    return FFMPEG



@pytest.fixture(scope="session")
def xray_video(ffmpeg, tmp_path_factory) -> Path:
    return camera_video(tmp_path_factory.mktemp("capture-video"))



@pytest.fixture(scope="session")
def shipped_triager():
    """The shipped chest X-ray model, INT8 as the appliance runs it live, on one thread."""
    bundle = default_bundles_dir() / "chest-xray-pneumonia"
    if bundle not in find_bundles():
        pytest.skip("the shipped chest X-ray bundle is not installed")
    triager = Triager(load_bundle(bundle), precision="int8", threads=1)
    yield triager
    triager.close()



# ---- The browser tests (Debian's chromium, driven by Playwright) ---------------------------------


@pytest.fixture(scope="module")
def sync_playwright():
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium; .ci/run does)")
    return pytest.importorskip("playwright.sync_api", reason="playwright (test extra) not installed").sync_playwright



@pytest.fixture(scope="module")
def bundle() -> Path:
    path = shipped_bundle()
    if path is None:
        pytest.skip("the shipped bundle models/bundles/chest-xray-pneumonia is absent")
    return path



@pytest.fixture(scope="module")
def xray() -> Path:
    pneumonia = [p for p in sample_xrays() if p.parent.name == "PNEUMONIA"]
    if not pneumonia:
        pytest.skip("no full-resolution chest X-ray samples (datasets/chest-xray/fullres-samples)")
    return pneumonia[0]



@pytest.fixture(scope="session")
def screens(tmp_path_factory) -> Path:
    """Where screenshots go: one folder per test session, under pytest's basetemp."""
    return tmp_path_factory.mktemp("screens")



@pytest.fixture(scope="module")
def axe() -> Path:
    if not AXE.is_file():
        pytest.skip(f"{AXE} missing: `make test` installs axe-core from npm")
    return AXE



# ---- Signed bundle archives ----------------------------------------------------------------------


@pytest.fixture(scope="session")
def signer(tmp_path_factory) -> Signer:
    base = tmp_path_factory.mktemp("keys")
    pair = generate_keys(base / "team")
    other = generate_keys(base / "stranger")
    trust = base / "trust"
    trust.mkdir()
    (trust / "team.pub").write_bytes(pair.public_path.read_bytes())
    return Signer(pair.private_path, trust, other.private_path)



@pytest.fixture(scope="session")
def releases(tmp_path_factory, signer) -> dict[str, Path]:
    """Signed archives of the tiny exam: 1.0.0, 1.1.0, 1.1.0 with a failing self-test, 0.9.0 plain and
    as a signed downgrade, and one that needs a future appliance."""
    base = tmp_path_factory.mktemp("releases")
    made = {}
    for name, version, golden, appliance, downgrade in [
        ("1.0.0", "1.0.0", "right", None, False), ("1.1.0", "1.1.0", "right", ">=0.1", False),
        ("broken", "1.2.0", "wrong", None, False), ("0.9.0", "0.9.0", "right", None, False),
        ("0.9.0-down", "0.9.0", "right", None, True), ("future", "2.0.0", "right", ">=99", False),
    ]:
        folder = make_bundle(base / f"src-{name}", version, golden, appliance)
        made[name] = signer.archive(folder, base / f"tiny-{name}.bedside", downgrade)
    return made



# ---- A fake GPU (TensorRT and pycuda faked to their API's contract) and engine builds the test releases ---


@pytest.fixture
def gated_build(monkeypatch) -> threading.Event:
    """Engine builds wait until the test sets the returned event, so 'while it builds' is observable."""
    gate = threading.Event()
    plan = tensorrt_backend._engine_plan

    def gated_plan(*args):
        cache, key, build = plan(*args)

        def gated(engine, progress, cancel):
            if not gate.wait(60):
                raise TimeoutError("the test never released the engine build")
            build(engine, progress, cancel)

        return cache, key, gated

    monkeypatch.setattr(tensorrt_backend, "_engine_plan", gated_plan)
    return gate



@pytest.fixture
def gpu(monkeypatch, tmp_path):
    fakes.install(monkeypatch)
    monkeypatch.setenv("BEDSIDE_ENGINE_CACHE", str(tmp_path / "engines"))
    yield
    fakes.uninstall()


# ---- Tiny real trainings: the training, export and ensemble tests stand on them ---------------------------


@dataclass(frozen=True)
class TinyRun:
    """A tiny real training run: its checkpoint (and, when asked for, its bundle)."""

    checkpoint: Path
    bundle: Path | None


@pytest.fixture(scope="session")
def train_tiny_chest(tmp_path_factory, datasets) -> Callable[..., TinyRun]:
    """Train a tiny real chest model, once per session for each set of arguments: 64 real films (48
    training, 16 validation: the same split for every seed and side), one epoch, seconds of
    training, for tests of what comes after it (export, ensembles, group-shift runs, audits)."""
    pytest.importorskip("torch")
    from device.cli import main as bedside

    runs: dict[tuple, TinyRun] = {}

    def train(size: int, seed: int, hold_out: str = "", bundle: bool = False) -> TinyRun:
        key = (size, seed, hold_out, bundle)
        if key not in runs:
            folder = tmp_path_factory.mktemp(f"tiny-chest-{size}-{seed}")
            args = ["train", "--runs-dir", str(folder / "runs"), "--limit", "64", "--size", str(size), "--seed",
                    str(seed), "--epochs", "1", "--stress-copies", "1", "--val-fraction", "0.25", "--no-progress",
                    "--bootstrap", "100", "--max-flip-rate", "1",  # a 1-epoch model is not expected to pass audits
                    *(["--hold-out", hold_out] if hold_out else []), *(["--out", str(folder / "bundle")] if bundle else [])]
            assert bedside(args) == 0
            runs[key] = TinyRun(next((folder / "runs").glob("*/checkpoint.pt")), folder / "bundle" if bundle else None)
        return runs[key]

    return train


@pytest.fixture(scope="session")
def tiny_chest(train_tiny_chest) -> TinyRun:
    """One tiny chest model at 64 px with its bundle, shared by the training, export and ensemble tests."""
    return train_tiny_chest(64, seed=0, bundle=True)


@pytest.fixture(scope="session")
def tiny_chest_32(train_tiny_chest) -> TinyRun:
    """A second tiny chest model, at 32 px with another seed and the same validation split: an
    ensemble member beside `tiny_chest`."""
    return train_tiny_chest(32, seed=1)
@pytest.fixture(scope="session")
def central_node(tmp_path_factory):
    """One central node for the whole session (Triton takes 8-15 s to start here), serving both
    shipped bundles and the tiny one with a refusal check reading a third output (a score per image), and
    given two it must refuse: one whose files no longer match its hashes, one whose golden outputs
    its model does not compute."""
    from central_peer import SHIPPED, missing_venv, start_node
    from central_support import tampered_copy, wrong_golden_copy
    from tiny_bundle import make_tiny_bundle

    why = missing_venv()
    if why:
        pytest.skip(why)
    root = tmp_path_factory.mktemp("central")
    tiny = declare_refusal(make_tiny_bundle(root / "tiny", extra_output="refusal_score"), "refusal_score")
    refused = [tampered_copy(SHIPPED[0], root / "tampered"), wrong_golden_copy(SHIPPED[1], root / "wrong-golden")]
    node = start_node([*SHIPPED, tiny, *refused], root / "node")
    node.tiny = tiny
    yield node
    node.stop()
