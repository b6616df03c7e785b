"""Helpers for tests (importable; fixtures live in conftest.py)."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (tests/run.sh installs it with apt-get)")
    return path


def sample_file(name: str) -> Path:
    """A file from pydicom's test files or the pydicom-data package (no network)."""
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"test file {name} is not available (pip install pydicom-data)")
    return Path(str(path))
