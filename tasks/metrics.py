"""Quality, Diversity, Complexity metrics (QDC survey, arXiv 2412.02980) of a run's tables.

``qdc_metrics(...)`` returns rows ``(run_id, stage, table, metric, value, n)`` for every
stage x table (``chains``, ``pairs``, ``sft``):

- Quality: ``accuracy`` (share of chains whose answer matches gold), ``mean_step_score``,
  ``arith_valid_step_share`` (steps whose equations hold, among checkable steps),
  ``parse_failure_rate`` (chains stating no answer), ``pair_validity`` (pairs kept by
  their suite over pairs kept + quarantined).
- Diversity: ``vendi_ngram_q{0.5,1,2}`` (Vendi score over hashed word 1-2-gram vectors,
  computed through the d x d covariance), ``distinct_1/2/3``, ``compression_ratio``
  (gzip bytes / raw bytes: lower = more repetitive), ``near_duplicate_rate`` (MinHash).
- Complexity: ``steps_per_chain``, ``tokens_per_chain``, ``ops_per_problem``,
  ``solve_rate`` (difficulty: per problem, the share of its chains that reach gold; mean).

Vendi never builds the n x n kernel: ``VendiAccumulator`` sums x x^T in batches (bounded
memory) and takes the eigenvalues of the d x d matrix, dropping eigenvalues below ``eps``.
It equals ``vendi_score.score_dual`` (checked in tests).
"""

from __future__ import annotations

import gzip
import hashlib
import math
from collections import defaultdict

import numpy as np
import pyarrow as pa

from infra.schemas import from_rows
from tasks.scorers import step_verdict

QS = (0.5, 1.0, 2.0)


class VendiAccumulator:
    """Streaming Vendi score: ``add`` row batches (optionally weighted), then ``score(q)``."""

    def __init__(self, dim: int, eps: float = 1e-10):
        self.S = np.zeros((dim, dim))
        self.total_weight = 0.0
        self.n = 0
        self.eps = eps

    def add(self, X: np.ndarray, weights: np.ndarray | None = None) -> None:
        X = np.asarray(X, dtype=np.float64)
        norms = np.linalg.norm(X, axis=1, keepdims=True)
        X = X / np.where(norms == 0, 1.0, norms)
        w = np.ones(len(X)) if weights is None else np.asarray(weights, dtype=np.float64)
        self.S += (X * w[:, None]).T @ X
        self.total_weight += float(w.sum())
        self.n += len(X)

    def eigenvalues(self) -> np.ndarray:
        if self.total_weight == 0:
            return np.zeros(0)
        w = np.linalg.eigvalsh(self.S / self.total_weight)
        return w[w > self.eps]

    def score(self, q: float = 1.0) -> float:
        return vendi_from_eigenvalues(self.eigenvalues(), q)


def vendi_from_eigenvalues(w: np.ndarray, q: float) -> float:
    if w.size == 0:
        return 0.0
    p = w / w.sum()
    if q == 1:
        return float(math.exp(-(p * np.log(p)).sum()))
    if q == math.inf:
        return float(1.0 / p.max())
    return float(math.exp(math.log((p**q).sum()) / (1 - q)))


def vendi(X: np.ndarray, q: float = 1.0, weights: np.ndarray | None = None, batch: int = 8192) -> float:
    """Vendi score of order q of the rows of X (cosine similarity kernel), optionally weighted."""
    acc = VendiAccumulator(X.shape[1])
    for k in range(0, len(X), batch):
        acc.add(X[k : k + batch], None if weights is None else weights[k : k + batch])
    return acc.score(q)


def hashed_ngrams(texts: list[str], dim: int = 1024, ns: tuple[int, ...] = (1, 2)) -> np.ndarray:
    """Word n-gram count vectors, hashed into ``dim`` buckets (stable across runs)."""
    X = np.zeros((len(texts), dim))
    for i, t in enumerate(texts):
        words = t.lower().split()
        for n in ns:
            for j in range(len(words) - n + 1):
                h = int.from_bytes(hashlib.blake2b(" ".join(words[j : j + n]).encode(), digest_size=8).digest(), "little")
                X[i, h % dim] += 1.0
    return X


def distinct_n(texts: list[str], n: int) -> float:
    grams, total = set(), 0
    for t in texts:
        w = t.split()
        for j in range(len(w) - n + 1):
            grams.add(tuple(w[j : j + n]))
            total += 1
    return len(grams) / total if total else 0.0


def compression_ratio(texts: list[str]) -> float:
    raw = "\n".join(texts).encode()
    return len(gzip.compress(raw, mtime=0)) / len(raw) if raw else 0.0


def near_duplicate_rate(texts: list[str], threshold: float = 0.8, num_perm: int = 128) -> float:
    """Share of texts that have a near-duplicate (MinHash LSH, Jaccard >= threshold) among the others."""
    if len(texts) < 2:
        return 0.0
    from datasketch import MinHash, MinHashLSH

    from tasks.sft import shingles

    hashes = MinHash.bulk([shingles(t, 3) for t in texts], num_perm=num_perm, seed=1)
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    for i, h in enumerate(hashes):
        lsh.insert(str(i), h)
    dup = sum(1 for i, h in enumerate(hashes) if any(k != str(i) for k in lsh.query(h)))
    return dup / len(texts)


def diversity(texts: list[str]) -> dict[str, float]:
    out = {}
    if texts:
        acc = VendiAccumulator(1024)
        for k in range(0, len(texts), 4096):
            acc.add(hashed_ngrams(texts[k : k + 4096]))
        w = acc.eigenvalues()
        out.update({f"vendi_ngram_q{q:g}": vendi_from_eigenvalues(w, q) for q in QS})
    out.update({f"distinct_{n}": distinct_n(texts, n) for n in (1, 2, 3)})
    out["compression_ratio"] = compression_ratio(texts)
    out["near_duplicate_rate"] = near_duplicate_rate(texts)
    return out


def chain_metrics(chains: list[dict], n_ops: dict[str, int | None]) -> dict[str, float]:
    n = len(chains)
    checkable = [step_verdict(s, c["steps"][:i]) for c in chains for i, s in enumerate(c["steps"])]
    checkable = [v for v in checkable if v is not None]
    per_problem: dict[str, list[bool]] = defaultdict(list)
    for c in chains:
        per_problem[c["problem_id"]].append(bool(c["correct"]))
    ops = [n_ops[p] for p in per_problem if n_ops.get(p) is not None]
    scores = [s for c in chains for s in c["step_scores"]]
    return {
        "accuracy": sum(bool(c["correct"]) for c in chains) / n,
        "mean_step_score": sum(scores) / len(scores) if scores else 0.0,
        "arith_valid_step_share": sum(checkable) / len(checkable) if checkable else 0.0,
        "parse_failure_rate": sum(c["verdict"] == "no_answer" for c in chains) / n,
        "steps_per_chain": sum(c["n_steps"] for c in chains) / n,
        "tokens_per_chain": sum(c["completion_tokens"] for c in chains) / n,
        "ops_per_problem": sum(ops) / len(ops) if ops else float("nan"),
        "solve_rate": sum(sum(v) / len(v) for v in per_problem.values()) / len(per_problem),
    }


def qdc_metrics(chains: pa.Table, pairs: pa.Table, sft: pa.Table, problems: pa.Table, quarantined_pairs: dict[str, int],
                *, run_id: str) -> pa.Table:
    """The ``metrics`` rows of one run."""
    rows: list[dict] = []

    def emit(stage: str, table: str, values: dict[str, float], n: int) -> None:
        rows.extend({"run_id": run_id, "stage": stage, "table": table, "metric": k, "value": float(v), "n": n}
                    for k, v in values.items())

    n_ops = dict(zip(problems.column("problem_id").to_pylist(), problems.column("n_ops").to_pylist()))
    by_stage: dict[str, list[dict]] = defaultdict(list)
    for c in chains.select(["problem_id", "stage", "steps", "step_scores", "n_steps", "correct", "verdict",
                            "completion_tokens", "text"]).to_pylist():
        by_stage[c["stage"]].append(c)
    for stage, cs in sorted(by_stage.items()):
        emit(stage, "chains", {**chain_metrics(cs, n_ops), **diversity([c["text"] for c in cs])}, len(cs))
    pair_stages: dict[str, list[dict]] = defaultdict(list)
    for p in pairs.select(["stage", "chosen", "margin"]).to_pylist():
        pair_stages[p["stage"]].append(p)
    for stage in sorted(set(pair_stages) | set(quarantined_pairs)):
        ps = pair_stages.get(stage, [])
        kept, bad = len(ps), quarantined_pairs.get(stage, 0)
        values = {"pair_validity": kept / (kept + bad) if kept + bad else 0.0,
                  "mean_margin": sum(p["margin"] for p in ps) / kept if kept else 0.0}
        emit(stage, "pairs", {**values, **diversity([p["chosen"] for p in ps])}, kept)
    if sft.num_rows:
        emit("sft", "sft", diversity(sft.column("completion").to_pylist()), sft.num_rows)
    return from_rows(rows, "metrics")


# ---------------------------------------------------------------- Prefect wrapper

from prefect import task  # noqa: E402

from tasks.common import RunContext  # noqa: E402

STAGE = "metrics"


@task(name="qdc-metrics", persist_result=False)
def metrics_task(run_dir: str) -> int:
    """Compute the run's QDC ``metrics`` table; returns its row count."""
    ctx = RunContext.open(run_dir)
    store = ctx.store
    if not store.is_done("metrics", STAGE, "00000"):
        q = store.read_table("quarantine")
        bad_pairs: dict[str, int] = defaultdict(int)
        for r in q.select(["stage", "table"]).to_pylist():
            if r["table"] == "pairs":
                bad_pairs["generation" if r["stage"] == "routing" else r["stage"]] += 1
        table = qdc_metrics(store.read_table("chains"), store.read_table("pairs"), store.read_table("sft"),
                            store.read_table("problems"), dict(bad_pairs), run_id=ctx.run_id)
        store.write("metrics", STAGE, "00000", table)
    return store.read_part("metrics", STAGE, "00000").num_rows
