"""The central node (``bedside central serve``) as a kiosk and a monitoring stack see it: Triton's own
server speaking the Open Inference Protocol, serving only bundles whose hashes and golden self-test
pass, batching concurrent requests, and stopping cleanly on SIGTERM."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.http as http

from central_peer import ROOT, SHIPPED, children, missing_venv, node_command, start_node
from central_support import tampered_copy
from device.runtime.base import VariantFile, model_io
from device.runtime.onnxruntime_backend import OnnxRuntimeBackend
from device.runtime.variant_check import golden_set
from device.triton import identity
from device.triton.versions import triton_version
from loopback import free_ports
from models.bundle import load_bundle

BUNDLES = [load_bundle(p) for p in SHIPPED]
SKIN_VERSION = next(b.manifest.version for b in BUNDLES if b.manifest.id == "skin-lesion-triage")


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _infer(client: http.InferenceServerClient, bundle, x: np.ndarray, outputs: tuple[str, ...]) -> dict:
    tensor = http.InferInput(bundle.manifest.input.tensor_name, list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer(bundle.manifest.id, [tensor], outputs=[http.InferRequestedOutput(n) for n in outputs])
    return {n: result.as_numpy(n) for n in outputs}


def test_serves_each_good_bundle_under_its_exam_and_version(central_node):
    assert _get(central_node.url + "/v2/health/ready")[0] == 200
    client = http.InferenceServerClient(central_node.host_port)
    for bundle in BUNDLES:
        m, io = bundle.manifest, model_io(bundle.manifest)
        meta = client.get_model_metadata(m.id)
        assert meta["versions"] == [str(triton_version(m.version))]
        assert meta["inputs"] == [{"name": io.input_name, "datatype": "FP32", "shape": [-1, *io.input_shape]}]
        assert {o["name"] for o in meta["outputs"]} == {*io.output_names, identity.OUTPUT}


def test_serves_every_output_a_graph_has(central_node):
    """A bundle whose refusal check reads a score per image beside logits and cam: served, as
    pytriton carries a value per image ([N, 1])."""
    tiny = load_bundle(central_node.tiny)
    client = http.InferenceServerClient(central_node.host_port)
    outputs = {o["name"]: o["shape"] for o in client.get_model_metadata("tiny-test")["outputs"]}
    assert outputs["refusal_score"] in ([-1], [-1, 1])
    x = np.random.default_rng(0).standard_normal((3, 1, 32, 32)).astype(np.float32)
    got = _infer(client, tiny, x, ("logits", "refusal_score"))
    np.testing.assert_allclose(got["refusal_score"].reshape(-1), got["logits"].max(axis=1), atol=1e-6)


def test_refuses_bundles_that_fail_their_checks_and_says_why(central_node):
    log = central_node.log_text()
    assert re.search(r"refused: .*tampered: .*MODEL_CARD\.md does not match the manifest", log)
    skin = re.escape(f"skin-lesion-triage {SKIN_VERSION}")
    assert re.search(r"refused: " + skin + r": model\.onnx on onnxruntime fails the golden self-test", log)
    assert re.search(skin + r": hashes checked, golden self-test passed", log)  # the good copy is served


def test_answers_what_the_bundle_computes_here(central_node):
    client = http.InferenceServerClient(central_node.host_port)
    for bundle in BUNDLES:
        m, io = bundle.manifest, model_io(bundle.manifest)
        x = golden_set(bundle)[0][:16]  # the node's max_batch_size
        remote = _infer(client, bundle, x, io.output_names)
        local = OnnxRuntimeBackend(VariantFile.of(bundle, m.variant("fp32")), io, 1).run(x)
        for name in io.output_names:
            # a score per image travels as [N, 1] (Triton's batch dimension first) and is the graph's [N]
            assert remote[name].shape == (local[name].shape if name in ("logits", "cam") else (len(x), 1))
            np.testing.assert_allclose(remote[name].reshape(local[name].shape), local[name], atol=1e-5)
        declared = _infer(client, bundle, x[:2], (identity.OUTPUT,))[identity.OUTPUT]
        assert declared.shape == (2, 1)
        assert identity.declaration(bundle, m.variant("fp32")) == json.loads(declared[0, 0])


def test_dynamic_batching_joins_concurrent_requests(central_node):
    """16 clients at once: Triton executes the model fewer times than it answers requests."""
    bundle = BUNDLES[0]
    x = golden_set(bundle)[0][:1]

    def count(name: str) -> float:
        return central_node.counter(name, bundle.manifest.id)

    before = count("nv_inference_count"), count("nv_inference_exec_count")

    def client_loop(_):
        client = http.InferenceServerClient(central_node.host_port)
        for _ in range(10):
            _infer(client, bundle, x, ("logits",))

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(client_loop, range(16)))
    inferences = count("nv_inference_count") - before[0]
    executions = count("nv_inference_exec_count") - before[1]
    assert inferences == 160
    assert executions < inferences * 0.8, (executions, inferences)


def test_requests_batched_together_each_get_what_they_asked_for(central_node):
    """Concurrent requests of different sizes, each naming other outputs, are batched together by
    Triton: each answer holds its own images' values, the outputs it named and no others, and the
    identity only where asked."""
    bundle = BUNDLES[1]
    m, io = bundle.manifest, model_io(bundle.manifest)
    x = golden_set(bundle)[0][:12]
    local = OnnxRuntimeBackend(VariantFile.of(bundle, m.variant("fp32")), io, 1).run(x)
    every = (*io.output_names, identity.OUTPUT)
    asks = [("logits",), ("cam", identity.OUTPUT), io.output_names, (identity.OUTPUT,), ()]  # (): every output
    jobs = [(slice(i % 10, i % 10 + 1 + i % 3), asks[i % len(asks)]) for i in range(48)]

    def ask(job):
        rows, names = job
        client = http.InferenceServerClient(central_node.host_port)
        tensor = http.InferInput(io.input_name, list(x[rows].shape), "FP32")
        tensor.set_data_from_numpy(x[rows], binary_data=True)
        wanted = [http.InferRequestedOutput(n, binary_data=True) for n in names]
        result = client.infer(m.id, [tensor], outputs=wanted or None)
        names = names or every
        return rows, names, {o["name"] for o in result.get_response()["outputs"]}, {n: result.as_numpy(n) for n in names}

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(ask, jobs))
    for rows, names, sent, got in answers:
        assert sent == set(names)
        for name in names:
            if name == identity.OUTPUT:
                assert [json.loads(v) for v in got[name].reshape(-1)] == [identity.declaration(bundle, m.variant("fp32"))] * len(x[rows])
            else:
                np.testing.assert_allclose(got[name].reshape(local[name][rows].shape), local[name][rows], atol=1e-5)


def test_will_not_start_without_a_bundle_it_can_serve(tmp_path):
    why = missing_venv()
    if why:
        pytest.skip(why)
    bad = tampered_copy(SHIPPED[0], tmp_path / "tampered")
    done = subprocess.run(node_command([bad], free_ports(3)), capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "does not match the manifest" in done.stderr and "nothing to serve" in done.stderr
    assert "ready" not in done.stdout + done.stderr


@pytest.mark.slow  # its own Triton start and stop (about 20 s here): the stop is what is tested
def test_sigterm_stops_the_node_cleanly(tmp_path):
    why = missing_venv()
    if why:
        pytest.skip(why)
    node = start_node([SHIPPED[0]], tmp_path, "--instances", "1")
    triton = node.triton_pid()
    assert node.stop() == 0
    after_ready = node.log_text().split("Bedside central node ready at", 1)[1]
    assert "SIGTERM received: stopping" in after_ready and after_ready.rstrip().endswith("stopped")
    noise = [line for line in after_ready.splitlines()
             if re.search(r"Traceback|ERROR|Error|error|WARNING|Warning|leaked", line)]
    assert not noise, noise
    assert triton not in children(node.process.pid) and not os.path.exists(f"/proc/{triton}")
    with pytest.raises(OSError):
        urllib.request.urlopen(node.url + "/v2/health/live", timeout=5)


def test_the_appliance_venv_says_where_the_node_runs():
    done = subprocess.run([sys.executable, "-m", "device.cli", "central", "serve", "--bundle", str(SHIPPED[0])],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 1
    assert "needs pytriton" in done.stderr and "make central" in done.stderr
