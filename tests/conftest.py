"""Shared fixtures."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import pytest

from models.datasets import datasets_dir


@pytest.fixture(scope="session")
def datasets() -> Path:
    """The shared development datasets; tests that need real images skip where they are absent."""
    root = datasets_dir()
    if not root.is_dir():
        pytest.skip(f"datasets not found at {root}; set BEDSIDE_DATASETS")
    return root


@pytest.fixture
def state_changes(caplog) -> Callable[[], list[tuple[str, str]]]:
    """The capture streams' state changes so far, in order, as (state, reason), read from the log
    records they write for every change."""
    caplog.set_level(logging.DEBUG, logger="device.capture.stream")
    return lambda: [(r.state, r.reason) for r in caplog.records
                    if r.name == "device.capture.stream" and hasattr(r, "state")]
