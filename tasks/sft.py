"""The SFT set: correct, mutually distinct chains per problem, from every stage.

Candidates are the chains that reach gold, in a fixed order (generation MAX, generation
MIN, self-correction, diversity). Exact duplicates are dropped, then near-duplicates:
a chain whose MinHash Jaccard estimate (word ``shingle``-grams, ``num_perm``
permutations, datasketch bulk API) with an already kept chain of the same problem is at
or above ``near_duplicate_threshold``. Each row keeps its chain id (lineage).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from infra.config import SFTConfig
from infra.schemas import from_rows, stable_id

STAGE_ORDER = {"generation": 0, "self_correction": 1, "diversity": 2}


def shingles(text: str, n: int) -> list[bytes]:
    words = text.split()
    if len(words) < n:
        return [" ".join(words).encode()]
    return [" ".join(words[i : i + n]).encode() for i in range(len(words) - n + 1)]


def minhashes(texts: list[str], cfg: SFTConfig) -> list:
    from datasketch import MinHash

    return list(MinHash.bulk([shingles(t, cfg.shingle) for t in texts], num_perm=cfg.num_perm, seed=1))


def distinct_correct(chains: pa.Table, prompts: dict[str, str], cfg: SFTConfig, *, run_id: str) -> pa.Table:
    """SFT rows (prompt, completion, chain_id, ...) from all chains of a run."""
    rows = [r for r in chains.select(["problem_id", "chain_id", "stage", "branch", "text", "correct"]).to_pylist() if r["correct"]]
    rows.sort(key=lambda r: (r["problem_id"], STAGE_ORDER.get(r["stage"], 9), r["branch"] != "max", r["chain_id"]))
    hashes = minhashes([r["text"] for r in rows], cfg) if rows else []
    out, kept_by_problem = [], {}
    for r, h in zip(rows, hashes):
        kept = kept_by_problem.setdefault(r["problem_id"], [])
        if any(r["text"] == k["text"] or h.jaccard(kh) >= cfg.near_duplicate_threshold for k, kh in kept):
            continue
        kept.append((r, h))
        out.append({
            "run_id": run_id,
            "sft_id": stable_id("sft", r["chain_id"]),
            "problem_id": r["problem_id"],
            "stage": r["stage"],
            "prompt": prompts[r["problem_id"]],
            "completion": r["text"],
            "chain_id": r["chain_id"],
        })
    return from_rows(out, "sft")


def jaccard_matrix(texts: list[str], cfg: SFTConfig) -> np.ndarray:
    """Pairwise MinHash Jaccard estimates (for tests and reports)."""
    hs = minhashes(texts, cfg)
    return np.array([[a.jaccard(b) for b in hs] for a in hs])


# ---------------------------------------------------------------- Prefect wrapper

from prefect import task  # noqa: E402

from tasks.common import RunContext, persist, problem_context, sft_checks  # noqa: E402

STAGE = "sft"


@task(name="build-sft", persist_result=False)
def sft_task(run_dir: str) -> int:
    """Write the validated ``sft`` table from every stage's chains; returns its row count."""
    ctx = RunContext.open(run_dir)
    if not ctx.store.is_done("sft", STAGE, "00000"):
        gold, prompts = problem_context(ctx)
        table = distinct_correct(ctx.store.read_table("chains"), prompts, ctx.cfg.sft, run_id=ctx.run_id)
        persist(ctx, "sft", STAGE, "00000", table, extra=sft_checks(table, gold, prompts))
    return ctx.store.read_part("sft", STAGE, "00000").num_rows
