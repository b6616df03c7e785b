"""Follow-up recommendations for an app result, by retrieval over the guidance knowledge base.

For each thing a result says that guidance may answer (a present finding, the predicted class, a measurement
the knowledge base calls notable), the target's description is embedded and the snippets of its topic are
ranked by cosine similarity in the chromadb index. A snippet becomes a recommendation when its similarity
reaches ``min_score`` and it was written for that target (``applies_to``); at most ``k`` per target, the
closest first. A snippet that ranks above the accepted ones but was written for something else (a distractor,
or another finding's snippet) is never cited for this one. Recommendations are deduplicated by snippet and by
the code to order, keeping the closest.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from interop.recommend.embeddings import MiniLMEmbeddings
from interop.recommend.kb import KnowledgeBase, Target, load_knowledge_base
from interop.recommend.model import Recommendation
from interop.recommend.report import ReportPhraser, build_report_text, kept_what_matters
from interop.recommend.store import GuidanceStore
from operators.app_result import AppResult, Coding

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Query:
    """One thing a result says that guidance may answer."""

    target: Target
    #: What the recommendation answers: a Finding.name, a Classification.name or a Measurement.name.
    finding: str
    #: How strongly the result says it (a probability; 1.0 for a measurement): orders the recommendations.
    strength: float


def _same(a: Coding, b: Coding) -> bool:
    return a.system == b.system and a.code == b.code


def queries(result: AppResult, kb: KnowledgeBase) -> list[Query]:
    """The result's positive statements that the knowledge base has guidance for, strongest first."""
    found: list[Query] = []

    def target(key: str, display: str) -> Target | None:
        if key in kb.targets:
            return kb.targets[key]
        answering = kb.for_target(key)  # guidance without a target section: search with the code's display
        return Target(key, answering[0].topic, display) if answering else None

    for f in result.findings:
        t = target(f.name, f.code.display) if f.present else None
        if t is not None:
            found.append(Query(t, f.name, f.probability))
    for c in result.classifications:
        t = target(f"{c.name}={c.predicted}", f"{c.code.display}: {c.predicted}")
        if t is not None:
            found.append(Query(t, c.name, c.probabilities[c.predicted]))
    for m in result.measurements:
        for t in kb.targets.values():
            if (t.site is not None and m.finding_site is not None and _same(t.site, m.finding_site)
                    and t.notable(m.value, m.unit)):
                found.append(Query(t, m.name, 1.0))
    found.sort(key=lambda q: -q.strength)
    return found


class Recommender:
    """Recommendations and report text for app results (see the module docstring).

    Cheap to construct: the knowledge base is parsed here, but the embedding model and the chromadb index are
    opened on first use (seconds; once per process for the model), under a lock, so one instance can serve
    several threads. ``persist_dir`` holds the index; ``llm`` phrases report text when given.
    """

    def __init__(self, persist_dir: str | Path, *, k: int = 3, min_score: float = 0.35,
                 llm: ReportPhraser | None = None, kb: KnowledgeBase | None = None) -> None:
        if k < 1:
            raise ValueError("k must be at least 1")
        if not 0.0 <= min_score <= 1.0:
            raise ValueError("min_score is a cosine similarity between 0 and 1")
        self.persist_dir = Path(persist_dir)
        self.k = k
        self.min_score = min_score
        self.llm = llm
        self.kb = kb if kb is not None else load_knowledge_base()
        self._embeddings = MiniLMEmbeddings()
        self._store: GuidanceStore | None = None
        self._lock = threading.Lock()

    def store(self) -> GuidanceStore:
        """The opened index (loading the model and building the index on first call)."""
        with self._lock:
            if self._store is None:
                start = time.perf_counter()
                self._store = GuidanceStore.open(self.persist_dir, self.kb, self._embeddings,
                                                 MiniLMEmbeddings.model_id)
                log.info("guidance index ready in %.2f s (%s)", time.perf_counter() - start, self._store.path)
            return self._store

    def warm(self) -> None:
        """Load the model and open the index now (e.g. at start-up) instead of on the first result."""
        self.store()
        self._embeddings.embed_query("warm-up")

    def recommend(self, result: AppResult) -> list[Recommendation]:
        """Follow-up recommendations for the result's positive statements; empty when there are none."""
        wanted = queries(result, self.kb)
        if not wanted:
            return []
        store = self.store()
        chosen: list[tuple[int, Recommendation]] = []
        for rank, query in enumerate(wanted):
            hits = store.search(query.target.describes, topic=query.target.topic,
                                k=store.topic_size(query.target.topic))
            accepted = [h for h in hits if h.score >= self.min_score and query.target.key in h.snippet.applies_to]
            accepted = accepted[:self.k]
            if accepted:
                passed_over = [h.snippet.id for h in hits
                               if h.score > accepted[-1].score and query.target.key not in h.snippet.applies_to]
                if passed_over:
                    log.debug("%s: ranked above the accepted guidance but written for other targets: %s",
                              query.target.key, passed_over)
            else:
                log.info("%s: no guidance reaches similarity %.2f (best %s)", query.target.key, self.min_score,
                         [(h.snippet.id, round(h.score, 3)) for h in hits[:3]])
            for hit in accepted:
                s = hit.snippet
                chosen.append((rank, Recommendation(kind=s.kind, code=s.code, text=f"{s.title}. {s.text}",
                                                    snippet_id=s.ref, source=s.source, finding=query.finding,
                                                    score=round(hit.score, 4))))
        # One recommendation per snippet and per code to order: the closest match wins.
        best: dict[str, tuple[int, Recommendation]] = {}
        by_code: dict[tuple[str, str], str] = {}
        for rank, rec in sorted(chosen, key=lambda rr: -rr[1].score):
            code = (rec.code.system, rec.code.code)
            if rec.snippet_id in best or code in by_code:
                continue
            best[rec.snippet_id] = (rank, rec)
            by_code[code] = rec.snippet_id
        return [rec for _, rec in sorted(best.values(), key=lambda rr: (rr[0], -rr[1].score))]

    def report_text(self, result: AppResult, recs: list[Recommendation]) -> str:
        """Plain report text: phrased by the LLM when one is set and its answer kept the notices and
        citations; otherwise (and on any LLM error, which is logged) built from the result alone."""
        draft = build_report_text(result, recs)
        if self.llm is None:
            return draft
        try:
            text = self.llm.phrase(draft)
        except Exception as exc:  # any failure of the endpoint must leave the report to the built text
            log.warning("report phrasing by %s failed, using the built text: %s", self.llm.name, exc)
            return draft
        lost = kept_what_matters(text, result, recs)
        if lost:
            log.warning("report phrasing by %s dropped %s; using the built text", self.llm.name, lost)
            return draft
        return text
