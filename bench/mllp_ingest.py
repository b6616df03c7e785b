"""MLLP ingest: ORU^R01 messages per second with durable ACKs, our node beside a bare durable MLLP server.

* ``interop``: ``interop serve`` on its defaults (SQLite, ``synchronous=FULL``; or ``--postgres``). The sample
  says ``AL|NE`` in MSH-15/16 (enhanced mode, accept acknowledgment only), so the node checks and parses it,
  commits the raw message and answers ``CA`` (HL7 v2.5.1 §2.9.3); its applier then maps it to a FHIR
  transaction Bundle (Patient, ServiceRequest, DiagnosticReport, 8 Observations) and writes it. Rows marked
  ``AA`` send the same message with MSH-15/16 emptied (original mode): mapped, written and committed with its
  raw copy before ``AA`` (§2.9.2); messages that arrive together share one commit (``interop/hl7v2/group.py``).
  For each node row the bench also waits until no accepted message is left unapplied (it reads the node's
  database) and reports that "applied" rate; the CPU column includes the applying.
* ``bare``: this file's ``--bare-server``: an asyncio MLLP server that reads MSH-10 from the frame, inserts
  the raw message into SQLite (WAL, ``synchronous=FULL``: one fsync'd commit per message; or the same
  PostgreSQL cluster, one commit per message) and answers ``AA``. It does nothing else, so it is the
  ceiling for any durable MLLP receiver in Python on this machine.

Both run as separate processes on loopback with TCP_NODELAY; the client sends the 8-result metabolic panel
(``tests/hl7v2/messages/oru_r01_cmp.hl7``) with a fresh control ID, filler order number and one of 50 patients
per message, send-and-wait on each connection, on 1 and on ``--conns`` connections, in the
same run, alternating servers each round; ``--window W`` adds a row where one connection keeps W messages in
flight (pipelined; ACKs still checked one by one, in order). Beside each rate, the CPU time the server's
process tree spent per message (user + system): on a shared, noisy VM the steadier figure. Before timing,
the bench waits until the node's process tree is idle (``interop serve`` loads the recommender's embedding
model and a warm app process in the background at start-up, seconds of CPU that would otherwise land in the
first round). Output: acknowledged messages/s per server (median of the rounds), the node's applied rate,
the ratio ours/bare, and CPU ms per message. ``--mode enhanced|original`` measures one mode only.

    .venv/bin/python bench/mllp_ingest.py                       # --n 1000 --conns 4 --rounds 3
    .venv/bin/python bench/mllp_ingest.py --postgres --window 8 # also on a throwaway PostgreSQL cluster
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "tests" / "hl7v2" / "messages" / "oru_r01_cmp.hl7"
VT, END = b"\x0b", b"\x1c\x0d"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the bare durable server -----------------------------------------------------------------------------------


def bare_server(port: int, db_url: str) -> None:
    """Store each message (one durable commit: SQLite with fsync, or PostgreSQL) and answer AA: nothing else."""
    if db_url.startswith("postgresql"):
        import psycopg

        pg = psycopg.connect(db_url.replace("postgresql+psycopg://", "postgresql://"))
        pg.execute("CREATE TABLE IF NOT EXISTS bare_messages (id SERIAL PRIMARY KEY, control_id TEXT, raw BYTEA)")
        pg.commit()

        def store(control_id: str, payload: bytes) -> None:
            pg.execute("INSERT INTO bare_messages (control_id, raw) VALUES (%s, %s)", (control_id, payload))
            pg.commit()
    else:
        db = sqlite3.connect(db_url, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE IF NOT EXISTS m (id INTEGER PRIMARY KEY, control_id TEXT, raw BLOB)")

        def store(control_id: str, payload: bytes) -> None:
            db.execute("BEGIN")
            db.execute("INSERT INTO m (control_id, raw) VALUES (?, ?)", (control_id, payload))
            db.execute("COMMIT")

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                await reader.readuntil(VT)
                payload = (await reader.readuntil(END))[:-2]
                msh = payload.split(b"\r", 1)[0].split(b"|")
                control_id = msh[9].decode() if len(msh) > 9 else ""
                store(control_id, payload)
                ack = (f"MSH|^~\\&|BARE||{msh[2].decode()}|{msh[3].decode()}|{time.strftime('%Y%m%d%H%M%S')}||ACK"
                       f"|A{control_id}|P|2.5.1\rMSA|AA|{control_id}\r").encode()
                writer.write(VT + ack + END)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(serve, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# -- the client -----------------------------------------------------------------------------------------------


def messages(prefix: str, n: int, *, original: bool = False) -> list[bytes]:
    """``n`` copies of the sample with fresh control IDs; ``original``: MSH-15/MSH-16 emptied, so the message is
    in original acknowledgment mode (AA after its resources are committed) instead of asking, as the sample
    does (``AL|NE``), for an enhanced-mode accept acknowledgment (CA once it is kept)."""
    template = SAMPLE.read_bytes()
    if original:
        template = template.replace(b"|AL|NE|", b"|||", 1)
    out = []
    for i in range(n):
        out.append(template.replace(b"LAB20261120-0001", f"{prefix}-{i}".encode())
                   .replace(b"FIL-20261120-0457", f"F{prefix}-{i}".encode())
                   .replace(b"MRN483920", f"MRN{i % 50:06d}".encode()))
    return out


async def _connection(port: int, msgs: list[bytes], window: int) -> int:
    """Send ``msgs`` over one connection, at most ``window`` unacknowledged at a time (1: send-and-wait);
    returns how many were answered AA or CA, each ACK matched to its message by MSA-2, in order."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    ok = sent = 0
    for n, m in enumerate(msgs):
        while sent < min(len(msgs), n + window):
            writer.write(VT + msgs[sent] + END)
            sent += 1
        await writer.drain()
        await reader.readuntil(VT)
        ack = await reader.readuntil(END)
        control_id = m.split(b"\r", 1)[0].split(b"|")[9]
        ok += b"MSA|AA|" + control_id + b"\r" in ack or b"MSA|CA|" + control_id + b"\r" in ack
    writer.close()
    return ok


async def _run(port: int, msgs: list[bytes], conns: int, window: int) -> tuple[float, int]:
    parts = [msgs[i::conns] for i in range(conns)]
    t0 = time.perf_counter()
    oks = await asyncio.gather(*(_connection(port, p, window) for p in parts))
    return time.perf_counter() - t0, sum(oks)


def measure(port: int, prefix: str, n: int, conns: int, window: int = 1, *, original: bool = False) -> float:
    """Messages per second acknowledged (AA, or CA for the enhanced-mode sample); raises unless all were."""
    elapsed, ok = asyncio.run(_run(port, messages(prefix, n, original=original), conns, window))
    if ok != n:
        raise RuntimeError(f"{prefix}: {n - ok} of {n} messages were not acknowledged AA/CA")
    return n / elapsed


def wait_applied(db_url: str, timeout: float = 600) -> float:
    """Wait until the node has no accepted message whose resources are still to be written; when that was
    (time.perf_counter())."""
    import sqlalchemy as sa

    engine = sa.create_engine(db_url)
    try:
        deadline = time.monotonic() + timeout
        with engine.connect() as conn:
            while time.monotonic() < deadline:
                n = conn.execute(sa.text("SELECT count(*) FROM hl7_messages WHERE pending")).scalar_one()
                conn.rollback()
                if not n:
                    return time.perf_counter()
                time.sleep(0.005)
    finally:
        engine.dispose()
    raise RuntimeError("the node did not apply its accepted messages in time")


def cpu_seconds(proc: subprocess.Popen[bytes]) -> float:
    """User + system CPU time of ``proc`` and its children so far (what a run costs the server, whatever
    else the machine is doing: on a shared VM the steadier figure beside the rate)."""
    import psutil

    root = psutil.Process(proc.pid)
    total = 0.0
    for p in [root, *root.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def wait_quiet(proc: subprocess.Popen[bytes], *, idle: float = 0.05, timeout: float = 120) -> None:
    """Wait until ``proc`` and its children use less than ``idle`` of a core over a second (start-up done)."""
    deadline = time.monotonic() + timeout
    before = cpu_seconds(proc)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = cpu_seconds(proc)
        if now - before < idle:
            return
        before = now


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("server did not start listening")


def start(cmd: list[str], env: dict[str, str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)


def bench_database(label: str, db_url: str | None, args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    """Start both servers on one database, measure every row ``--rounds`` times; the median of each."""
    ours_port, bare_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTEROP_")}
    env.update(INTEROP_DATA_DIR=str(tmp / f"node-{label}"), INTEROP_HL7__PORT=str(ours_port),
               INTEROP_HL7__HOST="127.0.0.1", INTEROP_HTTP__PORT=str(free_port()), INTEROP_HTTP__HOST="127.0.0.1",
               INTEROP_DICOM__PORT=str(free_port()), INTEROP_DICOM__HOST="127.0.0.1", INTEROP_LOG_LEVEL="WARNING")
    if db_url:
        env["INTEROP_DATABASE_URL"] = db_url
    ours = start([sys.executable, "-m", "interop", "serve"], env, tmp / f"interop-{label}.log", tmp)
    bare = start([sys.executable, __file__, "--bare-server", str(bare_port), db_url or str(tmp / "bare.db")],
                 dict(os.environ), tmp / f"bare-{label}.log", tmp)
    node_db = db_url or f"sqlite:///{tmp / f'node-{label}' / 'interop.db'}"
    rows: list[tuple[str, int, int, bool]] = []
    for mode, original in (("CA", False), ("AA", True)):
        if args.mode not in ("both", "enhanced" if mode == "CA" else "original"):
            continue
        rows += [(f"{mode} 1 conn", 1, 1, original), (f"{mode} {args.conns} conns", args.conns, 1, original)]
        if args.window > 1:
            rows.append((f"{mode} 1 conn, window {args.window}", 1, args.window, original))
    results: dict[tuple[str, str], list[float]] = {}
    applied: dict[str, list[float]] = {}
    cpu: dict[tuple[str, str], list[float]] = {}
    try:
        wait_port(ours_port, ours)
        wait_port(bare_port, bare)
        for name, port in (("interop", ours_port), ("bare", bare_port)):
            measure(port, f"warm-{label}-{name}", 50, 1)
        wait_applied(node_db)
        wait_quiet(ours)
        for r in range(args.rounds):
            servers = [("interop", ours_port, ours), ("bare", bare_port, bare)]
            for name, port, proc in servers if r % 2 == 0 else servers[::-1]:
                for row, conns, window, original in rows:
                    c0 = cpu_seconds(proc)
                    t0 = time.perf_counter()
                    rate = measure(port, f"{label}r{r}{row.replace(' ', '').replace(',', '')}{name[0]}", args.n,
                                   conns, window, original=original)
                    done = ""
                    if name == "interop":  # CA: until the resources of the last message are written too
                        rate_applied = args.n / (wait_applied(node_db) - t0)
                        applied.setdefault(row, []).append(rate_applied)
                        done = f" ({rate_applied:5.0f} applied/s)"
                    ms = (cpu_seconds(proc) - c0) * 1000 / args.n
                    results.setdefault((name, row), []).append(rate)
                    cpu.setdefault((name, row), []).append(ms)
                    print(f"{label} round {r + 1}: {name:8s} {row:22s} {rate:7.0f} msg/s{done}  {ms:5.2f} CPU ms/msg",
                          flush=True)
    finally:
        for proc in (ours, bare):
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
    print(f"\n{label}: median of {args.rounds} rounds, {args.n} ORU^R01 (8 OBX) each; acknowledged = durable "
          "CA (enhanced mode: the message kept) or AA (original mode: the message and its resources committed); "
          "applied = until the last message's resources were committed; CPU includes applying")
    print(f"{'':>24s} {'acknowledged':>12s} {'applied':>9s} {'bare':>8s} {'ratio':>6s}   CPU ms/msg: interop  bare")
    out: dict[str, float] = {}
    for row, _, _, _ in rows:
        o = statistics.median(results[("interop", row)])
        a = statistics.median(applied[row])
        b = statistics.median(results[("bare", row)])
        oc, bc = statistics.median(cpu[("interop", row)]), statistics.median(cpu[("bare", row)])
        out[row] = o
        print(f"{row:>24s} {o:>10.0f}/s {a:>7.0f}/s {b:>6.0f}/s {o / b:>6.2f}   {oc:>19.2f} {bc:5.2f}")
    print(flush=True)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1000, help="messages per measurement (default 1000)")
    p.add_argument("--conns", type=int, default=4, help="connections for the parallel measurement (default 4)")
    p.add_argument("--window", type=int, default=1,
                   help="also measure one connection with this many messages in flight (default 1: not measured)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--mode", choices=("both", "enhanced", "original"), default="both",
                   help="the sample as sent (MSH-15/16 AL|NE: accept acknowledgment, CA), in original mode (AA), "
                        "or both (default)")
    p.add_argument("--postgres", action="store_true", help="also on a throwaway PostgreSQL cluster")
    p.add_argument("--bare-server", nargs=2, metavar=("PORT", "DB"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.bare_server:
        bare_server(int(args.bare_server[0]), args.bare_server[1])
        return 0

    tmp = Path(tempfile.mkdtemp(prefix="mllp-bench-"))
    try:
        bench_database("sqlite", None, args, tmp)
        if args.postgres:
            from fhir_http import postgres  # the throwaway cluster bench/fhir_http.py starts

            url, stop = postgres(tmp)
            try:
                bench_database("postgres", url, args, tmp)
            finally:
                stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
