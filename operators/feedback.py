"""The physicians' sign-off feedback (``GET /api/feedback?format=csv|json`` or ``interop feedback export``) as
the apps' train scripts read it: one row per verdict and finding / classification / report, the AI's output
beside the physician's value.

What the demonstration models can do with it (see apps/README.md): the rows carry the AI's output and the
physician's verdict but not the images or lab values, so none of them can add the rows to its training data;
each train script scores the deployed model against the physicians (an evaluation set from the site) and
writes that into the bundle it makes (``site_feedback`` in ``configs/metadata.json`` and the model card).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

_BOOL = {"true": True, "false": False, "1": True, "0": False, "": None}


def _bool(v: Any) -> bool | None:
    if v is None or isinstance(v, bool):
        return v
    return _BOOL.get(str(v).strip().lower())


def _float(v: Any) -> float | None:
    if v is None or v == "":
        return None
    return float(v)


def read_feedback(path: str | Path, app: str | None = None) -> list[dict[str, Any]]:
    """The rows of a feedback export (CSV or JSON, told apart by content), typed as the JSON export types them;
    with ``app`` only that app's rows."""
    text = Path(path).read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        raw: Iterable[Mapping[str, Any]] = json.loads(text)
    else:
        raw = csv.DictReader(io.StringIO(text))
    rows = []
    for r in raw:
        row = dict(r)
        for k in ("ai_value", "physician_value", "agrees", "demonstration"):
            if k in row and (row["kind"] != "classification" or k in ("agrees", "demonstration")):
                row[k] = _bool(row[k])
        for k in ("ai_probability", "ai_threshold"):
            row[k] = _float(row.get(k))
        if app is None or row.get("app") == app:
            rows.append(row)
    return rows


def _rate(num: int, den: int) -> float | None:
    return round(num / den, 4) if den else None


def finding_agreement(rows: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per finding, the AI's call against the physician's (rows with a physician value only): counts,
    sensitivity and specificity of the AI taking the physician as the truth, and the agreement."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r.get("kind") != "finding" or r.get("physician_value") is None or r.get("ai_value") is None:
            continue
        c = out.setdefault(str(r["name"]), {"n": 0, "tp": 0, "fp": 0, "tn": 0, "fn": 0})
        ai, truth = bool(r["ai_value"]), bool(r["physician_value"])
        c["n"] += 1
        c[("t" if ai == truth else "f") + ("p" if ai else "n")] += 1
    for c in out.values():
        c["sensitivity"] = _rate(c["tp"], c["tp"] + c["fn"])
        c["specificity"] = _rate(c["tn"], c["tn"] + c["fp"])
        c["agreement"] = _rate(c["tp"] + c["tn"], c["n"])
    return out


def verdicts(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """How the physicians judged the reports: verdicts by action, overall and per model version judged."""
    seen: dict[str, tuple[str, str]] = {}
    for r in rows:
        seen[str(r.get("signoff_id"))] = (str(r.get("model_version") or ""), str(r.get("action") or ""))
    by_version: dict[str, dict[str, int]] = {}
    for version, action in seen.values():
        counts = by_version.setdefault(version, {"accept": 0, "amend": 0, "reject": 0})
        counts[action] = counts.get(action, 0) + 1
    total = {a: sum(v.get(a, 0) for v in by_version.values()) for a in ("accept", "amend", "reject")}
    return {"verdicts": len(seen), **total, "accepted_unchanged_rate": _rate(total["accept"], len(seen)),
            "by_model_version": by_version}


def evaluate_feedback(path: str | Path, app: str) -> dict[str, Any]:
    """The ``site_feedback`` section a train script writes into its bundle's metadata."""
    data = Path(path).read_bytes()
    rows = read_feedback(path, app)
    return {
        "file_sha256": hashlib.sha256(data).hexdigest(),
        "rows": len(rows),
        "use": "evaluation of the deployed model against the physicians' verdicts (not training data: the "
               "export holds no images or lab values)",
        **verdicts(rows),
        "findings": finding_agreement(rows),
    }


def feedback_card(meta: Mapping[str, Any]) -> str:
    """The model card's section on the site feedback a bundle was made with ('' without any)."""
    fb = meta.get("site_feedback")
    if not fb:
        return ""
    lines = [f"| {name} | {c['n']} | {c['sensitivity']} | {c['specificity']} | {c['agreement']} |"
             for name, c in sorted(fb["findings"].items())]
    table = ("\n| finding | judged | sensitivity | specificity | agreement |\n| --- | --- | --- | --- | --- |\n"
             + "\n".join(lines) + "\n") if lines else ""
    return (f"\n## Site feedback (evaluation only)\n\nScored against {fb['verdicts']} physician verdicts "
            f"({fb['accept']} accepted, {fb['amend']} amended, {fb['reject']} rejected; {fb['rows']} rows of the "
            f"sign-off feedback export, sha256 {fb['file_sha256'][:12]}), on the outputs of the model versions "
            f"that were deployed ({', '.join(sorted(fb['by_model_version'])) or 'none'}). The export holds no "
            f"images or lab values, so it was not used for training.\n{table}")
