"""The SFT set: correct, mutually distinct chains per problem, from every stage.

Candidates are the chains that reach gold, in a fixed order (generation MAX, generation
MIN, self-correction, diversity). Exact duplicates are dropped, then near-duplicates:
a chain whose MinHash Jaccard estimate (word ``shingle``-grams, ``num_perm``
permutations, datasketch bulk API) with an already kept chain of the same problem is at
or above ``dedup.near_duplicate_threshold``. Each row keeps its chain id (lineage).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from infra.config import DedupConfig
from infra.prompts import load_template
from infra.schemas import from_rows, require, stable_id
from tasks.checks import problem_context
from tasks.runner import ConfigView, Engines

STAGE = "sft"
STAGE_ORDER = {"generation": 0, "self_correction": 1, "diversity": 2}


def shingles(text: str, n: int) -> list[bytes]:
    words = text.split()
    if len(words) < n:
        return [" ".join(words).encode()]
    return [" ".join(words[i : i + n]).encode() for i in range(len(words) - n + 1)]


def minhashes(texts: list[str], cfg: DedupConfig) -> list:
    """One MinHash per text (word ``cfg.shingle``-grams, ``cfg.num_perm`` permutations, seed 1):
    the SFT dedup and the QDC near-duplicate rate use the same sketches."""
    from datasketch import MinHash

    return list(MinHash.bulk([shingles(t, cfg.shingle) for t in texts], num_perm=cfg.num_perm, seed=1)) if texts else []


def distinct_correct(chains: pa.Table, prompts: dict[str, str], cfg: DedupConfig, *, run_id: str) -> pa.Table:
    """SFT rows (prompt, completion, chain_id, ...) from all chains of a run."""
    require(chains, "chains", ["problem_id", "chain_id", "stage", "branch", "text", "correct"])
    rows = [r for r in chains.select(["problem_id", "chain_id", "stage", "branch", "text", "correct"]).to_pylist() if r["correct"]]
    rows.sort(key=lambda r: (r["problem_id"], STAGE_ORDER.get(r["stage"], 9), r["branch"] != "max", r["chain_id"]))
    out, kept_by_problem = [], {}
    for r, h in zip(rows, minhashes([r["text"] for r in rows], cfg)):
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


def sft_set(problems: pa.Table, chains: pa.Table, dedup: DedupConfig, prompt_template: str, *, run_id: str) -> dict[str, pa.Table]:
    """{"sft": the distinct correct chains of every stage, with their problems' solve prompts}."""
    _, prompts = problem_context(problems, load_template(prompt_template))
    return {"sft": distinct_correct(chains, prompts, dedup, run_id=run_id)}


def jaccard_matrix(texts: list[str], cfg: DedupConfig) -> np.ndarray:
    """Pairwise MinHash Jaccard estimates (for tests and reports)."""
    hs = minhashes(texts, cfg)
    return np.array([[a.jaccard(b) for b in hs] for a in hs])


def sft_stage(inputs: dict[str, pa.Table], config: ConfigView, engines: Engines) -> dict[str, pa.Table]:
    """The stage function (``tasks.runner``): the SFT set from every stage's chains."""
    return sft_set(inputs["problems"], inputs["chains"], config.dedup, config.generation.prompt_template, run_id=engines.run_id)
