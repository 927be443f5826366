"""What ``make central`` installs into the node's venv, one requirement a line: every dependency of
the appliance except numpy, then the ``central`` extra. nvidia-pytriton's own numpy<2 pin picks the
numpy (pip cannot install ``bedside[central]`` in one go: the appliance asks for numpy>=2).

Run as a script from the repository root (before anything is installed): python central/requirements.py
"""

import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def requirements() -> list[str]:
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    base = [r for r in project["dependencies"] if not r.replace(" ", "").startswith("numpy")]
    return base + project["optional-dependencies"]["central"]


if __name__ == "__main__":
    print("\n".join(requirements()))
