"""One running node for the authorization tests (started once for the package: a node takes seconds to start),
with the users of :data:`tests.auth.smart.USERS`: the first added through ``interop user add``, the others
directly on its database (each command line costs a second of interpreter start-up)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.auth.smart import PARTNER_AUDIENCE, PASSWORD, USERS, auth_server, cli
from tests.conftest import ServerProc


@pytest.fixture(scope="package")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    # A second audience in every token it mints: the name a partner node (tests/auth/test_external_oidc.py)
    # accepts its tokens under.
    srv = ServerProc(data_dir=tmp_path_factory.mktemp("auth") / "node",
                     extra_env={"INTEROP_AUTH__SERVER__AUDIENCE": f'["{PARTNER_AUDIENCE}"]'}).start()
    try:
        (first, (role, display, fhir_user)), *others = USERS.items()
        added = cli(srv, "user", "add", first, "--role", role, "--display-name", display, "--password-stdin",
                    *(["--fhir-user", fhir_user] if fhir_user else []), stdin=PASSWORD + "\n")
        assert added.returncode == 0, added.stderr
        server = auth_server(srv)
        for name, (role, display, fhir_user) in others:
            server.add_user(name, role=role, password=PASSWORD, display_name=display, fhir_user=fhir_user)
        server.db.dispose()
        yield srv
    finally:
        srv.stop()
