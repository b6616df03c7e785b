"""The DIMSE listener (PS3.7, PS3.8): C-ECHO, C-STORE for every storage SOP class, C-FIND at study,
series and image level (Study Root and Patient Root Query/Retrieve, PS3.4 Annex C).

Handlers are plain functions bound with their collaborators, in pynetdicom's style; each returns a DIMSE
status and logs, and never raises. Received data sets are streamed to a file by pynetdicom
(``STORE_RECV_CHUNKED_DATASET``) in the store's temporary directory, so a large instance never sits in
memory; the success status goes back only after :meth:`InstanceStore.ingest` has fsynced the file and
committed the index row.
"""

from __future__ import annotations

import logging
import os
import queue
import secrets
import socket
import threading
import time as _time
from collections.abc import Callable, Iterator
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom import AE, Association, _config, evt
from pynetdicom import association as pynetdicom_association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # generated at import time
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer

from interop import logs, metrics
from interop.assembly import StudyAssembler
from interop.config import DicomSettings
from interop.errors import InteropError, OutOfResources
from interop.store.db import Database
from interop.store.instances import InstanceStore
from interop.store.query import LEVELS, Level, parse_query, run_query
from interop.tls import server_context

log = logging.getLogger(__name__)

#: Transfer syntaxes we accept for storage: the uncompressed ones first, then the common compressed
#: ones, which are stored as received (PS3.5 Annex A, §10).
STORAGE_TRANSFER_SYNTAXES = [
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired, still sent by old modalities)
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51",  # JPEG Extended
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.201",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203",  # HTJ2K
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.4.100",  # MPEG2 MP@ML
    "1.2.840.10008.1.2.4.102",  # MPEG-4 AVC/H.264
    "1.2.840.10008.1.2.4.106",  # MPEG-4 AVC/H.264 Stereo
    "1.2.840.10008.1.2.4.107",  # HEVC/H.265
]

STATUS_PENDING = 0xFF00
STATUS_CANCEL = 0xFE00
STATUS_IDENTIFIER_MISMATCH = 0xA900
STATUS_UNABLE_TO_PROCESS = 0xC000


def _status(code: int, comment: str | None = None) -> Dataset:
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment[:64]  # (0000,0902) LO
    return ds


class _Sessions:
    """Maps live associations to study-assembly session keys."""

    def __init__(self, assembler: StudyAssembler) -> None:
        self.assembler = assembler
        self._keys: dict[int, str] = {}
        self._lock = threading.Lock()

    def key(self, assoc: Any) -> str:
        with self._lock:
            k = self._keys.get(id(assoc))
            if k is None:
                k = self._keys[id(assoc)] = self.assembler.open_session()
            return k

    def close(self, assoc: Any) -> None:
        with self._lock:
            k = self._keys.pop(id(assoc), None)
        if k is not None:
            self.assembler.close_session(k)


class _Associations:
    """Accepted associations not yet ended: the active gauge, an id for each (``a-`` + 12 hex digits, on its
    log lines) and how many instances of which study it delivered, logged per study when it ends: the line
    that links the association to the study's correlation id."""

    def __init__(self) -> None:
        self._open: dict[int, tuple[str, dict[str, int]]] = {}
        self._lock = threading.Lock()

    def accepted(self, assoc: Any) -> str:
        aid = f"a-{secrets.token_hex(6)}"
        with self._lock:
            self._open[id(assoc)] = (aid, {})
        metrics.ASSOCIATIONS_ACTIVE.inc()
        return aid

    def id_of(self, assoc: Any) -> str | None:
        with self._lock:
            got = self._open.get(id(assoc))
        return got[0] if got else None

    def stored(self, assoc: Any, study_uid: str) -> str:
        """Count an instance of ``study_uid``; returns the study's correlation id."""
        cid = logs.study_id(study_uid)
        with self._lock:
            got = self._open.get(id(assoc))
            if got is not None:
                got[1][cid] = got[1].get(cid, 0) + 1
        return cid

    def closed(self, assoc: Any) -> tuple[str, dict[str, int]] | None:
        with self._lock:
            got = self._open.pop(id(assoc), None)
        if got is not None:
            metrics.ASSOCIATIONS_ACTIVE.dec()
        return got


def reject_reason(calling_ae: str, called_ae: str, *, allowed_aes: list[str], own_ae: str, require_called: bool,
                  identity_failed: bool, acceptors: int, maximum: int) -> str:
    """Why pynetdicom rejected an association request (its acceptor checks, in its order: the last that
    applies is the one it sends, PS3.8 §9.3.4 result/source/diagnostic)."""
    reason = "other"
    if allowed_aes and calling_ae.strip() not in [a.strip() for a in allowed_aes]:
        reason = "calling-ae-not-recognised"
    if require_called and called_ae.strip() != own_ae.strip():
        reason = "called-ae-not-recognised"
    if identity_failed:
        reason = "user-identity"
    if acceptors > maximum:
        reason = "local-limit-exceeded"
    return reason


# -- handlers ------------------------------------------------------------------------------------------


def handle_accepted(event: evt.Event, associations: _Associations) -> None:
    aid = associations.accepted(event.assoc)
    metrics.ASSOCIATIONS.labels("accepted", "").inc()
    req = event.assoc.requestor
    log.info("association from %s (%s) accepted", (req.ae_title or "").strip(), req.address,
             extra={"association": aid})


def handle_rejected(event: evt.Event) -> None:
    assoc = event.assoc
    ae = assoc.ae
    primitive = getattr(assoc.requestor, "primitive", None)
    reason = reject_reason(
        str(assoc.requestor.ae_title or ""), str(getattr(primitive, "called_ae_title", "") or ""),
        allowed_aes=list(ae.require_calling_aet), own_ae=str(assoc.acceptor.ae_title or ""),
        require_called=bool(ae.require_called_aet), identity_failed=False,
        acceptors=sum(1 for a in ae.active_associations if a.is_acceptor), maximum=ae.maximum_associations)
    metrics.ASSOCIATIONS.labels("rejected", reason).inc()
    log.warning("association from %s (%s) rejected: %s", str(assoc.requestor.ae_title or "").strip(),
                assoc.requestor.address, reason)


def handle_ended(event: evt.Event, associations: _Associations) -> None:
    """An accepted association's connection closed: one line per study it delivered, under the study's id."""
    got = associations.closed(event.assoc)
    if got is None:
        return
    aid, studies = got
    ae = str(event.assoc.requestor.ae_title or "").strip()
    for cid, n in studies.items():
        with logs.correlated(cid):
            log.info("association from %s delivered %d instance(s) of the study", ae, n,
                     extra={"association": aid})
    log.info("association from %s ended: %d instance(s) of %d study(ies)", ae, sum(studies.values()),
             len(studies), extra={"association": aid})


def handle_echo(event: evt.Event) -> int:
    """C-ECHO (PS3.7 §9.1.5): always success."""
    return 0x0000


def handle_store(event: evt.Event, store: InstanceStore, sessions: _Sessions,
                 associations: _Associations | None = None) -> Dataset:
    """C-STORE (PS3.4 Annex B): ingest the streamed file; the status follows PS3.4 B.2.3. Lines name the
    association and, once the instance is read, the study's correlation id; never a UID (interop.logs)."""
    req = cast(C_STORE, event.request)
    requestor = event.assoc.requestor
    where = {"association": associations.id_of(event.assoc) if associations else None}
    try:
        result = store.ingest(
            event.dataset_path,
            source="dimse",
            calling_ae=(requestor.ae_title or "").strip() or None,
            expected_sop_class=str(req.AffectedSOPClassUID),
            expected_sop_uid=str(req.AffectedSOPInstanceUID),
            session_key=sessions.key(event.assoc),
        )
    except InteropError as exc:
        log.warning("C-STORE from %s refused (0x%04X): %s", requestor.ae_title, exc.dimse_status, exc.message,
                    extra=where)
        return _status(exc.dimse_status, exc.message)
    except OSError as exc:
        err = OutOfResources(f"storage failed: {exc.strerror or exc}")
        log.error("C-STORE: %s", err.message, extra=where)
        return _status(err.dimse_status, err.message)
    except Exception:
        log.exception("C-STORE: unexpected failure", extra=where)
        return _status(0x0110, "processing failure")
    cid = associations.stored(event.assoc, result.study_uid) if associations else logs.study_id(result.study_uid)
    if result.status != 0x0000:
        with logs.correlated(cid):
            log.warning("C-STORE: warning 0x%04X: %s", result.status, result.comment, extra=where)
    return _status(result.status, result.comment if result.status else None)


#: Patient-level attributes of the Patient Root model (PS3.4 C.6.1.1.2) and the counts derived from them.
PATIENT_KEYS = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex")
PATIENT_COUNTS = {
    "NumberOfPatientRelatedStudies": "studies",
    "NumberOfPatientRelatedSeries": "series",
    "NumberOfPatientRelatedInstances": "instances",
}


def find_patients(session: Any, keys: list[str], params: list[tuple[str, str]]) -> list[Dataset]:
    """PATIENT level of the Patient Root model (PS3.4 C.6.1.1.2): one response per Patient ID.

    The index keeps patient attributes on the study row (Study Root), so this matches studies on the
    patient attributes and folds them by Patient ID, summing the related-object counts (PS3.4 C.3.4).
    """
    q = parse_query("STUDY", [(k, v) for k, v in params if k in PATIENT_KEYS], strict=False)
    studies = run_query(session, q, keywords=[*PATIENT_KEYS, "NumberOfStudyRelatedSeries",
                                              "NumberOfStudyRelatedInstances"], keep_empty=True)
    patients: dict[str, tuple[Dataset, dict[str, int]]] = {}
    for st in studies:
        pid = str(st.get("PatientID") or "")
        ds, n = patients.setdefault(pid, (st, {"studies": 0, "series": 0, "instances": 0}))
        n["studies"] += 1
        n["series"] += int(st.get("NumberOfStudyRelatedSeries") or 0)
        n["instances"] += int(st.get("NumberOfStudyRelatedInstances") or 0)
    out: list[Dataset] = []
    for st, n in patients.values():
        ds = Dataset()
        for kw in keys:
            if kw in PATIENT_KEYS:
                setattr(ds, kw, st.get(kw))
            elif kw in PATIENT_COUNTS:
                setattr(ds, kw, n[PATIENT_COUNTS[kw]])
            else:  # asked for, but not a patient-level attribute: returned empty
                setattr(ds, kw, None)
        out.append(ds)
    return out


def handle_find(
    event: evt.Event, db: Database, header_reader: Callable[[str], Dataset], ae_title: str
) -> Iterator[tuple[int, Dataset | None]]:
    """C-FIND (PS3.4 C.4.1): match the identifier against the index and yield pending responses."""
    try:
        identifier = event.identifier
        level = str(identifier.get("QueryRetrieveLevel", "")).strip().upper()
        model = str(event.context.abstract_syntax)
    except Exception as exc:
        log.warning("C-FIND: undecodable identifier: %s", exc)
        yield STATUS_UNABLE_TO_PROCESS, None
        return
    patient_root = model == PatientRootQueryRetrieveInformationModelFind
    if level not in LEVELS and not (level == "PATIENT" and patient_root):
        yield STATUS_IDENTIFIER_MISMATCH, None
        return
    keys: list[str] = []
    params: list[tuple[str, str]] = []
    for elem in identifier:
        kw = elem.keyword
        if not kw or kw in ("QueryRetrieveLevel", "SpecificCharacterSet") or elem.tag.group <= 0x0002:
            continue
        keys.append(kw)
        if elem.VR != "SQ" and elem.value not in (None, ""):
            value = elem.value
            params.append((kw, "\\".join(map(str, value)) if elem.VM > 1 else str(value)))
    try:
        with db.reading() as s:
            if level == "PATIENT":
                results = find_patients(s, keys, params)
            else:
                q = parse_query(cast(Level, level), params, strict=False)
                results = run_query(s, q, keywords=keys, header_reader=header_reader, keep_empty=True)
    except InteropError as exc:
        log.warning("C-FIND refused: %s", exc.message)
        yield STATUS_UNABLE_TO_PROCESS, None
        return
    except Exception:
        log.exception("C-FIND failed")
        yield STATUS_UNABLE_TO_PROCESS, None
        return
    for ds in results:
        if event.is_cancelled:
            yield STATUS_CANCEL, None
            return
        ds.QueryRetrieveLevel = level
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.RetrieveAETitle = ae_title
        yield STATUS_PENDING, ds


def handle_open(event: evt.Event, poll_seconds: float) -> None:
    """Shorten pynetdicom's idle poll on the association's socket (its ``_run_loop_delay``, default 1 ms).

    Every DIMSE message otherwise waits up to a poll period before it is read; over a study that is most
    of the receive time (``dicom.poll_seconds``). The cost is an idle association's wake-ups (~5,000/s at
    0.2 ms). If pynetdicom renames the attribute this does nothing (logged once).
    """
    dul = getattr(event.assoc, "dul", None)
    if dul is not None and hasattr(dul, "_run_loop_delay"):
        dul._run_loop_delay = poll_seconds
    elif not _warned_poll:
        _warn_poll()


_warned_poll = False

_REACTOR_SLEEP = 0.001  # the literal in pynetdicom.association.Association._run_reactor: time.sleep(0.001)


class _ReactorClock:
    """Stands in for the ``time`` module inside ``pynetdicom.association``.

    The acceptor reactor sleeps a fixed millisecond and then looks at its DIMSE message queue, so every
    received C-STORE waits up to 1 ms before its handler runs (pynetdicom 3 has no setting for it). In an
    association's own thread that one sleep becomes a wait on the association's DIMSE queue: it still
    returns within the same millisecond when nothing arrives (so release and abort are noticed as before,
    with no extra wake-ups), and at once when a message is queued. Every other call is ``time``'s own.
    """

    def sleep(self, seconds: float) -> None:
        if seconds == _REACTOR_SLEEP:
            thread = threading.current_thread()
            dimse = getattr(thread, "dimse", None) if isinstance(thread, Association) else None
            q = getattr(dimse, "msg_queue", None)
            if isinstance(q, queue.Queue):
                with q.not_empty:
                    if not q.queue:
                        q.not_empty.wait(seconds)
                return
        _time.sleep(seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(_time, name)


def wake_reactor_on_messages() -> None:
    """Install :class:`_ReactorClock` in ``pynetdicom.association`` (idempotent)."""
    current = getattr(pynetdicom_association, "time", None)
    if isinstance(current, _ReactorClock):
        return
    if current is not _time:
        log.warning("pynetdicom.association.time is not the time module; its reactor keeps its own sleep")
        return
    pynetdicom_association.time = _ReactorClock()  # type: ignore[assignment]


def _warn_poll() -> None:
    global _warned_poll
    _warned_poll = True
    log.warning("pynetdicom has no DUL _run_loop_delay; DIMSE latency uses its default poll")


def handle_close(event: evt.Event, sessions: _Sessions) -> None:
    """The connection is gone (released, aborted or dropped): end the assembly session, and remove the
    file of a data set that was still arriving, which pynetdicom would otherwise leave in the store's
    temporary directory until the next start-up."""
    sessions.close(event.assoc)
    message = getattr(getattr(event.assoc, "dimse", None), "message", None)
    partial = getattr(message, "_data_set_file", None)  # pynetdicom's NamedTemporaryFile (STORE_RECV_CHUNKED)
    if partial is not None:
        try:
            partial.close()
            os.unlink(partial.name)
            log.warning("association from %s ended inside a C-STORE data set; discarded the partial data",
                        event.assoc.requestor.ae_title)
        except OSError as exc:
            log.warning("could not remove partial receive file %s: %s", partial.name, exc)


# -- server --------------------------------------------------------------------------------------------


class _Server(ThreadedAssociationServer):
    """pynetdicom's threaded server with a peer-address allow-list and TCP_NODELAY on every socket."""

    allowed_hosts: frozenset[str] = frozenset()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        client, address = super().get_request()
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return client, address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        if self.allowed_hosts and client_address[0] not in self.allowed_hosts:
            metrics.ASSOCIATIONS.labels("rejected", "address-not-allowed").inc()
            log.warning("DICOM connection from %s refused: address not allowed", client_address[0])
            return False
        return True


class DimseListener:
    def __init__(
        self,
        settings: DicomSettings,
        store: InstanceStore,
        assembler: StudyAssembler,
        header_reader: Callable[[str], Dataset],
    ) -> None:
        self.settings = settings
        self.store = store
        self.sessions = _Sessions(assembler)
        self.associations = _Associations()
        self.header_reader = header_reader
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    def _ae(self) -> AE:
        s = self.settings
        ae = AE(ae_title=s.ae_title)
        ae.maximum_associations = s.max_associations
        ae.maximum_pdu_size = s.max_pdu_size
        ae.network_timeout = s.network_timeout
        ae.acse_timeout = 30
        ae.dimse_timeout = 60
        if s.allowed_aes:
            ae.require_calling_aet = list(s.allowed_aes)
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cast(str, cx.abstract_syntax), STORAGE_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
        ae.add_supported_context(PatientRootQueryRetrieveInformationModelFind)
        return ae

    @property
    def listening(self) -> bool:
        return self._server is not None and not self._closed

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    def start(self) -> None:
        _config.STORE_RECV_CHUNKED_DATASET = True
        if self.settings.wake_on_message:
            wake_reactor_on_messages()
        ae = self._ae()
        handlers: list[Any] = [
            (evt.EVT_CONN_OPEN, handle_open, [self.settings.poll_seconds]),
            (evt.EVT_C_ECHO, handle_echo),
            (evt.EVT_C_STORE, handle_store, [self.store, self.sessions, self.associations]),
            (evt.EVT_ACCEPTED, handle_accepted, [self.associations]),
            (evt.EVT_REJECTED, handle_rejected),
            (evt.EVT_CONN_CLOSE, handle_ended, [self.associations]),
            (evt.EVT_C_FIND, handle_find, [self.store.db, self.header_reader, self.settings.ae_title]),
            (evt.EVT_CONN_CLOSE, handle_close, [self.sessions]),
        ]
        tls = server_context(self.settings.tls) if self.settings.tls else None
        server = cast(_Server, ae.make_server((self.settings.host, self.settings.port), evt_handlers=handlers,
                                              server_class=_Server, ssl_context=tls))
        server.allowed_hosts = frozenset(self.settings.allowed_hosts)
        # As AE.start_server does: the server's shutdown() unregisters itself from this list.
        ae._servers.append(server)
        cast(socket.socket, server.socket).setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="dimse-listener", daemon=True)
        self._thread.start()
        log.info("DICOM listener %s on %s:%d%s", self.settings.ae_title, self.settings.host, self.port,
                 " (TLS)" if tls else "")

    def stop_accepting(self) -> None:
        """Close the listening socket (a new association is refused at connect); open associations go on."""
        server = self._server
        if server is not None and not self._closed:
            self._closed = True
            server.shutdown()  # ends serve_forever and closes the listening socket

    def stop(self, grace: float = 0.0) -> None:
        """Stop accepting, give open associations up to ``grace`` seconds to finish (each C-STORE under way is
        answered as usual, after its commit), then abort those still open (PS3.8 §7.3 A-ABORT: their sender
        knows nothing unanswered was acknowledged)."""
        server = self._server
        if server is None:
            return
        self.stop_accepting()
        deadline = _time.monotonic() + grace
        while server.active_associations and _time.monotonic() < deadline:
            _time.sleep(0.05)
        left = list(server.active_associations)
        if left:
            log.warning("shutdown: aborting %d DICOM association(s) still open after %.0f s", len(left), grace)
        for assoc in left:
            assoc.abort()
        for assoc in left:
            assoc.join(timeout=5)
        self._server = None
        self._closed = False
