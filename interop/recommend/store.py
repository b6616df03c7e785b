"""The knowledge base as a chromadb collection, through langchain's ``Chroma`` vector store.

On disk, under the folder the caller names::

    <persist_dir>/.lock              a file lock: one process builds at a time
    <persist_dir>/<key>/             a persistent chromadb database, one collection of snippets
    <persist_dir>/<key>/BUILT        written last: the database is complete

``<key>`` is derived from the knowledge base's content hash, the embedding model and this module's layout
version, so changed guidance (or another model) gets a fresh index and an interrupted build is never used; a
new index removes the ones it replaces. Chroma's own embedding function is never used (vectors come from
:class:`~interop.recommend.embeddings.MiniLMEmbeddings`; its default would download an ONNX model) and its
telemetry is off.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import chromadb
from chromadb.config import Settings
from langchain_chroma import Chroma
from langchain_core.embeddings import Embeddings

from interop.recommend.kb import KnowledgeBase, Snippet

log = logging.getLogger(__name__)

COLLECTION = "follow_up_guidance"
LAYOUT_VERSION = "1"
BUILT = "BUILT"
_KEY = re.compile(r"^[0-9a-f]{16}$")


def chroma_settings() -> Settings:
    return Settings(anonymized_telemetry=False, allow_reset=False, is_persistent=True)


def store_key(kb: KnowledgeBase, model_id: str) -> str:
    return hashlib.sha256(f"{LAYOUT_VERSION}\0{model_id}\0{kb.sha256}".encode()).hexdigest()[:16]


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with path.open("a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass(frozen=True)
class Hit:
    snippet: Snippet
    #: Cosine similarity of query and snippet, clipped to 0..1.
    score: float


class GuidanceStore:
    """Similarity search over the snippets of one knowledge base."""

    def __init__(self, kb: KnowledgeBase, vectors: Chroma, path: Path, build_seconds: float | None) -> None:
        self.kb = kb
        self.path = path
        #: Seconds spent embedding and writing the index when this process built it; None when it was reused.
        self.build_seconds = build_seconds
        self._vectors = vectors

    @classmethod
    def open(cls, persist_dir: str | Path, kb: KnowledgeBase, embeddings: Embeddings, model_id: str) -> GuidanceStore:
        """Open the index of ``kb`` under ``persist_dir``, building it first if it is not there (or stale)."""
        root = Path(persist_dir)
        root.mkdir(parents=True, exist_ok=True)
        path = root / store_key(kb, model_id)
        build_seconds = None
        if not (path / BUILT).is_file():
            with _file_lock(root / ".lock"):
                if not (path / BUILT).is_file():  # another process may have built it while we waited
                    build_seconds = cls._build(path, kb, embeddings, model_id)
                    for old in root.iterdir():  # indexes of earlier knowledge bases or models
                        if old != path and old.is_dir() and _KEY.match(old.name):
                            shutil.rmtree(old, ignore_errors=True)
        return cls(kb, cls._chroma(path, embeddings), path, build_seconds)

    @staticmethod
    def _chroma(path: Path, embeddings: Embeddings) -> Chroma:
        client = chromadb.PersistentClient(path=str(path), settings=chroma_settings())
        return Chroma(
            collection_name=COLLECTION,
            embedding_function=embeddings,
            client=client,
            collection_configuration={"hnsw": {"space": "cosine"}},
        )

    @classmethod
    def _build(cls, path: Path, kb: KnowledgeBase, embeddings: Embeddings, model_id: str) -> float:
        start = time.perf_counter()
        if path.exists():  # an interrupted build
            shutil.rmtree(path)
        path.mkdir(parents=True)
        vectors = cls._chroma(path, embeddings)
        snippets = sorted(kb.snippets.values(), key=lambda s: s.id)
        vectors.add_texts(
            texts=[s.document() for s in snippets],
            metadatas=[{"topic": s.topic, "file": s.file, "kind": s.kind, "applies_to": ",".join(s.applies_to)}
                       for s in snippets],
            ids=[s.id for s in snippets],
        )
        seconds = time.perf_counter() - start
        (path / BUILT).write_text(json.dumps({"kb_sha256": kb.sha256, "model": model_id, "snippets": len(snippets),
                                              "build_seconds": round(seconds, 3)}), encoding="utf-8")
        log.info("built guidance index %s: %d snippets in %.2f s", path, len(snippets), seconds)
        return seconds

    def search(self, query: str, *, topic: str, k: int) -> list[Hit]:
        """The ``k`` snippets of ``topic`` closest to ``query``, closest first."""
        found = self._vectors.similarity_search_with_score(query, k=k, filter={"topic": topic})
        hits = []
        for doc, distance in found:
            snippet = self.kb.snippets.get(str(doc.id))
            if snippet is None:  # cannot happen with a BUILT index of this knowledge base
                raise RuntimeError(f"guidance index {self.path} holds unknown snippet {doc.id!r}")
            hits.append(Hit(snippet, min(1.0, max(0.0, 1.0 - float(distance)))))
        return hits

    def topic_size(self, topic: str) -> int:
        return sum(1 for s in self.kb.snippets.values() if s.topic == topic)
