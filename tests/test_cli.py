"""The ``interop`` command line: token, migrate, store check (run as real subprocesses)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import inspect

from interop.auth import TokenService
from interop.config import Settings
from interop.errors import Unauthorized
from interop.store.blobs import FileBlobStore
from interop.store.db import Database
from interop.store.instances import InstanceStore
from tests.support import sample_file


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("INTEROP_")}
    return {**clean, "INTEROP_DATA_DIR": str(tmp_path / "data")}


def interop(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "interop", *args], env=env, capture_output=True, text=True,
                          timeout=60)


def test_token_minted_verifies_with_the_node_secret(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    out = interop(env, "token", "--scope", "system/ImagingStudy.rs", "--ttl", "120")
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip()
    monkeypatch.setenv("INTEROP_DATA_DIR", env["INTEROP_DATA_DIR"])
    principal = TokenService.from_settings(Settings()).verify(token)
    assert principal.scope_text == "system/ImagingStudy.rs"
    principal.require("ImagingStudy", "r")
    # A second run reuses the secret kept in the data directory: its tokens verify the same way.
    assert TokenService.from_settings(Settings()).verify(interop(env, "token").stdout.strip())


def test_token_from_another_data_dir_refused(env: dict[str, str], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    token = interop({**env, "INTEROP_DATA_DIR": str(tmp_path / "elsewhere")}, "token").stdout.strip()
    monkeypatch.setenv("INTEROP_DATA_DIR", env["INTEROP_DATA_DIR"])
    interop(env, "token")  # creates this data dir's secret
    with pytest.raises(Unauthorized):
        TokenService.from_settings(Settings()).verify(token)


def test_migrate_creates_the_schema_and_is_repeatable(env: dict[str, str], tmp_path: Path) -> None:
    for _ in range(2):
        out = interop(env, "migrate")
        assert out.returncode == 0, out.stderr
        assert "schema up to date" in out.stdout
    db = Database(f"sqlite:///{tmp_path / 'data' / 'interop.db'}")
    assert {"studies", "series", "instances", "study_events"} <= set(inspect(db.engine).get_table_names())
    db.dispose()


def test_store_check_lists_and_deletes_only_orphans(env: dict[str, str], tmp_path: Path) -> None:
    data = tmp_path / "data"
    db = Database(f"sqlite:///{data / 'interop.db'}")
    db.migrate()
    blobs = FileBlobStore(data / "blobs")
    src = tmp_path / "ct.dcm"
    shutil.copyfile(sample_file("CT_small.dcm"), src)
    result = InstanceStore(db, blobs).ingest(src, source="test")
    (kept,) = list(blobs.iter_keys())
    orphan = blobs.new_key()  # as a crash between file and commit leaves it
    staged = tmp_path / "orphan.dcm"
    staged.write_bytes(b"left by a crash")
    blobs.put_file(staged, orphan)

    listed = interop(env, "store", "check")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == [orphan]
    assert "1 object(s) with no index row" in listed.stderr
    assert set(blobs.iter_keys()) == {kept, orphan}, "without --delete nothing is removed"

    deleted = interop(env, "store", "check", "--delete")
    assert deleted.stdout.split() == [orphan]
    assert set(blobs.iter_keys()) == {kept}
    assert interop(env, "store", "check").stdout.split() == []
    assert result.stored
    db.dispose()


def test_serve_with_invalid_setting_exits_2(env: dict[str, str]) -> None:
    out = interop({**env, "INTEROP_DICOM__DUPLICATE_POLICY": "sometimes"}, "serve")
    assert out.returncode == 2
    assert "invalid configuration" in out.stderr and "duplicate_policy" in out.stderr
