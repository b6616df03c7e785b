"""The report text of an AI result: built from the result and its recommendations, optionally phrased by an LLM.

:func:`build_report_text` says only what the result and the knowledge base say: each finding with its
probability and threshold, the predicted class with every class's probability, the measurements, the notices,
and each recommendation with what to order and its citation. :class:`ReportPhraser` hands that draft to an
OpenAI-compatible chat model (langchain-openai) to make it read better; its answer is used only if it kept the
notices and every citation, otherwise the draft stands.
"""

from __future__ import annotations

import logging
from typing import Any

from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import HumanMessage, SystemMessage

from interop.recommend.kb import KB_NOTICE
from interop.recommend.model import Recommendation
from operators.app_result import AppResult

log = logging.getLogger(__name__)

PRELIMINARY = "Preliminary AI result: not reviewed by a physician."

_SYSTEMS = {
    "http://snomed.info/sct": "SNOMED CT",
    "http://loinc.org": "LOINC",
}

PHRASING_INSTRUCTIONS = (
    "You edit the draft of a preliminary report of an AI result for a physician. Rewrite it as clear, concise "
    "plain text without markdown. Use only the facts in the draft: do not add, drop or change any finding, "
    "number, code or follow-up suggestion, and give no advice of your own. Keep every notice sentence and every "
    "citation in square brackets exactly as written."
)


def _number(value: float) -> str:
    return f"{value:.2f}"


def finding_labels(result: AppResult) -> dict[str, str]:
    """What each name a recommendation may answer is called in the text."""
    labels = {f.name: f"{f.code.display} (probability {_number(f.probability)})" for f in result.findings}
    labels.update({c.name: f"{c.code.display} = {c.predicted}" for c in result.classifications})
    labels.update({m.name: f"{m.name} {_number(m.value)} {m.unit}" for m in result.measurements})
    return labels


def citation(rec: Recommendation) -> str:
    return f"[{rec.snippet_id}; source: {rec.source}]"


def build_report_text(result: AppResult, recs: list[Recommendation]) -> str:
    """The report as plain text, from the result and the recommendations alone."""
    lines = [PRELIMINARY,
             f"App: {result.app.name} {result.app.version}; model: {result.model.name} {result.model.version}."]
    if result.notice:
        lines.append(f"Notice: {result.notice}.")
    present = sorted((f for f in result.findings if f.present), key=lambda f: -f.probability)
    absent = sorted((f for f in result.findings if not f.present), key=lambda f: -f.probability)
    if present:
        lines += ["", "Findings present:"]
        lines += [f"- {f.code.display}: probability {_number(f.probability)} (threshold {_number(f.threshold)})."
                  for f in present]
    if absent:
        lines += ["", "Findings not present (probability below threshold):"]
        lines += [f"- {f.code.display}: probability {_number(f.probability)} (threshold {_number(f.threshold)})."
                  for f in absent]
    for c in result.classifications:
        spread = ", ".join(f"{label}: {_number(p)}" for label, p in c.probabilities.items())
        lines += ["", f"{c.code.display}:",
                  f"- predicted {c.predicted}, probability {_number(c.probabilities[c.predicted])} ({spread})."]
    if result.measurements:
        lines += ["", "Measurements:"]
        lines += [f"- {m.name}: {_number(m.value)} {m.unit}." for m in result.measurements]
    labels = finding_labels(result)
    lines += ["", "Follow-up suggestions:"]
    if not recs:
        lines.append("- none.")
    for i, rec in enumerate(recs, 1):
        system = _SYSTEMS.get(rec.code.system, rec.code.system)
        lines += [f"{i}. {rec.kind.capitalize()}: {rec.code.display} ({system} {rec.code.code})",
                  f"   For: {labels.get(rec.finding, rec.finding)}",
                  f"   {rec.text}",
                  f"   {citation(rec)}"]
    lines += ["", KB_NOTICE]
    return "\n".join(lines)


class ReportPhraser:
    """Rewrites a built report with a chat model; the caller keeps the draft if anything goes wrong."""

    def __init__(self, chat: BaseChatModel, *, name: str = "") -> None:
        self.chat = chat
        self.name = name or type(chat).__name__

    def phrase(self, draft: str) -> str:
        """The model's rewrite of ``draft`` (raises whatever the model's client raises)."""
        answer = self.chat.invoke([SystemMessage(PHRASING_INSTRUCTIONS), HumanMessage(draft)])
        text = answer.text.strip() if hasattr(answer, "text") else str(answer.content).strip()
        if not text:
            raise ValueError("the model answered with no text")
        return text


def kept_what_matters(text: str, result: AppResult, recs: list[Recommendation]) -> list[str]:
    """What a phrased text lost that it must keep: the notices and each citation (empty when nothing)."""
    needed = [PRELIMINARY, KB_NOTICE] + ([result.notice] if result.notice else [])
    needed += [rec.snippet_id for rec in recs]
    return [n for n in needed if n not in text]


def phraser_from_settings(base_url: str | None, model: str | None, api_key: str | None,
                          **options: Any) -> ReportPhraser | None:
    """A phraser over an OpenAI-compatible endpoint (``.../v1``) when ``base_url`` is set, else None.

    ``options`` go to ``langchain_openai.ChatOpenAI`` (defaults: ``temperature=0``, ``timeout=30``,
    ``max_retries=1``). A model name is required with a base URL: endpoints differ in what they call theirs.
    """
    if not base_url:
        return None
    if not model:
        raise ValueError("an LLM base_url needs a model name")
    from langchain_openai import ChatOpenAI

    settings: dict[str, Any] = {"temperature": 0, "timeout": 30, "max_retries": 1, **options}
    # Endpoints on the site's own network often need no key; the client insists on one, so send a placeholder.
    chat = ChatOpenAI(base_url=base_url, model=model, api_key=api_key or "not-needed", **settings)
    return ReportPhraser(chat, name=f"{model} at {base_url}")
