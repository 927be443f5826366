"""The house rules: which floor may import which, which libraries each floor may use, and that the
appliance's process never loads torch or onnx.

The floors are cut by where code runs: the model contract (torch-free, everywhere) at the bottom;
training (a workstation with torch); the offline optimizer (a workstation with onnx); the appliance
(device/), with TensorRT in one package of its own.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("models", "optimize", "device")

# floor -> the modules it holds, as dotted prefixes; a module is on the floor of its longest prefix.
FLOORS: dict[str, tuple[str, ...]] = {
    "contract": ("models",),
    "training": ("models.training",),
    "optimizer": ("optimize",),
    "appliance": ("device",),
    "tensorrt": ("device.tensorrt",),
    "updates": ("device.updates",),
}
# floor -> the floors its modules may import.
MAY_IMPORT: dict[str, set[str]] = {
    "contract": {"contract"},
    "training": {"contract", "training"},
    "optimizer": {"contract", "training", "optimizer"},  # the gate's held-out data is the training split
    "appliance": {"contract", "appliance", "tensorrt", "updates"},
    "tensorrt": {"contract", "appliance", "tensorrt"},  # the runtime seam, and triage for the self-test
    "updates": {"contract", "appliance", "updates"},  # the runtime seam and triage for the self-test
}
# The only imports across those lines, each with its reason.
EXCEPTIONS: dict[tuple[str, str], str] = {
    ("device.commands.bench", "optimize.timing"): "the one interleaved timing method, shared with the optimizer",
    ("device.commands.bench", "models.training.onnx_eager"): "the PyTorch baseline, imported only where torch is installed",
}
# library -> the floors that may import it.
LIBRARIES: dict[str, set[str]] = {
    "torch": {"training"},
    "onnxscript": {"training"},
    "matplotlib": {"training"},
    "sklearn": {"training"},  # the refusal check's fit; the check itself runs inside the ONNX graph
    "onnx": {"training", "optimizer"},
    "tensorrt": {"tensorrt"},
    "pycuda": {"tensorrt"},
    "cryptography": {"updates"},  # signatures are checked in one place
    "openvino": {"appliance"},  # its backend, device/runtime/openvino_backend.py (an optional extra)
}


def floor_of(module: str) -> str:
    best, length = "", -1
    for floor, prefixes in FLOORS.items():
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > length:
                best, length = floor, len(prefix)
    return best


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(dotted: str) -> bool:
    base = ROOT.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imported_modules(path: Path) -> set[str]:
    """Every absolute import in the file, function-level ones included: ``from models import atomic``
    is models.atomic."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                names.add(candidate if _is_module(candidate) else node.module)
    return names


def product_modules() -> list[tuple[str, Path]]:
    return [(module_name(p), p) for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))]


def test_every_product_module_is_on_a_floor():
    assert all(floor_of(name) for name, _ in product_modules())


@pytest.mark.parametrize("floor", sorted(FLOORS))
def test_floors_import_only_what_the_table_allows(floor):
    broken = []
    for name, path in product_modules():
        if floor_of(name) != floor:
            continue
        for imported in sorted(imported_modules(path)):
            if imported.split(".")[0] not in PACKAGES or (name, imported) in EXCEPTIONS:
                continue
            if floor_of(imported) not in MAY_IMPORT[floor]:
                broken.append(f"{name} ({floor}) imports {imported} ({floor_of(imported)})")
    assert not broken, broken


@pytest.mark.parametrize("library", sorted(LIBRARIES))
def test_libraries_only_on_their_floors(library):
    broken = [
        f"{name} ({floor_of(name)}) imports {library}"
        for name, path in product_modules()
        for imported in imported_modules(path)
        if imported.split(".")[0] == library and floor_of(name) not in LIBRARIES[library]
    ]
    assert not broken, broken


def test_exceptions_are_still_needed():
    """An exception that no import uses any more is removed from the table."""
    used = {(name, imported) for name, path in product_modules() for imported in imported_modules(path)}
    assert set(EXCEPTIONS) <= used, set(EXCEPTIONS) - used


def test_appliance_process_never_imports_torch_or_onnx(tmp_path):
    """Run the appliance's commands in one process (infer a real image, doctor, bench without the
    PyTorch baseline) and import the kiosk, then look at what was loaded."""
    from tiny_bundle import make_tiny_bundle

    bundles = tmp_path / "bundles"
    bundle = make_tiny_bundle(bundles / "tiny")
    image = tmp_path / "x.png"
    import cv2
    import numpy as np

    cv2.imwrite(str(image), (np.indices((64, 64)).sum(axis=0) * 2).astype(np.uint8))
    code = (
        "import contextlib, io, sys, json\n"
        "from device.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    rcs = [main(['infer', '--json', '--bundle', {str(bundle)!r}, {str(image)!r}]),\n"
        f"           main(['doctor', '--bundles', {str(bundles)!r}]),\n"
        f"           main(['bench', '--no-torch', '--bundle', {str(bundle)!r}, '--iterations', '2',\n"
        "                 '--rounds', '1', '--batch', '2'])]\n"
        "import device.commands.serve, device.commands.evaluate, device.kiosk.app, device.kiosk.server\n"
        "print(json.dumps({'rcs': rcs, 'loaded': sorted(m for m in ('torch', 'onnx') if m in sys.modules)}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    status = json.loads(out.stdout.strip().splitlines()[-1])
    assert status == {"rcs": [0, 0, 0], "loaded": []}
