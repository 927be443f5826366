"""The ``remote`` backend against a real central node: it serves only after the node has proven it
runs this bundle (version, tensors, declared variant, golden outputs), answers what the bundle
computes here, and fails fast and plainly when the node is gone or stalls."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from central_peer import ROOT, SHIPPED
from central_support import rewrite, versioned_copy, wrong_golden_copy
from device.runtime import registry
from device.runtime.base import ModelIO, RuntimeFailure, RuntimeUnavailable, VariantFile, model_io
from device.runtime.onnxruntime_backend import OnnxRuntimeBackend
from device.runtime.remote_backend import RemoteBackend, RemoteSettings
from device.runtime.variant_check import golden_set
from loopback import free_port
from tls_support import https_server
from models.bundle import load_bundle, read_manifest


def _remote(bundle, url: str, **settings) -> RemoteBackend:
    m = bundle.manifest
    return RemoteBackend(VariantFile.of(bundle, m.variant("fp32")), model_io(m), 1, RemoteSettings(url=url, **settings))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_serves_only_after_the_node_proved_it_runs_this_bundle(central_node, path):
    bundle = load_bundle(path)
    m, io = bundle.manifest, model_io(bundle.manifest)
    remote = _remote(bundle, central_node.url)
    try:
        assert remote.served() == ("fp32", bundle.sha256_of("model.onnx"))
        assert remote.selftest["ok"] and remote.selftest["max_prob_diff"] <= 1e-4
        x = golden_set(bundle)[0][:20]  # more than the node's max_batch_size (16): sent in two requests
        assert remote.max_batch == 16
        got = remote.run(x)
        local = OnnxRuntimeBackend(VariantFile.of(bundle, m.variant("fp32")), io, 1).run(x)
        assert set(got) == set(io.output_names)
        for name in io.output_names:
            np.testing.assert_allclose(got[name], local[name], atol=1e-5)
    finally:
        remote.close()


def test_a_refusal_score_comes_back_as_the_local_graph_gives_it(central_node):
    """A bundle whose refusal check reads a one-value-per-image output: Triton carries it as [N, 1],
    the remote backend hands it on as the local graph's [N]."""
    tiny = load_bundle(central_node.tiny)
    m = tiny.manifest
    io = ModelIO(m.input.tensor_name, m.output_names, (1, 32, 32))
    remote = RemoteBackend(VariantFile.of(tiny, m.variant("fp32")), io, 1, RemoteSettings(url=central_node.url))
    try:
        x = np.random.default_rng(1).standard_normal((5, 1, 32, 32)).astype(np.float32)
        got = remote.run(x)
        local = OnnxRuntimeBackend(VariantFile.of(tiny, m.variant("fp32")), io, 1).run(x)
        assert got["refusal_score"].shape == local["refusal_score"].shape == (5,)
        np.testing.assert_allclose(got["refusal_score"], local["refusal_score"], atol=1e-6)
    finally:
        remote.close()


def test_refuses_a_node_without_the_bundles_version(central_node, tmp_path):
    newer = load_bundle(versioned_copy(SHIPPED[0], tmp_path / "newer", "3.0.1"))
    with pytest.raises(RuntimeFailure, match=r"does not serve .* version 3000001"):
        _remote(newer, central_node.url)


def test_refuses_a_node_running_another_model_under_the_same_name(central_node, tmp_path):
    """A kiosk whose chest bundle holds other weights than the node's of the same version: the node's
    declared file is none of this bundle's variants."""
    other = tmp_path / "other"
    shutil.copytree(SHIPPED[0], other)
    m = read_manifest(other)
    rewrite(other, "model.onnx", (other / m.variant("int8", "cpu").file).read_bytes())
    with pytest.raises(RuntimeFailure, match=f"is not a variant of chest-xray-pneumonia {m.version}"):
        _remote(load_bundle(other), central_node.url)


def test_refuses_a_node_whose_outputs_differ_from_the_golden_ones(central_node, tmp_path):
    """Same variant file, but the kiosk's golden outputs disagree: the node's answers are judged
    against the kiosk's own bundle, never taken on trust."""
    with pytest.raises(RuntimeFailure, match="fails the golden self-test"):
        _remote(load_bundle(wrong_golden_copy(SHIPPED[1], tmp_path / "wrong")), central_node.url)


def test_no_node_is_unavailable_at_once():
    bundle = load_bundle(SHIPPED[0])
    started = time.monotonic()
    with pytest.raises(RuntimeUnavailable, match="no central node answers"):
        _remote(bundle, f"http://127.0.0.1:{free_port()}")
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize("case", ["trusted", "another CA", "another name"])
def test_an_https_node_is_asked_only_when_its_certificate_checks_out(case, test_ca, site_cert):
    """An https:// remote_url against a TLS peer (no Triton behind it: it answers 501): with the CA
    that issued its certificate, the TLS link stands and the refusal is about the model; with
    another CA, or called by a name its certificate does not carry, no request is made at all."""
    pair = test_ca.issue("node", ["localhost"])
    with https_server(pair) as port:
        host = "127.0.0.1" if case == "another name" else "localhost"
        ca = site_cert.cert if case == "another CA" else test_ca.cert
        if case == "trusted":
            with pytest.raises(RuntimeFailure, match="does not serve"):
                _remote(load_bundle(SHIPPED[0]), f"https://{host}:{port}", tls_ca=ca)
        else:
            with pytest.raises(RuntimeUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
                _remote(load_bundle(SHIPPED[0]), f"https://{host}:{port}", tls_ca=ca)


def test_a_stalled_node_fails_within_the_deadline(central_node):
    bundle = load_bundle(SHIPPED[0])
    remote = _remote(bundle, central_node.url, timeout_s=0.5)
    x = golden_set(bundle)[0][:1]
    triton = central_node.triton_pid()
    os.kill(triton, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(RuntimeFailure, match="timed out"):
            remote.run(x)
        assert time.monotonic() - started < 1.0
    finally:
        os.kill(triton, signal.SIGCONT)
    time.sleep(0.2)
    assert remote.run(x)["logits"].shape == (1, 2)  # the same backend serves again once the node does
    remote.close()


def test_needs_the_nodes_url_and_is_never_chosen_by_auto():
    bundle = load_bundle(SHIPPED[0])
    m = bundle.manifest
    with pytest.raises(RuntimeUnavailable, match="remote_url"):
        RemoteBackend(VariantFile.of(bundle, m.variant("fp32")), model_io(m), 1, None)
    assert registry.availability("remote").ok
    assert "remote" not in registry.available("cpu") + registry.available("gpu")
    with pytest.raises(ValueError, match="http://HOST:PORT"):
        RemoteSettings(url="10.0.0.5:8000")


def _infer_json(*args: str) -> list[dict]:
    done = subprocess.run([sys.executable, "-m", "device.cli", "infer", "--json", "--bundle", str(SHIPPED[0]), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=120, check=True)
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_bedside_infer_on_the_node_gives_the_local_triage(central_node, datasets):
    images = sorted((datasets / "chest-xray" / "fullres-samples").glob("*/*.jpeg"))[::4]
    remote = _infer_json("--backend", "remote", "--remote-url", central_node.url, *map(str, images))
    local = _infer_json(*map(str, images))
    assert [r["triage"] for r in remote] == [r["triage"] for r in local]
    for r, l in zip(remote, local):
        assert r["model"] == {**l["model"], "backend": "remote"}
        assert max(abs(r["probabilities"][k] - l["probabilities"][k]) for k in l["probabilities"]) <= 1e-5


def test_remote_url_goes_with_the_remote_backend():
    done = subprocess.run([sys.executable, "-m", "device.cli", "infer", "--bundle", str(SHIPPED[0]),
                           "--remote-url", "http://127.0.0.1:1", "x.png"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 1 and "--remote-url is for --backend remote" in done.stderr


def test_bedside_eval_on_the_node_scores_what_local_scores(central_node, datasets):
    def evaluate(*args: str) -> dict:
        done = subprocess.run([sys.executable, "-m", "device.cli", "eval", "--json", "--bootstrap", "0", "--bundle",
                               str(SHIPPED[0]), "--data", str(datasets / "chest-xray" / "fullres-samples"), *args],
                              capture_output=True, text=True, cwd=ROOT, timeout=300, check=True)
        return json.loads(done.stdout)

    remote = evaluate("--backend", "remote", "--remote-url", central_node.url)
    local = evaluate()
    assert {k: remote[k] for k in ("n", "auc", "confusion")} == {k: local[k] for k in ("n", "auc", "confusion")}
