"""In-repo fakes of ``tensorrt`` and ``pycuda`` that enforce the real contracts (see each module).

They are put on sys.path only by ``install`` (a test fixture calls it) and removed by
``uninstall``, so every other test sees this machine as it is: no TensorRT, no CUDA.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
FAKED = ("tensorrt", "pycuda")


def _faked(name: str) -> bool:
    return any(name == root or name.startswith(root + ".") for root in FAKED)


def install(monkeypatch) -> None:
    for name in [n for n in sys.modules if _faked(n)]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(HERE))


def uninstall() -> None:
    """Drop the fake modules (and their state) so the next test imports fresh ones or none."""
    for name in [n for n in sys.modules if _faked(n)]:
        del sys.modules[name]
