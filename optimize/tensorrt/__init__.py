"""TensorRT engine building for the Jetson (TensorRT 10.x as JetPack 6 ships it; valid on 11.x).

Precision is baked into the ONNX (INT8 as Q/DQ nodes, FP16 as an FP16 graph with FP32 I/O), so
the builder never sets precision flags where the network is strongly typed: one recipe builds on
10.3 and on 11.x, which removed those flags and the INT8 calibrators.

``tensorrt`` is imported lazily: everything here raises TensorRTUnavailable where it is absent.
"""
