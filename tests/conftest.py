"""Shared fixtures, one place for all of them: what a test asks for by name is defined here, and
the helpers these fixtures stand on live in the *_support.py modules beside it."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

import fakes
from browser_support import AXE, CHROMIUM, CHROMIUM_ARGS
from camera_peer import camera_video, FFMPEG, sample_xrays
from dicom_peers import need_dcmtk, need_orthanc, wait_until
from device.core.exams import ExamRegistry
from device.core.settings import KioskConfig, ModelSettings
from device.runtime.triager import Triager
from device.tensorrt import backend as tensorrt_backend
from device.updates import generate_keys
from kiosk_support import CHOICE_SEED, TINY_MODELS, form_client, running_server, shipped_bundle
from models.bundle import default_bundles_dir, find_bundles, load_bundle
from models.datasets import datasets_dir
from orthanc_peer import Orthanc
from tiny_bundle import declare_refusal, make_tiny_bundle, tiny_onnx
from loopback import free_port
from tls_support import TestCa, listening, tls_dicom_app
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
def chromium(sync_playwright):
    """One headless Chromium for a module; each test opens its own context (viewport, touch)."""
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def both_exams_kiosk(tmp_path_factory, bundle):
    """One `bedside serve` shared by a module's browser tests (a start costs seconds): both shipped
    exams, a camera (a folder with a normal chest film and a colour skin photo, played at 2 fps, so
    its results alternate between a gradable film and an UNGRADABLE photo), and a USB drive of X-rays."""
    skin = default_bundles_dir() / "skin-lesion-triage"
    if skin not in find_bundles():
        pytest.skip("the shipped skin-lesion bundle is absent")
    normal = [p for p in sample_xrays() if p.parent.name == "NORMAL"]
    photos = sorted((datasets_dir() / "dermatology" / "train" / "nv").glob("*.jpg"))
    if not normal or not photos:
        pytest.skip("the sample X-rays or the dermatology images are absent (datasets)")
    base = tmp_path_factory.mktemp("both-exams")
    camera = base / "camera"
    camera.mkdir()
    shutil.copy(normal[0], camera / f"a-{normal[0].name}")
    shutil.copy(photos[0], camera / f"b-{photos[0].name}")
    usb = base / "media" / "USB"
    usb.mkdir(parents=True)
    for sample in sample_xrays()[:6]:
        shutil.copy(sample, usb / sample.name)
    settings = base / "bedside.toml"
    settings.write_text(f'[media]\nimport_folders = ["{base / "media"}"]\n[[capture.sources]]\n'
                        f'uri = "file://{camera}?fps=2&loop=1"\nexam = "chest-xray-pneumonia"\n')
    with running_server(base / "data", [bundle, skin], "--config", str(settings)) as server:
        yield server


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


@pytest.fixture
def watchdog_socket(tmp_path, monkeypatch):
    """systemd's notify socket as a kiosk started now sees it (NOTIFY_SOCKET, WatchdogSec=1 s): read
    READY=1 and the WATCHDOG=1 pings from it (30 s at most each)."""
    import socket

    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.settimeout(30)
        monkeypatch.setenv("NOTIFY_SOCKET", address)
        monkeypatch.setenv("WATCHDOG_USEC", "1000000")
        yield sock


# ---- TLS: the kiosk's self-signed pair (the project's own tls-cert code), a test CA, an HTTPS kiosk ----


@pytest.fixture(scope="session")
def site_cert(tmp_path_factory):
    """A self-signed certificate and key for localhost and 127.0.0.1, as `bedside technician tls-cert` makes them."""
    from device.core.certificates import make_self_signed

    return make_self_signed(tmp_path_factory.mktemp("site-tls"), ["localhost", "127.0.0.1"])


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory) -> TestCa:
    return TestCa(tmp_path_factory.mktemp("test-ca"))


@dataclass
class HttpsKiosk:
    server: object  # kiosk_support.Server
    port: int
    loopback_port: int
    ca: Path  # the certificate a client trusts (the self-signed one itself)

    def log(self) -> str:
        return self.server.log_tail(200_000)


def https_settings(folder: Path, cert: Path, key: Path, **server: object) -> Path:
    """A settings file: HTTPS with `cert` and `key`, plain HTTP for the screen on a free loopback port,
    connections that stall closed after 5 s."""
    values = {"tls_cert": str(cert), "tls_key": str(key), "plain_http_loopback_port": free_port(),
              "channel_timeout_s": 5, **server}
    lines = ["[server]"] + [f"{k} = {json.dumps(v)}" for k, v in values.items()]  # JSON's are TOML's too
    lines += ["[models]", "inference_threads = 1"]
    path = folder / "bedside.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def https_kiosk(tmp_path_factory, tiny_bundle, site_cert):
    """A real `bedside serve` with [server] tls_cert and tls_key (the self-signed pair) and a loopback plain-HTTP port."""
    import tomllib

    from kiosk_support import start_server, stop_server

    folder = tmp_path_factory.mktemp("https-kiosk")
    settings = https_settings(folder, site_cert.cert, site_cert.key)
    server = start_server(folder / "data", [tiny_bundle], "--config", str(settings), check_health=False)
    try:
        port = int(server.url.rstrip("/").rsplit(":", 1)[1])
        loopback = tomllib.loads(settings.read_text())["server"]["plain_http_loopback_port"]
        yield HttpsKiosk(server, port, loopback, site_cert.cert)
    finally:
        assert stop_server(server) == 0


# ---- DICOM over TLS: certificates from the test CA, an SCP over TLS, dcmtk and Orthanc as TLS PACS ----


@pytest.fixture(scope="session")
def dicom_pki(tmp_path_factory, test_ca) -> dict:
    """The SCP's certificate, the modality's client certificate (it names itself "xray1.clinic"),
    another modality's, one from a CA nobody trusts, the PACS's, and the kiosk's client certificate."""
    rogue = TestCa(tmp_path_factory.mktemp("rogue-ca"), "Rogue CA")
    return {
        "ca": test_ca.cert,
        "scp": test_ca.issue("bedside-scp", ["localhost", "127.0.0.1"]),
        "modality": test_ca.issue("xray1.clinic", ["xray1.clinic"], client=True),
        "other": test_ca.issue("ct2.clinic", ["ct2.clinic"], client=True),
        "rogue": rogue.issue("xray1.clinic", ["xray1.clinic"], client=True),
        "pacs": test_ca.issue("pacs", ["localhost", "127.0.0.1"]),
        "kiosk-client": test_ca.issue("bedside-kiosk", ["bedside-kiosk"], client=True),
    }


@pytest.fixture
def tls_scp(config, dicom_pki):
    """A kiosk whose SCP speaks TLS only (client certificates optional); its appliance."""
    from device.appliance.context import appliance_of

    need_dcmtk()
    appliance = appliance_of(tls_dicom_app(config, dicom_pki))
    yield appliance
    appliance.close()


@pytest.fixture
def mutual_scp(config, dicom_pki):
    """As tls_scp, requiring a client certificate that names the caller."""
    from device.appliance.context import appliance_of

    need_dcmtk()
    appliance = appliance_of(tls_dicom_app(config, dicom_pki, require_client_cert=True))
    yield appliance
    appliance.close()


@pytest.fixture
def tls_pacs(dicom_pki, tmp_path):
    """dcmtk's storescp over TLS as the PACS (AE title PACS): its own certificate from the test CA,
    and it requires the kiosk's client certificate from the same CA. Yields its port and folder."""
    need_dcmtk()
    port, folder = free_port(), tmp_path / "pacs"
    folder.mkdir()
    with open(tmp_path / "storescp.log", "w") as log:
        proc = subprocess.Popen(["storescp", "-v", "+tls", str(dicom_pki["pacs"].key), str(dicom_pki["pacs"].cert),
                                 "+cf", str(dicom_pki["ca"]), "-rc", "-aet", "PACS", "-od", str(folder), str(port)],
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: listening(port), 10, "storescp listening")
        yield port, folder
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def tls_orthanc(tmp_path, dicom_pki):
    """A real Orthanc whose DICOM port speaks TLS only (DicomTlsEnabled), trusting the kiosk's client
    certificate and requiring one."""
    need_orthanc()
    peer = Orthanc(tmp_path / "orthanc", {
        "DicomTlsEnabled": True, "DicomTlsCertificate": str(dicom_pki["pacs"].cert),
        "DicomTlsPrivateKey": str(dicom_pki["pacs"].key), "DicomTlsTrustedCertificates": str(dicom_pki["ca"]),
        "DicomTlsRemoteCertificateRequired": True,
    })
    peer.start()
    yield peer
    peer.stop()
