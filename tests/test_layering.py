"""The house rules: imports only go downward, and the device's inference path never loads torch."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FLOORS = {"models": 0, "optimize": 1, "device": 2}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FLOORS))
def test_imports_only_go_downward(package):
    upward = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in imported_packages(path) & FLOORS.keys():
            if FLOORS[name] > FLOORS[package]:
                upward.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not upward, upward


def test_device_inference_path_never_imports_torch(tmp_path):
    """Import the whole inference path and triage a real image through the CLI code, then look."""
    from tiny_bundle import make_tiny_bundle

    bundle = make_tiny_bundle(tmp_path / "b")
    image = tmp_path / "x.png"
    import cv2
    import numpy as np

    cv2.imwrite(str(image), (np.indices((64, 64)).sum(axis=0) * 2).astype(np.uint8))
    code = (
        "import sys, json\n"
        "from device.cli import main\n"
        f"rc = main(['infer', '--json', '--bundle', {str(bundle)!r}, {str(image)!r}])\n"
        "import device.commands.doctor, device.commands.evaluate, device.triage\n"
        "print(json.dumps({'rc': rc, 'torch': 'torch' in sys.modules}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    status = json.loads(out.stdout.strip().splitlines()[-1])
    assert status == {"rc": 0, "torch": False}
