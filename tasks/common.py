"""What every stage wrapper shares: the run context, validate-then-write, cache keys.

``persist`` is the write path of every stage: run the table's GX suite, write the rows
that fail to ``quarantine`` (with the expectations they failed) and the suite results to
``validation``, then write the good rows and mark the shard done. The shard marker is
written last, so a crash anywhere before it leaves the shard to be redone. When the
failure share passes ``validation.max_failure_share`` the stage raises
``ValidationFailed`` after quarantine and results are written, without committing the
shard, so a resume recomputes it (and fails again until something changes).
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from infra.config import RunConfig
from infra.schemas import from_rows
from infra.storage import RunStore, file_sha256
from infra.validation import ValidationFailed, validate

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@functools.cache
def code_version() -> str:
    """Hash of the pipeline's source and model files: part of every shard cache key."""
    h = hashlib.sha256()
    for folder in ("tasks", "infra"):
        for f in sorted((PROJECT_ROOT / folder).rglob("*")):
            if f.suffix in (".py", ".txt", ".pt") and "__pycache__" not in f.parts:
                h.update(f.relative_to(PROJECT_ROOT).as_posix().encode())
                h.update(file_sha256(f).encode())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class RunContext:
    store: RunStore
    cfg: RunConfig

    @classmethod
    def open(cls, run_dir: str) -> RunContext:
        store = RunStore.at(run_dir)
        return cls(store, RunConfig.model_validate(store.load_config()))

    @property
    def run_id(self) -> str:
        return self.store.run_id


def quarantine_rows(run_id: str, stage: str, table: str, bad: list[dict]) -> pa.Table:
    return from_rows(
        [
            {
                "run_id": run_id,
                "stage": stage,
                "table": table,
                "source": b["row"].get("problem_id") or b["row"].get("source"),
                "check": b["check"],
                "reason": b["reason"],
                "row": json.dumps(b["row"], default=str)[:20_000],
            }
            for b in bad
        ],
        "quarantine",
    )


def persist(ctx: RunContext, table_name: str, stage: str, shard: str, table: pa.Table, extra: dict | None = None, **meta) -> Path:
    """Validate, write quarantine + validation results + good rows; mark the shard done."""
    outcome = validate(table_name, table, extra)
    store = ctx.store
    store.write("quarantine", f"{stage}-{table_name}", shard, quarantine_rows(ctx.run_id, stage, table_name, outcome.bad_rows))
    store.write(
        "validation",
        f"{stage}-{table_name}",
        shard,
        from_rows([{"run_id": ctx.run_id, "stage": stage, "table": table_name, "shard": shard, **r} for r in outcome.results], "validation"),
    )
    limit = ctx.cfg.validation.max_failure_share
    if outcome.failure_share > limit:  # the shard is not committed: a resume recomputes it and fails again
        raise ValidationFailed(
            f"{table_name}/{stage}/{shard}: {len(outcome.bad_rows)} of {table.num_rows} rows failed their suite "
            f"({outcome.failure_share:.1%} > {limit:.1%}); see the quarantine table"
        )
    return store.write(table_name, stage, shard, outcome.good, code_version=code_version(), **meta)


def shard_cache_key(inputs: list[Path], stage_hash: str, out_dir: str, shard: str) -> str:
    """(input content hash, stage config hash, code version, output location) -> cache key."""
    h = hashlib.sha256()
    for p in inputs:
        h.update(file_sha256(p).encode())
    h.update(f"{stage_hash}|{code_version()}|{out_dir}|{shard}".encode())
    return h.hexdigest()


def problem_context(ctx: RunContext, problems: pa.Table | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """(gold by problem id, solve prompt by problem id) for ``problems`` (any table with
    problem_id, question, gold_answer), or for the whole run when it is None."""
    from infra.prompts import load_template

    solve = load_template(ctx.cfg.generation.prompt_template)
    if problems is None:
        problems = ctx.store.read_table("problems", "seeds")
    rows = problems.select(["problem_id", "question", "gold_answer"]).to_pylist()
    return {r["problem_id"]: r["gold_answer"] for r in rows}, {r["problem_id"]: solve.render(question=r["question"]) for r in rows}


def _reaches_gold(text: str | None, gold: str) -> bool:
    from tasks.answers import extract_answer, is_equivalent

    return is_equivalent(extract_answer(text or ""), gold)


def pair_checks(pairs: pa.Table, gold: dict[str, str], prompts: dict[str, str]) -> dict[str, list]:
    """Re-verify every pair against its problem: chosen right, rejected wrong, prompt = the problem's."""
    rows = pairs.select(["problem_id", "prompt", "chosen", "rejected"]).to_pylist()
    return {
        "_chosen_verified": [_reaches_gold(r["chosen"], gold.get(r["problem_id"], "")) for r in rows],
        "_rejected_verified_wrong": [not _reaches_gold(r["rejected"], gold.get(r["problem_id"], "")) for r in rows],
        "_prompt_matches": [r["prompt"] == prompts.get(r["problem_id"]) for r in rows],
    }


def sft_checks(sft: pa.Table, gold: dict[str, str], prompts: dict[str, str]) -> dict[str, list]:
    """Re-verify every SFT completion against gold and its prompt against the problem's."""
    rows = sft.select(["problem_id", "prompt", "completion"]).to_pylist()
    return {
        "_completion_verified": [_reaches_gold(r["completion"], gold.get(r["problem_id"], "")) for r in rows],
        "_prompt_matches": [r["prompt"] == prompts.get(r["problem_id"]) for r in rows],
    }


def persist_pairs(ctx: RunContext, stage: str, shard: str, pairs: pa.Table, problems: pa.Table) -> Path:
    """``persist`` for pairs, checked against ``problems`` (the rows the pairs come from)."""
    gold, prompts = problem_context(ctx, problems)
    return persist(ctx, "pairs", stage, shard, pairs, extra=pair_checks(pairs, gold, prompts))


WORKLIST_STAGE = "routing"


def model_shard(ctx: RunContext, stage: str, shard: str, backend_cfg, compute) -> str:
    """The body of a model stage's shard task: skip if done; else read the shard's worklist,
    run ``compute(worklist, pool) -> (chains, pairs)`` on the Ray pool, persist pairs then
    chains (the chains marker commits the shard)."""
    from infra.pool import get_pool

    if ctx.store.is_done("chains", stage, shard):
        return str(ctx.store.part_path("chains", stage, shard))
    worklist = ctx.store.read_part("worklist", WORKLIST_STAGE, f"{stage}-{shard}")
    chains, pairs = compute(worklist, get_pool(backend_cfg, ctx.cfg.pool))
    persist_pairs(ctx, stage, shard, pairs, worklist)
    return str(persist(ctx, "chains", stage, shard, chains))


def worklist_cache_key(stage: str, sections: tuple[str, ...]):
    """A Prefect cache_key_fn for a model stage's shard task."""

    def key(context, params) -> str:
        ctx = RunContext.open(params["run_dir"])
        inputs = [ctx.store.part_path("worklist", WORKLIST_STAGE, f"{stage}-{params['shard']}")]
        return shard_cache_key(inputs, ctx.cfg.stage_hash(*sections), params["run_dir"], params["shard"])

    return key
