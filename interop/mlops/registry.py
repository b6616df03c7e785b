"""Which model version is active, and which runs in shadow, for each app and routing rule.

An assignment holds for one rule or (rule empty) for every rule of the app; a rule's own assignment wins over
the app's. Without any, the app's own bundle (its app.yaml ``model``, or ``jobs.models``) is active and nothing
runs in shadow. A job records the version it was queued with (``jobs.model_version``, part of its idempotency
key), so changing the active version changes what new work runs, never what a queued job runs.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from typing import Any

from sqlalchemy import case, func, select

from interop.errors import InvalidInput, NotFound
from interop.jobs.registry import AppRegistry
from interop.mlops.tables import ALL_RULES, ModelAssignment, ShadowComparison
from interop.store.db import Database

ROLES = ("active", "shadow")


def pick(assignments: Iterable[tuple[str, str, str]], rule: str, default: str) -> tuple[str, str | None]:
    """``(active, shadow)`` versions for ``rule`` from ``(rule, role, version)`` assignments: the rule's own,
    else the app's (rule empty), else ``default`` active and no shadow. A shadow equal to the active version
    is no shadow."""
    chosen: dict[str, dict[str, str]] = {}
    for r, role, version in assignments:
        chosen.setdefault(role, {})[r] = version
    active = chosen.get("active", {}).get(rule) or chosen.get("active", {}).get(ALL_RULES) or default
    shadow = chosen.get("shadow", {}).get(rule) or chosen.get("shadow", {}).get(ALL_RULES)
    return active, (shadow if shadow and shadow != active else None)


def agreement_rate(agreed: int, compared: int) -> float | None:
    return round(agreed / compared, 4) if compared else None


class ModelRegistry:
    def __init__(self, db: Database, apps: AppRegistry) -> None:
        self.db = db
        self.apps = apps

    def _rows(self, app: str | None = None) -> list[ModelAssignment]:
        q = select(ModelAssignment).order_by(ModelAssignment.app, ModelAssignment.rule, ModelAssignment.role)
        if app is not None:
            q = q.where(ModelAssignment.app == app)
        with self.db.reading() as s:
            return list(s.scalars(q))

    def resolve(self, app: str, rule: str) -> tuple[str, str | None]:
        """The versions new work of ``app`` under ``rule`` runs: ``(active, shadow or None)``."""
        default = self.apps.get(app).model_version()
        with self.db.reading() as s:
            rows = s.execute(select(ModelAssignment.rule, ModelAssignment.role, ModelAssignment.version)
                             .where(ModelAssignment.app == app, ModelAssignment.rule.in_((rule, ALL_RULES)))).all()
        return pick([(r.rule, r.role, r.version) for r in rows], rule, default)

    def assign(self, app: str, role: str, version: str | None, *, rule: str = ALL_RULES, by: str = "") -> None:
        """Make ``version`` the ``role`` (active or shadow) of ``app`` for ``rule`` (all rules when empty);
        ``version`` None removes the assignment (back to the app's bundle / no shadow)."""
        if role not in ROLES:
            raise InvalidInput(f"role must be one of {', '.join(ROLES)}")
        self.apps.get(app)
        if version is not None:
            self.apps.refresh()
            installed = self.apps.versions(app)
            if version not in installed:
                raise NotFound(f"{app} has no model version {version!r} installed (installed: "
                               f"{', '.join(sorted(installed)) or 'none'})")
        with self.db.writing() as s:
            row = s.scalars(select(ModelAssignment).where(ModelAssignment.app == app, ModelAssignment.rule == rule,
                                                          ModelAssignment.role == role)).first()
            if version is None:
                if row is not None:
                    s.delete(row)
                return
            now = dt.datetime.now(dt.UTC)
            if row is None:
                s.add(ModelAssignment(app=app, rule=rule, role=role, version=version, changed_by=by or "unknown",
                                      changed_at=now))
            else:
                row.version, row.changed_by, row.changed_at = version, by or "unknown", now

    def agreement(self, app: str | None = None) -> list[dict[str, Any]]:
        """Shadow comparisons per (app, active version, shadow version): how many, how many agreed, the rate
        (over the comparisons where both runs succeeded), and how many could not be compared."""
        sc = ShadowComparison
        q = (select(sc.app, sc.active_version, sc.shadow_version, func.count(sc.id),
                    func.sum(case((sc.agree.is_(True), 1), else_=0)),
                    func.sum(case((sc.agree.is_(None), 1), else_=0)))
             .group_by(sc.app, sc.active_version, sc.shadow_version)
             .order_by(sc.app, sc.active_version, sc.shadow_version))
        if app is not None:
            q = q.where(sc.app == app)
        with self.db.reading() as s:
            rows = s.execute(q).all()
        out = []
        for a, active, shadow, n, agreed, incomplete in rows:
            compared = int(n) - int(incomplete or 0)
            out.append({"app": a, "active_version": active, "shadow_version": shadow, "compared": compared,
                        "agreed": int(agreed or 0), "incomplete": int(incomplete or 0),
                        "agreement_rate": agreement_rate(int(agreed or 0), compared)})
        return out

    def comparisons(self, app: str, limit: int = 50) -> list[dict[str, Any]]:
        with self.db.reading() as s:
            rows = list(s.scalars(select(ShadowComparison).where(ShadowComparison.app == app)
                                  .order_by(ShadowComparison.id.desc()).limit(limit)))
        return [{"shadow_job_id": r.shadow_job_id, "active_job_id": r.active_job_id,
                 "active_version": r.active_version, "shadow_version": r.shadow_version, "kind": r.kind,
                 "agree": r.agree, "score": r.score, "detail": json.loads(r.detail)} for r in rows]

    def describe(self, app: str) -> dict[str, Any]:
        """An app's models: installed versions, the default, the assignments and what each rule runs."""
        spec = self.apps.get(app)
        self.apps.refresh()
        versions = self.apps.versions(app)
        default = spec.model_version()
        rows = self._rows(app)
        assignments = [{"rule": r.rule or None, "role": r.role, "version": r.version, "changed_by": r.changed_by,
                        "changed_at": r.changed_at.isoformat() if r.changed_at else None,
                        "installed": r.version in versions} for r in rows]
        triples = [(r.rule, r.role, r.version) for r in rows]
        active, shadow = pick(triples, ALL_RULES, default)
        rules = sorted({r.rule for r in rows if r.rule})
        return {
            "app": app,
            "default_version": default,
            "active_version": active,
            "shadow_version": shadow,
            "versions": [versions[v].as_dict() for v in sorted(versions)],
            "assignments": assignments,
            "rules": {rule: dict(zip(("active_version", "shadow_version"), pick(triples, rule, default),
                                     strict=True)) for rule in rules},
            "shadow_agreement": self.agreement(app),
        }

    def listing(self) -> list[dict[str, Any]]:
        return [self.describe(app) for app in sorted(self.apps.apps)]
