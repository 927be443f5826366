"""The node's life: Triton started with every model that passed its checks, the ready line, and a
clean stop on SIGTERM or SIGINT (systemd's stop, Ctrl-C): Triton is told to stop (it finishes the
requests in flight and unloads each model), then the models are closed, and the exit status is 0.

Triton's own log goes to a file (``--log-file``); this process logs what a technician needs: each
bundle served or refused with its reason, the ready line, the stop.
"""

from __future__ import annotations

import logging
import signal
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pytriton.exceptions import PyTritonError
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig
from tritonclient.utils import InferenceServerException

from central.models import ServedModel, infer_function
from device.triton import identity

log = logging.getLogger(__name__)

READY_LINE = "Bedside central node ready at {url}"
# Triton's dynamic batcher: how long a request may wait for company (the default of --queue-delay-us).
# None on a CPU node: a lone study waited the whole delay (the remote path cost 8.4 ms over local with
# 2 ms, against 3.6 ms without), while studies that arrive as the instances run queue and are batched
# anyway (benchmarks/central.py).
QUEUE_DELAY_US = 0
EXIT_TIMEOUT_S = 10  # how long Triton waits for requests in flight when told to stop
START_ATTEMPTS = 3


@dataclass(frozen=True)
class Endpoints:
    host: str
    http_port: int
    grpc_port: int
    metrics_port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.http_port}/"


def triton_config(endpoints: Endpoints, log_file: Path) -> TritonConfig:
    return TritonConfig(
        http_address=endpoints.host, http_port=endpoints.http_port,
        grpc_address=endpoints.host, grpc_port=endpoints.grpc_port,
        metrics_address=endpoints.host, metrics_port=endpoints.metrics_port,
        log_file=log_file, log_verbose=0, exit_timeout_secs=EXIT_TIMEOUT_S,
    )


def bind(triton: Triton, model: ServedModel, max_batch: int, queue_delay_us: int) -> None:
    """One Triton model per bundle: named by its exam id, versioned by its bundle version, one
    instance per loaded backend, dynamically batched."""
    preferred = [b for b in (4, 8, 16, 32) if b <= max_batch]
    triton.bind(
        model_name=model.name,
        model_version=model.version,
        infer_func=[infer_function(model, backend) for backend in model.backends],
        inputs=[Tensor(name=model.input_name, dtype=np.float32, shape=model.input_shape)],
        outputs=[Tensor(name=name, dtype=dtype.type, shape=shape) for name, (dtype, shape) in model.outputs.items()]
        + [Tensor(name=identity.OUTPUT, dtype=bytes, shape=(1,))],
        config=ModelConfig(max_batch_size=max_batch,
                           batcher=DynamicBatcher(max_queue_delay_microseconds=queue_delay_us,
                                                  preferred_batch_size=preferred)),
        strict=True,
    )


class Stop:
    """Set by SIGTERM or SIGINT; the main thread waits on it."""

    def __init__(self):
        self.event = threading.Event()
        self.signal_name: str | None = None

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.signal_name = signal.Signals(signum).name
        self.event.set()


def start(models: list[ServedModel], endpoints: Endpoints, max_batch: int, queue_delay_us: int, log_path: Path,
          workspace: Path, stop: Stop) -> Triton | None:
    """Triton serving every model, or None (logged) when it cannot. A model's load is tried again
    on a fresh server: pytriton gives the Python-backend stub of each instance 1 s to fetch its
    configuration from this process (a constant in pytriton), which a loaded 2-core box can miss."""
    for attempt in range(1, START_ATTEMPTS + 1):
        triton = Triton(config=triton_config(endpoints, log_path), workspace=workspace / f"attempt-{attempt}")
        for model in models:
            bind(triton, model, max_batch, queue_delay_us)
        try:
            triton.run()
            return triton
        except (InferenceServerException, PyTritonError, TimeoutError) as exc:
            triton.stop()
            reason = str(exc).splitlines()[0]
            if attempt == START_ATTEMPTS or stop.event.is_set():
                log.error("Triton could not serve the models: %s (its log: %s)", reason, log_path)
                return None
            log.warning("Triton could not load the models (attempt %d of %d): %s; starting it again", attempt,
                        START_ATTEMPTS, reason)
    return None


def serve(models: list[ServedModel], endpoints: Endpoints, max_batch: int, queue_delay_us: int,
          log_file: Path | None, ready=print) -> int:
    """Run Triton with ``models`` until a stop signal (0) or until Triton dies or cannot start (1)."""
    stop = Stop()
    stop.install()
    with tempfile.TemporaryDirectory(prefix="bedside-central-") as tmp:
        log_path = log_file or Path(tmp) / "tritonserver.log"
        triton = start(models, endpoints, max_batch, queue_delay_us, log_path, Path(tmp), stop)
        try:
            if triton is None:
                return 1
            for model in models:
                log.info("serving %s %s as Triton model %s version %d (%s %s, %d instance%s)", model.name,
                         model.bundle.manifest.version, model.name, model.version, model.backend_name,
                         model.precision, len(model.backends), "" if len(model.backends) == 1 else "s")
            ready(READY_LINE.format(url=endpoints.url), flush=True)
            while not stop.event.wait(1.0):
                if not triton.is_alive():
                    log.error("Triton stopped on its own; see its log: %s", log_path)
                    return 1
            log.info("%s received: stopping (requests in flight finish first)", stop.signal_name)
            return 0
        finally:
            if triton is not None:
                triton.stop()
            for model in models:
                model.close()
            log.info("stopped")
