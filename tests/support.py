"""Helpers for tests (importable; fixtures live in conftest.py)."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

_handed_out: set[int] = set()


def free_port() -> int:
    """A free TCP port on 127.0.0.1, never one this test process has handed out before (a server's ports
    are picked one by one, and the OS may offer a just-closed port again)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port


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
