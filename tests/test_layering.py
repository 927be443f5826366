"""The house rules: which floor may import which, which libraries each floor may use, which room of
the appliance may import which (and that its packages form no cycle), and that the appliance's
process never loads torch or onnx.

The floors are cut by where code runs: the model contract (torch-free, everywhere) at the bottom;
training (a workstation with torch); the offline optimizer (a workstation with onnx); the appliance
(device/), with TensorRT in one package of its own; the central inference node (central/, a server
with Triton, in a venv of its own) above the appliance's runtime seam. Inside device/ the rooms are
cut by what they hold (ROOMS below); ``python tests/test_layering.py`` prints each room's size and
what it imports.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("models", "optimize", "device", "central")

# floor -> the modules it holds, as dotted prefixes; a module is on the floor of its longest prefix.
FLOORS: dict[str, tuple[str, ...]] = {
    "contract": ("models",),
    "training": ("models.training",),
    "optimizer": ("optimize",),
    "appliance": ("device",),
    "tensorrt": ("device.tensorrt",),
    "updates": ("device.updates",),
    "certificates": ("device.core.certificates",),
    "central": ("central",),
}
# floor -> the floors its modules may import.
MAY_IMPORT: dict[str, set[str]] = {
    "contract": {"contract"},
    "training": {"contract", "training"},
    "optimizer": {"contract", "training", "optimizer"},  # the gate's held-out data is the training split
    "appliance": {"contract", "appliance", "tensorrt", "updates", "certificates"},
    "tensorrt": {"contract", "appliance", "tensorrt"},  # the runtime seam, and triage for the self-test
    "updates": {"contract", "appliance", "updates"},  # the runtime seam and triage for the self-test
    "certificates": {"certificates"},  # X.509 read and made with cryptography, nothing else
    "central": {"contract", "appliance", "central"},  # the runtime seam, the golden self-test, Triton's versions
}
# The only imports across those lines, each with its reason.
EXCEPTIONS: dict[tuple[str, str], str] = {
    ("device.commands.bench", "optimize.timing"): "the one interleaved timing method, shared with the optimizer",
    ("device.commands.bench", "models.training.onnx_eager"): "the PyTorch baseline, imported only where torch is installed",
}
# Inside device/: each room (a package; "device" is the entry point, cli.py) and the rooms its modules
# may import besides their own, from the bottom up. A room not named is below none of these.
ROOMS: dict[str, set[str]] = {
    # what the appliance asks of its machine: time, CPU facts, the drive walk
    "device.machine": set(),
    # bytes from a file or an upload -> a decoded image, or why not
    "device.intake": set(),
    # from a model's output to what is shown: quality gates, triage policy, smoothing, heatmap
    "device.decision": {"device.intake"},
    # a bundle in Triton's terms: its versions, its graph's tensors, the model repository, what a server declares
    "device.triton": set(),
    # running models: the backend seam and registry, the Triager, backend choice, variant check, the remote node
    "device.runtime": {"device.machine", "device.intake", "device.decision", "device.triton"},
    # the TensorRT backend and its engine cache (registered in the runtime's registry by name)
    "device.tensorrt": {"device.machine", "device.runtime", "device.decision"},
    # live capture sources: streams, frame quality, live triage through a function it is given
    "device.capture": {"device.machine", "device.intake", "device.decision"},
    # the site's own evidence, computed: the acceptance (document, rule, figures, report) and drift comparisons
    "device.site": {"device.decision"},
    # settings, errors, the study store, the study service, exams and model serving, the site's record
    "device.core": {"device.machine", "device.intake", "device.decision", "device.runtime", "device.tensorrt",
                    "device.capture", "device.site"},
    # the rooms that use the core: the DICOM node, signed bundle and application updates
    "device.dicom": {"device.machine", "device.intake", "device.decision", "device.core"},
    "device.updates": {"device.machine", "device.decision", "device.runtime", "device.core"},
    # one running appliance: the core with capture, the DICOM node and update recovery
    "device.appliance": {"device.machine", "device.intake", "device.decision", "device.runtime", "device.core",
                         "device.capture", "device.dicom", "device.updates"},
    # the technician area (pages, login gate, credentials, safe mode) and the kiosk's web
    "device.technician": {"device.machine", "device.runtime", "device.core", "device.capture", "device.updates",
                          "device.appliance", "device.site"},
    "device.kiosk": {"device.machine", "device.decision", "device.core", "device.capture", "device.dicom",
                     "device.appliance", "device.technician"},
    # the command line: every room
    "device.commands": {"device.machine", "device.intake", "device.decision", "device.runtime", "device.tensorrt",
                        "device.core", "device.updates", "device.appliance", "device.technician", "device.kiosk",
                        "device.site", "device.triton"},
    "device": {"device.runtime", "device.commands"},
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
    "cryptography": {"updates", "certificates"},  # signatures are checked in one place, certificates made in one
    "openvino": {"appliance"},  # its backend, device/runtime/openvino_backend.py (an optional extra)
    "pytriton": {"central"},  # Triton's server core, in the node's own venv (numpy < 2)
    "tritonclient": {"appliance", "central"},  # the remote backend, the Triton repository writer; pytriton's errors
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


def _type_checking_only(tree: ast.AST) -> set[int]:
    """The ids of the nodes under ``if TYPE_CHECKING:``: imported for annotations, never at run time."""
    hidden: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            hidden.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return hidden


def imported_modules(path: Path, run_time_only: bool = False) -> set[str]:
    """Every absolute import in the file, function-level ones included: ``from models import atomic``
    is models.atomic. ``run_time_only``: without those under ``if TYPE_CHECKING:``."""
    names = set()
    tree = ast.parse(path.read_text(), filename=str(path))
    hidden = _type_checking_only(tree) if run_time_only else set()
    for node in ast.walk(tree):
        if id(node) in hidden:
            continue
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


# The modules of the "device" room: the package itself and the console script's entry point. No other
# module lies loose at device/'s root.
ENTRY_MODULES = ("device", "device.cli")


def room_of(module: str) -> str:
    """The room of a device/ module: the longest ROOMS package that holds it ("" for none)."""
    if module in ENTRY_MODULES:
        return "device"
    return max((r for r in ROOMS if r != "device" and (module == r or module.startswith(r + "."))), key=len,
               default="")


def device_modules() -> list[tuple[str, Path]]:
    return [(name, path) for name, path in product_modules() if name.split(".")[0] == "device"]


def room_imports(run_time_only: bool) -> dict[str, dict[str, set[str]]]:
    """room -> imported room -> the importing modules, for imports across rooms inside device/."""
    edges: dict[str, dict[str, set[str]]] = {room: {} for room in (*ROOMS, "")}
    for name, path in device_modules():
        for imported in imported_modules(path, run_time_only):
            if imported.split(".")[0] == "device" and room_of(imported) != room_of(name):
                edges[room_of(name)].setdefault(room_of(imported), set()).add(name)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan): each is a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_every_device_module_is_in_a_room():
    assert [name for name, _ in device_modules() if not room_of(name)] == []


def test_device_packages_form_no_cycle():
    """Packages inside device/ import each other one way only, counting the imports made at run time
    (function-level ones included; those under ``if TYPE_CHECKING:`` aside)."""
    package_edges: dict[str, set[str]] = {}
    for name, path in device_modules():
        package = ".".join(name.split(".")[:2])
        for imported in imported_modules(path, run_time_only=True):
            target = ".".join(imported.split(".")[:2])
            if imported.split(".")[0] == "device" and target != package:
                package_edges.setdefault(package, set()).add(target)
    assert cycles(package_edges) == []


def test_the_rooms_table_itself_has_no_cycle():
    assert cycles(ROOMS) == []


def test_rooms_import_only_what_the_table_allows():
    """Every import counts here, those for annotations too: a type from an upper room is a dependency."""
    broken = [
        f"{room} imports {target} in {', '.join(sorted(modules))}"
        for room, targets in room_imports(run_time_only=False).items()
        for target, modules in sorted(targets.items())
        if target not in ROOMS.get(room, set())
    ]
    assert not broken, broken


def test_benchmarks_stand_on_the_product_not_on_the_tests():
    """A benchmark imports the product, libraries and benchmarks/ (the peers it shares with the tests
    live there); never a tests/ module, and nothing edits sys.path to reach one."""
    test_modules = {p.stem for p in (ROOT / "tests").glob("*.py")}
    broken = []
    for path in sorted((ROOT / "benchmarks").rglob("*.py")):
        if "sys.path" in path.read_text():
            broken.append(f"{path.name} edits sys.path")
        broken += [f"{path.name} imports {m}" for m in sorted(imported_modules(path)) if m.split(".")[0] in test_modules]
    assert not broken, broken


def test_the_readme_layout_names_every_room():
    """The README's layout (picture and list) names every package of device/, and no other."""
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout"):readme.index("\n## ", readme.index("## Layout") + 1)]
    packages = {p.name for p in (ROOT / "device").iterdir() if (p / "__init__.py").is_file()}
    assert packages == {room.split(".")[1] for room in ROOMS if room != "device"}
    picture = layout[layout.index("```"):layout.rindex("```")]
    missing = {name for name in packages if f"{name}/" not in picture or f"`{name}/`" not in layout}
    assert not missing, missing


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


def test_training_modules_form_no_import_cycle():
    """The training floor's modules import each other one way (function-level imports included): an
    exam's recipe stands on the shared machinery and its own trainer, never the other way round."""
    training = {name: path for name, path in product_modules() if floor_of(name) == "training"}
    edges = {name: {i for i in imported_modules(path, run_time_only=True) if i in training and i != name}
             for name, path in training.items()}
    assert cycles(edges) == []


def describe_rooms() -> str:
    """Each room's modules and lines, and the rooms it imports at run time; a module in no room is
    shown as the package (or loose module) it is."""
    def place(module: str) -> str:
        return room_of(module) or ".".join(module.split(".")[:2])

    sizes: dict[str, list[int]] = {}
    edges: dict[str, set[str]] = {}
    for name, path in device_modules():
        size = sizes.setdefault(place(name), [0, 0])
        size[0] += 1
        size[1] += len(path.read_text().splitlines())
        for imported in imported_modules(path, run_time_only=True):
            if imported.split(".")[0] == "device" and place(imported) != place(name):
                edges.setdefault(place(name), set()).add(place(imported))
    order = [r for r in ROOMS if r in sizes] + sorted(set(sizes) - set(ROOMS))
    lines = [f"{'room':24} {'modules':>7} {'lines':>6}  imports"]
    for room in order:
        modules, length = sizes[room]
        lines.append(f"{room:24} {modules:7} {length:6}  {', '.join(sorted(edges.get(room, ()))) or '-'}")
    lines.append(f"{'all':24} {sum(m for m, _ in sizes.values()):7} {sum(n for _, n in sizes.values()):6}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(describe_rooms())
