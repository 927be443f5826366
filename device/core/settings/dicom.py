"""The ``[dicom]`` section of the kiosk's TOML file: the listener, and who may talk to it."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from device.core.tls import ClientTls, ServerTls
from models.bundle import _Strict

AE_TITLE = Field(pattern=r"^[ -~]{1,16}$", description="1-16 printable ASCII characters")


class Caller(_Strict):
    """A modality allowed to send: its calling AE title, from this address only (and, where the SCP
    requires client certificates, with a certificate that names it)."""

    ae_title: str = AE_TITLE
    host: str
    tls_name: str | None = Field(
        default=None, min_length=1, max_length=253,
        description="with tls_require_client_cert: a name its client certificate must carry (common name or "
        "subject alternative name); default: host",
    )

    def certificate_name(self) -> str:
        return self.tls_name or self.host


class PeerTls(_Strict):
    """How the kiosk checks a peer it connects to over TLS: the CA bundle its certificate must chain to
    (default: the system's), the kiosk's own client certificate where the peer asks for one, and the
    insecure switch (no check at all; logged loudly, shown on the technician's pages)."""

    tls_ca: Path | None = Field(default=None, description="PEM CA bundle the peer's certificate must chain to")
    tls_cert: Path | None = Field(default=None, description="our client certificate (PEM), where the peer asks")
    tls_key: Path | None = Field(default=None, description="its private key: mode 0600, owned by the service user")
    tls_insecure: bool = Field(
        default=False, description="DANGER: neither the peer's certificate nor its name is checked",
    )

    def _check_tls_fields(self, uses_tls: bool, what: str, how: str) -> None:
        """`how`: what makes the link TLS, for the message."""
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError(f"{what}: tls_cert and tls_key go together")
        if (self.tls_ca or self.tls_cert or self.tls_insecure) and not uses_tls:
            raise ValueError(f"{what}: the tls_ settings are for a link over TLS ({how})")

    def client_tls(self) -> ClientTls:
        return ClientTls(ca=self.tls_ca, cert=self.tls_cert, key=self.tls_key, insecure=self.tls_insecure)


class Destination(PeerTls):
    """A peer the results (SR, heatmap SC) are sent to by C-STORE; with ``tls``, over TLS only (its
    certificate must chain to tls_ca and name ``host``)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")
    ae_title: str = AE_TITLE
    host: str
    port: int = Field(ge=1, le=65535)
    tls: bool = Field(default=False, description="associate over TLS only")

    @model_validator(mode="after")
    def _tls_fields(self) -> "Destination":
        self._check_tls_fields(self.tls, f"DICOM destination {self.name!r}", "tls = true")
        return self


class FhirDestination(PeerTls):
    """Where the optional FHIR result goes (device/dicom/fhir.py): one JSON file per study in
    ``folder``, or POSTed (a transaction Bundle) to ``url``. Exactly one of the two. An https:// url's
    certificate is always checked (against tls_ca, else the system's CAs) and must name its host."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")
    folder: Path | None = Field(default=None, description="write each Bundle here as <id>.json")
    url: str | None = Field(default=None, pattern=r"^https?://[^\s]+$", description="POST each Bundle here")
    timeout_s: float = Field(default=30, gt=0, le=600, description="an HTTP request that takes longer is retried")

    @model_validator(mode="after")
    def _one_place(self) -> "FhirDestination":
        if (self.folder is None) == (self.url is None):
            raise ValueError(f"FHIR destination {self.name!r}: set either folder or url (one of them)")
        self._check_tls_fields(bool(self.url and self.url.startswith("https://")), f"FHIR destination {self.name!r}",
                              "an https:// url")
        return self


class Route(_Strict):
    """One rule of ``[[dicom.routes]]``: an instance whose header matches every criterion given goes to
    ``exam`` (an empty ``exam``: kept and listed, not triaged). A criterion left empty matches
    anything; a list matches any of its values (case and surrounding spaces ignored; "" matches an
    instance without the attribute). The first rule that matches wins."""

    exam: str = Field(pattern=r"^([a-z0-9][a-z0-9-]*)?$", description="the exam (bundle id); '': do not triage")
    modality: list[str] = Field(default=[], description="Modality values, e.g. ['CR', 'DX']")
    body_part: list[str] = Field(default=[], description="BodyPartExamined values, e.g. ['CHEST']")
    view_position: list[str] = Field(default=[], description="ViewPosition values, e.g. ['PA', 'AP']")
    sop_class: list[str] = Field(default=[], description="SOP Class UIDs")
    calling_ae: list[str] = Field(default=[], description="calling AE titles of the sender")


class SeriesSettings(_Strict):
    """Which instances of a series are triaged (device/dicom/series.py)."""

    triage: Literal["every_instance", "one_per_series"] = Field(
        default="every_instance",
        description="one_per_series: every instance is kept, one per series is triaged, picked by prefer_views, "
        "then the middle one by Instance Number; every_instance: each is triaged as it arrives",
    )
    stable_s: float = Field(
        default=5, gt=0, le=3600,
        description="one_per_series: a series is complete when none of its instances arrived for this long",
    )
    prefer_views: list[str] = Field(
        default=["PA", "AP"], max_length=16,
        description="View Position values, best first; views not listed (lateral: LL, RL) come after them",
    )


class DicomSettings(_Strict):
    ae_title: str = Field(default="BEDSIDE", pattern=r"^[ -~]{1,16}$", description="our (called) AE title")
    port: int = Field(default=0, ge=0, le=65535, description="0: no DICOM listener")
    host: str = Field(default="127.0.0.1", description="bind address")
    allowed_callers: list[Caller] = Field(default=[], description="empty: every caller is refused")
    tls_cert: Path | None = Field(
        default=None, description="PEM certificate (its chain may follow): the listener then speaks TLS 1.2+ only",
    )
    tls_key: Path | None = Field(default=None, description="its private key: mode 0600, owned by the service user")
    tls_ca: Path | None = Field(default=None, description="PEM CA bundle that callers' client certificates must chain to")
    tls_require_client_cert: bool = Field(
        default=False,
        description="refuse a caller without a client certificate from tls_ca that names it (Caller.tls_name or its host)",
    )
    max_associations: int = Field(default=4, ge=1, le=64)
    acse_timeout_s: float = Field(default=30, gt=0, le=600, description="association negotiation")
    dimse_timeout_s: float = Field(default=30, gt=0, le=600, description="waiting for a DIMSE message")
    network_timeout_s: float = Field(default=60, gt=0, le=3600, description="an idle association is closed")
    destinations: list[Destination] = Field(default=[], description="where results go; empty: nothing is sent")
    retry_first_s: float = Field(default=2, gt=0, le=600, description="wait after the first failed send")
    retry_max_s: float = Field(default=300, gt=0, le=86400, description="the back-off doubles up to this")
    series: SeriesSettings = Field(default_factory=SeriesSettings, description="which instances of a series are triaged")
    fhir_destinations: list[FhirDestination] = Field(
        default=[], description="where a FHIR DiagnosticReport + Observation of each result goes; empty: none")
    routes: list[Route] = Field(
        default=[], max_length=256,
        description="which exam triages an instance, first match wins; empty: each installed exam takes what its "
        "bundle says it reads (device/dicom/routing.py); an instance no route matches is kept, not triaged")

    @model_validator(mode="after")
    def _names_differ(self) -> "DicomSettings":
        names = [d.name for d in self.destinations] + [d.name for d in self.fhir_destinations]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"destination names must differ; used more than once: {', '.join(twice)}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: set both (DICOM over TLS) or neither")
        if (self.tls_ca is not None or self.tls_require_client_cert) and self.tls_cert is None:
            raise ValueError("tls_ca and tls_require_client_cert need the listener's own tls_cert and tls_key")
        if self.tls_require_client_cert and self.tls_ca is None:
            raise ValueError("tls_require_client_cert needs tls_ca, the CA bundle client certificates must chain to")
        return self

    def server_tls(self) -> ServerTls | None:
        if self.tls_cert is None:
            return None
        return ServerTls(cert=self.tls_cert, key=self.tls_key, ca=self.tls_ca,
                         require_client_cert=self.tls_require_client_cert)
