"""The central inference node (``bedside central serve``): the fleet's shared GPU or CPU server.

It serves each bundle's model on NVIDIA Triton's own server core through nvidia-pytriton, so the
network side is Triton's: the Open Inference Protocol v2 over HTTP and gRPC (``/v2/health/ready``,
``/v2/models/<exam id>``, ``.../infer``), Triton's dynamic batcher and its Prometheus metrics. The
model itself runs behind the appliance's runtime seam (device/runtime), on the same variant files
and judged by the same golden self-test as on a kiosk; kiosks reach it with their ``remote`` backend.

A floor of its own: nvidia-pytriton pins numpy below 2, the appliance needs numpy 2, so the node
runs in its own venv (``make central``; see the README's "More than one box").
"""
