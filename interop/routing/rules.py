"""Routing rules kept in the database: those of the configuration file (re-read at every start-up) and those
added or edited through the API. A rule edited through the API becomes the API's (``source = api``) and the
configuration no longer overrides it; deleting it through the API lets the configuration's version back in at
the next start-up."""

from __future__ import annotations

import logging

from sqlalchemy import select

from interop.config import RoutingRule
from interop.errors import NotFound
from interop.jobs.models import RoutingRuleRow
from interop.jobs.queue import utcnow
from interop.store.db import Database

log = logging.getLogger(__name__)


class RuleStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def sync_config(self, rules: list[RoutingRule]) -> None:
        """Make the configuration's rules the database's ``config`` rules (API-edited rules are kept)."""
        wanted = {r.name: r for r in rules}
        with self.db.writing() as s:
            rows = {r.name: r for r in s.scalars(select(RoutingRuleRow))}
            for name, row in rows.items():
                if row.source == "config" and name not in wanted:
                    s.delete(row)
            for name, rule in wanted.items():
                existing = rows.get(name)
                text = rule.model_dump_json()
                if existing is None:
                    s.add(RoutingRuleRow(name=name, definition=text, source="config", updated_at=utcnow()))
                elif existing.source == "config" and existing.definition != text:
                    existing.definition = text
                    existing.updated_at = utcnow()
                elif existing.source == "api":
                    log.info("routing rule %s: the API's version is kept over the configuration's", name)

    def all(self) -> list[tuple[RoutingRule, str]]:
        with self.db.reading() as s:
            rows = list(s.scalars(select(RoutingRuleRow).order_by(RoutingRuleRow.name)))
        return [(RoutingRule.model_validate_json(r.definition), r.source) for r in rows]

    def rules(self) -> list[RoutingRule]:
        return [r for r, _ in self.all()]

    def get(self, name: str) -> tuple[RoutingRule, str]:
        with self.db.reading() as s:
            row = s.scalars(select(RoutingRuleRow).where(RoutingRuleRow.name == name)).first()
        if row is None:
            raise NotFound(f"no routing rule named {name!r}")
        return RoutingRule.model_validate_json(row.definition), row.source

    def put(self, rule: RoutingRule) -> bool:
        """Create or replace ``rule`` as an API rule; True when it was created."""
        with self.db.writing() as s:
            row = s.scalars(select(RoutingRuleRow).where(RoutingRuleRow.name == rule.name)).first()
            if row is None:
                s.add(RoutingRuleRow(name=rule.name, definition=rule.model_dump_json(), source="api",
                                     updated_at=utcnow()))
                return True
            row.definition = rule.model_dump_json()
            row.source = "api"
            row.updated_at = utcnow()
            return False

    def delete(self, name: str) -> None:
        with self.db.writing() as s:
            row = s.scalars(select(RoutingRuleRow).where(RoutingRuleRow.name == name)).first()
            if row is None:
                raise NotFound(f"no routing rule named {name!r}")
            s.delete(row)
