"""Configuring the node (routing rules, model versions, write-back retries) needs update on ``*`` from a ``user/``
or ``system/`` scope: ``patient/*.cruds`` is for one patient's data, and is refused with 403 and an
OperationOutcome even though it names ``*`` and ``u``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from interop.api.app import create_app
from interop.config import Settings
from interop.node import Node


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[TestClient, Node]]:
    node = Node(Settings(data_dir=tmp_path))
    node.db.migrate()
    with TestClient(create_app(node, manage_node=False)) as c:
        yield c, node
    node.db.dispose()


@pytest.mark.parametrize("path,method", [("/api/routing/rules/nope", "DELETE"),
                                         ("/api/writebacks/12345/retry", "POST"),
                                         ("/api/models/cxr_triage/active", "PUT")])
def test_patient_scopes_cannot_configure_the_node(api: tuple[TestClient, Node], path: str, method: str) -> None:
    client, node = api

    def call(scope: str, patient: str | None = None) -> int:
        token = node.tokens.mint("someone", scope, extra={"patient": patient} if patient else None)
        body = {"version": "9.9"} if method == "PUT" else None
        return client.request(method, path, json=body, headers={"Authorization": f"Bearer {token}"}).status_code

    for scope, patient in (("patient/*.cruds", "p1"), ("patient/*.cruds", None), ("user/*.rs", None)):
        status = call(scope, patient)
        assert status == 403, (scope, patient, status)
    token = node.tokens.mint("x", "patient/*.u", extra={"patient": "p1"})
    got = client.request(method, path, headers={"Authorization": f"Bearer {token}"})
    assert got.json()["resourceType"] == "OperationOutcome" and "patient/" in got.text
    for scope in ("system/*.cruds", "user/*.cruds"):
        assert call(scope) not in (401, 403), scope  # past the scope check (404 or 409: nothing of that name)
