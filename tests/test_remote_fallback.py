"""An exam on a central node with the kiosk's own model behind it (device/runtime/fallback.py):
a node that stalls or is not there is replaced by the local model at once, for the very batch that
failed, and used again once it answers and passes its checks."""

from __future__ import annotations

import os
import signal
import time

from central_peer import SHIPPED
from device import intake
from device.runtime.fallback import LOCAL, REMOTE, RemoteWithFallback
from device.runtime.remote_backend import RemoteSettings
from device.runtime.triager import Triager
from loopback import free_port
from models.bundle import load_bundle


def _prepared(triager: Triager, datasets, n: int = 3):
    files = sorted((datasets / "chest-xray" / "fullres-samples").glob("*/*.jpeg"))[:n]
    return [triager.prepare(intake.decode_file(f, reduce=triager.reduced_decode), str(f)) for f in files]


def _until(condition, timeout: float = 10.0) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout} s")
        time.sleep(0.05)
    return time.monotonic() - started


def test_a_stalled_node_is_replaced_for_the_same_batch_and_used_again(central_node, datasets):
    bundle = load_bundle(SHIPPED[0])
    settings = RemoteSettings(url=central_node.url, timeout_s=0.5)
    local = Triager(bundle, "onnxruntime", "fp32", 1)
    served = RemoteWithFallback(lambda: Triager(bundle, "remote", "fp32", 1, settings), local, settings.url, 0.2)
    batch = _prepared(local, datasets)
    try:
        remote_results = served.triage_prepared(batch)
        assert served.state == REMOTE and {r.model.backend for r in remote_results} == {"remote"}
        triton = central_node.triton_pid()
        os.kill(triton, signal.SIGSTOP)
        try:
            started = time.monotonic()
            during = served.triage_prepared(batch)
            took = time.monotonic() - started
            assert {r.model.backend for r in during} == {"onnxruntime"} and took < 2.0, took
            assert [r.triage for r in during] == [r.triage for r in remote_results]
            for a, b in zip(during, remote_results):
                assert max(abs(a.probabilities[k] - b.probabilities[k]) for k in a.probabilities) <= 1e-5
            status = served.status()
            assert (status["state"], status["backend"], status["fallbacks"]) == (LOCAL, "onnxruntime", 1)
            assert "timed out" in status["reason"]
            assert {r.model.backend for r in served.triage_prepared(batch)} == {"onnxruntime"}  # no new wait
        finally:
            os.kill(triton, signal.SIGCONT)
        _until(lambda: served.state == REMOTE)
        assert served.status()["reason"] is None
        assert {r.model.backend for r in served.triage_prepared(batch)} == {"remote"}
    finally:
        served.close()
        local.close()


def test_no_node_at_start_serves_locally_until_one_passes_its_checks(central_node, datasets):
    bundle = load_bundle(SHIPPED[0])
    urls = [f"http://127.0.0.1:{free_port()}"]  # nothing listens there (yet)

    def connect() -> Triager:
        return Triager(bundle, "remote", "fp32", 1, RemoteSettings(url=urls[0], timeout_s=1.0))

    local = Triager(bundle, "onnxruntime", "fp32", 1)
    served = RemoteWithFallback(connect, local, urls[0], 0.2)
    try:
        assert served.state == LOCAL and "no central node answers" in served.status()["reason"]
        assert served.status()["fallbacks"] == 0  # started local: nothing fell back
        assert {r.model.backend for r in served.triage_prepared(_prepared(local, datasets, 1))} == {"onnxruntime"}
        urls[0] = central_node.url  # the node comes up
        _until(lambda: served.state == REMOTE)
        assert {r.model.backend for r in served.triage_prepared(_prepared(local, datasets, 1))} == {"remote"}
    finally:
        served.close()
        local.close()
