"""How a server says which bundle variant it runs, so a kiosk can check before it sends a study.

A Triton configuration written by ``bedside bundle triton`` carries it in its ``parameters``
(readable at ``/v2/models/<name>/config``); a Bedside central node, whose configuration pytriton
writes, answers it as one more output, ``bedside_model``: a JSON object per item, asked for only by a
kiosk checking the node. Both name the variant by the sha256 of its file."""

from __future__ import annotations

import json

from models.bundle import Bundle, Variant

OUTPUT = "bedside_model"
PARAMETERS = {"bundle_version": "bedside_bundle_version", "precision": "bedside_precision",
              "sha256": "bedside_sha256"}


def declaration(bundle: Bundle, variant: Variant) -> dict[str, str]:
    """What a server declares of the variant it runs."""
    return {"id": bundle.manifest.id, "bundle_version": bundle.manifest.version, "precision": variant.precision,
            "file": variant.file, "sha256": bundle.sha256_of(variant.file)}


def encoded(bundle: Bundle, variant: Variant) -> bytes:
    return json.dumps(declaration(bundle, variant), sort_keys=True).encode()
