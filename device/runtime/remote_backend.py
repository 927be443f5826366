"""The ``remote`` backend: the bundle's model run by a central inference node over the Open Inference
Protocol v2 (``bedside central serve``, or a Triton serving a ``bedside bundle triton`` repository),
through tritonclient's HTTP client.

Only tensors travel: the kiosk decodes, checks quality, preprocesses and judges as ever, sends the
model input and gets the outputs its bundle declares back. Before it serves, the node must prove it
runs this bundle: the model named by the exam id is ready in the Triton version of the bundle's
version, takes the bundle's input and gives its outputs, declares which of the bundle's variant
files it runs (its sha256), and computes the bundle's golden outputs from its golden inputs within
that variant's self-test tolerance (device/runtime/variant_check.py). Any failure refuses the backend with
the reason; nothing is served on a node that was not checked.

Every call has a deadline (``timeout_s``; ``connect_timeout_s`` to open a connection): a node that
fails or stalls makes ``run`` raise RuntimeFailure quickly, and the caller decides what to do (the
kiosk serves locally). ``remote`` is never chosen by ``backend = "auto"``: it is used where named.

tritonclient's HTTP client runs on gevent, whose sockets belong to the thread that made them, so
each calling thread gets a client of its own.
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from pydantic import Field, field_validator, model_validator

from device.runtime.base import (
    Availability, Backend, ModelIO, RuntimeFailure, RuntimeUnavailable, VariantFile, import_runtime,
)
from device.triton import identity
from device.triton.graph import GraphError, graph_io
from device.triton.versions import triton_version
from device.runtime.variant_check import compare, golden_set, probabilities, reference_outputs
from models.bundle import Bundle, _Strict

log = logging.getLogger(__name__)

class RemoteSettings(_Strict):
    """The node's address; with https:// its certificate must chain to ``tls_ca`` (default: certifi's
    CAs, as tritonclient's) and name its host, unless ``tls_insecure`` (logged loudly)."""

    url: str = Field(description="the node's HTTP endpoint, e.g. http://10.0.0.5:8000 or https://node.clinic:8443")
    timeout_s: float = Field(default=1.0, gt=0, le=60, description="the longest a request may take")
    connect_timeout_s: float = Field(default=0.5, gt=0, le=60, description="the longest opening a connection may take")
    model: str | None = Field(default=None, description="the model's name on the node (default: the exam id)")
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_insecure: bool = False

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.port is None:
            raise ValueError(f"{value!r} is not http://HOST:PORT or https://HOST:PORT")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _tls_for_https(self) -> "RemoteSettings":
        if (self.tls_ca or self.tls_cert or self.tls_key or self.tls_insecure) and not self.secure:
            raise ValueError("the remote_tls_ settings are for an https:// remote_url")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("remote_tls_cert and remote_tls_key go together")
        return self

    @property
    def secure(self) -> bool:
        return self.url.startswith("https://")

    def client_tls(self) -> dict:
        """tritonclient's (geventhttpclient's) TLS arguments."""
        if not self.secure:
            return {}
        options = {"ca_certs": str(self.tls_ca)} if self.tls_ca else {}
        if self.tls_cert is not None:
            options.update(certfile=str(self.tls_cert), keyfile=str(self.tls_key))
        return {"ssl": True, "ssl_options": options, "insecure": self.tls_insecure}

    @property
    def host_port(self) -> str:
        return urlsplit(self.url).netloc


def _http_client():
    return import_runtime("tritonclient.http", ": install the 'fleet' extra")


class RemoteBackend(Backend):
    name = "remote"
    target = "cpu"  # nominal: which file the node runs is what it declares, checked against the bundle
    remote = True

    @classmethod
    def availability(cls) -> Availability:
        try:
            _http_client()
        except RuntimeUnavailable as exc:
            return Availability(False, str(exc))
        from importlib.metadata import version

        return Availability(True, "a central node over the Open Inference Protocol (needs its URL)",
                            version("tritonclient"))

    def __init__(self, model: VariantFile, io: ModelIO, threads: int, settings: object | None = None):
        if not isinstance(settings, RemoteSettings):
            raise RuntimeUnavailable("the remote backend needs the central node's URL ([models] remote_url, "
                                     "or --remote-url)")
        if model.bundle is None:
            raise RuntimeUnavailable("the remote backend checks the node against the bundle: give it the bundle")
        self._http = _http_client()
        self.io = io
        self.settings = settings
        if settings.tls_insecure:
            log.warning("INSECURE TLS to the central node %s: its certificate and host name are NOT checked; "
                        "anyone on the network path can read and change the images' tensors. Set remote_tls_ca.",
                        settings.url)
        bundle = model.bundle
        self.model_name = settings.model or bundle.manifest.id
        self.model_version = str(triton_version(bundle.manifest.version))
        self._clients: list = []
        self._local = threading.local()
        self._lock = threading.Lock()
        self._max_batch = self._check_model()
        self._per_image = self._values_per_image(model)
        self.precision, self.sha256 = self._check_identity(bundle)
        self.selftest = self._check_golden(bundle)

    # -- the checks before serving ------------------------------------------------------------

    def _check_model(self) -> int:
        """The model is ready in the bundle's version with the bundle's tensors; its largest batch."""
        where = f"{self.settings.url} model {self.model_name} version {self.model_version}"
        client = self._client()
        try:
            if not client.is_model_ready(self.model_name, self.model_version):
                raise RuntimeFailure(f"the central node does not serve {where} (not loaded, or another version)")
            meta = client.get_model_metadata(self.model_name, self.model_version)
            config = client.get_model_config(self.model_name, self.model_version)
        except self._http.InferenceServerException as exc:
            raise RuntimeFailure(f"central node {where}: {exc.message()}") from None
        except (OSError, http.client.HTTPException) as exc:  # refused, reset, closed mid-answer, past the deadline
            raise RuntimeUnavailable(f"no central node answers at {self.settings.url}: {exc}") from None
        inputs = {i["name"]: i for i in meta.get("inputs", [])}
        want = [-1, *self.io.input_shape]
        got = inputs.get(self.io.input_name)
        if got is None or got["datatype"] != "FP32" or got["shape"] != want:
            raise RuntimeFailure(f"{where} takes {list(inputs.values())}, not {self.io.input_name} FP32 {want}")
        outputs = {o["name"] for o in meta.get("outputs", [])}
        missing = [n for n in self.io.output_names if n not in outputs]
        if missing:
            raise RuntimeFailure(f"{where} lacks the bundle's outputs {missing}")
        self._has_identity_output = identity.OUTPUT in outputs
        self._parameters = {k: v.get("string_value") for k, v in config.get("parameters", {}).items()}
        return max(1, int(config.get("max_batch_size", 1)))

    def _values_per_image(self, model: VariantFile) -> set[str]:
        """The outputs the local graph gives as one value per image (shape [N]): Triton carries them
        as [N, 1], and they are handed on as the graph gives them."""
        try:
            outputs = graph_io(model.path)[1]
        except GraphError as exc:
            raise RuntimeFailure(str(exc)) from None
        return {o.name for o in outputs if not o.dims}

    def _check_identity(self, bundle: Bundle) -> tuple[str, str]:
        """(precision, sha256) of the variant file the node declares it runs: one of this bundle's."""
        keys = [identity.PARAMETERS[k] for k in ("precision", "sha256")]
        if self._has_identity_output:
            x = golden_set(bundle)[0][:1]
            declared = json.loads(self._infer(x, (identity.OUTPUT,))[identity.OUTPUT].reshape(-1)[0])
            precision, sha256 = declared.get("precision"), declared.get("sha256")
        elif all(self._parameters.get(k) for k in keys):
            precision, sha256 = (self._parameters[k] for k in keys)
        else:
            raise RuntimeFailure(f"{self.settings.url} does not say which variant of {self.model_name} it runs "
                                 f"(no {identity.OUTPUT} output, no {'/'.join(keys)} parameters)")
        m = bundle.manifest
        files = {bundle.sha256_of(v.file): v for v in m.variants}
        variant = files.get(sha256)
        if variant is None or variant.precision != precision:
            raise RuntimeFailure(f"{self.settings.url} runs {precision} sha256 {str(sha256)[:12]}..., which is not "
                                 f"a variant of {m.id} {m.version} (another model under the same name and version)")
        return precision, sha256

    def _check_golden(self, bundle: Bundle) -> dict:
        """The golden inputs through the node, against the bundle's golden outputs (or, for a bundle
        without them, its FP32 variant run here)."""
        x, want = reference_outputs(bundle)
        got = probabilities(self.run, bundle.manifest, x)
        check = compare(got, want, bundle.manifest, self.precision)
        if not check["ok"]:
            raise RuntimeFailure(
                f"{self.settings.url} fails the golden self-test of {bundle.manifest.id} {self.precision}: max |dp| "
                f"{check['max_prob_diff']:.1e} (<= {check['tolerance']:.0e}), agreement {check['agreement']:.0%}")
        return check

    # -- serving ------------------------------------------------------------------------------

    def served(self) -> tuple[str, str]:
        return self.precision, self.sha256

    @property
    def max_batch(self) -> int:
        return self._max_batch

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        parts = [batch[i:i + self._max_batch] for i in range(0, len(batch), self._max_batch)]
        results = [self._infer(np.ascontiguousarray(p, dtype=np.float32), self.io.output_names) for p in parts]
        return {k: np.concatenate([r[k] for r in results]) for k in self.io.output_names}

    def _infer(self, batch: np.ndarray, outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        triton = self._http
        tensor = triton.InferInput(self.io.input_name, list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch, binary_data=True)
        wanted = [triton.InferRequestedOutput(name, binary_data=True) for name in outputs]
        try:
            result = self._client().infer(self.model_name, [tensor], model_version=self.model_version, outputs=wanted)
        except triton.InferenceServerException as exc:
            raise RuntimeFailure(f"central node {self.settings.url}: {exc.message()}") from None
        except (OSError, http.client.HTTPException) as exc:
            # refused, reset or past the deadline (OSError: TimeoutError); closed before it answered
            # (geventhttpclient's HTTPConnectionClosed is an http.client.HTTPException)
            raise RuntimeFailure(f"central node {self.settings.url}: {type(exc).__name__}: {exc}") from None
        answered = result.get_response().get("model_version")
        if answered != self.model_version:
            raise RuntimeFailure(f"central node {self.settings.url} answered with version {answered}, "
                                 f"not {self.model_version}")
        values = {name: result.as_numpy(name) for name in outputs}
        return {name: v[:, 0] if name in self._per_image and v.ndim == 2 else v for name, v in values.items()}

    def _client(self):
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._http.InferenceServerClient(
                self.settings.host_port, connection_timeout=self.settings.connect_timeout_s,
                network_timeout=self.settings.timeout_s, **self.settings.client_tls())
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def warm_up(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        """Nothing to warm here: the node warmed its model, and the golden check opened this
        thread's connection."""

    def close(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()
