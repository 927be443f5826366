"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.datasets import datasets_dir


@pytest.fixture(scope="session")
def datasets() -> Path:
    """The shared development datasets; tests that need real images skip where they are absent."""
    root = datasets_dir()
    if not root.is_dir():
        pytest.skip(f"datasets not found at {root}; set BEDSIDE_DATASETS")
    return root
