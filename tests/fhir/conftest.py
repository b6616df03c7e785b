"""Fixtures of the FHIR tests: the official R4 JSON schema as one validator per served type."""

from __future__ import annotations

import json
from typing import Any

import pytest

from interop.fhir.registry import RESOURCES
from tests.fhir.test_examples import SCHEMA, _need


@pytest.fixture(scope="session")
def validators() -> dict[str, Any]:
    """One JSON-schema validator per served type, built once (the whole schema per call takes minutes)."""
    from jsonschema import Draft6Validator

    definitions = json.loads(_need(SCHEMA).read_text())["definitions"]
    return {t: Draft6Validator({"$ref": f"#/definitions/{t}", "definitions": definitions}) for t in RESOURCES}
