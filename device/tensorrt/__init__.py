"""Everything TensorRT, in one package: the GPU backend and what it stands on.

- ``api``: the one place that imports TensorRT (and pycuda for device facts), and the shared logger;
- ``build``, ``progress``: building an engine from a bundle variant's ONNX, with progress and cancel;
- ``engine_cache``: engines kept per (model content, TensorRT build, GPU, profile), and background builds;
- ``cuda_worker``, ``cuda_io``: the thread that owns the CUDA context, and pinned I/O buffers;
- ``backend``: the runtime seam's TensorRT backend (registered in device/runtime/registry.py);
- ``selftest``: ``bedside doctor --selftest``, every GPU variant checked against ONNX Runtime FP32.

Engine builds run on the appliance (on first use), never offline: an engine is valid only for the
GPU and TensorRT build that made it. Precision is baked into the ONNX (INT8 as Q/DQ nodes, FP16 as
an FP16 graph with FP32 I/O), so the builder never sets precision flags where the network is
strongly typed: one recipe builds on TensorRT 10.3 (JetPack 6) and on 11.x.

``tensorrt`` and ``pycuda`` are imported lazily: where they are absent everything here says why.
"""
