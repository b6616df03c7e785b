"""Settings: defaults, TOML file, environment over file, refusal of unsafe values."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from interop.config import Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("INTEROP_"):
            monkeypatch.delenv(key)


def test_defaults_are_the_documented_ones(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    s = Settings()
    assert (s.dicom.ae_title, s.dicom.port, s.http.port) == ("INTEROP", 11112, 8080)
    assert s.data_dir == tmp_path / ".interop"
    assert s.db_url == f"sqlite:///{tmp_path / '.interop' / 'interop.db'}"
    assert s.dicom.duplicate_policy == "keep-first"


def test_toml_file_is_read_and_env_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = tmp_path / "interop.toml"
    cfg.write_text(
        'data_dir = "/srv/interop"\n[dicom]\nport = 104\nallowed_aes = ["PACS"]\n[studies]\nquiet_seconds = 30\n'
    )
    monkeypatch.setenv("INTEROP_CONFIG", str(cfg))
    monkeypatch.setenv("INTEROP_DICOM__PORT", "11113")
    s = Settings()
    assert s.data_dir == Path("/srv/interop")
    assert s.dicom.port == 11113, "environment overrides the file"
    assert s.dicom.allowed_aes == ["PACS"]
    assert s.studies.quiet_seconds == 30


@pytest.mark.parametrize(
    ("env", "value"),
    [
        ("INTEROP_DICOM__AE_TITLE", "THIS_AE_TITLE_IS_TOO_LONG"),
        ("INTEROP_DICOM__PORT", "70000"),
        ("INTEROP_DICOM__DUPLICATE_POLICY", "sometimes"),
        ("INTEROP_AUTH__SECRET", "short"),
        ("INTEROP_NO_SUCH_SETTING", "1"),
        ("INTEROP_DICOM__PROT", "104"),
    ],
)
def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch, env: str, value: str) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ValidationError):
        Settings()


def test_unknown_toml_key_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[dicom]\nprot = 104\n")
    monkeypatch.setenv("INTEROP_CONFIG", str(cfg))
    with pytest.raises(ValidationError, match="prot"):
        Settings()


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "interop", "--config", str(tmp_path / "nope.toml"), "token"],
        capture_output=True, text=True,
    )
    assert out.returncode == 2
    assert "invalid configuration" in out.stderr and "nope.toml" in out.stderr
