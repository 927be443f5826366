"""Bedside bundles in NVIDIA Triton's terms: the integer model versions Triton serves
(``versions.py``) and the model repository a Triton server loads (``repository.py``, behind
``bedside bundle triton``). The central node (central/) and the kiosk's ``remote`` backend use the
same version mapping, so a version a kiosk asks for is the one a repository or node serves."""
