"""A bare pynetdicom C-STORE SCP, as a reference point for the ingest benchmark.

It accepts every storage SOP class the way our listener does (pynetdicom streams each received data set to a
temporary file, ``STORE_RECV_CHUNKED_DATASET``; TCP_NODELAY on; no PDU size limit) and then, depending on
``--mode``:

* ``noop``: answers success at once (what pynetdicom itself costs per instance);
* ``fsync``: moves the file into ``--out`` and fsyncs it and its folder, no index (the floor for a durable
  store built on pynetdicom).

``--poll-ms 0.2`` caps the 1 ms sleeps of pynetdicom's polling reactors, to show what they cost.

    python bench/bare_scp.py --port 11113 --out /tmp/bare --mode fsync
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import socketserver
import threading
from pathlib import Path

from pydicom.dataset import Dataset
from pynetdicom import AE, _config, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.transport import ThreadedAssociationServer


class _NoDelayServer(ThreadedAssociationServer):
    def get_request(self):  # type: ignore[no-untyped-def]
        client, address = super().get_request()
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return client, address


def cap_reactor_sleep(seconds: float) -> None:
    """Make pynetdicom's polling reactors sleep at most ``seconds`` per loop (an experiment, not a fix)."""
    import time
    import types

    import pynetdicom.association
    import pynetdicom.dul

    real_sleep = time.sleep
    patched = types.ModuleType("time")
    patched.__dict__.update(time.__dict__)
    patched.sleep = lambda s: real_sleep(min(s, seconds))  # type: ignore[attr-defined]
    pynetdicom.association.time = patched  # type: ignore[attr-defined]
    pynetdicom.dul.time = patched  # type: ignore[attr-defined]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--mode", choices=["noop", "fsync"], default="fsync")
    ap.add_argument("--aet", default="BARE")
    ap.add_argument(
        "--poll-ms",
        type=float,
        help="cap pynetdicom's reactor sleeps (1 ms polls in its DUL and association loops) at this many ms",
    )
    a = ap.parse_args()
    if a.poll_ms is not None:
        cap_reactor_sleep(a.poll_ms / 1000)
    a.out.mkdir(parents=True, exist_ok=True)
    _config.STORE_RECV_CHUNKED_DATASET = True

    def ok() -> Dataset:
        ds = Dataset()
        ds.Status = 0x0000
        return ds

    def on_store(event: evt.Event) -> Dataset:
        src = Path(event.dataset_path)
        if a.mode == "noop":
            src.unlink(missing_ok=True)
            return ok()
        dst = a.out / f"{event.request.AffectedSOPInstanceUID}.dcm"
        fd = os.open(src, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(src, dst)
        dfd = os.open(a.out, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return ok()

    ae = AE(ae_title=a.aet)
    ae.maximum_pdu_size = 0
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    server = ae.make_server(
        ("127.0.0.1", a.port), evt_handlers=[(evt.EVT_C_STORE, on_store)], server_class=_NoDelayServer
    )
    server.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    try:
        done.wait()
    finally:
        # Not server.shutdown(): pynetdicom's removes the server from ae._servers, where only
        # ae.start_server() puts it, so after make_server() it raises ValueError.
        socketserver.BaseServer.shutdown(server)
        server.server_close()


if __name__ == "__main__":
    main()
