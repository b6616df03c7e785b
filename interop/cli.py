"""``interop``: the command line.

* ``interop serve``: every role in one process (HTTP, DICOM listener, study assembly) on the settings;
* ``interop token``: mint a bearer token for scripts and tests;
* ``interop user add|list|disable|enable``, ``interop client add|list``: users and OAuth clients of the
  built-in authorization server; ``interop launch --patient ID``: a launch id for an EHR-style SMART launch;
* ``interop worker``: a Celery inference worker (``jobs.executor = "celery"``);
* ``interop migrate``: bring the database schema up to date (``serve`` does this too);
* ``interop store check``: list stored objects that no index row points at (left by a crash);
* ``interop retention run [--dry-run]``: delete received images whose results were delivered (retention.*);
* ``interop hl7 list``: the newest stored HL7 v2 messages with their ACK and error (or pending); ``interop hl7 replay``:
  re-process stored messages; ``interop hl7 check``: full structure check;
* ``interop log-id UID``: the correlation id the logs use for a study (interop.logs).
* ``interop models list|activate|shadow|install``: model versions (interop.mlops);
  ``interop feedback export``: the sign-off feedback table for the apps' train scripts.
* ``interop doctor``: check the configuration and the peers (interop.doctor);
  ``interop conformance dicom|fhir``: the DICOM Conformance Statement / CapabilityStatement (interop.conformance).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import Any, get_args

from interop.config import Role, Settings

ROLES = get_args(Role)


def _settings(args: argparse.Namespace) -> Settings:
    if getattr(args, "config", None):
        os.environ["INTEROP_CONFIG"] = str(Path(args.config).absolute())
    try:
        return Settings()
    except Exception as exc:  # pydantic ValidationError or a bad config file: say what, then exit
        from interop.config import config_problems

        source = os.environ.get("INTEROP_CONFIG")
        where = f" ({source} and INTEROP_* variables)" if source else " (INTEROP_* variables)"
        print(f"interop: invalid configuration{where}:", file=sys.stderr)
        for line in config_problems(exc):
            print(f"  {line}", file=sys.stderr)
        raise SystemExit(2) from None


def _configure_logging(settings: Settings) -> None:
    """Our handler and format on the root logger (interop.logs); Celery keeps its hands off it (a receiver
    of its ``setup_logging`` signal stops it from configuring logging itself)."""
    from interop import logs

    logs.configure(settings.logging.format, settings.log_level_name)
    try:
        from celery.signals import setup_logging
    except ImportError:  # pragma: no cover - celery is a dependency
        return
    setup_logging.connect(_keep_logging, weak=False)


def _keep_logging(**_: Any) -> None:
    """Celery's ``setup_logging`` receiver: logging is already configured."""


def _log_id(args: argparse.Namespace) -> int:
    """The correlation id the logs use for a study (interop.logs.study_id)."""
    from interop.logs import study_id

    print(study_id(args.study_uid))
    return 0


def _serve(args: argparse.Namespace) -> int:
    from interop import memory

    memory.limit_arenas()  # before the node's threads start (interop.memory)
    import uvicorn

    from interop.api import create_app
    from interop.node import Node

    settings = _settings(args)
    _configure_logging(settings)
    node = Node(settings)
    app = create_app(node)
    print(
        f"interop: data in {settings.data_dir}; DICOM {settings.dicom.ae_title}@{settings.dicom.host}:"
        f"{settings.dicom.port}; HTTP http://{settings.http.host}:{settings.http.port} "
        f"(DICOMweb /dicomweb, API docs /docs); token: `interop token`",
        file=sys.stderr,
        flush=True,
    )
    # log_config=None: uvicorn's own lines go through our handler (and format) instead of its dictConfig.
    # timeout_graceful_shutdown: HTTP requests in flight at SIGTERM get the grace period, then are cancelled.
    config = uvicorn.Config(app, host=settings.http.host, port=settings.http.port,
                            log_level=settings.log_level_name.lower(), access_log=False, log_config=None,
                            timeout_graceful_shutdown=max(1, round(settings.shutdown.grace_seconds)))
    server = _graceful_server()(config, node)
    # uvicorn raises the signal it caught again once it has shut down (to end the process by it, exit status
    # 128+n); with these handlers in its place that second delivery does nothing and `serve` exits 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _after_shutdown)
    server.run()
    return 0 if server.started else 3  # 3: uvicorn's start-up failure (the port taken, the app's start failed)


def _after_shutdown(sig: int, _frame: Any) -> None:
    """The signal uvicorn delivers again after a graceful shutdown: already handled."""


def _graceful_server() -> Any:
    import uvicorn  # only `serve` imports it

    class GracefulServer(uvicorn.Server):
        """uvicorn's server that, on SIGTERM/SIGINT, also stops the node's DICOM and MLLP listeners from
        accepting at once (uvicorn closes the HTTP socket), so nothing new starts while in-flight work ends."""

        def __init__(self, config: uvicorn.Config, node: Any) -> None:
            super().__init__(config)
            self.node = node

        def handle_exit(self, sig: int, frame: Any) -> None:
            if not self.should_exit:
                self.node.begin_shutdown()
            super().handle_exit(sig, frame)

    return GracefulServer


def _worker(args: argparse.Namespace) -> int:
    from interop import memory

    memory.limit_arenas()
    from interop.jobs.celery_app import build_worker_app

    settings = _settings(args)
    _configure_logging(settings)
    if not settings.jobs.broker_url:
        print("interop worker: set jobs.broker_url (INTEROP_JOBS__BROKER_URL) to the Celery broker", file=sys.stderr)
        return 2
    from interop.store.db import Database

    Database(settings.db_url).migrate()
    app = build_worker_app(settings)
    concurrency = args.concurrency or settings.jobs.local_workers
    app.worker_main(["worker", "--pool", "threads", "--concurrency", str(concurrency), "-Q", "interop",
                     "--loglevel", settings.log_level_name, "--without-gossip", "--without-mingle",
                     *(["--hostname", args.hostname] if args.hostname else [])])
    return 0


def _token(args: argparse.Namespace) -> int:
    from interop.auth import TokenService

    settings = _settings(args)
    tokens = TokenService.from_settings(settings)
    extra = {k: v for k, v in (("name", args.name), ("role", args.role)) if v}
    print(tokens.mint(subject=args.subject, scope=args.scope, ttl=args.ttl, extra=extra or None))
    return 0


def _auth_server(args: argparse.Namespace) -> Any:
    """The built-in authorization server on the configured database (migrated first)."""
    from interop.auth import TokenService
    from interop.auth.server import AuthorizationServer
    from interop.store.db import Database

    settings = _settings(args)
    db = Database(settings.db_url)
    db.migrate()
    return AuthorizationServer(db, TokenService.from_settings(settings), settings.auth.server,
                               token_ttl=settings.auth.token_ttl_seconds)


def _fail(message: str) -> int:
    print(f"interop: {message}", file=sys.stderr)
    return 1


def _user_add(args: argparse.Namespace) -> int:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        import getpass

        password = getpass.getpass(f"password for {args.name}: ")
        if getpass.getpass("again: ") != password:
            return _fail("the passwords differ")
    try:
        user = _auth_server(args).add_user(args.name, role=args.role, password=password,
                                           display_name=args.display_name, fhir_user=args.fhir_user)
    except ValueError as exc:
        return _fail(str(exc))
    print(f"user {user.username} ({user.role}) added", file=sys.stderr)
    return 0


def _user_list(args: argparse.Namespace) -> int:
    for u in _auth_server(args).users():
        print(f"{u.username}\t{u.role}\t{'active' if u.active else 'disabled'}\t{u.display_name}\t{u.fhir_user or ''}")
    return 0


def _user_disable(args: argparse.Namespace) -> int:
    try:
        _auth_server(args).set_active(args.name, args.enable)
    except ValueError as exc:
        return _fail(str(exc))
    print(f"user {args.name} {'enabled' if args.enable else 'disabled (sessions and refresh tokens revoked)'}",
          file=sys.stderr)
    return 0


def _client_add(args: argparse.Namespace) -> int:
    import json
    import secrets

    jwks = None
    if args.jwks:
        try:
            jwks = json.loads(Path(args.jwks).read_text())
        except (OSError, ValueError) as exc:
            return _fail(f"can't read the JWKS {args.jwks}: {exc}")
    secret = None
    if not args.public and jwks is None:
        secret = sys.stdin.readline().strip() if args.secret_stdin else secrets.token_urlsafe(32)
    try:
        client = _auth_server(args).add_client(args.id, redirect_uris=args.redirect_uri or [], public=args.public,
                                               jwks=jwks, secret=secret, scopes=args.scope)
    except ValueError as exc:
        return _fail(str(exc))
    print(f"client {client.client_id} ({client.kind}) added; scopes: {client.scopes}", file=sys.stderr)
    if secret is not None and not args.secret_stdin:
        print(secret)  # shown once: only its hash is kept
    return 0


def _client_list(args: argparse.Namespace) -> int:
    server = _auth_server(args)
    server.ensure_default_clients()
    for c in server.clients():
        print(f"{c.client_id}\t{c.kind}\t{' '.join(c.redirect_uris)}\t{c.scopes}")
    return 0


def _launch(args: argparse.Namespace) -> int:
    try:
        print(_auth_server(args).create_launch(args.patient, ttl=args.ttl))
    except ValueError as exc:
        return _fail(str(exc))
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from interop.store.db import Database

    settings = _settings(args)
    db = Database(settings.db_url)
    db.migrate()
    print(f"schema up to date on {db.engine.url.render_as_string(hide_password=True)}")
    return 0


def _store_check(args: argparse.Namespace) -> int:
    from interop.store.blobs import open_blob_store
    from interop.store.db import Database
    from interop.store.instances import InstanceStore

    settings = _settings(args)
    db = Database(settings.db_url)
    blobs = open_blob_store(settings)  # files or the S3 bucket (storage.backend)
    orphans = InstanceStore(db, blobs).orphan_blobs()
    for key in orphans:
        print(key)
        if args.delete:
            blobs.delete(key)
    print(f"{len(orphans)} object(s) with no index row{' deleted' if args.delete and orphans else ''}",
          file=sys.stderr)
    return 0


def _retention_run(args: argparse.Namespace) -> int:
    from interop.retention import Retention
    from interop.store.blobs import open_blob_store
    from interop.store.db import Database

    settings = _settings(args)
    db = Database(settings.db_url)
    db.migrate()
    retention = Retention(db, open_blob_store(settings), settings.retention)
    if args.explain:
        for d in retention.review():
            if not d.delete:
                print(f"kept\t{d.study_uid}\t{d.instances}\t{d.reason}")
    done = retention.run(dry_run=args.dry_run, limit=args.limit)
    verb = "would delete" if args.dry_run else "deleted"
    for d in done:
        print(f"{verb}\t{d.study_uid}\t{d.instances}\t{d.reason}")
    print(f"{len(done)} study(ies): {verb} {sum(d.instances for d in done)} instance(s)", file=sys.stderr)
    return 0


def _hl7_replay(args: argparse.Namespace) -> int:
    import datetime as dt

    from interop.node import Node

    settings = _settings(args)
    node = Node(settings)
    node.db.migrate()
    since = None
    if args.since:
        since = dt.datetime.fromisoformat(args.since)
        if since.tzinfo is None:
            since = since.astimezone()
    n = 0
    for row, outcome in node.hl7.replay(ids=args.id or None, since=since, codes=args.ack or None,
                                        errors=args.errors):
        n += 1
        err = f" {outcome.error_code} {outcome.error_text}" if outcome.error_code else ""
        print(f"{row.id}\t{row.sending_application}/{row.sending_facility}\t{row.control_id}\t{row.message_type}\t"
              f"{outcome.code}{err}")
    print(f"{n} message(s) replayed", file=sys.stderr)
    return 0


def _hl7_list(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from interop.hl7v2.models import Hl7Message
    from interop.store.db import Database

    db = Database(_settings(args).db_url)
    db.migrate()
    q = select(Hl7Message).order_by(Hl7Message.id.desc()).limit(args.limit)
    if args.ack:
        q = q.where(Hl7Message.ack_code.in_(args.ack))
    if args.errors:
        q = q.where(Hl7Message.error_code.is_not(None))
    if args.pending:
        q = q.where(Hl7Message.pending)
    with db.reading() as s:
        rows = list(s.scalars(q))
    for row in reversed(rows):
        state = "pending" if row.pending else (f"{row.error_code} at {row.error_location or '-'}: {row.error_text}"
                                               if row.error_code else "ok")
        print(f"{row.id}\t{row.received_at.isoformat(timespec='seconds')}\t{row.sending_application}/"
              f"{row.sending_facility}\t{row.control_id}\t{row.message_type}\t{row.ack_code}\t{state}")
    return 0


def _hl7_check(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from interop.hl7v2.conformance import check
    from interop.hl7v2.models import Hl7Message
    from interop.store.db import Database

    db = Database(_settings(args).db_url)
    bad = 0
    with db.reading() as s:
        for row in s.scalars(select(Hl7Message).where(Hl7Message.id.in_(args.id)).order_by(Hl7Message.id)):
            problems = check(row.raw)
            bad += bool(problems)
            print(f"{row.id}\t{row.control_id}\t{'; '.join(problems) or 'conforms'}")
    return 1 if bad else 0


def _model_registry(args: argparse.Namespace) -> Any:
    """The model registry on the configured database (migrated first) and the installed apps."""
    from interop.jobs.registry import AppRegistry
    from interop.mlops.registry import ModelRegistry
    from interop.store.db import Database

    settings = _settings(args)
    db = Database(settings.db_url)
    db.migrate()
    apps = AppRegistry(settings.jobs.apps_dirs, settings.jobs.models,
                       installed=[(m.app, m.path) for m in settings.models.installed],
                       models_root=settings.data_dir / "models")
    return ModelRegistry(db, apps)


def _models_list(args: argparse.Namespace) -> int:
    for app in _model_registry(args).listing():
        if args.app and app["app"] != args.app:
            continue
        print(f"{app['app']}: active {app['active_version']}, shadow {app['shadow_version'] or '-'}")
        for v in app["versions"]:
            marks = [m for m, on in (("default", v["version"] == app["default_version"]),
                                     ("active", v["version"] == app["active_version"]),
                                     ("shadow", v["version"] == app["shadow_version"])) if on]
            print(f"  {v['version']}\t{','.join(marks) or '-'}\t{v['source']}\t{v['path']}")
        for rule, chosen in app["rules"].items():
            print(f"  rule {rule}: active {chosen['active_version']}, shadow {chosen['shadow_version'] or '-'}")
        for a in app["shadow_agreement"]:
            rate = "n/a" if a["agreement_rate"] is None else f"{a['agreement_rate']:.1%}"
            print(f"  shadow {a['shadow_version']} beside {a['active_version']}: {a['agreed']}/{a['compared']} "
                  f"agree ({rate}), {a['incomplete']} incomplete")
    return 0


def _models_assign(args: argparse.Namespace) -> int:
    from interop.errors import InteropError

    if args.version is None and not args.clear:
        return _fail("give a VERSION, or --clear")
    version = None if args.clear else args.version
    try:
        _model_registry(args).assign(args.app, args.role, version, rule=args.rule or "", by="cli")
    except InteropError as exc:
        return _fail(str(exc))
    scope = f"rule {args.rule}" if args.rule else "every rule"
    now = version or ("the app's own bundle" if args.role == "active" else "none")
    print(f"{args.app}: {args.role} model for {scope} is now {now}", file=sys.stderr)
    return 0


def _models_install(args: argparse.Namespace) -> int:
    from interop.errors import InteropError
    from interop.mlops.catalog import install

    settings = _settings(args)
    try:
        known = _model_registry(args).apps.versions(args.app)
        dest = install(settings.data_dir / "models", args.app, Path(args.bundle), known)
    except InteropError as exc:
        return _fail(str(exc))
    print(f"installed at {dest}; activate it with `interop models activate {args.app} <version>` or run it in "
          f"shadow with `interop models shadow {args.app} <version>`", file=sys.stderr)
    return 0


def _feedback_export(args: argparse.Namespace) -> int:
    import json

    from interop.reports.service import SignOffs
    from interop.store.db import Database

    db = Database(_settings(args).db_url)
    signoffs = SignOffs(db, reporter=None)  # type: ignore[arg-type]  # the export reads the database only
    text = (json.dumps(signoffs.feedback_rows(args.app), default=str) if args.format == "json"
            else signoffs.feedback_csv(args.app))
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="interop", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", help="TOML configuration file (same as INTEROP_CONFIG)")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("serve", help="run the node (HTTP, DICOM, study assembly)").set_defaults(func=_serve)

    t = sub.add_parser("token", help="mint a bearer token")
    t.add_argument("--subject", default="admin", help="the token's subject (default: admin)")
    t.add_argument("--scope", default="system/*.cruds", help="SMART scopes (default: system/*.cruds)")
    t.add_argument("--ttl", type=int, default=None, help="lifetime in seconds (default: auth.token_ttl_seconds)")
    t.add_argument("--name", help="the person's display name (the 'name' claim, e.g. a signer's name)")
    t.add_argument("--role", choices=ROLES, help="the person's role (the 'role' claim: signing needs radiologist "
                                                 "or physician)")
    t.set_defaults(func=_token)

    u = sub.add_parser("user", help="people who sign in at the built-in authorization server")
    u_sub = u.add_subparsers(dest="user_command", required=True)
    ua = u_sub.add_parser("add", help="add a user (asks for the password twice, or reads it from stdin)")
    ua.add_argument("name", help="user name (what they type to sign in; the tokens' subject)")
    ua.add_argument("--role", required=True, choices=ROLES, help="decides the scopes the user may hold")
    ua.add_argument("--display-name", help='e.g. "Jane Doe" (the tokens\' name claim; default: the user name)')
    ua.add_argument("--fhir-user", help="the FHIR resource of this person, e.g. Practitioner/123 (fhirUser claim)")
    ua.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    ua.set_defaults(func=_user_add)
    u_sub.add_parser("list", help="list users: name, role, state, display name, fhirUser").set_defaults(
        func=_user_list)
    ud = u_sub.add_parser("disable", help="disable a user (their sessions and refresh tokens end)")
    ud.add_argument("name")
    ud.set_defaults(func=_user_disable, enable=False)
    ue = u_sub.add_parser("enable", help="enable a disabled user again")
    ue.add_argument("name")
    ue.set_defaults(func=_user_disable, enable=True)

    c = sub.add_parser("client", help="OAuth clients of the built-in authorization server")
    c_sub = c.add_subparsers(dest="client_command", required=True)
    ca = c_sub.add_parser("add", help="register a client: public (PKCE), with a JWKS (private_key_jwt, SMART "
                                      "backend services), or else with a secret (printed once)")
    ca.add_argument("id", help="client_id")
    ca.add_argument("--redirect-uri", action="append", help="absolute, or a path relative to the node's base URL "
                                                            "(repeatable)")
    kind = ca.add_mutually_exclusive_group()
    kind.add_argument("--public", action="store_true", help="a browser or native app without a secret")
    kind.add_argument("--jwks", metavar="FILE", help="the client's public keys (JWK Set JSON) for private_key_jwt")
    kind.add_argument("--secret-stdin", action="store_true", help="read the client secret from stdin instead of "
                                                                  "generating one")
    ca.add_argument("--scope", help="scopes the client may be granted (default: the launch scopes with "
                                    "patient/*.cruds user/*.cruds for a browser app; system/*.rs for a backend)")
    ca.set_defaults(func=_client_add)
    c_sub.add_parser("list", help="list clients: id, kind, redirect URIs, scopes").set_defaults(func=_client_list)

    la = sub.add_parser("launch", help="make a launch id with a patient in context (an EHR-style SMART launch)")
    la.add_argument("--patient", required=True, help="the FHIR Patient id")
    la.add_argument("--ttl", type=int, default=None, help="seconds it stays usable (default: "
                                                         "auth.server.launch_ttl_seconds)")
    la.set_defaults(func=_launch)

    sub.add_parser("migrate", help="apply database migrations").set_defaults(func=_migrate)

    li = sub.add_parser("log-id", help="the correlation id of a study in the logs (a hash of its UID)")
    li.add_argument("study_uid")
    li.set_defaults(func=_log_id)

    w = sub.add_parser("worker", help="run a Celery inference worker (jobs.executor = celery)")
    w.add_argument("--concurrency", type=int, default=0, help="apps run at once (default jobs.local_workers)")
    w.add_argument("--hostname", help="Celery node name (default celery@<host>)")
    w.set_defaults(func=_worker)

    st = sub.add_parser("store", help="storage maintenance")
    st_sub = st.add_subparsers(dest="store_command", required=True)
    chk = st_sub.add_parser("check", help="list objects no index row points at")
    chk.add_argument("--delete", action="store_true", help="delete them")
    chk.set_defaults(func=_store_check)

    rt = sub.add_parser("retention", help="delete received images whose results were delivered (retention.*)")
    rt_sub = rt.add_subparsers(dest="retention_command", required=True)
    rr = rt_sub.add_parser("run", help="one retention pass now (also when retention.enabled is false): prints "
                                       "each study deleted, with why it was due")
    rr.add_argument("--dry-run", action="store_true", help="delete nothing; print what a pass would delete")
    rr.add_argument("--explain", action="store_true", help="also print each study kept, and why")
    rr.add_argument("--limit", type=int, default=None, help="studies at most (default retention.batch)")
    rr.set_defaults(func=_retention_run)

    h = sub.add_parser("hl7", help="HL7 v2 message log")
    h_sub = h.add_subparsers(dest="hl7_command", required=True)
    rp = h_sub.add_parser("replay", help="re-process stored messages (all, or those selected), oldest first")
    rp.add_argument("--id", type=int, action="append", help="message log id (repeatable)")
    rp.add_argument("--since", help="received at or after this ISO 8601 time (local time if no offset)")
    rp.add_argument("--ack", action="append", choices=["AA", "AE", "AR", "CA", "CE", "CR"],
                    help="only messages last answered so")
    rp.add_argument("--errors", action="store_true",
                    help="only messages with an error recorded (AE/AR, or accepted with CA and not applied)")
    rp.set_defaults(func=_hl7_replay)
    hl = h_sub.add_parser("list", help="the newest stored messages: sender, control ID, ACK, error or pending")
    hl.add_argument("--ack", action="append", choices=["AA", "AE", "AR", "CA", "CE", "CR"],
                    help="only messages answered so")
    hl.add_argument("--errors", action="store_true", help="only messages with an error recorded")
    hl.add_argument("--pending", action="store_true", help="only accepted messages not applied yet")
    hl.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    hl.set_defaults(func=_hl7_list)
    hc = h_sub.add_parser("check", help="full HL7 v2.5.1 structure check (hl7apy) of stored messages")
    hc.add_argument("--id", type=int, action="append", required=True, help="message log id (repeatable)")
    hc.set_defaults(func=_hl7_check)

    m = sub.add_parser("models", help="model versions: list, activate, shadow, install")
    m_sub = m.add_subparsers(dest="models_command", required=True)
    ml = m_sub.add_parser("list", help="installed versions per app, which is active and which in shadow, the "
                                       "shadow agreement")
    ml.add_argument("app", nargs="?", help="only this app")
    ml.set_defaults(func=_models_list)
    for command, role, doc in (("activate", "active", "make an installed version active (new jobs run it)"),
                               ("shadow", "shadow", "run an installed version in shadow beside the active one")):
        ma = m_sub.add_parser(command, help=doc)
        ma.add_argument("app")
        ma.add_argument("version", nargs="?")
        ma.add_argument("--rule", help="only for this routing rule (default: every rule of the app)")
        ma.add_argument("--clear", action="store_true", help="remove the assignment (active: back to the app's "
                                                             "own bundle; shadow: none)")
        ma.set_defaults(func=_models_assign, role=role)
    mi = m_sub.add_parser("install", help="copy a model bundle to <data_dir>/models/<app>/<version>/")
    mi.add_argument("app")
    mi.add_argument("bundle", help="the bundle folder (configs/metadata.json names its version)")
    mi.set_defaults(func=_models_install)

    fb = sub.add_parser("feedback", help="physicians' verdicts beside the AI output (for the train scripts)")
    fb_sub = fb.add_subparsers(dest="feedback_command", required=True)
    fe = fb_sub.add_parser("export", help="the sign-off feedback table (same as GET /api/feedback)")
    fe.add_argument("--app", help="only this app's verdicts")
    fe.add_argument("--format", choices=["csv", "json"], default="csv")
    fe.add_argument("--out", help="file to write (default: standard output)")
    fe.set_defaults(func=_feedback_export)

    dr = sub.add_parser("doctor", help="check the configuration and the peers: database, storage, broker, the "
                                       "DICOM listener, every write-back destination (C-ECHO, QIDO, FHIR metadata)")
    dr.add_argument("--timeout", type=float, default=5.0, help="seconds per network check")
    dr.add_argument("--no-listener", action="store_true", help="don't C-ECHO the node's own DICOM listener")
    dr.set_defaults(func=_doctor)

    cf = sub.add_parser("conformance", help="conformance statements generated from this configuration")
    cf.add_argument("what", choices=["dicom", "fhir"], help="dicom: the DICOM Conformance Statement (Markdown); "
                                                            "fhir: the CapabilityStatement (JSON)")
    cf.add_argument("--out", help="file to write (default: standard output)")
    cf.add_argument("--base-url", help="the FHIR base URL to state (default: http.public_url)")
    cf.set_defaults(func=_conformance)
    return p


def _doctor(args: argparse.Namespace) -> int:
    from interop.doctor import report, run_checks

    checks = run_checks(_settings(args), timeout=args.timeout, own_listener=not args.no_listener)
    print(report(checks))
    failed = [c for c in checks if c.ok is False]
    print(f"{len(failed)} problem(s)" if failed else "no problems found")
    return 1 if failed else 0


def _conformance(args: argparse.Namespace) -> int:
    import json

    from interop import __version__, conformance

    settings = _settings(args)
    if args.what == "dicom":
        text = conformance.dicom_conformance_statement(settings, version=__version__)
    else:
        text = json.dumps(conformance.capability_statement(settings, version=__version__, base_url=args.base_url),
                          indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    else:
        print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
