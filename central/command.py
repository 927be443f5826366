"""``bedside central serve --bundle DIR... [--host H] [--port P]``: the central inference node.

Prints ``Bedside central node ready at URL`` once Triton serves every bundle that passed its checks;
exits 1 when none did (each refusal is logged with its reason), 0 after SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from central.models import load_models
from central.node import QUEUE_DELAY_US, Endpoints, serve
from device.machine.facts import usable_cores
from device.runtime.registry import BACKENDS

log = logging.getLogger("central")


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    fmt = argparse.ArgumentDefaultsHelpFormatter
    node = sub.add_parser("serve", help="serve bundles to kiosks over the Open Inference Protocol (Triton)",
                          formatter_class=fmt)
    node.add_argument("--bundle", type=Path, action="append", required=True, help="a bundle folder (repeatable)")
    node.add_argument("--host", default="127.0.0.1", help="address to listen on")
    node.add_argument("--port", type=int, default=8000, help="HTTP port (Open Inference Protocol v2)")
    node.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (the same protocol)")
    node.add_argument("--metrics-port", type=int, default=8002, help="Triton's Prometheus metrics")
    node.add_argument("--backend", choices=sorted(BACKENDS), default="onnxruntime",
                      help="the runtime each model runs on (tensorrt on a GPU server)")
    node.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp32",
                      help="the variant served (kiosks check it against their own bundle)")
    node.add_argument("--instances", type=int, default=None,
                      help="model instances per bundle, each single-threaded (default: one per usable core)")
    node.add_argument("--max-batch", type=int, default=16, help="the largest batch Triton's dynamic batcher forms")
    node.add_argument("--queue-delay-us", type=int, default=QUEUE_DELAY_US,
                      help="the longest a request waits in Triton's dynamic batcher for others to join its batch")
    node.add_argument("--log-file", type=Path, help="Triton's own log (default: a file in its temporary workspace)")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pytriton").setLevel(logging.WARNING)  # its per-request and per-step chatter
    instances = args.instances or usable_cores()
    models, refused = load_models(args.bundle, args.backend, args.precision, instances)
    for line in refused:
        log.error("refused: %s", line)
    if not models:
        log.error("no bundle passed its checks; nothing to serve")
        return 1
    for m in models:
        log.info("%s %s: hashes checked, golden self-test passed on %s %s (max |dp| %.1e)", m.name,
                 m.bundle.manifest.version, m.backend_name, m.precision, m.selftest["max_prob_diff"])
    endpoints = Endpoints(args.host, args.port, args.grpc_port, args.metrics_port)
    return serve(models, endpoints, args.max_batch, args.queue_delay_us, args.log_file)
