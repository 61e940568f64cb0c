"""Quality, Diversity, Complexity metrics (QDC survey, arXiv 2412.02980) of a run's tables.

Two parts. The pure part, ``stage_stats(readers, embedder, section, dedup)``, takes
streams of Arrow record batches (one stream per part, rows sorted by stage and problem,
so one problem's rows arrive together), embeds them in batches and accumulates a
``StageStats`` per stage; ``metric_rows`` turns those into rows ``(run_id, stage, table,
metric, value, n)``. The wrapper, ``compute_metrics(store, section, dedup, embedder)``,
owns DuckDB (one sorted query per committed part, in ``batch_rows`` batches) and the
embeddings file, for every stage x table (``chains``, ``pairs``, ``step_pairs``, ``sft``). Memory is
bounded by the batch size and the d x d accumulators, not by the number of rows
(bench/vendi_bench.py measures it).

- Quality: ``accuracy`` (chains whose answer matches gold), ``mean_step_score``,
  ``arith_valid_step_share`` (steps whose equations hold, among checkable steps),
  ``parse_failure_rate`` (chains stating no answer, or whose search failed: error rows), ``pair_validity`` (pairs kept by their
  suite over kept + quarantined), ``mean_margin``; for step pairs (text: the chosen step)
  ``mean_margin`` is the chosen minus the rejected step's score, with ``pairs_per_problem``,
  ``mean_depth`` and ``candidate_share`` (pairs from the search's other candidates).
- Diversity: ``vendi_q{0.5,1,2}`` (Vendi over sentence embeddings), ``vendi_ngram_q1``
  (over hashed word 1-2-grams), ``distinct_{1,2,3}``, ``compression_ratio`` (gzip bytes /
  raw bytes; lower = more repetitive), ``near_duplicate_rate`` (rows with a MinHash
  near-duplicate among the same problem's rows of the stage), ``strategies_per_problem``
  (clusters of a problem's correct rows at cosine >= ``metrics.strategy_similarity``).
- Complexity: ``steps_per_chain``, ``tokens_per_chain``, ``ops_per_problem``,
  ``solve_rate`` (difficulty: per problem, the share of its chains that reach gold; mean).

Vendi never builds the n x n kernel: ``VendiAccumulator`` sums x x^T in batches and takes
the eigenvalues of the d x d matrix, dropping eigenvalues below ``eps``; it supports
sample weights and equals ``vendi_score.score_dual`` (checked in tests).
"""

from __future__ import annotations

import hashlib
import math
import os
import zlib
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from prefect import task
from prefect.cache_policies import NO_CACHE

from infra.catalog import sql_list, sql_string
from infra.config import DedupConfig, MetricsConfig
from infra.embed import get_embedder, hashed_ngrams
from infra.fs import StorePath, cache_root
from infra.schemas import from_rows
from infra.storage import RunStore
from tasks.common import RunContext
from tasks.scorers import step_verdict
from tasks.sft import minhashes

STAGE = "metrics"

QS = (0.5, 1.0, 2.0)
NGRAM_DIM = 1024


# ---------------------------------------------------------------- Vendi


class VendiAccumulator:
    """Streaming Vendi score: ``add`` row batches (optionally weighted), then ``score(q)``."""

    def __init__(self, dim: int, eps: float = 1e-10):
        self.S = np.zeros((dim, dim))
        self.total_weight = 0.0
        self.n = 0
        self.eps = eps

    def add(self, X: np.ndarray, weights: np.ndarray | None = None, normalised: bool = False) -> None:
        X = np.asarray(X, dtype=np.float32 if normalised else np.float64)
        if not normalised:
            norms = np.linalg.norm(X, axis=1, keepdims=True)
            X = X / np.where(norms == 0, 1.0, norms)
        if weights is None:
            self.S += (X.T @ X).astype(np.float64)
            self.total_weight += float(len(X))
        else:
            w = np.asarray(weights, dtype=X.dtype)
            self.S += ((X * w[:, None]).T @ X).astype(np.float64)
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


# ---------------------------------------------------------------- lexical diversity


class HyperLogLog:
    """HyperLogLog over 64-bit hashes (2^p registers, about 1.04/sqrt(2^p) relative error).
    Hashes are re-mixed (splitmix64 finaliser) so weak input hashes still spread evenly."""

    def __init__(self, p: int = 14):
        self.p, self.m = p, 1 << p
        self.registers = np.zeros(self.m, dtype=np.uint8)

    def update(self, hashes: np.ndarray) -> None:
        h = np.asarray(hashes, dtype=np.uint64)
        with np.errstate(over="ignore"):
            h = h ^ (h >> np.uint64(30))
            h = h * np.uint64(0xBF58476D1CE4E5B9)
            h = h ^ (h >> np.uint64(27))
            h = h * np.uint64(0x94D049BB133111EB)
            h = h ^ (h >> np.uint64(31))
        idx = (h >> np.uint64(64 - self.p)).astype(np.int64)
        rest = (h << np.uint64(self.p)) | np.uint64(1 << (self.p - 1))  # never all zero
        hi, lo = (rest >> np.uint64(32)).astype(np.float64), (rest & np.uint64(0xFFFFFFFF)).astype(np.float64)
        bitlen = np.where(hi > 0, 32 + np.floor(np.log2(np.maximum(hi, 1))) + 1, np.floor(np.log2(np.maximum(lo, 1))) + 1)
        rank = (65 - bitlen).astype(np.uint8)  # leading zeros + 1
        np.maximum.at(self.registers, idx, rank)

    def count(self) -> float:
        m = self.m
        est = (0.7213 / (1 + 1.079 / m)) * m * m / float(np.sum(2.0 ** -self.registers.astype(np.float64)))
        zeros = int(np.count_nonzero(self.registers == 0))
        if est <= 2.5 * m and zeros:
            return m * math.log(m / zeros)  # linear counting for small cardinalities
        return est


class DistinctCounter:
    """Distinct n-gram count: exact up to ``exact_limit`` distinct grams, then HyperLogLog
    (about 1% error) so memory stays flat however many rows stream through."""

    def __init__(self, exact_limit: int = 200_000):
        self.exact: set[int] | None = set()
        self.hll: HyperLogLog | None = None
        self.limit = exact_limit

    def add(self, gram_hashes) -> None:
        if self.exact is not None:
            self.exact.update(gram_hashes)
            if len(self.exact) > self.limit:
                self.hll = HyperLogLog()
                self.hll.update(np.fromiter(self.exact, dtype=np.uint64, count=len(self.exact)))
                self.exact = None
        else:
            self.hll.update(np.fromiter(gram_hashes, dtype=np.uint64))

    def count(self) -> float:
        return float(len(self.exact)) if self.exact is not None else self.hll.count()


def _grams(words: list[str], n: int):
    return (hash(tuple(words[j : j + n])) & 0xFFFFFFFFFFFFFFFF for j in range(len(words) - n + 1))


class TextDiversity:
    """Diversity of a stream of texts (and their embeddings): Vendi, distinct-n, gzip ratio."""

    def __init__(self, dim: int):
        self.embed = VendiAccumulator(dim)
        self.ngram = VendiAccumulator(NGRAM_DIM)
        self.distinct = {n: DistinctCounter() for n in (1, 2, 3)}
        self.total = dict.fromkeys((1, 2, 3), 0)
        self.gz = zlib.compressobj(9, zlib.DEFLATED, 31)
        self.raw_bytes = 0
        self.gz_bytes = 0

    def add(self, texts: list[str], embeddings: np.ndarray) -> None:
        if not texts:
            return
        self.embed.add(embeddings, normalised=True)
        self.ngram.add(hashed_ngrams(texts, NGRAM_DIM))
        for t in texts:
            words = t.split()
            for n in (1, 2, 3):
                self.distinct[n].add(_grams(words, n))
                self.total[n] += max(0, len(words) - n + 1)
        raw = ("\n".join(texts) + "\n").encode()
        self.raw_bytes += len(raw)
        self.gz_bytes += len(self.gz.compress(raw))

    def result(self) -> dict[str, float]:
        if self.embed.n == 0:
            return {}
        w = self.embed.eigenvalues()
        out = {f"vendi_q{q:g}": vendi_from_eigenvalues(w, q) for q in QS}
        out["vendi_ngram_q1"] = self.ngram.score(1.0)
        out.update({f"distinct_{n}": self.distinct[n].count() / self.total[n] if self.total[n] else 0.0 for n in (1, 2, 3)})
        tail = len(self.gz.copy().flush())
        out["compression_ratio"] = (self.gz_bytes + tail) / self.raw_bytes
        return out


def distinct_n(texts: list[str], n: int) -> float:
    grams, total = set(), 0
    for t in texts:
        w = t.split()
        grams.update(tuple(w[j : j + n]) for j in range(len(w) - n + 1))
        total += max(0, len(w) - n + 1)
    return len(grams) / total if total else 0.0


def compression_ratio(texts: list[str]) -> float:
    import gzip

    raw = "\n".join(texts).encode()
    return len(gzip.compress(raw, mtime=0)) / len(raw) if raw else 0.0


def near_duplicate_flags(hashes, threshold: float) -> list[bool]:
    """For each MinHash, whether another in the list has estimated Jaccard >= threshold."""
    flags = [False] * len(hashes)
    for i in range(len(hashes)):
        for j in range(i + 1, len(hashes)):
            if hashes[i].jaccard(hashes[j]) >= threshold:
                flags[i] = flags[j] = True
    return flags


def near_duplicate_rate(texts: list[str], dedup: DedupConfig | None = None) -> float:
    """Share of texts that have a near-duplicate (MinHash Jaccard >= threshold) among the others."""
    dedup = dedup or DedupConfig()
    return sum(near_duplicate_flags(minhashes(texts, dedup), dedup.near_duplicate_threshold)) / len(texts) if len(texts) > 1 else 0.0


def count_strategies(E: np.ndarray, similarity: float) -> int:
    """Leader clustering of L2-normalised rows: a row joins the first cluster whose leader it
    matches at cosine >= similarity, else it leads a new one. Deterministic in row order."""
    leaders: list[np.ndarray] = []
    for e in E:
        if not any(float(e @ l) >= similarity for l in leaders):
            leaders.append(e)
    return len(leaders)


# ---------------------------------------------------------------- the streaming pass


class StageStats:
    """Everything accumulated for one (stage, table) while its rows stream by."""

    def __init__(self, dim: int):
        self.text = TextDiversity(dim)
        self.n = 0
        self.sums: dict[str, float] = defaultdict(float)
        self.problems = 0
        self.near_dups = 0
        self.strategy_sum = 0
        self.strategy_problems = 0

    def add_group(self, rows: list[dict], E: np.ndarray, hashes, section: MetricsConfig, dedup: DedupConfig) -> None:
        """One problem's rows of this stage (all of them, consecutive in the stream)."""
        self.n += len(rows)
        self.problems += 1
        self.near_dups += sum(near_duplicate_flags(hashes, dedup.near_duplicate_threshold))
        correct = np.array([r.get("correct", True) for r in rows], dtype=bool)
        if correct.any():
            self.strategy_sum += count_strategies(E[correct], section.strategy_similarity)
            self.strategy_problems += 1
        if "steps" in rows[0]:
            s = self.sums
            s["correct"] += int(correct.sum())
            s["solve"] += float(correct.mean())
            s["no_answer"] += sum(r["verdict"] in ("no_answer", "error") for r in rows)
            s["steps"] += sum(r["n_steps"] for r in rows)
            s["tokens"] += sum(r["completion_tokens"] for r in rows)
            for r in rows:
                s["step_scores"] += sum(r["step_scores"])
                s["n_step_scores"] += len(r["step_scores"])
                for i, st in enumerate(r["steps"]):
                    v = step_verdict(st, r["steps"][:i])
                    if v is not None:
                        s["checkable"] += 1
                        s["valid"] += v
            if rows[0].get("n_ops") is not None:
                s["ops"] += rows[0]["n_ops"]
                s["n_ops"] += 1
        if "margin" in rows[0]:
            self.sums["margin"] += sum(r["margin"] for r in rows)
        if "depth" in rows[0]:
            self.sums["depth"] += sum(r["depth"] for r in rows)
            self.sums["from_candidates"] += sum(r["source"] == "candidates" for r in rows)

    def result(self, kind: str, quarantined: int = 0) -> dict[str, float]:
        n, s = self.n, self.sums
        out = self.text.result()
        out["near_duplicate_rate"] = self.near_dups / n if n else 0.0
        out["strategies_per_problem"] = self.strategy_sum / self.strategy_problems if self.strategy_problems else 0.0
        if kind == "chains" and n:
            out.update({
                "accuracy": s["correct"] / n,
                "mean_step_score": s["step_scores"] / s["n_step_scores"] if s["n_step_scores"] else 0.0,
                "arith_valid_step_share": s["valid"] / s["checkable"] if s["checkable"] else 0.0,
                "parse_failure_rate": s["no_answer"] / n,
                "steps_per_chain": s["steps"] / n,
                "tokens_per_chain": s["tokens"] / n,
                "ops_per_problem": s["ops"] / s["n_ops"] if s["n_ops"] else float("nan"),
                "solve_rate": s["solve"] / self.problems,
            })
        if kind == "pairs":
            out["pair_validity"] = n / (n + quarantined) if n + quarantined else 0.0
            out["mean_margin"] = s["margin"] / n if n else 0.0
        if kind == "step_pairs" and n:  # margin: chosen step's score minus rejected step's
            out.update({"pairs_per_problem": n / self.problems, "mean_margin": s["margin"] / n, "mean_depth": s["depth"] / n,
                        "candidate_share": s["from_candidates"] / n})
        return out



def _stream_groups(readers, key: tuple[str, ...]):
    """Yield lists of consecutive rows sharing ``key`` from a sequence of RecordBatchReaders
    (a group never spans two readers)."""
    for reader in readers:
        group: list[dict] = []
        current = None
        for batch in reader:
            for r in batch.to_pylist():
                k = tuple(r[c] for c in key)
                if k != current and group:
                    yield group
                    group = []
                current = k
                group.append(r)
        if group:
            yield group


class StatsBuilder:
    """Buffers problem groups until ``section.batch_rows`` rows, embeds them in one call (or
    takes the ``embedding`` column the rows carry), and adds them to a ``StageStats`` per
    stage. ``sink(table)``, when given, receives (chain_id, stage, embedding) per batch."""

    def __init__(self, embedder, section: MetricsConfig, dedup: DedupConfig, sink=None):
        self.embedder, self.section, self.dedup, self.sink = embedder, section, dedup, sink
        self.stats: dict[str, StageStats] = {}
        self.groups: list[list[dict]] = []
        self.size = 0

    def add(self, group: list[dict]) -> None:
        self.groups.append(group)
        self.size += len(group)
        if self.size >= self.section.batch_rows:
            self.flush()

    def flush(self) -> None:
        if not self.groups:
            return
        rows = [r for g in self.groups for r in g]
        texts = [r["text"] or "" for r in rows]
        have = [r.get("embedding") for r in rows]
        E = np.asarray(have, dtype=np.float32) if all(e is not None for e in have) else self.embedder.encode(texts)
        hashes = minhashes(texts, self.dedup)
        spans: dict[str, list[int]] = defaultdict(list)  # row indices of each stage in this batch
        k = 0
        for g in self.groups:
            stage = g[0]["stage"]
            if stage not in self.stats:
                self.stats[stage] = StageStats(E.shape[1])
            self.stats[stage].add_group(g, E[k : k + len(g)], hashes[k : k + len(g)], self.section, self.dedup)
            spans[stage].extend(range(k, k + len(g)))
            k += len(g)
        for stage, idx in spans.items():  # one d x d update per stage per batch
            self.stats[stage].text.add([texts[i] for i in idx], E[idx])
        if self.sink is not None:
            emb = pa.FixedSizeListArray.from_arrays(pa.array(E.reshape(-1), pa.float32()), E.shape[1])
            self.sink(pa.table({"chain_id": [r["chain_id"] for r in rows], "stage": [r["stage"] for r in rows], "embedding": emb}))
        self.groups, self.size = [], 0


def stage_stats(readers, embedder, section: MetricsConfig, dedup: DedupConfig, sink=None) -> dict[str, StageStats]:
    """Pure part of the pass: ``readers`` yields one iterable of record batches per part, rows
    sorted by (stage, problem_id) within it (a problem's rows never span two parts). Returns
    the accumulated ``StageStats`` per stage."""
    builder = StatsBuilder(embedder, section, dedup, sink)
    for group in _stream_groups(readers, ("stage", "problem_id")):
        builder.add(group)
    builder.flush()
    return builder.stats


def metric_rows(run_id: str, table: str, stats: dict[str, StageStats], quarantined: dict[str, int] | None = None) -> list[dict]:
    """``metrics`` rows of one table's stages (``quarantined`` pair rows per stage count against validity)."""
    quarantined = quarantined or {}
    out = []
    for stage in sorted(set(stats) | set(quarantined)):
        st = stats.get(stage) or StageStats(1)
        out.extend({"run_id": run_id, "stage": stage, "table": table, "metric": k, "value": float(v), "n": st.n}
                   for k, v in st.result(table, quarantined.get(stage, 0)).items())
    return out


def ops_by_problem_sql(problem_parts: list[Path]) -> str:
    """SQL for (problem_id, n_ops) of the problems in ``problem_parts`` (one row per problem)."""
    return f"SELECT problem_id, any_value(n_ops) AS n_ops FROM read_parquet({sql_list(problem_parts)}) GROUP BY 1"


class _ParquetSink:
    """Appends tables to one Parquet file, renamed into place on ``close`` (atomic)."""

    def __init__(self, path: Path):
        self.path = path
        self.writer = None
        self.tmp = path.with_name(f".{path.name}.tmp")

    def __call__(self, t: pa.Table) -> None:

        if self.writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = pq.ParquetWriter(self.tmp, t.schema, compression="zstd")
        self.writer.write_table(t)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with open(self.tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(self.tmp, self.path)


def embeddings_path(store: RunStore) -> Path:
    """Where the chain embeddings go: in the run folder, or (object-store root: DuckDB reads it
    locally) in this host's cache, under a name of the run's URI."""
    if isinstance(store.run_dir, StorePath):
        return cache_root() / "work" / hashlib.sha256(str(store.run_dir).encode()).hexdigest()[:16] / "embeddings.parquet"
    return store.run_dir / "metrics" / STAGE / "embeddings.parquet"


def compute_metrics(store: RunStore, section: MetricsConfig, dedup: DedupConfig, embedder) -> pa.Table:
    """The ``metrics`` rows of the run in ``store`` (streamed; see the module docstring).

    Writes the chain embeddings to ``<run>/metrics/metrics/embeddings.parquet`` (chain_id,
    stage, embedding) on the way, so the pairs and SFT passes reuse them instead of re-embedding.
    """
    import duckdb

    con = duckdb.connect()
    con.execute(f"SET memory_limit = '{section.memory_limit}'")
    con.execute("SET preserve_insertion_order = false")

    def readers(sql: str, parts: list[Path]):
        """One sorted query per part: a shard holds all rows of its problems, so sorting within a
        part keeps each problem's rows together without a global sort (memory bounded by the shard)."""
        return (con.sql(sql.format(src=sql_list([p]))).to_arrow_reader(section.batch_rows) for p in parts)

    rows: list[dict] = []
    emb_path = embeddings_path(store)
    chains, problems = store.committed_parts("chains"), store.committed_parts("problems")
    if chains:
        if problems:
            con.execute(f"CREATE TEMP TABLE ops AS {ops_by_problem_sql(problems)}")
        ops = "LEFT JOIN ops p USING (problem_id)" if problems else ""
        sql = (f"SELECT c.stage, c.problem_id, c.chain_id, c.text, c.steps, c.step_scores, c.n_steps, c.correct, c.verdict, "
               f"c.completion_tokens, {'p.n_ops' if problems else 'NULL AS n_ops'} "
               f"FROM read_parquet({{src}}) c {ops} ORDER BY c.stage, c.problem_id, c.chain_id")
        sink = _ParquetSink(emb_path)
        rows += metric_rows(store.run_id, "chains", stage_stats(readers(sql, chains), embedder, section, dedup, sink))
        sink.close()
    has_emb = emb_path.is_file()
    emb = f"LEFT JOIN read_parquet({sql_string(emb_path)}) e ON e.chain_id = " if has_emb else ""
    emb_col = "e.embedding" if has_emb else "NULL AS embedding"

    pairs = store.committed_parts("pairs")
    sql = (f"SELECT x.stage, x.problem_id, x.pair_id AS chain_id, x.chosen AS text, x.margin, {emb_col} "
           f"FROM read_parquet({{src}}) x {emb + 'x.chosen_chain_id' if has_emb else ''} ORDER BY x.stage, x.problem_id, x.pair_id")
    rows += metric_rows(store.run_id, "pairs", stage_stats(readers(sql, pairs), embedder, section, dedup), _quarantined_pairs(con, store))

    steps = store.committed_parts("step_pairs")  # texts: the chosen steps (embedded here: no chain holds them whole)
    sql = ("SELECT x.stage, x.problem_id, x.pair_id AS chain_id, x.chosen AS text, x.chosen_score - x.rejected_score AS margin, "
           "x.depth, x.source FROM read_parquet({src}) x ORDER BY x.stage, x.problem_id, x.pair_id")
    rows += metric_rows(store.run_id, "step_pairs", stage_stats(readers(sql, steps), embedder, section, dedup))

    sft = store.committed_parts("sft")
    sql = (f"SELECT 'sft' AS stage, x.problem_id, x.sft_id AS chain_id, x.completion AS text, {emb_col} "
           f"FROM read_parquet({{src}}) x {emb + 'x.chain_id' if has_emb else ''} ORDER BY x.problem_id, x.sft_id")
    rows += metric_rows(store.run_id, "sft", stage_stats(readers(sql, sft), embedder, section, dedup))
    con.close()
    return from_rows(rows, "metrics")


def pair_quarantine(store) -> list[str]:
    """The quarantine folders of the pair tables (``<stage>-pairs``): the only quarantine the
    metrics read, so quarantine that later stages write (train's) does not change their inputs."""
    return sorted(p.name for p in (store.run_dir / "quarantine").glob("*-pairs") if p.is_dir())


def _quarantined_pairs(con, store) -> dict[str, int]:
    """Quarantined pair rows per pair stage (routing's pairs are the generation stage's)."""
    parts = [p for stage in pair_quarantine(store) for p in store.committed_parts("quarantine", stage)]
    if not parts:
        return {}
    sql = (f"SELECT CASE WHEN stage = 'routing' THEN 'generation' ELSE stage END AS s, count(*) AS n "
           f"FROM read_parquet({sql_list(parts)}) WHERE \"table\" = 'pairs' GROUP BY 1")
    return {s: n for s, n in con.execute(sql).fetchall()}


@task(name=STAGE, task_run_name=STAGE + "-{shard}", cache_policy=NO_CACHE)
def metrics_task(run_dir: str, shard: str, config_hash: str) -> str:
    """Compute the run's QDC ``metrics`` table (embedder built once per worker process) and commit
    it like every stage's output (its suite, quarantine and validation rows, the stage marker,
    which records the embedder); its path."""
    ctx = RunContext.open(run_dir)
    fp = ctx.fingerprint(__name__, config_hash, [(t, None) for t in ("problems", "chains", "pairs", "step_pairs", "sft")]
                         + [("quarantine", stage) for stage in pair_quarantine(ctx.store)])
    if not ctx.is_done(STAGE, shard, fp):
        section = ctx.cfg.metrics
        embedder = get_embedder(section.embedder, section.embed_batch_size)
        table = compute_metrics(ctx.store, section, ctx.cfg.dedup, embedder)
        ctx.commit(STAGE, shard, {STAGE: table}, fp, extra={"embedder": embedder.name})
    return str(ctx.store.part_path(STAGE, STAGE, shard))
