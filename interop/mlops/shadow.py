"""Shadow runs compared with the clinical runs they shadowed, once both have ended (interop.mlops.compare).

A background pass of the server (not the workers: it needs no GPU, and it runs once whichever worker finished
last) finds ended shadow jobs without a comparison, and records one: agreement when both succeeded, else an
*incomplete* row saying which run did not succeed (not counted in the agreement rate).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from interop.config import ModelSettings
from interop.jobs.models import FINAL_STATES, Job, JobResult
from interop.mlops.compare import Comparison, compare_results, incomplete
from interop.mlops.tables import ShadowComparison
from interop.store.blobs import BlobStore
from interop.store.db import Database

log = logging.getLogger(__name__)


class ShadowMonitor:
    def __init__(self, db: Database, blobs: BlobStore, settings: ModelSettings) -> None:
        self.db = db
        self.blobs = blobs
        self.settings = settings

    def _result(self, job_id: int) -> tuple[dict[str, Any], dict[str, str]] | None:
        with self.db.reading() as s:
            row = s.execute(select(JobResult.content, JobResult.arrays).where(JobResult.job_id == job_id)).first()
        return None if row is None else (json.loads(row.content), json.loads(row.arrays))

    def compare(self, active: Job, shadow: Job) -> Comparison:
        if active.state != "succeeded" or shadow.state != "succeeded":
            who = [f"{name} run {j.state}" for name, j in (("clinical", active), ("shadow", shadow))
                   if j.state != "succeeded"]
            return incomplete(", ".join(who))
        ra, rs = self._result(active.id), self._result(shadow.id)
        if ra is None or rs is None:
            return incomplete("a result is missing")
        arrays = {"active": ra[1], "shadow": rs[1]}

        def load(side: str, name: str) -> np.ndarray:
            with self.blobs.open(arrays[side][name]) as f:
                return np.asarray(np.load(f, allow_pickle=False))

        return compare_results(ra[0], rs[0], max_delta=self.settings.shadow_max_probability_delta,
                               min_dice=self.settings.shadow_min_dice, load=load)

    def compare_due(self, limit: int = 20) -> int:
        """Compare up to ``limit`` ended shadow jobs whose clinical job has ended too; returns how many."""
        with self.db.reading() as s:
            shadows = list(s.scalars(
                select(Job).outerjoin(ShadowComparison, ShadowComparison.shadow_job_id == Job.id)
                .where(Job.shadow.is_(True), Job.state.in_(FINAL_STATES), ShadowComparison.id.is_(None))
                .order_by(Job.id).limit(limit)))
            actives = {j.id: j for j in s.scalars(select(Job).where(Job.id.in_([j.shadow_of for j in shadows])))}
        done = 0
        for shadow in shadows:
            active = actives.get(shadow.shadow_of or -1)
            if active is not None and active.state not in FINAL_STATES:
                continue  # the clinical run is still under way
            try:
                c = self.compare(active, shadow) if active is not None else incomplete("the clinical job is gone")
            except Exception as exc:  # e.g. a label map unreadable: recorded, never retried in a loop
                log.warning("shadow job %s: comparison failed: %s", shadow.id, exc)
                c = incomplete(f"comparison failed: {type(exc).__name__}: {exc}")
            try:
                with self.db.writing() as s:
                    s.add(ShadowComparison(
                        shadow_job_id=shadow.id, active_job_id=active.id if active is not None else shadow.id,
                        app=shadow.app,
                        active_version=active.model_version if active is not None else "",
                        shadow_version=shadow.model_version, kind=c.kind, agree=c.agree, score=c.score,
                        detail=json.dumps(c.detail, sort_keys=True)))
            except IntegrityError:  # another server compared it first
                continue
            done += 1
            log.info("shadow job %s (%s %s beside %s): %s", shadow.id, shadow.app, shadow.model_version,
                     active.model_version if active else "?",
                     "agrees" if c.agree else ("disagrees" if c.agree is False else c.detail.get("reason")))
        return done
