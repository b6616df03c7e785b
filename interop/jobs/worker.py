"""Running one job: claim it, lay out its input, run the app in a child process, keep the lease, record
the outcome. The local executor's threads and the Celery workers both use :class:`Worker`.

The app runs as ``python -m <module> -i IN -o OUT -m MODEL`` (the MONAI Deploy App SDK convention) in its own
process group with a 32 MB stack limit (Holoscan), in a scratch directory under ``<data_dir>/work``. Its input
is the job's exact instance set (DICOM files linked from the store) or its exact Observation versions
(``labs.json``, a FHIR collection Bundle). Its result (operators.app_result) is stored with the job; the
arrays go to the blob store.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

from sqlalchemy import select

from interop import logs, metrics
from interop.errors import InteropError
from interop.fhir.store import FhirStore
from interop.jobs.queue import Claim, JobQueue
from interop.jobs.registry import AppRegistry, AppSpec
from interop.store.blobs import BlobStore
from interop.store.db import Database
from interop.store.models import Instance, Series
from operators.app_result import AppResult

log = logging.getLogger(__name__)

STACK_BYTES = 32 * 1024 * 1024


def _child_setup() -> None:
    """In the child before exec: Holoscan's 32 MB stack, and a process group of its own (killed as one)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    if soft != resource.RLIM_INFINITY and soft < STACK_BYTES:
        target = STACK_BYTES if hard == resource.RLIM_INFINITY else min(STACK_BYTES, hard)
        resource.setrlimit(resource.RLIMIT_STACK, (target, hard))
    os.setsid()


class AppProcess:
    """A started ``interop.jobs.appproc`` child, imports done or under way, waiting for its one job."""

    def __init__(self, env: dict[str, str] | None = None, preload: list[AppSpec] | None = None) -> None:
        env = dict(os.environ if env is None else env)
        # Without apps to preload (no spare kept), the child goes straight to the job.
        env["INTEROP_APPPROC_PRELOAD"] = "1" if preload else "0"
        env["INTEROP_APPPROC_MODULES"] = ",".join(s.module for s in preload or [])
        paths = [str(s.python_path) for s in preload or []]
        if paths:
            env["PYTHONPATH"] = os.pathsep.join([*dict.fromkeys(paths), *filter(None, [env.get("PYTHONPATH")])])
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "interop.jobs.appproc"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, preexec_fn=_child_setup, env=env, close_fds=True,
        )
        self.started = time.monotonic()

    def run(self, spec: AppSpec, argv: list[str], cwd: Path, stdout: Path, stderr: Path) -> None:
        line = json.dumps({"module": spec.module, "argv": argv, "cwd": str(cwd), "stdout": str(stdout),
                           "stderr": str(stderr), "python_path": [str(spec.python_path)],
                           "logging": logs.child_settings()})
        stdin: IO[bytes] | None = self.proc.stdin
        assert stdin is not None
        stdin.write(line.encode() + b"\n")
        stdin.close()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def discard(self) -> None:
        """Not needed: close its stdin (it exits at once) and reap it."""
        if self.proc.poll() is None:
            try:
                if self.proc.stdin:
                    self.proc.stdin.close()
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self.kill()


_OPERATOR_ERROR = re.compile(r"Exception occurred for operator: '([^']+)' - (.+)$")
_PY_ERROR = re.compile(r"^([A-Za-z_][\w.]*(Error|Exception|Exit)[\w]*): (.+)$")


def failure_reason(stderr: str, exit_code: int | None) -> str:
    """The most telling line of a failed app's stderr: Holoscan's operator exception, else the last Python
    exception line, else the last line; with the exit code or signal."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    how = (f"killed by signal {-exit_code}" if exit_code is not None and exit_code < 0 else f"exit code {exit_code}")
    for ln in lines:
        m = _OPERATOR_ERROR.search(ln)
        if m:
            return f"operator {m.group(1)}: {m.group(2)} ({how})"
    for ln in reversed(lines):
        m = _PY_ERROR.match(ln)
        if m:
            return f"{ln} ({how})"
    return f"{lines[-1][:500]} ({how})" if lines else f"the app ended with {how} and wrote nothing to stderr"


@dataclass
class RunOutcome:
    outcome: str  # succeeded | error | timeout | cancelled | lost | preempted (a shadow run making way)
    reason: str | None = None
    exit_code: int | None = None


def clean_scratch(work_dir: Path, queue: JobQueue) -> int:
    """Remove scratch directories (``job<id>-*``) left by runs that are no longer running (a crash); a
    directory of a job still running elsewhere (another worker sharing the volume) is kept."""
    if not work_dir.is_dir():
        return 0
    running = queue.running_ids()
    removed = 0
    for d in work_dir.glob("job*-*"):
        head = d.name.split("-", 1)[0][3:]
        if d.is_dir() and head.isdigit() and int(head) not in running:
            shutil.rmtree(d, ignore_errors=True)
            removed += 1
    return removed


class Worker:
    """Runs jobs one at a time. ``name`` identifies it in leases and attempts (``<host>:<pid>:<slot>``)."""

    def __init__(self, *, db: Database, blobs: BlobStore, fhir: FhirStore, registry: AppRegistry, queue: JobQueue,
                 work_dir: Path, name: str, prewarm: bool = True, env: dict[str, str] | None = None) -> None:
        self.db = db
        self.blobs = blobs
        self.fhir = fhir
        self.registry = registry
        self.queue = queue
        self.work_dir = work_dir
        self.name = name
        self.prewarm = prewarm
        self.env = env
        self._spare: AppProcess | None = None
        #: Set by :meth:`hand_back` (the process is stopping): the running app is stopped and its job given back.
        self._handing_back = threading.Event()
        self._running: AppProcess | None = None
        self.renew_interval = max(0.2, min(5.0, queue.lease.total_seconds() / 3))

    # -- the spare process ----------------------------------------------------------------------------------

    def warm_up(self) -> None:
        if self.prewarm and (self._spare is None or not self._spare.alive()):
            self._spare = AppProcess(self.env, list(self.registry.apps.values()))

    def _process(self) -> AppProcess:
        spare, self._spare = self._spare, None
        if spare is not None and spare.alive():
            return spare
        return AppProcess(self.env, list(self.registry.apps.values()) if self.prewarm else None)

    def hand_back(self) -> None:
        """Stop now (from another thread): the running app is killed and its job handed back to the queue, so
        another worker starts it at once; a finished run's result is still recorded. For graceful shutdown."""
        self._handing_back.set()
        running = self._running
        if running is not None:
            running.kill()

    def close(self) -> None:
        if self._spare is not None:
            self._spare.discard()
            self._spare = None

    # -- running ----------------------------------------------------------------------------------------------

    def run_next(self, job_id: int | None = None, apps: list[str] | None = None) -> bool:
        """Claim and run the most urgent due job (or ``job_id``); False when there was none to claim."""
        claim = self.queue.claim(self.name, job_id=job_id, apps=apps)
        if claim is None:
            return False
        context = logs.CORRELATION.set(logs.of_inputs(claim.inputs))  # the job's lines carry its study's id
        log.info("job %s (%s) attempt %d started by %s", claim.job_id, claim.app, claim.attempt, self.name)
        if claim.attempt == 1 and claim.triggered_at is not None:
            waited = (dt.datetime.now(dt.UTC) - claim.triggered_at).total_seconds()
            metrics.TRIGGER_TO_START.labels(claim.app).observe(max(0.0, waited))
        started = time.monotonic()
        outcome = "error"
        try:
            outcome = self._run(claim)
        finally:
            metrics.JOB_ATTEMPTS.labels(claim.app, claim.model_version, outcome).inc()
            metrics.JOB_SECONDS.labels(claim.app, claim.model_version).observe(time.monotonic() - started)
            logs.CORRELATION.reset(context)
            if not self._handing_back.is_set():
                self.warm_up()
        return True

    def _run(self, claim: Claim) -> str:
        """Run the attempt; returns how it ended (succeeded, error, timeout, cancelled, lost)."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f"job{claim.job_id}-", dir=self.work_dir))
        try:
            try:
                spec = self.registry.get(claim.app)
                # The model version the job was queued with (interop.mlops: active, pinned or shadow).
                spec = replace(spec, model_path=self.registry.model_path(claim.app, claim.model_version))
            except InteropError as exc:
                state = self.queue.fail(claim, "error", str(exc))
                log.warning("job %s: %s; now %s", claim.job_id, exc, state)
                return "error"
            try:
                in_dir = scratch / "input"
                self.prepare_input(spec, claim, in_dir)
            except (InteropError, OSError, ValueError) as exc:
                state = self.queue.fail(claim, "error", f"input not prepared: {exc}")
                log.warning("job %s: input not prepared (%s); now %s", claim.job_id, exc, state)
                return "error"
            out_dir = scratch / "output"
            out_dir.mkdir()
            timeout = claim.timeout_seconds
            outcome = self._execute(claim, spec, in_dir, out_dir, scratch, timeout)
            if outcome.outcome == "released":
                # Another worker (or this node after its restart) takes it at once, not after the lease expires;
                # the interrupted attempt does not count against its retries.
                self.queue.preempt(claim, outcome.reason or "handed back")
                log.info("job %s (%s) handed back to the queue: %s", claim.job_id, claim.app, outcome.reason)
                return "released"
            if outcome.outcome == "lost":
                return "lost"  # the lease is gone: another run owns the job now
            if outcome.outcome == "preempted":
                self.queue.preempt(claim, outcome.reason or "preempted")
                log.info("job %s (%s, shadow) gave its slot to a clinical job; queued again", claim.job_id,
                         claim.app)
                return "preempted"
            if outcome.outcome == "succeeded":
                try:
                    result = AppResult.read(out_dir)
                except (OSError, ValueError) as exc:
                    outcome = RunOutcome("error", f"the app exited 0 but its result is invalid: {exc}", 0)
                else:
                    arrays = self._store_arrays(out_dir, result.array_files())
                    if self.queue.succeed(claim, result.as_json(), arrays):
                        log.info("job %s (%s) succeeded: %s", claim.job_id, claim.app, result.summary)
                        if "inference_seconds" in result.timing:
                            metrics.INFERENCE_SECONDS.labels(claim.app, result.model.version).observe(
                                result.timing["inference_seconds"])
                        return "succeeded"
                    for key in arrays.values():
                        self.blobs.delete(key)
                    return "lost"
            state = self.queue.fail(claim, outcome.outcome, outcome.reason or outcome.outcome, outcome.exit_code)
            log.warning("job %s (%s) attempt %d %s: %s; now %s", claim.job_id, claim.app, claim.attempt,
                        outcome.outcome, outcome.reason, state)
            return outcome.outcome
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _execute(self, claim: Claim, spec: AppSpec, in_dir: Path, out_dir: Path, scratch: Path,
                 timeout: float) -> RunOutcome:
        stdout, stderr = scratch / "app.stdout", scratch / "app.stderr"
        proc = self._process()
        self._running = proc
        if self._handing_back.is_set():
            proc.kill()
            self._running = None
            return RunOutcome("released", "the worker stopped (graceful shutdown) before the app started")
        argv = ["-i", str(in_dir), "-o", str(out_dir), "-m", str(spec.model_path)]
        started = time.monotonic()
        try:
            proc.run(spec, argv, scratch, stdout, stderr)
        except OSError as exc:  # the spare died before it got the job
            proc.kill()
            if self._handing_back.is_set():
                return RunOutcome("released", "the worker stopped (graceful shutdown) before the app started")
            return RunOutcome("error", f"could not start the app: {exc}")
        while True:
            try:
                code = proc.proc.wait(timeout=self.renew_interval)
                break
            except subprocess.TimeoutExpired:
                pass
            held, cancel = self.queue.renew(claim.job_id, claim.token)
            if not held:
                proc.kill()
                return RunOutcome("lost", "the lease was lost")
            if cancel:
                proc.kill()
                return RunOutcome("cancelled", "cancelled while running")
            if time.monotonic() - started > timeout:
                proc.kill()
                return RunOutcome("timeout", f"the app ran longer than its timeout of {timeout:g} s", None)
            if claim.shadow and self.queue.clinical_waiting():
                proc.kill()  # a shadow run never delays clinical work: it runs again when the queue is clear
                return RunOutcome("preempted", "a clinical job was waiting")
        self._running = None
        if code != 0 and self._handing_back.is_set():
            return RunOutcome("released", "the worker stopped (graceful shutdown); the job was handed back")
        if code == 0:
            return RunOutcome("succeeded", exit_code=0)
        try:
            err = stderr.read_text(encoding="utf-8", errors="replace")[-20000:]
        except OSError:
            err = ""
        return RunOutcome("error", failure_reason(err, code), code)

    # -- input and output -----------------------------------------------------------------------------------

    def prepare_input(self, spec: AppSpec, claim: Claim, in_dir: Path) -> None:
        in_dir.mkdir(parents=True)
        if spec.input == "labs":
            bundle = self.labs_bundle(claim.inputs)
            (in_dir / "labs.json").write_text(json.dumps(bundle, indent=1), encoding="utf-8")
            return
        sops = list(claim.inputs.get("sop_instance_uids") or [])
        if not sops:
            raise ValueError("the job names no instances")
        with self.db.reading() as s:
            rows = s.execute(select(Instance.sop_uid, Instance.blob_key, Series.series_uid)
                             .join(Series, Series.id == Instance.series_pk).where(Instance.sop_uid.in_(sops))).all()
        found = {r.sop_uid for r in rows}
        if len(found) != len(set(sops)):
            missing = sorted(set(sops) - found)
            raise ValueError(f"{len(missing)} input instance(s) are no longer stored, e.g. {missing[0]}")
        for r in rows:
            dest_dir = in_dir / r.series_uid
            dest_dir.mkdir(exist_ok=True)
            dest = dest_dir / f"{r.sop_uid}.dcm"
            src = self.blobs.local_path(r.blob_key)
            if src is not None:
                try:
                    os.link(src, dest)
                    continue
                except OSError:
                    pass
            with self.blobs.open(r.blob_key) as f, open(dest, "wb") as out:
                shutil.copyfileobj(f, out, 1 << 20)

    def labs_bundle(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """A FHIR R4 ``collection`` Bundle: the Patient (current version) and the exact Observation versions."""
        entries: list[dict[str, Any]] = []
        patient = inputs.get("patient")
        if patient:
            type_, _, pid = str(patient).partition("/")
            entries.append({"fullUrl": patient, "resource": self.fhir.read(type_, pid).resource})
        for ref in inputs.get("observations") or []:
            type_, id_, _, version = str(ref).split("/")
            resource = self.fhir.vread(type_, id_, int(version)).resource
            entries.append({"fullUrl": f"{type_}/{id_}", "resource": resource})
        return {"resourceType": "Bundle", "type": "collection", "entry": entries}

    def _store_arrays(self, out_dir: Path, names: list[str]) -> dict[str, str]:
        """Move each array out of the scratch folder into the blob store (a rename on the same volume: the
        scratch folder lives under the data directory); returns name -> blob key."""
        keys: dict[str, str] = {}
        for name in names:
            key = self.blobs.new_key()
            self.blobs.put_file(out_dir / name, key)
            keys[name] = key
        return keys
