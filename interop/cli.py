"""``interop``: the command line.

* ``interop serve``: every role in one process (HTTP, DICOM listener, study assembly) on the settings;
* ``interop token``: mint a bearer token for scripts and tests;
* ``interop worker``: a Celery inference worker (``jobs.executor = "celery"``);
* ``interop migrate``: bring the database schema up to date (``serve`` does this too);
* ``interop store check``: list stored objects that no index row points at (left by a crash);
* ``interop hl7 replay``: re-process stored HL7 v2 messages; ``interop hl7 check``: full structure check.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from interop.config import Settings


def _settings(args: argparse.Namespace) -> Settings:
    if getattr(args, "config", None):
        os.environ["INTEROP_CONFIG"] = str(Path(args.config).absolute())
    try:
        return Settings()
    except Exception as exc:  # pydantic ValidationError or a bad config file: say what, then exit
        print(f"interop: invalid configuration:\n{exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from interop.api import create_app
    from interop.node import Node

    settings = _settings(args)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    node = Node(settings)
    app = create_app(node)
    print(
        f"interop: data in {settings.data_dir}; DICOM {settings.dicom.ae_title}@{settings.dicom.host}:"
        f"{settings.dicom.port}; HTTP http://{settings.http.host}:{settings.http.port} "
        f"(DICOMweb /dicomweb, API docs /docs); token: `interop token`",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(app, host=settings.http.host, port=settings.http.port, log_level=settings.log_level.lower(),
                access_log=False)
    return 0


def _worker(args: argparse.Namespace) -> int:
    from interop.jobs.celery_app import build_worker_app

    settings = _settings(args)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not settings.jobs.broker_url:
        print("interop worker: set jobs.broker_url (INTEROP_JOBS__BROKER_URL) to the Celery broker", file=sys.stderr)
        return 2
    from interop.store.db import Database

    Database(settings.db_url).migrate()
    app = build_worker_app(settings)
    concurrency = args.concurrency or settings.jobs.local_workers
    app.worker_main(["worker", "--pool", "threads", "--concurrency", str(concurrency), "-Q", "interop",
                     "--loglevel", settings.log_level.upper(), "--without-gossip", "--without-mingle",
                     *(["--hostname", args.hostname] if args.hostname else [])])
    return 0


def _token(args: argparse.Namespace) -> int:
    from interop.auth import TokenService

    settings = _settings(args)
    tokens = TokenService.from_settings(settings)
    print(tokens.mint(subject=args.subject, scope=args.scope, ttl=args.ttl))
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from interop.store.db import Database

    settings = _settings(args)
    db = Database(settings.db_url)
    db.migrate()
    print(f"schema up to date on {db.engine.url.render_as_string(hide_password=True)}")
    return 0


def _store_check(args: argparse.Namespace) -> int:
    from interop.store.blobs import FileBlobStore
    from interop.store.db import Database
    from interop.store.instances import InstanceStore

    settings = _settings(args)
    db = Database(settings.db_url)
    blobs = FileBlobStore(settings.data_dir / "blobs")
    orphans = InstanceStore(db, blobs).orphan_blobs()
    for key in orphans:
        print(key)
        if args.delete:
            blobs.delete(key)
    print(f"{len(orphans)} object(s) with no index row{' deleted' if args.delete and orphans else ''}",
          file=sys.stderr)
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
    for row, outcome in node.hl7.replay(ids=args.id or None, since=since, codes=args.ack or None):
        n += 1
        err = f" {outcome.error_code} {outcome.error_text}" if outcome.code != "AA" else ""
        print(f"{row.id}\t{row.sending_application}/{row.sending_facility}\t{row.control_id}\t{row.message_type}\t"
              f"{outcome.code}{err}")
    print(f"{n} message(s) replayed", file=sys.stderr)
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="interop", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", help="TOML configuration file (same as INTEROP_CONFIG)")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("serve", help="run the node (HTTP, DICOM, study assembly)").set_defaults(func=_serve)

    t = sub.add_parser("token", help="mint a bearer token")
    t.add_argument("--subject", default="admin", help="the token's subject (default: admin)")
    t.add_argument("--scope", default="system/*.cruds", help="SMART scopes (default: system/*.cruds)")
    t.add_argument("--ttl", type=int, default=None, help="lifetime in seconds (default: auth.token_ttl_seconds)")
    t.set_defaults(func=_token)

    sub.add_parser("migrate", help="apply database migrations").set_defaults(func=_migrate)

    w = sub.add_parser("worker", help="run a Celery inference worker (jobs.executor = celery)")
    w.add_argument("--concurrency", type=int, default=0, help="apps run at once (default jobs.local_workers)")
    w.add_argument("--hostname", help="Celery node name (default celery@<host>)")
    w.set_defaults(func=_worker)

    st = sub.add_parser("store", help="storage maintenance")
    st_sub = st.add_subparsers(dest="store_command", required=True)
    chk = st_sub.add_parser("check", help="list objects no index row points at")
    chk.add_argument("--delete", action="store_true", help="delete them")
    chk.set_defaults(func=_store_check)

    h = sub.add_parser("hl7", help="HL7 v2 message log")
    h_sub = h.add_subparsers(dest="hl7_command", required=True)
    rp = h_sub.add_parser("replay", help="re-process stored messages (all, or those selected), oldest first")
    rp.add_argument("--id", type=int, action="append", help="message log id (repeatable)")
    rp.add_argument("--since", help="received at or after this ISO 8601 time (local time if no offset)")
    rp.add_argument("--ack", action="append", choices=["AA", "AE", "AR"], help="only messages last answered so")
    rp.set_defaults(func=_hl7_replay)
    hc = h_sub.add_parser("check", help="full HL7 v2.5.1 structure check (hl7apy) of stored messages")
    hc.add_argument("--id", type=int, action="append", required=True, help="message log id (repeatable)")
    hc.set_defaults(func=_hl7_check)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
