"""The models API: each app's installed model versions, which is active (per app or per routing rule) and
which runs in shadow, the shadow runs' agreement with the active version, and drift against the training
reference (interop.mlops).

Reading needs the ``Task`` read scope (like jobs); changing the active or shadow version needs a wildcard write
scope (``system/*.cud``: an administrator's), like editing routing rules.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from interop.api.deps import CanAdminister, NodeDep, require
from interop.auth import Principal
from interop.mlops.tables import ALL_RULES

router = APIRouter(prefix="/api", tags=["models"])

CanReadModels = Annotated[Principal, Depends(require("Task", "r"))]


@router.get("/models")
def list_models(node: NodeDep, _: CanReadModels) -> list[dict[str, Any]]:
    """Per app: installed versions, the default (the app's own bundle), the active and shadow versions (for all
    rules and per rule), and the shadow agreement per (active, shadow) pair."""
    return node.models.listing()


@router.get("/models/{app}")
def get_model(app: str, node: NodeDep, _: CanReadModels) -> dict[str, Any]:
    """One app's models, with its latest shadow comparisons and the drift of each version's inputs and
    outputs (PSI against the bundle's training reference; None below ``models.drift_min_cases`` results)."""
    out = node.models.describe(app)
    out["recent_comparisons"] = node.models.comparisons(app, limit=20)
    out["drift"] = node.drift.rows(app)
    return out


class Assignment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: The version (a bundle's metadata version, installed); null: back to the default (active) / no shadow.
    version: str | None = Field(..., max_length=64)
    #: A routing rule's name (or ``request`` for jobs asked for through the API); absent: every rule.
    rule: str | None = Field(None, max_length=64)


def _assign(node: Any, app: str, role: str, body: Assignment, who: Principal) -> dict[str, Any]:
    rule = body.rule or ALL_RULES
    if rule and rule != "request":
        node.rules.get(rule)  # 404 for a rule that does not exist
    node.models.assign(app, role, body.version, rule=rule, by=who.subject)
    return node.models.describe(app)


@router.put("/models/{app}/active")
def put_active(app: str, body: Assignment, node: NodeDep, who: CanAdminister) -> dict[str, Any]:
    """Make an installed version active for the app (or for one rule); new jobs run it, queued ones keep the
    version they were queued with."""
    return _assign(node, app, "active", body, who)


@router.put("/models/{app}/shadow")
def put_shadow(app: str, body: Assignment, node: NodeDep, who: CanAdminister) -> dict[str, Any]:
    """Run an installed version in shadow beside the active one (for the app or one rule): a second, low
    priority job on the same input whose result is only compared, never reported; null stops it."""
    return _assign(node, app, "shadow", body, who)
