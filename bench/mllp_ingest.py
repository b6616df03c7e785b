"""MLLP ingest: ORU^R01 messages per second with durable ACKs, our node beside a bare durable MLLP server.

* ``interop``: ``interop serve`` on its defaults (SQLite, ``synchronous=FULL``): each message is parsed,
  mapped to a FHIR transaction Bundle (Patient, DiagnosticReport, 8 Observations) and committed with its raw
  copy in one transaction before ``AA`` goes back (HL7 v2.5.1 Ch. 2 §2.9.2; DESIGN promise 1).
* ``bare``: this file's ``--bare-server``: an asyncio MLLP server that reads MSH-10 from the frame, inserts
  the raw message into SQLite (WAL, ``synchronous=FULL``: one fsync'd commit per message) and answers ``AA``.
  It does nothing else, so it is the ceiling for any durable MLLP receiver in Python on this machine.

Both run as separate processes on loopback with TCP_NODELAY; the client sends the 8-result metabolic panel
(``tests/hl7v2/messages/oru_r01_cmp.hl7``) with a fresh control ID, filler order number and one of 50 patients
per message, send-and-wait on each connection (original mode), on 1 and on ``--conns`` connections, in the
same run, alternating servers each round. Output: messages/s per server and the ratio ours/bare.

    .venv/bin/python bench/mllp_ingest.py                       # --n 1000 --conns 4 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
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


def bare_server(port: int, db_path: str) -> None:
    """Store each message (one fsync'd SQLite commit) and answer AA: nothing else."""
    db = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE IF NOT EXISTS m (id INTEGER PRIMARY KEY, control_id TEXT, raw BLOB)")

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                await reader.readuntil(VT)
                payload = (await reader.readuntil(END))[:-2]
                msh = payload.split(b"\r", 1)[0].split(b"|")
                control_id = msh[9].decode() if len(msh) > 9 else ""
                db.execute("BEGIN")
                db.execute("INSERT INTO m (control_id, raw) VALUES (?, ?)", (control_id, payload))
                db.execute("COMMIT")
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


def messages(prefix: str, n: int) -> list[bytes]:
    template = SAMPLE.read_bytes()
    out = []
    for i in range(n):
        out.append(template.replace(b"LAB20261120-0001", f"{prefix}-{i}".encode())
                   .replace(b"FIL-20261120-0457", f"F{prefix}-{i}".encode())
                   .replace(b"MRN483920", f"MRN{i % 50:06d}".encode()))
    return out


async def _connection(port: int, msgs: list[bytes]) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    ok = 0
    for m in msgs:
        writer.write(VT + m + END)
        await writer.drain()
        await reader.readuntil(VT)
        ack = await reader.readuntil(END)
        ok += b"MSA|AA|" in ack
    writer.close()
    return ok


async def _run(port: int, msgs: list[bytes], conns: int) -> tuple[float, int]:
    parts = [msgs[i::conns] for i in range(conns)]
    t0 = time.perf_counter()
    oks = await asyncio.gather(*(_connection(port, p) for p in parts))
    return time.perf_counter() - t0, sum(oks)


def measure(port: int, prefix: str, n: int, conns: int) -> float:
    elapsed, ok = asyncio.run(_run(port, messages(prefix, n), conns))
    if ok != n:
        raise RuntimeError(f"{prefix}: {n - ok} of {n} messages were not acknowledged AA")
    return n / elapsed


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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1000, help="messages per measurement (default 1000)")
    p.add_argument("--conns", type=int, default=4, help="connections for the parallel measurement (default 4)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--bare-server", nargs=2, metavar=("PORT", "DB"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.bare_server:
        bare_server(int(args.bare_server[0]), args.bare_server[1])
        return 0

    tmp = Path(tempfile.mkdtemp(prefix="mllp-bench-"))
    ours_port, bare_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTEROP_")}
    env.update(INTEROP_DATA_DIR=str(tmp / "node"), INTEROP_HL7__PORT=str(ours_port), INTEROP_HL7__HOST="127.0.0.1",
               INTEROP_HTTP__PORT=str(free_port()), INTEROP_HTTP__HOST="127.0.0.1",
               INTEROP_DICOM__PORT=str(free_port()), INTEROP_DICOM__HOST="127.0.0.1", INTEROP_LOG_LEVEL="WARNING")
    with open(tmp / "interop.log", "wb") as log:
        ours = subprocess.Popen([sys.executable, "-m", "interop", "serve"], env=env, stdout=log,
                                stderr=subprocess.STDOUT, cwd=tmp)
        bare = subprocess.Popen([sys.executable, __file__, "--bare-server", str(bare_port), str(tmp / "bare.db")],
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(ours_port, ours)
        wait_port(bare_port, bare)
        for name, port in (("interop", ours_port), ("bare", bare_port)):
            measure(port, f"warm-{name}", 50, 1)
        results: dict[tuple[str, int], list[float]] = {}
        for r in range(args.rounds):
            servers = [("interop", ours_port), ("bare", bare_port)]
            for name, port in servers if r % 2 == 0 else servers[::-1]:
                for conns in (1, args.conns):
                    rate = measure(port, f"r{r}c{conns}{name[0]}", args.n, conns)
                    results.setdefault((name, conns), []).append(rate)
                    print(f"round {r + 1}: {name:8s} {conns} conn: {rate:7.0f} msg/s", flush=True)
        print(f"\nmedian of {args.rounds} rounds, {args.n} ORU^R01 (8 OBX) each, durable AA:")
        print(f"{'connections':>12s} {'interop':>10s} {'bare':>10s} {'ratio':>7s}")
        for conns in (1, args.conns):
            o = statistics.median(results[("interop", conns)])
            b = statistics.median(results[("bare", conns)])
            print(f"{conns:>12d} {o:>8.0f}/s {b:>8.0f}/s {o / b:>7.2f}")
    finally:
        for proc in (ours, bare):
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
